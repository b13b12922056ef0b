"""The condor section as data: checks, the token, and the text of 50-vfarm.conf (pure, no I/O
except reading a token file for `vfarm build`)."""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, Callable, Optional, Union

from ..files import CONDOR_VERDICT_FILE, normal_path, read_bounded, system_folder
from ..textsafe import UnsafeValue, refuse_control
from .findings import Finding
from .findings import Path as FindingPath
from .sizes import MAX_SECONDS, parse_seconds

try:  # the version of the package; a bundled copy may carry it elsewhere
    from .. import __version__ as VFARM_VERSION
except ImportError:  # pragma: no cover - bundled without the root package
    VFARM_VERSION = "unknown"

DEFAULT_PORT = 9618
DEFAULTS: dict[str, Any] = {
    "ccb": True,
    "slots": "partitionable",
    "execute": "/var/lib/condor/execute",
    "retirement-time": 3600,
    "start": "TRUE",
    "join-timeout": 300,
    "protect-metadata": True,
}
CONFIG_FILE = "/etc/condor/config.d/50-vfarm.conf"
TOKEN_FILE = "/etc/condor/tokens.d/vfarm-pool.token"
INSTANCE_ATTRIBUTE = "VfarmInstanceId"  # the scaler maps workers to instances by it
# What the startd advertises of vfarm itself: `condor_status -af VfarmVerdict VfarmVersion`.
VERDICT_ATTRIBUTE = "VfarmVerdict"  # the final check's result: pending until it ran, then ok/degraded/failed
# The startd takes jobs only once the final check has found the worker fit ("ok" or "degraded"):
# not while it is "pending" (condor starts before the check), nor once "failed" (until the power-off).
VERDICT_GATE = f'(MY.{VERDICT_ATTRIBUTE} =?= "ok" || MY.{VERDICT_ATTRIBUTE} =?= "degraded")'
VERSION_ATTRIBUTE = "VfarmVersion"
VFARM_ATTRIBUTES = (INSTANCE_ATTRIBUTE, VERDICT_ATTRIBUTE, VERSION_ATTRIBUTE)
TOKEN_FILE_MAX = 16 * 1024  # an IDTOKEN is a few hundred bytes
TOKEN = re.compile(r"^[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+$")
_IPV4 = re.compile(r"^[0-9.]+$")
# What render() writes, checked again there (see render's docstring).
KNOB_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_.]*")
ATTRIBUTE_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
# Words that open a statement in HTCondor's config language (`if`, `include : FILE`, ...).
CONFIG_KEYWORDS = frozenset({"if", "elif", "else", "endif", "include", "use", "error", "warning"})
# Words a ClassAd expression reads as literals or operators, not as attribute names.
CLASSAD_KEYWORDS = frozenset({"true", "false", "undefined", "error", "is", "isnt", "parent"})
_HOST = re.compile(r"[A-Za-z0-9.-]+|[0-9A-Fa-f:.]+")
MAX_HOST_NAME = 253  # RFC 1123 (the schema keeps each label to 63)
# The longest each duration may be: the join is waited for during boot (a day at most, like the
# final check's timeout); a retirement longer than a year is no drain.
MAX_DURATION = {"join-timeout": 86400, "retirement-time": MAX_SECONDS}
# A `NAME = VALUE` line of render's text: the names vfarm writes itself (see written_names).
_SETTING = re.compile(r"^([A-Za-z_][A-Za-z0-9_.]*) = ", re.MULTILINE)
# Where a site sets what vfarm writes itself, named when `attributes` or `config` tries to set it.
# Only a hint: which names are vfarm's comes from render's own text (written_names).
VFARM_KNOB_KEYS = {
    "CONDOR_HOST": "central-manager:", "COLLECTOR_HOST": "central-manager:", "CCB_ADDRESS": "ccb:",
    "NUM_SLOTS": "slots:", "NUM_SLOTS_TYPE_1": "slots:", "SLOT_TYPE_1": "slots:", "SLOT_TYPE_1_PARTITIONABLE": "slots:",
    "EXECUTE": "execute:", "MAXJOBRETIREMENTTIME": "retirement-time:", "START": "start:",
    "STARTD_ATTRS": "attributes: (vfarm adds each one to it)",
}


