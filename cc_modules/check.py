"""The final check: after cloud-init has finished, did everything that was sent actually work?

discover -> plan -> apply, like every vfarm module:
- discover (`discover`): read what the boot left behind, never trusting our own handlers alone:
  the status records of the handlers (/var/log/vfarm/NAME.status.json), cloud-init's
  /run/cloud-init/status.json and result.json (22.4 and 25.1 formats), the RAW user-data (which
  `text/<section>-config` parts were sent: those handlers are expected; the `check` settings),
  and cloud-init.log of this boot (parts that no handler took); for a record that lists
  `mounts` (what its handler set up: localfs's volumes), what of them this boot has, read from
  /proc/self/mountinfo and /proc/swaps and compared by device number.
- plan (`plan`): a pure function facts + settings -> summary with the decision (power off or
  not, and why). Absence of a success record is a failure; so is a handler's success whose
  mounts are not in place at this boot (status "missing": the check runs at every boot, the
  handler once per instance, and EC2 blanks the instance store on a stop and start).
- apply (`apply`): write /var/log/vfarm/summary.json and summary.log atomically, sync, say the
  verdict on the console, and power off through the one command runner when configured.

The settings come from the raw user-data, not from anything cloud-init processed: when an
`#include` fails, cloud-init consumes no part at all, and the check must still power off. With
no readable settings the default is to power off on failure.

Runs as `python3 -m vfarm.cc_modules.check` (or bundled into one file by the builder), e.g. as
a `power_state` condition, and detached through `cc_vfarm_check` (the baked config module, and on
later boots the embed and include parts that carry the check: power_state runs once per instance). As a condition it
exits HANDLED only when it ran to its end; the condition turns any other exit (a script that
could not even start) into a power-off.
"""

from __future__ import annotations

import argparse
import email
import email.message
import gzip
import json
import os
import re
import stat
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional, Union

from ..display import shown
from ..files import CHECK_HANDLED as HANDLED
from ..files import CHECK_SCRIPT, CONDOR_VERDICT_FILE, atomic_write, on_top, system_root, under, unescape_octal
from ..files import log_dir as records_folder
from ..redaction import redact, redact_strings

try:  # the version of the package; a bundled copy may carry it elsewhere
    from .. import __version__ as VFARM_VERSION
except ImportError:  # pragma: no cover - bundled without the root package
    VFARM_VERSION = "unknown"

ACTIONS = ("poweroff", "halt", "none")
# cloud-init's stages in the order they run; 22.4 also lists "modules-init", which never runs.
STAGES = ("init-local", "init", "modules-init", "modules-config", "modules-final")
SECTION_TYPE = re.compile(r"^text/([a-z][a-z0-9_-]*)-config$")
# Types of the form text/X-config that belong to cloud-init itself, not to a vfarm section.
NOT_SECTIONS = {"cloud"}
# The check reads its own section from the raw user-data: no handler is expected for it.
SELF = "check"
UNHANDLED = re.compile(r"Unhandled (unknown content-type|non-multipart) \(([^)]*)\) userdata: (.*)$")
BOOT_MARKERS = ("running 'init-local'", "running 'init'")
DEFAULT_TIMEOUT_MINUTES = 30
KEYS = ("on-failure", "delay", "degraded-is-failure", "message", "timeout")
# The one machine-readable line the check writes to the console (the admin side reads it from the
# cloud's console output): this prefix, then one JSON object of printable ASCII.
VERDICT_PREFIX = "vfarm-verdict: "
VERDICT_VERSION = 1
VERDICT_MAX_FAILED = 8  # failed handlers named in the line; the rest only counted
VERDICT_MAX_TEXT = 240  # characters of each reason in the line
# A record's `mounts`: [device, mount point], or [device, SWAP] for a swap device.
SWAP = "swap"
# The handlers whose records list `mounts`: an ok one without the key was written by an older vfarm.
LISTS_MOUNTS = ("localfs",)

Runner = Callable[[list[str]], Any]


# --- where things are ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Paths:
    """Every file the check reads or writes, under ROOT (/ on an instance, a temp dir in tests)."""

    root: Path = Path("/")

    def _p(self, path: str) -> Path:
        return under(self.root, path)

    @property
    def log_dir(self) -> Path:
        return records_folder(root=self.root)

    @property
    def run_dir(self) -> Path:
        return self._p("/run/cloud-init")

    @property
    def userdata(self) -> Path:
        return self._p("/var/lib/cloud/instance/user-data.txt")

    @property
    def cloud_init_log(self) -> Path:
        return self._p("/var/log/cloud-init.log")

    @property
    def instance_id_files(self) -> tuple[Path, ...]:
        return (self._p("/run/cloud-init/.instance-id"), self._p("/var/lib/cloud/data/instance-id"))

    @property
    def proc(self) -> Path:
        return self._p("/proc")

    @property
    def console(self) -> Path:
        return self._p("/dev/console")

    @property
    def condor_config(self) -> Path:
        return self._p("/etc/condor/config.d/50-vfarm.conf")

    @property
    def condor_verdict(self) -> Path:
        return self._p(CONDOR_VERDICT_FILE)

    @property
    def script(self) -> Path:
        return self._p(CHECK_SCRIPT)


