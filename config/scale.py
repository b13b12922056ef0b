"""The `scale` section as data: durations, defaults and semantic checks (pure: no I/O but
check_files, which reads pool.token-file)."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Optional

from .condor import address_problem, token_file_problem
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
# Zero makes no sense for this one: a worker would be lost at launch.
POSITIVE = ("boot-timeout",)
# The shortest cycle: each one queries the collector, the schedd and the cloud's API, so a shorter
# period would only hammer them (zero: a busy loop) without deciding anything sooner.
MIN_CHECK_EVERY = 1.0
DURATIONS = ("waiting-time", "idle-time", "boot-timeout", "check-every")
# The one type of a scale section that lists none (its cpus: cpus-per-vm).
DEFAULT_TYPE = "default"
# The cloud settings a worker type may set for itself, per cloud type.
TYPE_CLOUD_KEYS = {"ec2": ("image-id", "instance-type"), "openstack": ("image", "flavor"), "local": ("image", "memory", "vcpus")}
# What an entry of `clouds` has besides its cloud settings.
CLOUD_ENTRY_KEYS = ("name", "max")


@dataclass(frozen=True)
class CloudSpec:
    """One cloud of a hybrid farm: its name (tag vfarm:cloud), its settings (as a `cloud` mapping)
    and the most workers it may hold."""

    name: str
    settings: dict[str, Any]
    max: Optional[int] = None

    @property
    def kind(self) -> str:
        return str(self.settings.get("type"))


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
    # Hybrid farms: the clouds the type may run on, each with settings over `cloud` (None: every cloud).
    clouds: Optional[dict[str, dict[str, Any]]] = None
    # A placement (the type on one cloud of a hybrid farm, named TYPE@CLOUD): its cloud and its type.
    on: Optional[str] = None
    of: Optional[str] = None

    @property
    def kind(self) -> str:
        """The worker type's own name (VfarmWorkerType, tag vfarm:type), also for a placement."""
        return self.of or self.name


def whole(value: Any) -> Any:
    """VALUE, an integral float as an int: JSON Schema counts 8192.0 as an integer, so where the
    schema takes one, 8192.0 passed it and is read as 8192 (checks and int() alike)."""
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


def _settings(values: dict[str, Any]) -> dict[str, Any]:
    """Cloud settings as the clouds read them (`memory: 2048.0` as 2048: a backend writes str())."""
    return {key: whole(value) for key, value in values.items()}


