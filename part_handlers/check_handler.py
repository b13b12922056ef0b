"""Part-handler for `text/check-config`: takes the part so that cloud-init does not call it
"Unhandled unknown content-type" (a WARNING: on 25.1 a "degraded" boot).

It acts on nothing: the final check reads its settings from the RAW user-data itself, because
when an #include fails cloud-init consumes no part at all, this one included, and the check must
still power the instance off. So this handler writes no status record either (the check is not a
handler the check waits for).
"""

from __future__ import annotations

import logging
from typing import Any

from ..config import sections

LOG = logging.getLogger("vfarm.check")
CONTENT_TYPE = sections.BY_NAME["check"].content_type
handler_version = 3
frequency = sections.HANDLER_FREQUENCY


def list_types() -> list[str]:
    return [CONTENT_TYPE]


def handle_part(data: Any, ctype: str, filename: str, payload: Any, frequency: Any = None, headers: Any = None) -> None:
    if ctype in ("__begin__", "__end__"):
        return
    LOG.info("vfarm: %s (%s) received: the final check applies it after cloud-init has finished", ctype, filename)
