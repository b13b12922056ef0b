"""The `scale` section as data: durations, defaults and semantic checks (pure, no I/O)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional

from .condor import address_problem
from .findings import Finding
from .sizes import MAX_SECONDS
from .sizes import parse_seconds as seconds

# elastiq's defaults where it had the same knob.
DEFAULTS: dict[str, Any] = {
    "min-vms": 0,
    "cpus-per-vm": 1,
    "waiting-jobs-threshold": 0,
    "waiting-time": 40,
    "idle-time": 3600,
    "boot-timeout": 600,
    "check-every": 15,
}
# Zero makes no sense for these: a worker would be lost at launch, the loop would spin.
POSITIVE = ("boot-timeout", "check-every")
DURATIONS = ("waiting-time", "idle-time", "boot-timeout", "check-every")


@dataclass(frozen=True)
class ScaleSpec:
    name: str
    max_vms: int
    min_vms: int = 0
    cpus_per_vm: int = 1
    waiting_jobs_threshold: int = 0
    waiting_time: float = 40.0
    idle_time: float = 3600.0
    boot_timeout: float = 600.0
    check_every: float = 15.0
    cloud: dict[str, Any] = field(default_factory=dict)
    pool: dict[str, Any] = field(default_factory=dict)

    @property
    def collector(self) -> Optional[str]:
        value = self.pool.get("collector")
        return str(value) if value else None


def parse(section: dict[str, Any]) -> ScaleSpec:
    """A validated `scale` section as a ScaleSpec (defaults filled in)."""
    merged = {**DEFAULTS, **section}
    return ScaleSpec(
        name=str(merged["name"]),
        max_vms=int(merged["max-vms"]),
        min_vms=int(merged["min-vms"]),
        cpus_per_vm=int(merged["cpus-per-vm"]),
        waiting_jobs_threshold=int(merged["waiting-jobs-threshold"]),
        waiting_time=seconds(merged["waiting-time"]),
        idle_time=seconds(merged["idle-time"]),
        boot_timeout=seconds(merged["boot-timeout"]),
        check_every=seconds(merged["check-every"]),
        cloud=dict(merged.get("cloud") or {}),
        pool=dict(merged.get("pool") or {}),
    )


def check(section: dict[str, Any]) -> list[Finding]:
    """What the schema cannot say: min-vms <= max-vms, durations above zero and at most a year,
    the collector's host a real name or address."""
    findings: list[Finding] = []
    low, high = section.get("min-vms", DEFAULTS["min-vms"]), section.get("max-vms")
    if isinstance(low, int) and isinstance(high, int) and low > high:
        findings.append(Finding(("min-vms",), f"min-vms ({low}) is larger than max-vms ({high})"))
    for key in DURATIONS:
        if key not in section:
            continue
        try:
            duration = seconds(section[key])
        except ValueError:
            findings.append(Finding((key,), f"{key} must be at most {MAX_SECONDS} seconds (a year)"))
            continue
        if key in POSITIVE and duration <= 0:
            findings.append(Finding((key,), f"{key} must be longer than zero"))
    collector = section.get("pool", {}).get("collector")
    if isinstance(collector, str):
        problem = address_problem(collector)
        if problem:
            findings.append(Finding(("pool", "collector"), problem))
    return findings
