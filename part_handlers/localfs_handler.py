"""cloud-init part-handler for `text/localfs-config` parts: YAML `localfs:\n  ...` (a one-section
#multiple-config), run by the same code as the `localfs` config module (cc_modules.cc_localfs)."""

from __future__ import annotations

from typing import Any, Optional

from ..cc_modules import cc_localfs
from ..config import sections
from .common import PartHandler

CONTENT_TYPE = sections.BY_NAME["localfs"].content_type
handler_version = 3
frequency = sections.HANDLER_FREQUENCY

_HANDLER = PartHandler("localfs", CONTENT_TYPE, cc_localfs.work)


def list_types() -> list[str]:
    return _HANDLER.list_types()


def handle_part(data: Any, ctype: Optional[str], filename: Optional[str], payload: Any,
                frequency: Optional[str] = None, headers: Optional[dict[str, Any]] = None) -> None:
    _HANDLER.handle_part(data, ctype, filename, payload, frequency, headers)
