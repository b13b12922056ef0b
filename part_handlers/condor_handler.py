"""cloud-init part-handler for `text/condor-config` parts: YAML `condor:\n  ...` (a one-section
#multiple-config, its token read in by `vfarm build`), run by the same code as the `condor`
config module (cc_modules.cc_condor). The builder puts this part after localfs and cvmfs, so an
execute directory on a localfs mount is created on that mount."""

from __future__ import annotations

from typing import Any, Optional

from ..cc_modules import cc_condor
from ..config import sections
from .common import PartHandler

CONTENT_TYPE = sections.BY_NAME["condor"].content_type
handler_version = 3
frequency = sections.HANDLER_FREQUENCY

_HANDLER = PartHandler("condor", CONTENT_TYPE, cc_condor.work)


def list_types() -> list[str]:
    return _HANDLER.list_types()


def handle_part(data: Any, ctype: Optional[str], filename: Optional[str], payload: Any,
                frequency: Optional[str] = None, headers: Optional[dict[str, Any]] = None) -> None:
    _HANDLER.handle_part(data, ctype, filename, payload, frequency, headers)