# --- settings -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Settings:
    on_failure: str = "poweroff"
    delay: Union[str, int] = "now"
    degraded_is_failure: bool = False
    message: Optional[str] = None
    timeout: int = DEFAULT_TIMEOUT_MINUTES  # minutes to wait for cloud-init to finish
    source: str = "default"  # where they came from: "default" or "user-data"
    problem: Optional[str] = None  # why the user-data's settings were not used

    def as_dict(self) -> dict[str, Any]:
        return {
            "on-failure": self.on_failure,
            "delay": self.delay,
            "degraded-is-failure": self.degraded_is_failure,
            "message": self.message,
            "timeout": self.timeout,
            "source": self.source,
            "problem": self.problem,
        }


def settings_from_section(section: Any) -> Settings:
    """The `check:` section as Settings; anything invalid gives the safe defaults (power off),
    with the reason kept, because a typo must never disable the check."""
    if section is None:
        return Settings(source="user-data")
    if isinstance(section, dict) and set(section) == {SELF} and isinstance(section[SELF], dict):
        section = section[SELF]  # the part may carry `check:` itself around the settings
    if isinstance(section, dict):  # `delay: 10.0` is 10 minutes, as the schema (jsonschema: an integer) accepted it
        section = {k: int(v) if k in ("delay", "timeout") and isinstance(v, float) and v.is_integer() else v for k, v in section.items()}
    problems = _check_section(section)
    if problems:
        return Settings(problem="; ".join(problems) + ": using the defaults (power off on failure)")
    return Settings(
        on_failure=section.get("on-failure", "poweroff"),
        delay=section.get("delay", "now"),
        degraded_is_failure=section.get("degraded-is-failure", False),
        message=section.get("message"),
        timeout=section.get("timeout", DEFAULT_TIMEOUT_MINUTES),
        source="user-data",
    )


def _check_section(section: Any) -> list[str]:
    """By hand, not with jsonschema: the check is shipped inside the user-data, every byte counts,
    and the admin side validated the section against schemas/check.schema.json already."""
    if not isinstance(section, dict):
        return [f"check settings are {type(section).__name__}, not a mapping"]
    problems = [f"check settings: unknown key {key!r}" for key in section if key not in KEYS]
    if section.get("on-failure", "poweroff") not in ACTIONS:
        problems.append(f"check settings: on-failure must be one of {', '.join(ACTIONS)}")
    delay = section.get("delay", "now")
    if delay != "now" and not (isinstance(delay, int) and not isinstance(delay, bool) and 0 <= delay <= 1440):
        problems.append('check settings: delay must be "now" or minutes (0-1440)')
    timeout = section.get("timeout", DEFAULT_TIMEOUT_MINUTES)
    if not (isinstance(timeout, int) and not isinstance(timeout, bool) and 1 <= timeout <= 1440):
        problems.append("check settings: timeout must be minutes (1-1440)")
    if not isinstance(section.get("degraded-is-failure", False), bool):
        problems.append("check settings: degraded-is-failure must be true or false")
    if not isinstance(section.get("message", ""), str):
        problems.append("check settings: message must be text")
    return problems


# --- discover -----------------------------------------------------------------------------------


@dataclass
class UserData:
    """What the raw user-data says about this boot."""

    present: bool = False
    sections: list[str] = field(default_factory=list)  # text/<section>-config parts, in order
    types: list[str] = field(default_factory=list)  # every part's content type, in order
    includes: list[str] = field(default_factory=list)  # #include URLs
    check_section: Any = None  # the parsed text/check-config payload, if any
    check_problem: Optional[str] = None
    problem: Optional[str] = None  # unreadable, not parseable

    def as_dict(self) -> dict[str, Any]:
        return {"present": self.present, "sections": self.sections, "types": self.types, "includes": self.includes, "problem": self.problem}


