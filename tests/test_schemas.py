"""The JSON Schemas: every key documented, the whole-file schema consistent with the sections."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import jsonschema
import pytest
from referencing import Registry, Resource

from vfarm import schemas
from vfarm.mime_builder.config import load_file

EXAMPLES = sorted((Path(__file__).parent.parent / "examples").glob("*.yaml"))


def undocumented(node: Any, path: str = "") -> list[str]:
    """Paths of properties (at any depth) that have no description, directly or behind a $ref."""
    missing = []
    if isinstance(node, dict):
        for key, sub in node.get("properties", {}).items():
            if isinstance(sub, dict) and "description" not in sub:
                missing.append(f"{path}.{key}")
        for key, sub in node.items():
            if key in ("if", "not"):  # conditions restate keys, they do not define them
                continue
            missing += undocumented(sub, f"{path}.{key}" if key not in ("properties", "$defs") else path)
    elif isinstance(node, list):
        for i, sub in enumerate(node):
            missing += undocumented(sub, f"{path}[{i}]")
    return missing


@pytest.mark.parametrize("name", ["vfarm", *schemas.names()])
def test_every_key_is_documented(name: str) -> None:
    schema = schemas.load(name)
    jsonschema.Draft202012Validator.check_schema(schema)
    assert schema.get("description")
    if name != "vfarm":  # the whole-file schema's properties are $refs to documented sections
        assert undocumented(schema) == []


def test_whole_file_schema_lists_every_section() -> None:
    assert sorted(schemas.load("vfarm")["properties"]) == schemas.names()


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.stem)
def test_whole_file_schema_accepts_the_examples(path: Path) -> None:
    # For editors (yaml-language-server) the whole-file schema refers to the section schemas.
    registry: Registry[Any] = Registry().with_resources(
        (f"{name}.schema.json", Resource.from_contents(schemas.load(name))) for name in schemas.names()
    )
    validator = jsonschema.Draft202012Validator(schemas.load("vfarm"), registry=registry)
    data = load_file(path).sections
    assert list(validator.iter_errors(data)) == []
    assert list(validator.iter_errors({**data, "localfss": {}}))