@dataclass(frozen=True)
class CondorSpec:
    host: str
    port: int
    token: Optional[str]
    ccb: bool
    slots: str
    execute: str
    retirement_time: int
    start: str
    attributes: tuple[tuple[str, Union[str, int, float, bool]], ...]
    config: tuple[tuple[str, Union[str, int, float, bool]], ...]
    join_timeout: int
    install: bool
    version: Optional[str]
    protect_metadata: bool = True  # only root reaches the metadata service (metadata_guard)

    @property
    def collector(self) -> str:
        """host:port, an IPv6 address in brackets ([fd00::5]:9618)."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"


def split_host_port(value: str) -> tuple[str, Optional[int]]:
    """`cm:9618` -> (cm, 9618); `[::1]:9618` -> (::1, 9618); a bare IPv6 address has no port."""
    if value.startswith("["):
        host, _, rest = value[1:].partition("]")
        return host, int(rest[1:]) if rest.startswith(":") else None
    if value.count(":") > 1:
        return value, None
    host, _, port = value.partition(":")
    return host, int(port) if port else None


def host_problem(host: str, bracketed: bool = False) -> Optional[str]:
    """What is wrong with HOST as a collector host (an RFC 1123 name or an IP address), or None.
    The text's shape (labels of letters, digits and inner hyphens) is the schema's to check."""
    import ipaddress  # only when checking: it is no small import, and handlers start cold

    if ":" in host or bracketed:
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            return f"{host} is not an IPv6 address"
        return None
    if _IPV4.match(host):
        try:
            ipaddress.IPv4Address(host)
        except ValueError:
            return f"{host} is not an IPv4 address"
        return None
    if len(host) > MAX_HOST_NAME:
        return f"the host name is longer than {MAX_HOST_NAME} characters"
    return None


def address_problem(value: str) -> Optional[str]:
    """What is wrong with VALUE as `host[:port]` of a collector, or None. An IPv6 address goes in
    brackets: in `fe80::1:9618` nobody can tell the last group from a port."""
    host, port = split_host_port(value)
    if port is not None and not 1 <= port <= 65535:
        return f"port {port} is out of range (1-65535)"
    if not value.startswith("[") and ":" in host:
        return f"write an IPv6 address in brackets, [{host}] or [{host}]:{DEFAULT_PORT}"
    return host_problem(host, bracketed=value.startswith("["))


def whole_seconds(value: Union[int, str]) -> int:
    """A duration of the section in whole seconds, rounded up: a fraction of a second is a second,
    so a duration more than 0 stays more than 0 (MAXJOBRETIREMENTTIME = 0 would have a graceful
    drain evict running jobs). Rounded to microseconds before, so that float noise is no second
    more ("0.1m" is 6 s, not 7). Raises ValueError as parse_seconds does."""
    seconds = parse_seconds(value)
    whole = math.ceil(round(seconds, 6))
    return max(whole, 1) if seconds > 0 else whole


def parse(section: dict[str, Any]) -> CondorSpec:
    """Read a schema-valid, checked section (with `token`, as it travels to the instance)."""
    merged = {**DEFAULTS, **section}
    host, port = split_host_port(section["central-manager"])
    return CondorSpec(
        host=host,
        port=port or DEFAULT_PORT,
        token=section.get("token"),
        ccb=bool(merged["ccb"]),
        slots=merged["slots"],
        execute=merged["execute"],
        retirement_time=whole_seconds(merged["retirement-time"]),
        start=merged["start"],
        attributes=tuple(sorted(merged.get("attributes", {}).items())),
        config=tuple(merged.get("config", {}).items()),
        join_timeout=whole_seconds(merged["join-timeout"]),
        install=bool(merged.get("install", False)),
        version=merged.get("version"),
        protect_metadata=bool(merged["protect-metadata"]),
    )


def check(section: dict[str, Any]) -> list[Finding]:
    """Semantic checks beyond the schema, on a schema-valid section (or what is left of it when
    some keys failed the schema). Whatever passes, render writes: its own rules on every name and
    value (_render_refusals), and no name vfarm writes itself (_vfarm_names)."""
    findings = []
    problem = address_problem(section["central-manager"]) if "central-manager" in section else None
    if problem:
        findings.append(Finding(("central-manager",), problem))
    findings += _render_refusals(section, check_host=problem is None)
    if "token" in section and "token-file" in section:
        findings.append(Finding(("token-file",), "give token or token-file, not both", at_key=True))
    elif "token" not in section and "token-file" not in section:
        findings.append(Finding((), "a pool token is needed: add token-file: PATH (or token:)", at_key=True))
    for key, longest in MAX_DURATION.items():
        if key not in section:
            continue
        try:
            seconds: float = whole_seconds(section[key])  # as parse reads it
        except ValueError:
            seconds = math.inf
        if seconds <= 0:
            findings.append(Finding((key,), f"{key} must be more than 0 seconds"))
        elif seconds > longest:
            findings.append(Finding((key,), f"{key} must be at most {longest} seconds ({longest // 86400} day{'s' if longest > 86400 else ''})"))
    return findings + _vfarm_names(section)


def _render_refusals(section: dict[str, Any], check_host: bool = True) -> list[Finding]:
    """render's own rules (the same functions render calls, no copies) on the section's names and
    values, each refusal a finding at the offending key or value. An attribute's string value is
    also held to raw_value, though classad_literal would quote a final backslash safely: a value
    ending in a backslash is refused alike everywhere in the section."""
    rules: list[tuple[FindingPath, bool, Callable[[], object]]] = []
    if check_host and "central-manager" in section:
        rules.append((("central-manager",), False, partial(_host, split_host_port(section["central-manager"])[0])))
    if "execute" in section:
        rules.append((("execute",), False, partial(_execute, section["execute"])))
    if "start" in section:
        rules.append((("start",), False, partial(_start, section["start"])))
    for name, value in section.get("attributes", {}).items():
        rules.append((("attributes", name), True, partial(_attribute_name, name)))
        rules.append((("attributes", name), False, partial(classad_literal, value, f"attribute {name}")))
        if isinstance(value, str):
            rules.append((("attributes", name), False, partial(raw_value, f"attribute {name}", value)))
    for name, value in section.get("config", {}).items():
        rules.append((("config", name), True, partial(_knob_name, name, "config knob")))
        rules.append((("config", name), False, partial(_config_value, name, value)))
    findings = []
    refused: set[FindingPath] = set()  # one finding per entry: its name's, else its value's
    for path, at_key, rule in rules:
        if path in refused:
            continue
        try:
            rule()
        except UnsafeValue as err:
            findings.append(Finding(path, str(err), at_key=at_key))
            refused.add(path)
    return findings


def written_names(section: dict[str, Any]) -> dict[str, str]:
    """The names render writes itself for SECTION (its attributes and config left out), keyed by
    their lower case: HTCondor's knob and ClassAd attribute names ignore case. Taken from render's
    own text, so no second list can drift from it. For a section render refuses (already a
    finding), those of the default section."""
    own = {key: value for key, value in section.items() if key not in ("attributes", "config")}
    try:
        text = render(parse(own), "i-0")
    except (KeyError, ValueError):  # UnsafeValue is a ValueError
        text = render(parse({"central-manager": "cm.example.org"}), "i-0")
    return {name.lower(): name for name in _SETTING.findall(text)}


def _vfarm_names(section: dict[str, Any]) -> list[Finding]:
    """`attributes` and `config` may not set a name vfarm writes, in any spelling: their lines come
    after vfarm's (config last of all), and HTCondor keeps the last value of a name; nor with a
    daemon's or local name's prefix (STARTD.START): HTCondor reads PREFIX.NAME before NAME."""
    written = written_names(section)
    findings = []
    for group in ("attributes", "config"):
        for name in section.get(group, {}):
            prefix, _, plain = name.rpartition(".")
            ours = written.get(plain.lower())
            if ours is None:
                continue
            if ours in VFARM_ATTRIBUTES:
                why = f" ({', '.join(VFARM_ATTRIBUTES)})"
            else:
                why = f": use {VFARM_KNOB_KEYS[ours]} instead" if ours in VFARM_KNOB_KEYS else ""
            if prefix:
                spelled = f"{name} sets {ours} for {prefix} (HTCondor reads {prefix}.NAME before NAME), which"
            else:
                spelled = ours if name == ours else f"{name} is {ours} (HTCondor's names ignore case), which"
            findings.append(Finding((group, name), f"{spelled} is set by vfarm{why}", at_key=True))
    return findings


def token_file_path(section: dict[str, Any], base_dir: Path) -> Path:
    return (base_dir / section["token-file"]).expanduser()


def check_files(section: dict[str, Any], base_dir: Path) -> list[Finding]:
    """Checks that read files named by the section (relative to the config file's folder)."""
    if "token-file" not in section:
        return []
    problem = token_file_problem(token_file_path(section, base_dir))
    return [Finding(("token-file",), problem)] if problem else []


def token_file_problem(path: Path) -> Optional[str]:
    """Why the file PATH does not hold an IDTOKEN (None: it does); also the scale section's pool.token-file."""
    try:
        token = read_bounded(path, TOKEN_FILE_MAX).decode("ascii").strip()
    except (OSError, UnicodeDecodeError) as err:
        reason = err.strerror if isinstance(err, OSError) and err.strerror else "not ASCII text"
        return f"cannot read token file {path}: {reason}"
    if not TOKEN.match(token):
        return f"{path} does not hold an IDTOKEN (three base64url parts joined by dots)"
    return None


def for_instance(section: dict[str, Any], base_dir: Path) -> dict[str, Any]:
    """The section as it travels to the instance: the token read in, no local file names."""
    if "token-file" not in section:
        return dict(section)
    sent = {k: v for k, v in section.items() if k != "token-file"}
    sent["token"] = read_bounded(token_file_path(section, base_dir), TOKEN_FILE_MAX).decode("ascii").strip()
    return sent


def redact(section: dict[str, Any]) -> dict[str, Any]:
    """The section safe to print or log."""
    return {k: ("***" if k == "token" else v) for k, v in section.items()}


def _knob_name(name: str, what: str) -> str:
    if not KNOB_NAME.fullmatch(name) or name.lower() in CONFIG_KEYWORDS:
        raise UnsafeValue(f"{what} {name!r} is not an HTCondor knob name (letters, digits, _ and ., not a keyword like include)")
    return name


def _attribute_name(name: str) -> str:
    if not ATTRIBUTE_NAME.fullmatch(name) or name.lower() in CONFIG_KEYWORDS | CLASSAD_KEYWORDS:
        raise UnsafeValue(f"attribute {name!r} is not a ClassAd attribute name (letters, digits, _; not a keyword)")
    return name


def raw_value(what: str, value: str) -> str:
    """VALUE as the right-hand side of `NAME = VALUE`, refused when it would not stay that one
    line: no control character but tab, no backslash at the end (HTCondor joins the next line to
    it, also with blanks after it). `$(...)` stays a macro: START and `config` are HTCondor's
    own syntax. HTCondor drops blanks around the value, as on any line of its config."""
    refuse_control(what, value, allow_tab=True)
    if value.rstrip().endswith("\\"):
        raise UnsafeValue(f"{what} ends in a backslash: HTCondor would join the next line to it")
    return value


def classad_literal(value: Union[str, int, float, bool], what: str = "value") -> str:
    """VALUE as a ClassAd literal on one config line. A string is quoted with `\\` and `\\"`, and
    each `$` becomes the ClassAd escape `\\044`, so HTCondor's config layer sees no macro in it;
    control characters (but tab) are refused, as are non-finite numbers."""
    if isinstance(value, bool):
        return "True" if value else "False"
    if isinstance(value, (int, float)):
        if isinstance(value, float) and not math.isfinite(value):
            raise UnsafeValue(f"{what} is {value}: not a number ClassAds can hold")
        return repr(value)
    refuse_control(what, value, allow_tab=True)
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"').replace("$", "\\044") + '"'


def _config_value(name: str, value: Union[str, int, float, bool]) -> str:
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, float) and not math.isfinite(value):
        raise UnsafeValue(f"config {name} is {value}: not a number HTCondor can read")
    return raw_value(f"config {name}", str(value))