def parse_userdata(raw: bytes) -> UserData:
    """Sections sent, part types and include URLs of a raw user-data blob (gzip or not, MIME or
    not), read the way cloud-init reads it (whole-payload gzip first, MIME by its header)."""
    found = UserData(present=True)
    if raw[:2] == b"\x1f\x8b":
        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError) as err:
            found.problem = f"user-data looks gzip-compressed but does not decompress: {err}"
            return found
    if b"mime-version:" in raw[:4096].lower():
        message = email.message_from_bytes(raw)
        for part in message.walk():
            if part.is_multipart():
                continue
            payload = part.get_payload(decode=True)
            _note_part(found, part.get_content_type(), payload if isinstance(payload, bytes) else b"")
    elif raw.strip():
        _note_part(found, "text/x-not-multipart", raw)
    return found


def _note_part(found: UserData, ctype: str, payload: bytes) -> None:
    found.types.append(ctype)
    text = payload.decode("utf-8", errors="replace")
    first = text.lstrip().split("\n", 1)[0].strip().lower()
    if ctype in ("text/x-include-url", "text/x-include-once-url") or first.startswith("#include"):
        for line in text.splitlines():
            line = line.strip()
            if line and not line.startswith("#"):
                found.includes.append(redact(line))  # a URL may carry its user:password
        return
    match = SECTION_TYPE.match(ctype)
    if not match or match.group(1) in NOT_SECTIONS:
        return
    name = match.group(1)
    if name not in found.sections:
        found.sections.append(name)
    if name == SELF:
        try:
            import yaml

            found.check_section = yaml.safe_load(text)
        except Exception as err:  # any YAML problem: the defaults apply, and we say why
            found.check_problem = f"check settings do not parse: {str(err).splitlines()[0]}: using the defaults (power off on failure)"


def read_json(path: Path) -> tuple[Optional[Any], Optional[str]]:
    """(document, None), (None, None) when absent, or (None, why) when unreadable."""
    try:
        return json.loads(path.read_text(encoding="utf-8")), None
    except FileNotFoundError:
        return None, None
    except (OSError, ValueError) as err:
        return None, f"{path}: {err}"


def boot_log_lines(text: str) -> list[str]:
    """The lines of cloud-init.log written during this boot (the log accumulates across boots)."""
    lines = text.splitlines()
    for marker in BOOT_MARKERS:
        starts = [i for i, line in enumerate(lines) if marker in line]
        if starts:
            return lines[starts[-1] :]
    return lines


def unhandled_parts(lines: Sequence[str]) -> list[dict[str, str]]:
    """Parts cloud-init walked with no handler for their type (its WARNING lines)."""
    found: list[dict[str, str]] = []
    for line in lines:
        match = UNHANDLED.search(line)
        if match:
            entry = {"content_type": match.group(2), "start": redact(match.group(3).strip())}
            if entry not in found:
                found.append(entry)
    return found


def _mounts(record: Any) -> list[list[str]]:
    """What RECORD's handler set up that every boot must have: its `mounts`, each [device, mount
    point or SWAP]; an item of another shape is none."""
    items = record.get("mounts") if isinstance(record, dict) else None
    return [i for i in items if isinstance(i, list) and len(i) == 2 and all(isinstance(s, str) for s in i)] if isinstance(items, list) else []


