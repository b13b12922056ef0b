"""The scaler's vocabulary, in one place: instance states (the cloud's and the pool's view), the
tags it sets, and the plan as typed data (decisions with reasons, workers, per-type figures).

A plan is the whole decision of one cycle: `vfarm scale --snapshot` and `--dry-run` print exactly
what the applier would do, black hole, probe, launch retries and back-offs included.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from enum import Enum
from typing import Any, Optional

FARM_TAG = "vfarm:farm"
TYPE_TAG = "vfarm:type"
CLOUD_TAG = "vfarm:cloud"  # hybrid farms: the cloud an instance runs on
END_TAG = "vfarm:end"
# The slot attribute every worker advertises: which instance it runs on.
# The attribute the planner gives a worker type when it evaluates a job's Requirements.
TYPE_ATTR = "VfarmWorkerType"


class Named(str, Enum):
    """An enum whose members print as their values (in messages, tables and JSON alike)."""

    def __str__(self) -> str:
        return str(self.value)

    def __format__(self, spec: str) -> str:
        return format(str(self.value), spec)


class CloudState(Named):
    """An instance's state as the cloud (EC2's DescribeInstances, the local cloud) names it."""

    PENDING = "pending"
    RUNNING = "running"
    STOPPING = "stopping"
    STOPPED = "stopped"
    SHUTTING_DOWN = "shutting-down"
    TERMINATED = "terminated"


# The farm's workers: only these are planned for.
LIVE = frozenset({CloudState.PENDING.value, CloudState.RUNNING.value})
# Stopped by someone else: shown by --status, for a clean-up by hand.
STOPPED = frozenset({CloudState.STOPPING.value, CloudState.STOPPED.value})
# Gone or going: kept only as the black hole's history.
ENDED = frozenset({CloudState.SHUTTING_DOWN.value, CloudState.TERMINATED.value})


def not_a_worker(state: str) -> str:
    """Why a farm instance in cloud STATE (neither live nor ended) is no worker: for a look by hand."""
    if state in STOPPED:
        return "a stopped farm instance: needs a clean-up (vfarm terminate)"
    return f"the cloud says {state or 'nothing'!r}: not counted as a worker; look at it (vfarm instances --all-states)"


class WorkerState(Named):
    """A farm instance as the planner sees it (declared in the order the status table lists them)."""

    BOOTING = "booting"
    LOST = "lost"
    IDLE = "idle"
    BUSY = "busy"
    OTHER = "other"
    DRAINING = "draining"
    DRAINED = "drained"


# Has been in the pool.
JOINED = frozenset({WorkerState.IDLE, WorkerState.BUSY, WorkerState.OTHER, WorkerState.DRAINING, WorkerState.DRAINED})
# Counts against max-vms and min-vms: neither lost nor on its way out.
ACTIVE = frozenset({WorkerState.BOOTING, WorkerState.IDLE, WorkerState.BUSY, WorkerState.OTHER})
# How a terminated instance ended (the value of its `vfarm:end` tag).
END_OF = {WorkerState.LOST: "lost", WorkerState.DRAINED: "drained"}
# How the scaler's drains name themselves: condor_drain's -reason is this prefix and the plan's
# reason, and the drained startd advertises it as DrainReason on its slot ads (HTCondor 23.9). A
# worker drained with any other reason (an admin's condor_drain, condor_defrag) is not the scaler's.
DRAIN_REASON_PREFIX = "vfarm scale: "


class Action(Named):
    LAUNCH = "launch"
    HOLD = "hold"  # wanted, not done this cycle (max-vms, black hole, a probe booting, cloud back-off)
    DRAIN = "drain"
    TERMINATE = "terminate"
    FORGET = "forget"  # a launch of unknown outcome no longer wanted: its retry token is dropped


def tag(instance: dict[str, Any], key: str) -> Optional[str]:
    """The value of tag KEY of an instance (DescribeInstances shape), or None."""
    for item in instance.get("Tags") or []:
        if isinstance(item, dict) and item.get("Key") == key:
            value = item.get("Value")
            return str(value) if value is not None else None
    return None


def cloud_state(instance: dict[str, Any]) -> str:
    state = instance.get("State")
    return str(state.get("Name", "")) if isinstance(state, dict) else str(state or "")


@dataclass(frozen=True)
class LaunchOption:
    """Another type (in a hybrid farm: a type on a cloud, TYPE@CLOUD) to launch if the cloud
    refuses a launch for quota or capacity."""

    type: str
    count: int
    token: str
    cloud: Optional[str] = None


@dataclass(frozen=True)
class Decision:
    action: Action
    reason: str
    instance: Optional[str] = None
    type: Optional[str] = None
    count: int = 0
    # launch: the idempotency token (the same one again retries a launch of unknown outcome).
    token: Optional[str] = None
    # launch: what to launch instead, in this order, when the cloud refuses for quota or capacity.
    fallback: tuple[LaunchOption, ...] = ()
    # Hybrid farms: the cloud it happens on (`type` is then the placement, TYPE@CLOUD).
    cloud: Optional[str] = None

    def to_json(self) -> dict[str, Any]:
        data: dict[str, Any] = {"action": self.action.value, "reason": self.reason, "count": self.count}
        for key in ("instance", "type", "token", "cloud"):
            if getattr(self, key) is not None:
                data[key] = getattr(self, key)
        if self.fallback:
            data["fallback"] = [{k: v for k, v in asdict(option).items() if v is not None} for option in self.fallback]
        return data


@dataclass
class Worker:
    """One live farm instance: its state, why, and the figures behind it."""

    id: str
    type: str
    state: WorkerState
    reason: str
    age: Optional[float]
    slots: int
    claimed: int
    idle_since: Optional[float] = None
    seen_idle_since: Optional[float] = None
    cloud: Optional[str] = None  # hybrid farms: the cloud it runs on (`type` is then its placement, TYPE@CLOUD)

    def to_json(self) -> dict[str, Any]:
        data = {**asdict(self), "state": self.state.value}
        if self.cloud is None:
            del data["cloud"]
        return data


@dataclass(frozen=True)
class BlackHole:
    """Launches of one type that never joined: the newest STREAK decided ones were all lost."""

    streak: int = 0
    delay: float = 0.0
    until: float = 0.0
    in_flight: int = 0  # launched after the losses and still booting
    active: bool = False
    blocked: bool = False  # within the back-off: no launch at all
    probing: bool = False  # after it: one probe at a time until one joins
    # Lists (plain JSON, as the plan's to_json gives them):
    lost: list[str] = field(default_factory=list)  # every launch of the type found lost, newest first (the scaler reads their verdicts)
    streak_ids: list[str] = field(default_factory=list)  # the STREAK lost ones


@dataclass
class TypeFigures:
    """What the plan counted for one worker type."""

    name: str
    waiting: int = 0  # waiting jobs this type is the best place for
    demand: int = 0  # the CPUs they ask for
    supply: int = 0  # unclaimed CPUs of its joined workers, plus its CPUs per booting worker
    active: int = 0
    wanted: int = 0  # workers of this type the queue needs
    black_hole: BlackHole = field(default_factory=BlackHole)
    launch_backoff_until: float = 0.0


@dataclass
class CloudFigures:
    """What the plan counted and decided for one cloud of a hybrid farm."""

    name: str
    type: str  # the cloud's type: ec2, openstack, local
    max: Optional[int] = None
    active: int = 0
    launch: int = 0  # workers the plan starts there this cycle (fallbacks not counted)
    fallback: int = 0  # workers the plan would start there instead if an earlier cloud refuses
    states: dict[str, int] = field(default_factory=dict)
    launch_backoff_until: float = 0.0
    terminate_backoff_until: float = 0.0


@dataclass(frozen=True)
class Unfit:
    """Waiting jobs no type can hold, once per reason."""

    jobs: tuple[str, ...]  # "cluster.proc"; a group of jobs (JobCount): its JobIds, "1.0 ... 1.4999"
    reason: str
    count: int  # how many jobs


@dataclass
class Plan:
    now: float
    decisions: list[Decision]
    instances: list[Worker]
    waiting: int
    demand: int
    supply: int
    active: int
    states: dict[str, int]
    collector_started: Optional[float]
    warnings: list[str]
    types: dict[str, TypeFigures]
    unfit: list[Unfit]
    # What the next cycle is fed (the scaler keeps it in memory only):
    observed_idle_since: dict[str, float]  # every worker seen idle in this cycle, since when
    joined: list[str]  # every farm instance, live or ended, known to have joined the pool
    intents: dict[str, tuple[str, int]]  # type: (token, count) of launches of unknown outcome still wanted
    # Hybrid farms: per cloud, in priority order (empty for a farm of one cloud).
    clouds: dict[str, CloudFigures] = field(default_factory=dict)
    consolidating: list[str] = field(default_factory=list)  # workers draining for consolidation (the disruption budget counts them)
    ended: list[dict[str, Any]] = field(default_factory=list)  # the newest decided launches, for the black hole (plan.ENDED_KEY)
    # Farm instances neither live nor ended (stopped, or a state no rule knows): {instance, state, age, reason}.
    others: list[dict[str, Any]] = field(default_factory=list)
    young: int = 0  # idle jobs that have not waited waiting-time yet: not demand (the negotiator may still match them)

    def of(self, action: Action) -> list[Decision]:
        return [d for d in self.decisions if d.action is action]

    @property
    def launch(self) -> int:
        return sum(d.count for d in self.of(Action.LAUNCH))

    @property
    def drain(self) -> list[str]:
        return [str(d.instance) for d in self.of(Action.DRAIN)]

    @property
    def terminate(self) -> list[str]:
        return [str(d.instance) for d in self.of(Action.TERMINATE)]

    def worker(self, iid: str) -> Worker:
        return next(w for w in self.instances if w.id == iid)

    def to_json(self) -> dict[str, Any]:
        """The plan as `--json` prints it."""
        return {
            "now": self.now,
            "launch": self.launch,
            "drain": self.drain,
            "terminate": self.terminate,
            "waiting": self.waiting,
            "young": self.young,
            "demand": self.demand,
            "supply": self.supply,
            "active": self.active,
            "states": dict(self.states),
            "collector_started": self.collector_started,
            "decisions": [d.to_json() for d in self.decisions],
            "instances": [w.to_json() for w in self.instances],
            "warnings": list(self.warnings),
            "types": {name: asdict(figures) for name, figures in self.types.items()},
            "unfit": [{"jobs": list(u.jobs), "count": u.count, "reason": u.reason} for u in self.unfit],
            "observed_idle_since": dict(self.observed_idle_since),
            "joined": list(self.joined),
            "launch_intents": {name: {"token": token, "count": count} for name, (token, count) in self.intents.items()},
            **({"clouds": {name: asdict(figures) for name, figures in self.clouds.items()}} if self.clouds else {}),
            "consolidating": list(self.consolidating),
            "ended": [dict(e) for e in self.ended],
            "others": [dict(o) for o in self.others],
        }
