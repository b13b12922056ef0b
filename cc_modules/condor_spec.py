"""The condor section as data: checks, the token, and the text of 50-vfarm.conf (pure, no I/O
except reading a token file for `vfarm build`)."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional, Union

from .files import read_bounded
from .findings import Finding
from .sizes import parse_seconds

DEFAULT_PORT = 9618
DEFAULTS: dict[str, Any] = {
    "ccb": True,
    "slots": "partitionable",
    "execute": "/var/lib/condor/execute",
    "retirement-time": 3600,
    "start": "TRUE",
    "join-timeout": 300,
}
CONFIG_FILE = "/etc/condor/config.d/50-vfarm.conf"
TOKEN_FILE = "/etc/condor/tokens.d/vfarm-pool.token"
INSTANCE_ATTRIBUTE = "VfarmInstanceId"  # the scaler maps workers to instances by it
TOKEN_FILE_MAX = 16 * 1024  # an IDTOKEN is a few hundred bytes
TOKEN = re.compile(r"^[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+$")
_IPV4 = re.compile(r"^[0-9.]+$")


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

    @property
    def collector(self) -> str:
        return f"{self.host}:{self.port}"


def split_host_port(value: str) -> tuple[str, Optional[int]]:
    if value.startswith("["):
        host, _, rest = value[1:].partition("]")
        return host, int(rest[1:]) if rest.startswith(":") else None
    host, _, port = value.partition(":")
    return host, int(port) if port else None


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
    )


def check(section: dict[str, Any]) -> list[Finding]:
    """Semantic checks beyond the schema, on a schema-valid section."""
    findings = []
    host, port = split_host_port(section["central-manager"])
    if port is not None and not 1 <= port <= 65535:
        findings.append(Finding(("central-manager",), f"port {port} is out of range (1-65535)"))
    if _IPV4.match(host) and (host.count(".") != 3 or any(int(n) > 255 for n in host.split(".") if n)):
        findings.append(Finding(("central-manager",), f"{host} is not an IPv4 address"))
    if "token" in section and "token-file" in section:
        findings.append(Finding(("token-file",), "give token or token-file, not both", at_key=True))
    elif "token" not in section and "token-file" not in section:
        findings.append(Finding((), "a pool token is needed: add token-file: PATH (or token:)", at_key=True))
    for key in ("retirement-time", "join-timeout"):
        if key in section and parse_seconds(section[key]) <= 0:
            findings.append(Finding((key,), f"{key} must be more than 0 seconds"))
    if INSTANCE_ATTRIBUTE in section.get("attributes", {}):
        findings.append(Finding(("attributes", INSTANCE_ATTRIBUTE), f"{INSTANCE_ATTRIBUTE} is set by vfarm to the instance id", at_key=True))
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


def classad_literal(value: Union[str, int, float, bool]) -> str:
    if isinstance(value, bool):
        return "True" if value else "False"
    if isinstance(value, (int, float)):
        return repr(value)
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def render(spec: CondorSpec, instance_id: str) -> str:
    """The text of 50-vfarm.conf for this worker."""
    attributes = [(INSTANCE_ATTRIBUTE, instance_id), *spec.attributes]
    lines = [
        "# Written by vfarm (cc_condor) from the condor section of the user-data; changes here are overwritten.",
        "use ROLE: Execute",
        f"CONDOR_HOST = {spec.host}",
        f"COLLECTOR_HOST = {spec.collector}",
    ]
    if spec.ccb:
        lines.append("CCB_ADDRESS = $(COLLECTOR_HOST)")
    if spec.slots == "partitionable":
        lines += ["NUM_SLOTS = 1", "NUM_SLOTS_TYPE_1 = 1", "SLOT_TYPE_1 = 100%", "SLOT_TYPE_1_PARTITIONABLE = True"]
    lines += [
        f"EXECUTE = {spec.execute}",
        f"MAXJOBRETIREMENTTIME = {spec.retirement_time}",
        f"START = {spec.start}",
    ]
    lines += [f"{name} = {classad_literal(value)}" for name, value in attributes]
    names = " ".join(name for name, _ in attributes)
    lines += [f"STARTD_ATTRS = $(STARTD_ATTRS) {names}", f"MASTER_ATTRS = $(MASTER_ATTRS) {INSTANCE_ATTRIBUTE}"]
    lines += [f"{name} = {value if not isinstance(value, bool) else str(value)}" for name, value in spec.config]
    return "\n".join(lines) + "\n"
