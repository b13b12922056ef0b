"""The final check's verdict as the admin side reads it from an instance's console output.

The check (cc_modules/check.py, `verdict_line`) writes one line before it powers off:
`vfarm-verdict: {json}`, printable ASCII. This module is the one reader of that line, for
`vfarm instances` (EC2 GetConsoleOutput), the local farm (its console logs) and the scaler.

A console is shared text: kernel messages, cloud-init's own output quoting the user-data, a
previous boot's lines. So a line counts only when it starts with the prefix (after carriage
returns and blanks a serial console leaves), its JSON is exactly the record the check writes
(known keys and types, bounded texts) and, when the caller knows it, it names the same instance.
The last such line wins: it is the newest boot's. Everything read here may be hostile: it is
shown only through the display helpers (`shown`), never raw.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any, Optional

from ..cc_modules.check import VERDICT_MAX_FAILED, VERDICT_MAX_TEXT, VERDICT_PREFIX, VERDICT_VERSION

RESULTS = ("ok", "degraded", "failed", "error")
# The tail of a console worth reading: the verdict is among the last lines before power-off.
CONSOLE_TAIL = 256 * 1024
_LABEL_NAME = re.compile(r"[a-z][a-z0-9_-]{0,31}")
# The longest line the check can write (every text at its bound, every character escaped as \\uXXXX).
_MAX_LINE = len(VERDICT_PREFIX) + 512 + 6 * VERDICT_MAX_TEXT * (5 + 3 * VERDICT_MAX_FAILED)


@dataclass(frozen=True)
class FailedHandler:
    name: str
    status: str
    reason: str


@dataclass(frozen=True)
class Verdict:
    instance: str
    vfarm: str
    result: str
    action: str
    reason: str
    failed: tuple[FailedHandler, ...]
    more_failed: int  # failed handlers the line only counts

    def as_dict(self) -> dict[str, Any]:
        return {
            "instance": self.instance, "vfarm": self.vfarm, "result": self.result, "action": self.action, "reason": self.reason,
            "failed": [{"name": f.name, "status": f.status, "reason": f.reason} for f in self.failed], "more_failed": self.more_failed,
        }

    def text(self) -> str:
        """One line for a table or a log (not yet made safe to show: callers pass it to `shown`)."""
        if self.result in ("ok", "degraded"):
            return f"{self.result}: {self.reason}" if self.reason else self.result
        if self.failed:
            named = "; ".join(f"{f.name}: {f.status}: {f.reason}" for f in self.failed)
            more = f" (and {self.more_failed} more handler(s))" if self.more_failed else ""
            return f"{self.result}: {named}{more}"
        return f"{self.result}: {self.reason}"

    def label(self) -> str:
        """A short, bounded reason for metrics and counts: check-failed:HANDLER (the first failed
        handler; check-failed:boot when only cloud-init's own problems failed it), check-error,
        check-ok, check-degraded."""
        if self.result == "failed":
            name = self.failed[0].name if self.failed else "boot"
            return f"check-failed:{name if _LABEL_NAME.fullmatch(name) else 'other'}"
        return f"check-{self.result}"


NO_VERDICT = "no-verdict"  # the console holds no verdict line (yet): the check never ran to its end
UNREADABLE = "console-unreadable"  # the cloud did not give the console output


def label(verdict: Optional[Verdict]) -> str:
    return verdict.label() if verdict is not None else NO_VERDICT


def _text(value: Any) -> Optional[str]:
    """A text of the record (None, where the check had none, reads as empty), or None when it is
    anything else."""
    if value is None:
        return ""
    return value if isinstance(value, str) and len(value) <= VERDICT_MAX_TEXT else None


def parse_record(data: Any) -> Optional[Verdict]:
    """DATA as a verdict record, or None when it is anything but exactly what the check writes:
    {v, instance, vfarm, result, action, reason, failed: [[name, status, reason], ...], more}."""
    keys = {"v", "instance", "vfarm", "result", "action", "reason", "failed", "more"}
    if not isinstance(data, dict) or set(data) != keys or data["v"] != VERDICT_VERSION:
        return None
    texts = [_text(data[k]) for k in ("instance", "vfarm", "result", "action", "reason")]
    more, failed = data["more"], data["failed"]
    if any(t is None for t in texts) or data["result"] not in RESULTS:
        return None
    if not isinstance(more, int) or isinstance(more, bool) or not 0 <= more < 1_000_000:
        return None
    if not isinstance(failed, list) or len(failed) > VERDICT_MAX_FAILED:
        return None
    handlers = []
    for entry in failed:
        fields = [_text(f) for f in entry] if isinstance(entry, list) and len(entry) == 3 else [None]
        if any(f is None for f in fields):
            return None
        handlers.append(FailedHandler(*(str(f) for f in fields)))
    instance, vfarm, result, action, reason = (str(t) for t in texts)
    return Verdict(instance, vfarm, result, action, reason, tuple(handlers), more)


def parse_line(line: str) -> Optional[Verdict]:
    """One console line as a verdict, or None."""
    line = line.lstrip("\r\x00 \t").rstrip("\r\n \t")
    if not line.startswith(VERDICT_PREFIX) or len(line) > _MAX_LINE:
        return None
    body = line[len(VERDICT_PREFIX):]
    if not body.isascii() or not body.isprintable():
        return None
    try:
        return parse_record(json.loads(body))
    except (ValueError, RecursionError):  # RecursionError: `[` nested thousands deep
        return None


def parse_console(text: str, instance_id: Optional[str] = None) -> Optional[Verdict]:
    """The newest verdict in a console's TEXT (of INSTANCE_ID, when given), or None."""
    found: Optional[Verdict] = None
    for line in text[-CONSOLE_TAIL:].splitlines():
        if VERDICT_PREFIX not in line:
            continue
        verdict = parse_line(line)
        if verdict is not None and (instance_id is None or verdict.instance in (instance_id, "")):
            found = verdict
    return found


def find_line(text: str, instance_id: Optional[str] = None) -> Optional[str]:
    """The newest verdict line itself (to keep it, e.g. in a terminated instance's record)."""
    found: Optional[str] = None
    for line in text[-CONSOLE_TAIL:].splitlines():
        verdict = parse_line(line) if VERDICT_PREFIX in line else None
        if verdict is not None and (instance_id is None or verdict.instance in (instance_id, "")):
            found = line.strip("\r\x00 \t\n")
    return found
