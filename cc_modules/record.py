"""The per-handler log and status record, in the fixed format the final check reads.

For a handler NAME, in the log dir (default /var/log/vfarm, env VFARM_LOG_DIR overrides):
- NAME.log: the detailed log (every command, exit code, duration, stderr; secrets redacted);
- NAME.status.json, written atomically: {"handler", "status": running|ok|failed|skipped,
  "reason", "started", "finished", "seconds", "instance_id", "changed", "steps", "vfarm_version"}.
"running" is written first, so a crash leaves "running" behind (counted as failed).
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
from ..redaction import redact

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
    try:
        data: dict[str, Any] = json.loads(status_path(handler, directory).read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    return data


def _clean(value: Any) -> Any:
    if isinstance(value, str):
        return redact(value)
    if isinstance(value, dict):
        return {k: _clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clean(v) for v in value]
    return value


class Record:
    """Log and status of one run of one handler. Use as a context manager (closes the log)."""

    def __init__(self, handler: str, *, directory: Union[str, Path, None] = None, instance_id: Optional[str] = None):
        self.handler = handler
        self.directory = log_dir(directory)
        self.instance_id = instance_id
        self.data = document(handler, "running", "", time.time(), instance_id, VERSION)
        self.directory.mkdir(parents=True, exist_ok=True)
        self.log_path = self.directory / f"{handler}.log"
        self.logger = logging.getLogger(f"vfarm.{handler}")
        self.logger.setLevel(logging.DEBUG)
        self._handler = logging.FileHandler(self.log_path, encoding="utf-8")
        self._handler.setFormatter(logging.Formatter(LOG_FORMAT))
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
        atomic_write(self.directory / f"{self.handler}.status.json", json.dumps(_clean(self.data), indent=2) + "\n", 0o644)

    def start(self) -> None:
        self.logger.info("%s: started (vfarm %s, instance %s)", self.handler, VERSION, self.instance_id)
        self.write()

    def step(self, action: str, ok: bool, **details: Any) -> None:
        self.data["steps"].append({"action": action, "ok": ok, **_clean(details)})
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
