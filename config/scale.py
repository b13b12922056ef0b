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
    "disruption-budget": 1,
}
# Zero makes no sense for these: a worker would be lost at launch, the loop would spin.
POSITIVE = ("boot-timeout", "check-every")
DURATIONS = ("waiting-time", "idle-time", "boot-timeout", "check-every")
# The one type of a scale section that lists none (its cpus: cpus-per-vm).
DEFAULT_TYPE = "default"
# The cloud settings a worker type may set for itself, per cloud type.
TYPE_CLOUD_KEYS = {"ec2": ("image-id", "instance-type"), "openstack": ("image", "flavor"), "local": ("image", "memory", "vcpus")}


@dataclass(frozen=True)
class WorkerType:
    """One kind of worker: what it offers a job, how many of it at most, its cost, and the cloud
    settings it launches with (over the farm's `cloud`)."""

    name: str
    cpus: int
    memory: Optional[int] = None  # MB, as RequestMemory counts; None: not declared, never checked
    gpus: Optional[int] = 0  # None: not declared (a farm of one type), never checked
    max: Optional[int] = None  # None: only max-vms bounds it
    cost: float = 1.0
    cloud: dict[str, Any] = field(default_factory=dict)


def memory_mb(value: Any) -> int:
    """A memory size as MB: an integer (MB) or "2048M", "4G"."""
    if isinstance(value, int):
        return value
    text = str(value).strip()
    if text.endswith("G"):
        return int(text[:-1]) * 1024
    return int(text[:-1] if text.endswith("M") else text)


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
    # In the order the section lists them; a section without `types` has one: DEFAULT_TYPE.
    types: tuple[WorkerType, ...] = ()
    # Whether the section lists its types (launches then carry the tag vfarm:type).
    typed: bool = False
    # Consolidation: idle CPUs the joined workers may hold while the queue is quiet (None: the CPUs
    # of the largest type, one worker's worth) and how many workers may drain for it at once (0: never).
    consolidate_idle_cpus: Optional[int] = None
    disruption_budget: int = 1

    def __post_init__(self) -> None:
        if not self.types:
            # As before types: only its CPUs are known; jobs' memory, GPUs and Requirements are not checked.
            object.__setattr__(self, "types", (WorkerType(DEFAULT_TYPE, self.cpus_per_vm, gpus=None),))

    def worker_type(self, name: Optional[str]) -> WorkerType:
        """The type called NAME; an instance without a type tag (launched before types) is of the first."""
        return next((t for t in self.types if t.name == name), self.types[0])

    def cloud_of(self, worker_type: WorkerType) -> dict[str, Any]:
        """The cloud settings a worker of WORKER_TYPE launches with."""
        return {**self.cloud, **worker_type.cloud}

    @property
    def idle_cpus_budget(self) -> int:
        """Idle CPUs of the farm's joined workers above which the least-loaded ones are drained."""
        if self.consolidate_idle_cpus is not None:
            return self.consolidate_idle_cpus
        return max(t.cpus for t in self.types)

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
        types=tuple(_worker_type(item) for item in section.get("types") or ()),
        typed=bool(section.get("types")),
        consolidate_idle_cpus=int(merged["consolidate-idle-cpus"]) if merged.get("consolidate-idle-cpus") is not None else None,
        disruption_budget=int(merged["disruption-budget"]),
    )


def _worker_type(item: dict[str, Any]) -> WorkerType:
    return WorkerType(
        name=str(item["name"]),
        cpus=int(item["cpus"]),
        memory=memory_mb(item["memory"]) if item.get("memory") is not None else None,
        gpus=int(item.get("gpus", 0)),
        max=int(item["max"]) if item.get("max") is not None else None,
        cost=float(item.get("cost", 1.0)),
        cloud=dict(item.get("cloud") or {}),
    )


def check(section: dict[str, Any]) -> list[Finding]:
    """What the schema cannot say: min-vms <= max-vms, durations above zero and at most a year,
    disruption-budget at most max-vms, the collector's host a real name or address."""
    findings: list[Finding] = []
    low, high = section.get("min-vms", DEFAULTS["min-vms"]), section.get("max-vms")
    if isinstance(low, int) and isinstance(high, int) and low > high:
        findings.append(Finding(("min-vms",), f"min-vms ({low}) is larger than max-vms ({high})"))
    budget = section.get("disruption-budget")
    if isinstance(budget, int) and isinstance(high, int) and budget > high:
        findings.append(Finding(("disruption-budget",), f"disruption-budget ({budget}) is larger than max-vms ({high})"))
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
    findings += _check_types(section)
    collector = section.get("pool", {}).get("collector")
    if isinstance(collector, str):
        problem = address_problem(collector)
        if problem:
            findings.append(Finding(("pool", "collector"), problem))
    return findings


def _check_types(section: dict[str, Any]) -> list[Finding]:
    """Worker types: distinct names, not together with cpus-per-vm, cloud settings of the farm's cloud type."""
    types = section.get("types")
    if not isinstance(types, list):
        return []
    findings: list[Finding] = []
    if "cpus-per-vm" in section:
        findings.append(Finding(("cpus-per-vm",), "cpus-per-vm is for a farm of one type: with types, each type gives its cpus"))
    seen: set[str] = set()
    allowed = TYPE_CLOUD_KEYS.get(str(section.get("cloud", {}).get("type")), ())
    for i, item in enumerate(types):
        if not isinstance(item, dict):
            continue
        name = item.get("name")
        if name in seen:
            findings.append(Finding(("types", i, "name"), f"type {name!r} is listed twice"))
        seen.add(str(name))
        for key in item.get("cloud") or {}:
            if key not in allowed:
                kind = section.get("cloud", {}).get("type")
                findings.append(Finding(("types", i, "cloud", key), f"{key}: not a setting a worker type of cloud type {kind} can set "
                                        f"(it can: {', '.join(allowed) or 'none'})"))
    return findings