def _host(host: str) -> str:
    if not _HOST.fullmatch(host):
        raise UnsafeValue("central-manager is not a host name or an IP address")
    return host


def _start(value: str) -> str:
    """The START expression as render puts it in brackets before VERDICT_GATE: its own brackets
    must pair up (outside string literals), so that nothing in it closes them and escapes the gate."""
    depth, quoted, escaped = 0, False, False
    for char in raw_value("start", value):
        if quoted:
            quoted, escaped = (char != '"' or escaped), (char == "\\" and not escaped)
        elif char == '"':
            quoted = True
        elif char in "()":
            depth += 1 if char == "(" else -1
            if depth < 0:
                break
    if depth or quoted:
        raise UnsafeValue("start's brackets and quotes must pair up (vfarm adds the final check's verdict to it)")
    return value.strip(" \t")


# Folders whose files are someone's: the startd empties EXECUTE (and sets its mode) when it starts.
DATA_FOLDERS = ("/", "/home", "/root", "/tmp", "/var", "/var/tmp", "/var/lib", "/srv", "/opt", "/mnt", "/media", "/scratch", "/data")


def _execute(path: str) -> str:
    """EXECUTE is created under its literal name: a macro in it would name another folder. Not a
    system folder or a folder of everyone's data: HTCondor's startd removes all in EXECUTE as it starts."""
    raw_value("execute", path)
    if "$" in path or path != path.strip() or not path.startswith("/"):
        raise UnsafeValue("execute must be an absolute path without $ or blanks at either end")
    normal = normal_path(path)
    taken = normal if normal in DATA_FOLDERS else system_folder(normal)
    if taken:
        raise UnsafeValue(f"execute must not be {taken} or a system folder: HTCondor's startd removes everything in it when it starts; "
                          f"name a folder of its own (such as /var/lib/condor/execute)")
    return path


