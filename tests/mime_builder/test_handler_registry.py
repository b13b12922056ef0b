"""`vfarm build` takes a handler's content type and frequency from the section registry without
importing the handler: the handler modules must say the same, and have every attribute the
bundled handler file re-exports for cloud-init."""

from __future__ import annotations

import importlib

import pytest

from vfarm.config import sections
from vfarm.mime_builder import bundle


@pytest.mark.parametrize("name", bundle.handler_names())
def test_handler_module_agrees_with_the_registry(name: str) -> None:
    module = importlib.import_module(f"vfarm.part_handlers.{name}_handler")
    assert module.list_types() == bundle.handler_types(name) == [sections.BY_NAME[name].content_type]
    assert module.frequency == bundle.handler_frequency(name)
    assert all(hasattr(module, attribute) for attribute in bundle.HANDLER_ATTRIBUTES)


def test_a_section_without_a_handler_is_refused() -> None:
    with pytest.raises(bundle.BundleError, match="no part-handler for 'scale'"):
        bundle.handler_types("scale")
