"""The per-handler log and status record, in the fixed format the final check reads.

For a handler NAME, in the log dir (default /var/log/vfarm, env VFARM_LOG_DIR overrides):
- NAME.log: the detailed log (every command, exit code, duration, stderr; secrets redacted);
- NAME.status.json, written atomically: {"handler", "status": running|ok|failed|skipped,
  "reason", "started", "finished", "seconds", "instance_id", "changed", "steps", "vfarm_version"},
  and from a handler that mounts volumes "mounts": [[device, mount point or "swap"], ...], which
  the final check finds in place at every boot (the handler runs once per instance).
"running" is written first, so a crash leaves "running" behind (counted as failed). A dry run writes
NAME.dry-run.json instead: the final check reads *.status.json only, so a dry run never stands
for, nor overwrites, the real outcome.
"""

from __future__ import annotations

import importlib
import json
import logging
import os
import time
from pathlib import Path
from typing import Any, Optional, Union

from ..files import atomic_write, log_dir
from ..redaction import RedactingFormatter, redact, redact_strings

STATUSES = ("running", "ok", "failed", "skipped")
LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"



def _version() -> str:
    # The root package (vfarm) holds the version; a bundled handler may have no root package.
    try:
        root = importlib.import_module((__package__ or "").rpartition(".")[0])
    except (ImportError, ValueError):
        return "unknown"
    return str(getattr(root, "__version__", "unknown"))


VERSION = _version()


def document(handler: str, status: str, reason: str, started: float, instance_id: Optional[str], version: str,
             steps: Optional[list[dict[str, Any]]] = None, finished: Optional[float] = None) -> dict[str, Any]:
    """A new status record. The one home of the format: stdlib only and self-contained, because
    `vfarm build` copies this function's source into the `--pin` loader, which writes the record
    of a handler that could not be fetched."""
    return {
        "handler": handler,
        "status": status,
        "reason": reason,
        "started": started,
        "finished": finished,
        "seconds": None if finished is None else round(finished - started, 3),
        "instance_id": instance_id,
        "changed": False,
        "steps": steps or [],
        "vfarm_version": version,
    }


def status_path(handler: str, directory: Union[str, Path, None] = None) -> Path:
    return log_dir(directory) / f"{handler}.status.json"


def read_status(handler: str, directory: Union[str, Path, None] = None) -> Optional[dict[str, Any]]:
    """HANDLER's status record; None when there is none, or none that can be read as a JSON
    object (empty, cut short, not UTF-8, a list): such a record tells nothing."""
    try:
        data = json.loads(status_path(handler, directory).read_text(encoding="utf-8"))
    except (OSError, ValueError):  # ValueError: JSONDecodeError and UnicodeDecodeError
        return None
    return data if isinstance(data, dict) else None


class Record:
    """Log and status of one run of one handler. Use as a context manager (closes the log). The
    log's every line (tracebacks too) is redacted; so is every string of the record. A DRY_RUN
    record is written to NAME.dry-run.json, never to NAME.status.json."""

    def __init__(self, handler: str, *, directory: Union[str, Path, None] = None, instance_id: Optional[str] = None,
                 dry_run: bool = False):
        self.handler = handler
        self.directory = log_dir(directory)
        self.path = self.directory / f"{handler}.dry-run.json" if dry_run else status_path(handler, self.directory)
        self.instance_id = instance_id
        self.data = document(handler, "running", "", time.time(), instance_id, VERSION)
        self.directory.mkdir(parents=True, exist_ok=True)
        self.log_path = self.directory / f"{handler}.log"
        self.logger = logging.getLogger(f"vfarm.{handler}")
        self.logger.setLevel(logging.DEBUG)
        self._handler = logging.FileHandler(self.log_path, encoding="utf-8")
        self._handler.setFormatter(RedactingFormatter(LOG_FORMAT))
        self._handler.setLevel(logging.DEBUG)
        self.logger.addHandler(self._handler)
        try:
            os.chmod(self.log_path, 0o640)
        except OSError:
            pass
        self._started_monotonic = time.monotonic()

    def __enter__(self) -> Record:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self.logger.removeHandler(self._handler)
        self._handler.close()

    def write(self) -> None:
        atomic_write(self.path, json.dumps(redact_strings(self.data), indent=2) + "\n", 0o644)

    def start(self) -> None:
        self.logger.info("%s: started (vfarm %s, instance %s)", self.handler, VERSION, self.instance_id)
        self.write()

    def step(self, action: str, ok: bool, **details: Any) -> None:
        self.data["steps"].append({"action": action, "ok": ok, **redact_strings(details)})
        if ok and action not in ("discover", "plan"):
            self.data["changed"] = self.data["changed"] or bool(details.get("changed", True))

    def finish(self, status: str, reason: str = "", changed: Optional[bool] = None) -> None:
        if status not in STATUSES:
            raise ValueError(f"unknown status {status!r}")
        self.data["status"] = status
        self.data["reason"] = redact(reason)
        if changed is not None:
            self.data["changed"] = changed
        self.data["finished"] = time.time()
        self.data["seconds"] = round(time.monotonic() - self._started_monotonic, 3)
        level = logging.ERROR if status == "failed" else logging.INFO
        self.logger.log(level, "%s: %s%s", self.handler, status, f": {redact(reason)}" if reason else "")
        self.write()