def memory_mb(value: Any) -> int:
    """A memory size as MB: an integer (MB) or "2048M", "4G"."""
    value = whole(value)
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
    # Whether the section sets cpus-per-vm: only then are a worker's ads read as at most that many
    # CPUs (the default 1 is no statement of what the site's workers have).
    cpus_per_vm_given: bool = False
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
    # A hybrid farm's clouds in priority order (`clouds`); empty for a farm of one `cloud`.
    clouds: tuple[CloudSpec, ...] = ()
    # What the planner fills: each type on each cloud it may run on (type-major, clouds in priority
    # order), named TYPE@CLOUD; a farm of one cloud: its types themselves.
    placements: tuple[WorkerType, ...] = field(default=(), compare=False)
    # Consolidation: idle CPUs the joined workers may hold while the queue is quiet (None: the CPUs
    # of the largest type, one worker's worth) and how many workers may drain for it at once (0: never).
    consolidate_idle_cpus: Optional[int] = None
    disruption_budget: int = 1
    # The most CPUs the farm's live workers may hold (max-cpus; None: no limit).
    max_cpus: Optional[int] = None

    def __post_init__(self) -> None:
        if not self.types:
            # As before types: only its CPUs are known; jobs' memory, GPUs and Requirements are not checked.
            object.__setattr__(self, "types", (WorkerType(DEFAULT_TYPE, self.cpus_per_vm, gpus=None),))
        placements = self.types
        if self.clouds:
            placements = tuple(
                WorkerType(f"{t.name}@{c.name}", t.cpus, t.memory, t.gpus, None, t.cost, {**t.cloud, **(t.clouds or {}).get(c.name, {})},
                           on=c.name, of=t.name)
                for t in self.types for c in self.clouds if t.clouds is None or c.name in t.clouds)
        object.__setattr__(self, "placements", placements)

    def lists_type(self, name: Optional[str]) -> bool:
        """Whether a vfarm:type tag NAME is one of the farm's types (None, an untyped launch, is)."""
        return name is None or any(t.name == name for t in self.types)

    @property
    def hybrid(self) -> bool:
        """Whether the farm lists several clouds (`clouds`): launches then carry the tag vfarm:cloud."""
        return bool(self.clouds)

    def worker_type(self, name: Optional[str]) -> WorkerType:
        """The type or placement called NAME; an instance without a type tag (launched before types) is of the first type."""
        return next((t for t in self.types if t.name == name), None) or next((p for p in self.placements if p.name == name), self.types[0])

    def placement(self, type_name: Optional[str], cloud: Optional[str]) -> WorkerType:
        """Where an instance tagged TYPE_NAME and CLOUD belongs: its type's placement on its cloud
        (a type no longer allowed there: the cloud's first placement; no cloud: the first one)."""
        kind = self.worker_type(type_name).kind
        if not self.clouds:
            return self.worker_type(kind)
        on_cloud = [p for p in self.placements if p.on == cloud]
        return next((p for p in on_cloud if p.of == kind), on_cloud[0] if on_cloud else self.placements[0])

    def cloud_named(self, name: Optional[str]) -> Optional[CloudSpec]:
        return next((c for c in self.clouds if c.name == name), None)

    def cloud_of(self, worker_type: WorkerType) -> dict[str, Any]:
        """The cloud settings a worker of WORKER_TYPE (a placement, in a hybrid farm) launches with."""
        cloud = self.cloud_named(worker_type.on)
        return {**(cloud.settings if cloud is not None else self.cloud), **worker_type.cloud}

    def on_cloud(self, cloud: CloudSpec) -> ScaleSpec:
        """This farm as one of its clouds sees it: `cloud` is that cloud's settings."""
        return replace(self, cloud=dict(cloud.settings))

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
    clouds = tuple(_cloud(item) for item in section.get("clouds") or ())
    return ScaleSpec(
        name=str(merged["name"]),
        max_vms=int(merged["max-vms"]),
        min_vms=int(merged["min-vms"]),
        cpus_per_vm=int(merged["cpus-per-vm"]),
        cpus_per_vm_given="cpus-per-vm" in section,
        waiting_jobs_threshold=int(merged["waiting-jobs-threshold"]),
        waiting_time=seconds(merged["waiting-time"]),
        idle_time=seconds(merged["idle-time"]),
        boot_timeout=seconds(merged["boot-timeout"]),
        check_every=seconds(merged["check-every"]),
        cloud=dict(clouds[0].settings) if clouds else _settings(merged.get("cloud") or {}),
        pool=dict(merged.get("pool") or {}),
        types=tuple(_worker_type(item) for item in section.get("types") or ()),
        typed=bool(section.get("types")),
        clouds=clouds,
        consolidate_idle_cpus=int(merged["consolidate-idle-cpus"]) if merged.get("consolidate-idle-cpus") is not None else None,
        disruption_budget=int(merged["disruption-budget"]),
        max_cpus=int(merged["max-cpus"]) if merged.get("max-cpus") is not None else None,
    )


def _cloud(item: dict[str, Any]) -> CloudSpec:
    settings = _settings({k: v for k, v in item.items() if k not in CLOUD_ENTRY_KEYS})
    return CloudSpec(str(item["name"]), settings, int(item["max"]) if item.get("max") is not None else None)


def _type_clouds(value: Any) -> Optional[dict[str, dict[str, Any]]]:
    """A type's `clouds` (a list of names, or a mapping of name: settings or nothing) as name: settings."""
    if value is None:
        return None
    if isinstance(value, list):
        return {str(name): {} for name in value}
    return {str(name): _settings(settings or {}) for name, settings in value.items()}


def _worker_type(item: dict[str, Any]) -> WorkerType:
    return WorkerType(
        name=str(item["name"]),
        cpus=int(item["cpus"]),
        memory=memory_mb(item["memory"]) if item.get("memory") is not None else None,
        gpus=int(item.get("gpus", 0)),
        max=int(item["max"]) if item.get("max") is not None else None,
        cost=float(item.get("cost", 1.0)),
        cloud=_settings(item.get("cloud") or {}),
        clouds=_type_clouds(item.get("clouds")),
    )