def device_number(path: Path) -> Optional[str]:
    """"MAJOR:MINOR" of the block device at PATH, symlinks followed (/dev/VG/LV, /dev/mapper/VG-LV
    and /dev/dm-N are one device), as mountinfo writes it; None when there is none."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return f"{os.major(st.st_rdev)}:{os.minor(st.st_rdev)}" if stat.S_ISBLK(st.st_mode) else None


def _proc_rows(path: Path, problems: list[str]) -> list[list[str]]:
    """The lines of a /proc table split at blanks, each path field with its \\ooo read back."""
    try:
        text = path.read_text(encoding="utf-8", errors="surrogateescape")
    except OSError as err:
        problems.append(f"{path}: {err}")
        return []
    return [[unescape_octal(f) for f in line.split()] for line in text.splitlines()]


def discover(paths: Paths) -> dict[str, Any]:
    """Everything the plan needs, as plain data (what a test can also write by hand)."""
    facts: dict[str, Any] = {"read_problems": []}
    problems: list[str] = facts["read_problems"]

    records: dict[str, Any] = {}
    if paths.log_dir.is_dir():
        for path in sorted(paths.log_dir.glob("*.status.json")):
            name = path.name[: -len(".status.json")]
            doc, why = read_json(path)
            records[name] = doc if isinstance(doc, dict) else {"status": "unreadable", "reason": why or "not a JSON object"}
    facts["records"] = records

    wanted = {device for record in records.values() for device, _ in _mounts(record)}
    if wanted:  # what this boot has of it, by device number: any name of a device counts
        facts["devices"] = {device: device_number(under(paths.root, device)) for device in wanted}
        # The mount on top of each point (files.on_top): id, parent, MAJOR:MINOR, /, mount point.
        rows = [row for row in _proc_rows(paths.proc / "self/mountinfo", problems) if len(row) > 4]
        facts["mounted"] = on_top([(row[0], row[1], row[4], row[2]) for row in rows])
        facts["swaps"] = [device_number(under(paths.root, row[0])) for row in _proc_rows(paths.proc / "swaps", problems)[1:] if row]

    for name in ("status", "result"):
        doc, why = read_json(paths.run_dir / f"{name}.json")
        facts[name] = doc if isinstance(doc, dict) else None
        if why:
            problems.append(why)

    try:
        userdata = parse_userdata(paths.userdata.read_bytes())
    except FileNotFoundError:
        userdata = UserData()
    except OSError as err:
        userdata = UserData(present=True, problem=f"cannot read {paths.userdata}: {err}")
    facts["userdata"] = userdata.as_dict()
    facts["check_section"] = userdata.check_section
    facts["check_problem"] = userdata.check_problem

    try:
        log_text = paths.cloud_init_log.read_text(encoding="utf-8", errors="replace")
    except OSError:
        log_text = ""
    facts["unhandled"] = unhandled_parts(boot_log_lines(log_text))

    facts["instance_id"] = None
    for path in paths.instance_id_files:
        try:
            facts["instance_id"] = path.read_text(encoding="utf-8").strip() or None
        except OSError:
            continue
        break
    return facts


def settings_of(facts: dict[str, Any]) -> Settings:
    """The check settings the user-data carries (defaults when it carries none or bad ones)."""
    if facts.get("check_problem"):
        return Settings(problem=facts["check_problem"])
    if SELF in facts.get("userdata", {}).get("sections", []):
        return settings_from_section(facts.get("check_section"))
    return Settings()


def cloud_init_finished(paths: Paths) -> bool:
    """result.json is written at the very end of the final stage (and deleted when a boot's
    first stage starts; /run is a tmpfs anyway): its presence means cloud-init is done."""
    return (paths.run_dir / "result.json").exists()


def wait_for_cloud_init(paths: Paths, timeout: float, poll: float = 1.0, sleep: Callable[[float], None] = time.sleep) -> bool:
    """Wait until cloud-init has finished all its stages, at most TIMEOUT seconds."""
    deadline = time.monotonic() + timeout
    while not cloud_init_finished(paths):
        if time.monotonic() >= deadline:
            return False
        sleep(poll)
    return True


# --- plan (pure) --------------------------------------------------------------------------------


def _one_line(text: str) -> str:
    """cloud-init's errors carry whole command outputs (and the URLs it failed to fetch): one
    line each in the summary, secrets hidden."""
    return redact(" ".join(text.replace("\\n", " ").split()))


def _seconds(start: Any, finished: Any) -> Optional[float]:
    if isinstance(start, (int, float)) and isinstance(finished, (int, float)):
        return round(finished - start, 3)
    return None


def _cloud_init(facts: dict[str, Any], waited_out: bool) -> tuple[dict[str, Any], list[str], list[str], list[dict[str, str]]]:
    """cloud-init's own view: stages, errors; (report, problems, recoverable warnings, unhandled)."""
    status = facts.get("status")
    result = facts.get("result")
    problems: list[str] = []
    warnings: list[str] = []
    unhandled: list[dict[str, str]] = []
    stages: list[dict[str, Any]] = []
    v1 = status.get("v1") if isinstance(status, dict) else None
    if not isinstance(v1, dict):
        problems.append("cloud-init left no status.json for this boot: it did not run, or not to its end")
        v1 = {}
    names = [s for s in STAGES if isinstance(v1.get(s), dict)] + sorted(k for k, v in v1.items() if k not in STAGES and isinstance(v, dict) and "errors" in v)
    seen_errors: set[str] = set()
    for name in names:
        stage = v1[name]
        # cloud-init's messages quote what it failed on (an include URL, credentials and all)
        errors = [redact(str(e)) for e in stage.get("errors") or []]
        recoverable = redact_strings(stage.get("recoverable_errors") or {})
        stages.append(
            {
                "stage": name,
                "started": stage.get("start") is not None,
                "finished": stage.get("finished") is not None,
                "seconds": _seconds(stage.get("start"), stage.get("finished")),
                "errors": errors,
                "recoverable_errors": recoverable,
            }
        )
        for error in errors:
            seen_errors.add(error)
            problems.append(f"cloud-init {name}: {_one_line(error)}")
        if stage.get("start") is not None and stage.get("finished") is None:
            problems.append(f"cloud-init {name}: started but never finished")
        if isinstance(recoverable, dict):
            for level in sorted(recoverable):
                for message in recoverable[level] or []:
                    match = UNHANDLED.search(str(message))
                    if match:
                        unhandled.append({"content_type": match.group(2), "start": redact(match.group(3).strip())})
                    else:
                        warnings.append(f"cloud-init {name} {level}: {_one_line(str(message))}")
    v1_result = result.get("v1") if isinstance(result, dict) else None
    result_errors: list[str] = []
    if isinstance(v1_result, dict):
        result_errors = [redact(str(e)) for e in v1_result.get("errors") or []]
        for error in result_errors:
            if error not in seen_errors:
                problems.append(f"cloud-init: {_one_line(error)}")
    elif v1:
        problems.append(
            "cloud-init did not finish: no result.json" + (" after waiting for it" if waited_out else "")
        )
    state = "error" if problems else ("degraded" if warnings or unhandled else "done")
    report = {"state": state, "datasource": v1.get("datasource"), "stages": stages, "result_errors": result_errors}
    return report, problems, warnings, unhandled