def render(spec: CondorSpec, instance_id: str) -> str:
    """The text of 50-vfarm.conf for this worker, one line per setting.

    HTCondor's config parser reads `NAME = VALUE` a line at a time: a line break in a value starts
    a statement of its own (`include : CMD |` runs CMD as root), a NUL hides the rest of its line
    and the next, and a backslash at the end joins the next line. So every value is checked here
    (raw_value, classad_literal) and names must be plain knob and attribute names; anything else
    raises UnsafeValue, which the handler records as its failure.

    The startd advertises VfarmVersion and VfarmVerdict. It starts before the final check runs, so
    VfarmVerdict is "pending" here; the last line includes (if it exists) the file in which the
    check writes the verdict before it has the condor unit reload. START is the section's `start`
    and VERDICT_GATE: no job starts before the check found the worker fit, nor after it failed."""
    attributes = [(INSTANCE_ATTRIBUTE, instance_id), (VERSION_ATTRIBUTE, VFARM_VERSION), (VERDICT_ATTRIBUTE, "pending"), *spec.attributes]
    lines = [
        "# Written by vfarm (cc_condor) from the condor section of the user-data; changes here are overwritten.",
        "use ROLE: Execute",
        f"CONDOR_HOST = {_host(spec.host)}",
        f"COLLECTOR_HOST = {spec.collector}",
    ]
    if spec.ccb:
        lines.append("CCB_ADDRESS = $(COLLECTOR_HOST)")
    if spec.slots == "partitionable":
        lines += ["NUM_SLOTS = 1", "NUM_SLOTS_TYPE_1 = 1", "SLOT_TYPE_1 = 100%", "SLOT_TYPE_1_PARTITIONABLE = True"]
    start = _start(spec.start)
    lines += [
        f"EXECUTE = {_execute(spec.execute)}",
        f"MAXJOBRETIREMENTTIME = {int(spec.retirement_time)}",
        f"START = ({start}) && {VERDICT_GATE}",
    ]
    lines += [f"{_attribute_name(name)} = {classad_literal(value, f'attribute {name}')}" for name, value in attributes]
    names = " ".join(name for name, _ in attributes)
    lines += [f"STARTD_ATTRS = $(STARTD_ATTRS) {names}", f"MASTER_ATTRS = $(MASTER_ATTRS) {INSTANCE_ATTRIBUTE}"]
    lines += [f"{_knob_name(name, 'config knob')} = {_config_value(name, value)}" for name, value in spec.config]
    lines.append(f"include ifexist : {CONDOR_VERDICT_FILE}")
    return "\n".join(lines) + "\n"