def check(section: dict[str, Any]) -> list[Finding]:
    """What the schema cannot say: min-vms <= max-vms, durations at most a year, boot-timeout above
    zero, check-every at least MIN_CHECK_EVERY seconds,
    disruption-budget at most max-vms, the collector's host a real name or address, one of cloud
    and clouds, distinct cloud and type names, worker types' clouds and cloud settings those of the
    farm's clouds. An integral float (5.0) is the integer it equals, as the schema took it."""
    findings: list[Finding] = []
    low, high = whole(section.get("min-vms", DEFAULTS["min-vms"])), whole(section.get("max-vms"))
    if isinstance(low, int) and isinstance(high, int) and low > high:
        findings.append(Finding(("min-vms",), f"min-vms ({low}) is larger than max-vms ({high})"))
    budget = whole(section.get("disruption-budget"))
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
        if key == "check-every" and duration < MIN_CHECK_EVERY:
            findings.append(Finding((key,), f"check-every must be at least {MIN_CHECK_EVERY:g} second (each cycle queries the pool and the cloud), "
                                            f"got {section[key]}"))
        elif key in POSITIVE and duration <= 0:
            findings.append(Finding((key,), f"{key} must be longer than zero"))
    findings += _check_clouds(section)
    findings += _check_types(section)
    findings += _too_big_for_max_cpus(section)
    collector = section.get("pool", {}).get("collector")
    if isinstance(collector, str):
        problem = address_problem(collector)
        if problem:
            findings.append(Finding(("pool", "collector"), problem))
    return findings


def _too_big_for_max_cpus(section: dict[str, Any]) -> list[Finding]:
    """A worker type (or cpus-per-vm) larger than max-cpus: no such worker could ever start; an
    error when no type fits, else a warning. max-cpus 0 launches nothing on purpose (a farm being emptied)."""
    cap = whole(section.get("max-cpus"))
    if not isinstance(cap, int) or cap == 0:
        return []
    types = section.get("types")
    sizes: list[tuple[tuple[str | int, ...], str, Any]]
    if isinstance(types, list):
        sizes = [(("types", i, "cpus"), f"type {item.get('name')!r}", item.get("cpus")) for i, item in enumerate(types) if isinstance(item, dict)]
    else:
        sizes = [(("cpus-per-vm",), "cpus-per-vm", section.get("cpus-per-vm", DEFAULTS["cpus-per-vm"]))]
    too_big = [(path, what, cpus) for path, what, cpus in ((p, w, whole(c)) for p, w, c in sizes) if isinstance(cpus, int) and cpus > cap]
    # None fits: nothing ever starts (an error); some fit: those types never start (a warning).
    alone = len(too_big) == len(sizes)
    return [Finding(path, f"{what} has {cpus} CPUs, more than max-cpus ({cap}): no such worker can ever start", warning=not alone)
            for path, what, cpus in too_big]


def _check_clouds(section: dict[str, Any]) -> list[Finding]:
    """`cloud` (one cloud) or `clouds` (a hybrid farm's list), never both; distinct cloud names."""
    findings: list[Finding] = []
    if "cloud" in section and "clouds" in section:
        findings.append(Finding(("clouds",), "cloud (one cloud) and clouds (several, in priority order) do not go together: keep one"))
    elif "cloud" not in section and "clouds" not in section:
        findings.append(Finding((), "the scale section needs cloud (one cloud) or clouds (several, in priority order)"))
    cloud = section.get("cloud")
    if isinstance(cloud, dict):
        for key in CLOUD_ENTRY_KEYS:
            if key in cloud:
                findings.append(Finding(("cloud", key), f"{key}: only an entry of clouds has one (a farm of one cloud: max-vms bounds it)"))
    return findings + _listed_twice(section, "clouds", "cloud")