def _handler(name: str, record: Optional[dict[str, Any]], expected: bool, instance_id: Optional[str], why_absent: str) -> dict[str, Any]:
    entry: dict[str, Any] = {"name": name, "expected": expected, "status": "never-ran", "reason": why_absent, "seconds": None, "failed": expected}
    if record is None:
        return entry
    other = record.get("instance_id")
    if instance_id and other and other != instance_id:
        entry["reason"] = f"only a status record of another instance ({other}): {why_absent}"
        return entry
    status = record.get("status")
    entry["seconds"] = record.get("seconds")
    reason = redact(str(record.get("reason") or ""))  # a record the pin loader or a foreign handler wrote
    if status == "ok":
        entry.update(status="ok", reason=reason, failed=False)
    elif status == "running":
        started = record.get("started")
        entry.update(status="failed", reason=f"crashed: its record still says running{f' (since {started})' if started else ''}", failed=True)
    elif status == "failed":
        entry.update(status="failed", reason=reason or "failed (no reason recorded)", failed=True)
    elif status == "skipped":
        # A section that was sent and then skipped did not do what the admin asked for.
        entry.update(status="skipped", reason=reason or "skipped", failed=expected)
    else:
        entry.update(status="failed", reason=f"unusable status record ({status!r}): {reason}".rstrip(": "), failed=True)
    return entry


def _missing(record: Any, facts: dict[str, Any]) -> list[str]:
    """What RECORD's handler set up (its `mounts`) that this boot does not have: a mount point
    not mounted from its device, a swap device not active. No wait for them: the boot has waited
    for each device (its unit is before local-fs.target or swap.target, the check after both)."""
    devices, mounted, swaps = facts.get("devices") or {}, facts.get("mounted") or {}, facts.get("swaps") or []
    missing: list[str] = []
    for device, where in _mounts(record):
        number = devices.get(device)
        if not number or (number not in swaps if where == SWAP else mounted.get(where) != number):
            what = f"swap {device} not active" if where == SWAP else f"{where} not mounted from {device}"
            missing.append(what if number else f"{what} (no such device)")
    return missing


