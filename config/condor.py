"""The condor section as data: checks, the token, and the text of 50-vfarm.conf (pure, no I/O
except reading a token file for `vfarm build`)."""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional, Union

from ..files import CONDOR_VERDICT_FILE, read_bounded
from ..textsafe import UnsafeValue, refuse_control
from .findings import Finding
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


def ends_in_backslash(value: Any) -> bool:
    """HTCondor joins the next line to a line ending in a backslash (blanks after it too)."""
    return isinstance(value, str) and value.rstrip(" \t").endswith("\\")


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
        retirement_time=int(parse_seconds(merged["retirement-time"])),
        start=merged["start"],
        attributes=tuple(sorted(merged.get("attributes", {}).items())),
        config=tuple(merged.get("config", {}).items()),
        join_timeout=int(parse_seconds(merged["join-timeout"])),
        install=bool(merged.get("install", False)),
        version=merged.get("version"),
        protect_metadata=bool(merged["protect-metadata"]),
    )


def check(section: dict[str, Any]) -> list[Finding]:
    """Semantic checks beyond the schema, on a schema-valid section."""
    findings = []
    problem = address_problem(section["central-manager"])
    if problem:
        findings.append(Finding(("central-manager",), problem))
    values: list[tuple[tuple[str, ...], Any]] = [((key,), section[key]) for key in ("start", "execute") if key in section]
    values += [((group, name), value) for group in ("config", "attributes") for name, value in section.get(group, {}).items()]
    for path, value in values:
        if ends_in_backslash(value):
            findings.append(Finding(path, f"{'.'.join(path)}: a value ending in a backslash joins the next line of HTCondor's config to it"))
    if "token" in section and "token-file" in section:
        findings.append(Finding(("token-file",), "give token or token-file, not both", at_key=True))
    elif "token" not in section and "token-file" not in section:
        findings.append(Finding((), "a pool token is needed: add token-file: PATH (or token:)", at_key=True))
    for key, longest in MAX_DURATION.items():
        if key not in section:
            continue
        try:
            seconds = parse_seconds(section[key])
        except ValueError:
            seconds = float("inf")
        if seconds <= 0:
            findings.append(Finding((key,), f"{key} must be more than 0 seconds"))
        elif seconds > longest:
            findings.append(Finding((key,), f"{key} must be at most {longest} seconds ({longest // 86400} day{'s' if longest > 86400 else ''})"))
    for name in VFARM_ATTRIBUTES:
        if name in section.get("attributes", {}):
            findings.append(Finding(("attributes", name), f"{name} is set by vfarm ({', '.join(VFARM_ATTRIBUTES)})", at_key=True))
    return findings


def token_file_path(section: dict[str, Any], base_dir: Path) -> Path:
    return (base_dir / section["token-file"]).expanduser()


def check_files(section: dict[str, Any], base_dir: Path) -> list[Finding]:
    """Checks that read files named by the section (relative to the config file's folder)."""
    if "token-file" not in section:
        return []
    path = token_file_path(section, base_dir)
    try:
        token = read_bounded(path, TOKEN_FILE_MAX).decode("ascii").strip()
    except (OSError, UnicodeDecodeError) as err:
        reason = err.strerror if isinstance(err, OSError) and err.strerror else "not ASCII text"
        return [Finding(("token-file",), f"cannot read token file {path}: {reason}")]
    if not TOKEN.match(token):
        return [Finding(("token-file",), f"{path} does not hold an IDTOKEN (three base64url parts joined by dots)")]
    return []


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


def _execute(path: str) -> str:
    """EXECUTE is created under its literal name: a macro in it would name another folder."""
    raw_value("execute", path)
    if "$" in path or path != path.strip() or not path.startswith("/"):
        raise UnsafeValue("execute must be an absolute path without $ or blanks at either end")
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
    check writes the verdict before it has the condor unit reload."""
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
    lines += [
        f"EXECUTE = {_execute(spec.execute)}",
        f"MAXJOBRETIREMENTTIME = {int(spec.retirement_time)}",
        f"START = {raw_value('start', spec.start)}",
    ]
    lines += [f"{_attribute_name(name)} = {classad_literal(value, f'attribute {name}')}" for name, value in attributes]
    names = " ".join(name for name, _ in attributes)
    lines += [f"STARTD_ATTRS = $(STARTD_ATTRS) {names}", f"MASTER_ATTRS = $(MASTER_ATTRS) {INSTANCE_ATTRIBUTE}"]
    lines += [f"{_knob_name(name, 'config knob')} = {_config_value(name, value)}" for name, value in spec.config]
    lines.append(f"include ifexist : {CONDOR_VERDICT_FILE}")
    return "\n".join(lines) + "\n"
