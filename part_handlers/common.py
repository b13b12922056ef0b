"""What the vfarm part-handlers share: one content type each, the section loaded from the part's
payload exactly as `vfarm validate` loads it, and the same work as the config module."""

from __future__ import annotations

from typing import Any, Optional

from ..cc_modules import handling

BEGIN_END = ("__begin__", "__end__")


class PartHandler:
    def __init__(self, section: str, content_type: str, work: handling.Work):
        self.section = section
        self.content_type = content_type
        self.work = work

    def list_types(self) -> list[str]:
        return [self.content_type]

    def handle_part(self, data: Any, ctype: Optional[str], filename: Optional[str], payload: Any,
                    frequency: Optional[str] = None, headers: Optional[dict[str, Any]] = None) -> None:
        if ctype in BEGIN_END:
            return  # registration and the end of the walk: nothing to do
        if isinstance(payload, bytes):
            payload = payload.decode("utf-8", "replace")
        text = payload if isinstance(payload, str) else ""
        source = filename or self.content_type
        result = handling.execute(self.section, lambda: handling.load_part(self.section, text, source), self.work, cloud=data)
        # The record is the truth (cloud-init only logs a handler's exception as a WARNING);
        # raising makes that WARNING say what went wrong.
        handling.raise_if_failed(result)