def plan(facts: dict[str, Any], settings: Settings, waited_out: bool = False) -> dict[str, Any]:
    """The summary and the decision, from the facts alone (pure: no file, no clock)."""
    userdata = facts.get("userdata") or {}
    records: dict[str, Any] = facts.get("records") or {}
    problems: list[str] = []
    warnings: list[str] = list(facts.get("read_problems") or [])
    if settings.problem:
        warnings.append(settings.problem)
    if userdata.get("problem"):
        problems.append(userdata["problem"])

    cloud_init, ci_problems, ci_warnings, ci_unhandled = _cloud_init(facts, waited_out)

    # Why an expected handler may have left no record: say what the boot tells us.
    init_errors = [e for s in cloud_init["stages"] if s["stage"] == "init" for e in s["errors"]]
    if init_errors:
        why_absent = f"never ran: cloud-init's init stage failed ({init_errors[0]}), so no part of the user-data was consumed"
    elif userdata.get("includes"):
        why_absent = "never ran: no status record (its handler comes from an #include URL: did it arrive?)"
    else:
        why_absent = "never ran: no status record (no handler took its part, or the handler died before recording)"

    unhandled: list[dict[str, str]] = []
    for entry in list(facts.get("unhandled") or []) + ci_unhandled:
        if entry not in unhandled:
            unhandled.append(entry)
    untaken = {u["content_type"] for u in unhandled}

    expected = [s for s in userdata.get("sections") or [] if s != SELF]
    handlers = [
        _handler(
            name,
            records.get(name),
            True,
            facts.get("instance_id"),
            f"never ran: cloud-init had no handler for its text/{name}-config part" if f"text/{name}-config" in untaken else why_absent,
        )
        for name in expected
    ]
    for name in sorted(set(records) - set(expected)):
        handlers.append(_handler(name, records[name], False, facts.get("instance_id"), why_absent))
    for entry in handlers:
        record = records.get(entry["name"])
        missing = _missing(record, facts) if entry["status"] == "ok" else []
        if missing:
            entry.update(status="missing", reason="set up, but not in place at this boot: " + "; ".join(missing), failed=True)
        elif entry["status"] == "ok" and entry["name"] in LISTS_MOUNTS and "mounts" not in (record or {}):
            entry["reason"] = "; ".join(filter(None, (entry["reason"], "volumes not verified: its record (an older vfarm's) lists no mounts")))
        if entry["failed"] or (not entry["expected"] and entry["status"] == "failed"):
            entry["failed"] = True
            problems.append(f"{entry['name']}: {entry['status']}: {entry['reason']}")

    problems += ci_problems
    for entry in unhandled:
        text = f"a part of type {entry['content_type']} was taken by no handler ({entry['start']})"
        if entry["content_type"] == f"text/{SELF}-config":
            warnings.append(text + ": the check read it from the raw user-data itself")
        else:
            problems.append(text)

    if settings.degraded_is_failure:
        problems += [f"{w} (degraded-is-failure)" for w in ci_warnings]
    else:
        warnings += ci_warnings

    if problems:
        result = "failed"
    elif warnings:
        result = "degraded"
    else:
        result = "ok"
    action = settings.on_failure if result == "failed" else "none"
    if result == "failed":
        reason = problems[0] + (f" (and {len(problems) - 1} more)" if len(problems) > 1 else "")
    else:
        ok = sum(1 for h in handlers if h["status"] == "ok")
        reason = f"all {ok} handler(s) ok" + (f", {len(warnings)} warning(s)" if warnings else "")
    return {
        "vfarm_version": VFARM_VERSION,
        "instance_id": facts.get("instance_id"),
        "result": result,
        "handlers": handlers,
        "cloud_init": cloud_init,
        "unhandled_parts": unhandled,
        "userdata": userdata,
        "problems": problems,
        "warnings": warnings,
        "settings": settings.as_dict(),
        "decision": {"action": action, "delay": settings.delay if action != "none" else None, "reason": reason},
    }


def power_argv(action: str, delay: Union[str, int], message: str) -> Optional[list[str]]:
    """The shutdown command for ACTION (what cloud-init's power_state uses too)."""
    if action == "none":
        return None
    when = "now" if delay in ("now", 0) else f"+{int(delay)}"
    # `--`: a message that starts with '-' (check.message: "--- failed ---") is no option to shutdown.
    return ["shutdown", "-P" if action == "poweroff" else "-H", "--", when, message]


def console_line(summary: dict[str, Any], message: Optional[str] = None) -> str:
    """The verdict in one line for the console and shutdown's wall message, terminal-safe."""
    return shown(_verdict(summary, message))


def _verdict(summary: dict[str, Any], message: Optional[str]) -> str:
    decision = summary["decision"]
    if decision["action"] == "none":
        head = f"vfarm check: {summary['result'].upper()}: {decision['reason']}"
        if summary["result"] == "failed":
            head += " (on-failure: none, the instance stays up)"
        return head
    delay = decision["delay"]
    when = "now" if delay in ("now", 0) else f"in {delay} min"
    text = f"vfarm check: FAILED: {decision['reason']}; {decision['action']} {when} (see /var/log/vfarm/summary.log)"
    return f"{message}: {text}" if message else text


def _cut(text: Any) -> str:
    return _one_line(str(text or ""))[:VERDICT_MAX_TEXT]


def verdict_line(summary: dict[str, Any]) -> str:
    """VERDICT_PREFIX and one JSON object in printable ASCII: the result, the decision, and each
    failed handler as [name, status, reason] (secrets hidden, each text one line of at most
    VERDICT_MAX_TEXT characters). Every control character, non-ASCII character and DEL is escaped
    inside its string, so no reason can end the line, start another or hide part of it."""
    decision = summary.get("decision") or {}
    failed = [[_cut(h.get("name")), _cut(h.get("status")), _cut(h.get("reason"))] for h in summary.get("handlers") or [] if h.get("failed")]
    record = {"v": VERDICT_VERSION, "instance": _cut(summary.get("instance_id")), "vfarm": _cut(summary.get("vfarm_version")),
              "result": _cut(summary.get("result")), "action": _cut(decision.get("action")), "reason": _cut(decision.get("reason")),
              "failed": failed[:VERDICT_MAX_FAILED], "more": len(failed[VERDICT_MAX_FAILED:])}
    return VERDICT_PREFIX + json.dumps(record, separators=(",", ":")).replace("\x7f", "\\u007f")