def _listed_twice(section: dict[str, Any], key: str, what: str) -> list[Finding]:
    """A finding for each entry of the list KEY whose name an earlier entry has."""
    findings: list[Finding] = []
    seen: set[str] = set()
    for i, item in enumerate(section.get(key) or ()):
        if not isinstance(item, dict):
            continue
        name = item.get("name")
        if name in seen:
            findings.append(Finding((key, i, "name"), f"{what} {name!r} is listed twice"))
        seen.add(str(name))
    return findings


def _cloud_kinds(section: dict[str, Any]) -> dict[str, str]:
    """Cloud name -> cloud type of a hybrid farm's clouds."""
    return {str(c.get("name")): str(c.get("type")) for c in section.get("clouds") or () if isinstance(c, dict)}


def _setting_problems(settings: Any, kind: str, where: tuple[Any, ...], on: str) -> list[Finding]:
    allowed = TYPE_CLOUD_KEYS.get(kind, ())
    return [Finding((*where, key), f"{key}: not a setting a worker type {on} can set (it can: {', '.join(allowed) or 'none'})")
            for key in (settings if isinstance(settings, dict) else ()) if key not in allowed]


def _check_types(section: dict[str, Any]) -> list[Finding]:
    """Worker types: distinct names, not together with cpus-per-vm, cloud settings of the farm's cloud type
    (in a hybrid farm: of every cloud the type may run on); `clouds` of a type only name the farm's clouds.
    Without `cloud` and `clouds` (missing, or left out for a schema error), what depends on them is not checked."""
    types = section.get("types")
    if not isinstance(types, list):
        return []
    findings: list[Finding] = []
    if "cpus-per-vm" in section:
        findings.append(Finding(("cpus-per-vm",), "cpus-per-vm is for a farm of one type: with types, each type gives its cpus"))
    findings += _listed_twice(section, "types", "type")
    hybrid = "clouds" in section
    if not hybrid and "cloud" not in section:
        # No cloud to check the types' settings against: none given (reported as such), or the one
        # given failed its schema and the loader left it out.
        return findings
    kinds = _cloud_kinds(section)
    for i, item in enumerate(types):
        if not isinstance(item, dict):
            continue
        own = item.get("clouds")
        # Where each named cloud sits in the type's `clouds` (a list's index, a mapping's key).
        place: dict[str, Any] = {str(n): k for k, n in enumerate(own)} if isinstance(own, list) else {}
        if isinstance(own, list):
            own = {str(name): None for name in own}
        if not hybrid:
            kind = str(section.get("cloud", {}).get("type"))
            findings += _setting_problems(item.get("cloud"), kind, ("types", i, "cloud"), f"of cloud type {kind}")
            if own is not None:
                findings.append(Finding(("types", i, "clouds"), "clouds: only a farm that lists clouds has a choice of them"))
            continue
        if not isinstance(own, dict):
            own = {}
        for cloud_name, settings in own.items():
            if cloud_name not in kinds:
                findings.append(Finding(("types", i, "clouds", place.get(cloud_name, cloud_name)), f"cloud {cloud_name!r} is not one of the farm's clouds "
                                        f"({', '.join(kinds) or 'none'})", at_key=cloud_name not in place))
                continue
            findings += _setting_problems(settings, kinds[cloud_name], ("types", i, "clouds", cloud_name),
                                          f"on cloud {cloud_name} (type {kinds[cloud_name]})")
        # Its own `cloud` settings hold on every cloud it runs on.
        for cloud_name in own or kinds:
            if cloud_name in kinds:
                found = _setting_problems(item.get("cloud"), kinds[cloud_name], ("types", i, "cloud"),
                                          f"running on cloud {cloud_name} (type {kinds[cloud_name]})")
                findings += found
                if found:
                    break
    return findings


def check_files(section: dict[str, Any], base_dir: Path) -> list[Finding]:
    """pool.token-file (relative to the config file's folder, as `vfarm scale` reads it) holds an
    IDTOKEN: read and checked as the condor section's token-file, so a live cycle cannot be the
    first to find it missing."""
    pool = section.get("pool")
    if not isinstance(pool, dict) or not isinstance(pool.get("token-file"), str):
        return []
    problem = token_file_problem(base_dir / pool["token-file"])
    return [Finding(("pool", "token-file"), problem)] if problem else []
