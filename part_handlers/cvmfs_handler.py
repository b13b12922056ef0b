"""cloud-init part-handler for `text/cvmfs-config` parts: YAML `cvmfs:\n  ...` (a one-section
#multiple-config), run by the same code as the `cvmfs` config module (cc_modules.cc_cvmfs)."""

from __future__ import annotations

from typing import Any, Optional

from ..cc_modules import cc_cvmfs
from ..config import sections
from .common import PartHandler

CONTENT_TYPE = sections.BY_NAME["cvmfs"].content_type
handler_version = 3
frequency = sections.HANDLER_FREQUENCY

_HANDLER = PartHandler("cvmfs", CONTENT_TYPE, cc_cvmfs.work)


def list_types() -> list[str]:
    return _HANDLER.list_types()


def handle_part(data: Any, ctype: Optional[str], filename: Optional[str], payload: Any,
                frequency: Optional[str] = None, headers: Optional[dict[str, Any]] = None) -> None:
    _HANDLER.handle_part(data, ctype, filename, payload, frequency, headers)