# --- rendering (summary.log and `vfarm summary`) ------------------------------------------------


def _secs(value: Any) -> str:
    return f"{float(value):.1f}" if isinstance(value, (int, float)) else "-"


def render(summary: dict[str, Any]) -> str:
    """The human summary: one table of handlers, then cloud-init, then problems and the verdict.
    Every value in it may come from a hostile summary.json (`vfarm summary`): each is shown
    terminal-safe with its secrets hidden (the tables do so for their cells)."""
    from . import table

    out: list[str] = []
    decision = summary.get("decision") or {}
    result = shown(str(summary.get("result", "?")).upper())
    out.append(f"vfarm final check: {result}   instance {shown(summary.get('instance_id') or '-')}   vfarm {shown(summary.get('vfarm_version', '?'))}")
    if summary.get("generated"):
        out.append(f"written {shown(summary['generated'])}")
    out.append("")
    rows = [
        (h.get("name"), h.get("status"), "yes" if h.get("expected") else "no", _secs(h.get("seconds")), h.get("reason") or "")
        for h in summary.get("handlers") or []
    ]
    if rows:
        out.append(table.render(("HANDLER", "STATUS", "SENT", "SECONDS", "REASON"), rows, right=("SECONDS",)).rstrip("\n"))
    else:
        out.append("no handler was expected and none ran")
    cloud_init = summary.get("cloud_init") or {}
    out.append("")
    stage_rows = [
        (
            s.get("stage"),
            "error" if s.get("errors") else ("not run" if not s.get("started") else ("unfinished" if not s.get("finished") else "ok")),
            _secs(s.get("seconds")),
            _one_line("; ".join(s.get("errors") or []))[:160],
        )
        for s in cloud_init.get("stages") or []
    ]
    out.append(f"cloud-init: {shown(cloud_init.get('state', '?'))}")
    if stage_rows:
        out.append(table.render(("STAGE", "STATUS", "SECONDS", "ERRORS"), stage_rows, right=("SECONDS",)).rstrip("\n"))
    for part in summary.get("unhandled_parts") or []:
        out.append(f"unhandled part: {shown(part.get('content_type'))} {shown(part.get('start'))}")
    for title, items in (("problems", summary.get("problems")), ("warnings", summary.get("warnings"))):
        if items:
            out.append("")
            out.append(f"{title}:")
            out += [f"  - {shown(item)}" for item in items]
    out.append("")
    action = decision.get("action", "none")
    delay = f" (delay {shown(decision.get('delay'))})" if action != "none" else ""
    out.append(f"decision: {shown(action)}{delay}: {shown(decision.get('reason', ''))}")
    return "\n".join(out) + "\n"


# --- apply --------------------------------------------------------------------------------------


def tell(paths: Paths, line: str, raw: bool = False) -> None:
    """To the console (where an admin watching the boot sees it) and to the check's own log.
    RAW: a line already safe to show as it is (the verdict line), written unchanged."""
    line = line if raw else shown(line)
    stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    try:
        paths.log_dir.mkdir(parents=True, exist_ok=True)
        with open(paths.log_dir / "check.log", "a", encoding="utf-8") as log:
            log.write(f"{stamp} {line}\n")
    except OSError:
        pass
    try:
        fd = os.open(paths.console, os.O_WRONLY | os.O_NOCTTY | os.O_APPEND | getattr(os, "O_NONBLOCK", 0))
    except OSError:
        return
    try:
        os.write(fd, (line + "\r\n").encode("utf-8", errors="replace"))
    except OSError:
        pass
    finally:
        os.close(fd)


def tell_condor(paths: Paths, summary: dict[str, Any], run: Optional[Runner] = None) -> bool:
    """On a worker whose condor handler wrote its config: the result (ok, degraded or failed, as
    plan() sets it) as the startd's VfarmVerdict. The startd starts before the check and says
    "pending" until then; the check writes the file 50-vfarm.conf includes and has the condor unit
    reload (SIGHUP: condor_master re-reads its config; no pool authorization needed, unlike
    condor_reconfig; --no-block: the check may run inside cloud-init's final stage)."""
    if not paths.condor_config.is_file():
        return False
    try:
        paths.condor_verdict.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(paths.condor_verdict, f'VfarmVerdict = "{summary["result"]}"\n', 0o644)
    except OSError:
        return False
    (run or default_runner(paths))(["systemctl", "--no-block", "reload", "condor"])
    return True


