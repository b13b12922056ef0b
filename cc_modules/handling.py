"""What every vfarm handler shares, whether cloud-init calls it as a config module (`handle`) or
as a part-handler (`handle_part`): reading the call, validating the section, the run record and
the one clear failure reason."""

from __future__ import annotations

import logging
import os
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional, Union

from ..config import loader as vconfig
from ..config import yamltext
from ..errors import StepError, VfarmError
from ..files import log_dir, system_root, under
from ..redaction import redact
from . import record as record_mod
from .runner import Runner

LOG = logging.getLogger("vfarm")
# cloud-init's frequency names (cloudinit.settings), spelled out: this code must not import cloudinit.
PER_INSTANCE = "once-per-instance"


class HandlerFailed(Exception):
    """Raised to cloud-init after the failure is recorded, so that cloud-init logs it too."""


@dataclass
class Context:
    """What the work of a handler gets: the runner, the record and the system root."""

    runner: Runner
    record: record_mod.Record
    root: Path

    @property
    def logger(self) -> logging.Logger:
        return self.record.logger

    def path(self, absolute: str) -> Path:
        """ABSOLUTE inside the root (the root is / on an instance, a temp dir in tests)."""
        return under(self.root, absolute)

    @property
    def dry_run(self) -> bool:
        return self.runner.dry_run


Work = Callable[[dict[str, Any], Context], bool]  # returns whether anything changed


def env_flag(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() in ("1", "yes", "true", "on")


def instance_id(cloud: Any) -> Optional[str]:
    """The instance id from a cloudinit Cloud, if it has one (a handler must not need it)."""
    for getter in (lambda: cloud.get_instance_id(), lambda: cloud.datasource.get_instance_id()):
        try:
            value = getter()
        except Exception:  # noqa: BLE001 - any Cloud-like object, or none at all
            continue
        if value:
            return str(value)
    return None


def handle_arguments(args: tuple[Any, ...], kwargs: dict[str, Any]) -> tuple[str, dict[str, Any], Any]:
    """(name, cfg, cloud) from a config module call: cloud-init 22.4 passes (name, cfg, cloud,
    log, args) positionally, 25.1 passes name, cfg, cloud, args as keywords."""
    names = ("name", "cfg", "cloud")
    values = dict(zip(names, args))
    values.update({k: v for k, v in kwargs.items() if k in names})
    cfg = values.get("cfg")
    return str(values.get("name", "")), cfg if isinstance(cfg, dict) else {}, values.get("cloud")


def validate(section_name: str, data: Any, source: str) -> dict[str, Any]:
    """The section checked exactly as `vfarm validate` checks it (schema and semantics)."""
    text = yamltext.dump({section_name: data}, sort_keys=False)  # quoted strings stay quoted
    loaded = vconfig.load_text(text, source=source, sections={section_name})
    section: dict[str, Any] = loaded.sections[section_name]
    return section


def load_part(section_name: str, payload: str, source: str) -> Optional[dict[str, Any]]:
    """The section from a part's payload (YAML `NAME:\\n  ...`, a one-section #multiple-config)."""
    loaded = vconfig.load_text(payload, source=source, sections={section_name})
    section = loaded.sections.get(section_name)
    if section is None:
        raise StepError(f"{source}: the part holds no '{section_name}:' section")
    return dict(section)


def _config_error_text(err: Exception) -> str:
    problems = getattr(err, "problems", None)
    if problems:
        return "invalid config: " + "; ".join(str(p) for p in problems if not getattr(p, "warning", False))
    return str(err)


def execute(
    name: str,
    load: Callable[[], Optional[dict[str, Any]]],
    work: Work,
    *,
    cloud: Any = None,
    directory: Union[str, Path, None] = None,
    root: Union[str, Path, None] = None,
    runner: Optional[Runner] = None,
) -> dict[str, Any]:
    """Load the section, run WORK on it and record the outcome. Returns the status record.

    An absent section is "skipped", unless this instance already has a real record of that
    handler (the part-handler ran, the config module finds no section in cloud-config): then the
    record is left as it is. An earlier record that cannot be read as one counts as none.
    A dry run (VFARM_DRY_RUN, or a dry RUNNER) records to NAME.dry-run.json: the real record stays.
    """
    iid = instance_id(cloud)
    dry_run = runner.dry_run if runner is not None else env_flag("VFARM_DRY_RUN")
    with record_mod.Record(name, directory=directory, instance_id=iid, dry_run=dry_run) as rec:
        try:
            section = load()
        except Exception as err:  # noqa: BLE001 - ConfigError, StepError, anything bad in the input
            rec.start()
            rec.finish("failed", _config_error_text(err))
            return rec.data
        if section is None:
            earlier = record_mod.read_status(name, rec.directory)
            if earlier and earlier.get("instance_id") == iid and earlier.get("status") != "skipped":
                rec.logger.info("%s: no %s section here; keeping the record of the earlier run (%s)", name, name, earlier.get("status"))
                return earlier
            rec.finish("skipped", f"no {name} section in the config: nothing to do")
            return rec.data
        rec.start()
        run = runner or Runner(rec.logger, dry_run=dry_run)
        run.logger = rec.logger  # every command lands in the handler's own log
        context = Context(run, rec, system_root(root))
        try:
            changed = work(section, context)
        except VfarmError as err:
            rec.finish("failed", str(err))
        except Exception as err:  # noqa: BLE001 - recorded, never lost in a cloud-init WARNING
            # Redacted here, not only by the log's formatter: the record also reaches cloud-init's handlers.
            rec.logger.error("%s: unexpected error\n%s", name, redact(traceback.format_exc().rstrip()))
            rec.finish("failed", f"internal error: {type(err).__name__}: {redact(str(err))}")
        else:
            rec.finish("ok", "dry run: nothing changed" if run.dry_run else "", changed=changed and not run.dry_run)
        return rec.data


def raise_if_failed(data: dict[str, Any], directory: Union[str, Path, None] = None) -> None:
    if data.get("status") == "failed":
        log = log_dir(directory) / f"{data.get('handler')}.log"
        raise HandlerFailed(f"vfarm {data.get('handler')} failed: {data.get('reason')} (details in {log})")


def config_module(name: str, work: Work) -> Callable[..., None]:
    """A `handle(*args, **kwargs)` for cloud-init 22.4 and 25.1 running WORK on cfg[NAME]."""

    def handle(*args: Any, **kwargs: Any) -> None:
        module_name, cfg, cloud = handle_arguments(args, kwargs)
        raw = cfg.get(name)
        source = f"cloud-config ({module_name or name})"
        data = execute(name, lambda: None if raw is None else validate(name, raw, source), work, cloud=cloud)
        raise_if_failed(data)

    handle.__doc__ = f"cloud-init config module entry point: runs vfarm {name} on the `{name}:` key of the cloud-config."
    return handle