def default_runner(paths: Paths) -> Runner:
    """The one command runner of the on-instance modules, logging into the check's own log."""
    import logging

    from .runner import Runner as CommandRunner

    logger = logging.getLogger("vfarm.check")
    logger.setLevel(logging.DEBUG)
    if not logger.handlers:
        try:
            paths.log_dir.mkdir(parents=True, exist_ok=True)
            handler: logging.Handler = logging.FileHandler(paths.log_dir / "check.log", encoding="utf-8")
        except OSError:
            handler = logging.NullHandler()
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        logger.addHandler(handler)
    # A failing shutdown is logged by the runner; the summary is already written.
    return lambda argv: CommandRunner(logger).run(argv, check=False)


def apply(paths: Paths, summary: dict[str, Any], settings: Settings, run: Optional[Runner] = None) -> Optional[list[str]]:
    """Write the summary, then act on the decision; returns the power argv that was run, if any."""
    summary = dict(summary, generated=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))
    # Atomic and fsynced (files.atomic_write): the summary survives the power-off that follows.
    atomic_write(paths.log_dir / "summary.json", json.dumps(summary, indent=2, sort_keys=True) + "\n", 0o644)
    atomic_write(paths.log_dir / "summary.log", render(summary), 0o644)
    os.sync()
    line = console_line(summary, settings.message)
    tell(paths, line)
    tell(paths, verdict_line(summary), raw=True)
    tell_condor(paths, summary, run)
    decision = summary["decision"]
    argv = power_argv(decision["action"], decision["delay"] or "now", line[:400])
    if argv is None:
        return None
    (run or default_runner(paths))(argv)
    return argv


def run_check(paths: Paths, wait: Optional[float] = None, run: Optional[Runner] = None, act: bool = True) -> dict[str, Any]:
    """discover -> plan -> apply, after waiting for cloud-init to finish (WAIT seconds, or the
    configured timeout)."""
    settings = settings_of(discover(paths))
    waited_out = not wait_for_cloud_init(paths, settings.timeout * 60 if wait is None else wait)
    facts = discover(paths)  # again: cloud-init may have written more while we waited
    summary = plan(facts, settings, waited_out)
    if act:
        apply(paths, summary, settings, run)
    return summary


def run_guarded(paths: Paths, wait: Optional[float] = None, run: Optional[Runner] = None, act: bool = True) -> Optional[dict[str, Any]]:
    """run_check, but a check that breaks still says so and, when acting, powers off: a check
    that cannot run cannot vouch for the boot. Returns None when it broke."""
    try:
        return run_check(paths, wait, run, act)
    except Exception as err:
        line = f"vfarm check: ERROR: the check itself failed ({err!r}); poweroff now"
        tell(paths, line)
        tell(paths, verdict_line({"result": "error", "decision": {"action": "poweroff" if act else "none", "reason": line}}), raw=True)
        if act:
            argv = power_argv("poweroff", "now", line[:400])
            if argv:
                (run or default_runner(paths))(argv)
        return None


def install(source_file: str, root: Optional[str] = None) -> Path:
    """Copy SOURCE_FILE (a bundle that runs this module's main() as a script) to the check's
    place under ROOT (default $VFARM_ROOT or /), readable by root only. The embed library part
    does this when cloud-init registers it, so the check travels once with the handlers."""
    target = Paths(system_root(root)).script
    target.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(target, Path(source_file).read_bytes(), 0o700)
    return target


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="vfarm-check", description="vfarm's final check: summary of the boot, power off on failure.")
    parser.add_argument("--root", default="/", help="the file system to check (tests)")
    parser.add_argument("--wait", type=float, metavar="SECONDS", help="wait this long for cloud-init to finish (default: the check section's timeout)")
    parser.add_argument("--dry-run", action="store_true", help="print the summary and the decision; write and power off nothing")
    parser.add_argument(
        "--power-state-condition",
        action="store_true",
        help=f"run as cloud-init's power_state condition: act here, then exit {HANDLED} (the condition: change nothing)",
    )
    args = parser.parse_args(argv)
    summary = run_guarded(Paths(Path(args.root)), args.wait, act=not args.dry_run)
    if args.power_state_condition:
        # A check that broke has tried to power off itself; not HANDLED: cloud-init does it too.
        return HANDLED if summary is not None else 1
    if summary is None:
        return 1
    if args.dry_run:
        print(render(summary), end="")
    return 0 if summary["result"] != "failed" else 1


if __name__ == "__main__":
    sys.exit(main())
