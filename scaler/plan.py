"""The scaler's decisions as a pure function of one snapshot and the `scale` section.

A snapshot is what one discover step saw, in the systems' own JSON shapes:

    {"now": EPOCH_SECONDS,
     "jobs": [job ClassAds as `condor_q -json` prints them; an ad with JobCount N (the schedd's
              group-by query, `condor_q -group-by`) stands for N jobs equal in every attribute read],
     "slots": [machine ClassAds as `condor_status -json` prints them],
     "instances": [instance dicts as EC2 DescribeInstances returns them],
     "collector": optional: the collector's ad, or the list `condor_status -collector -json` prints,
     "observed_idle_since": optional: {instance id: epoch seconds}, what the scaler itself saw}

`plan(snapshot, spec)` applies the scaler's rules (below, and README's `vfarm scale`) and returns
plain data: how many to launch, which instances to drain and to terminate, each with its reason,
plus the state of every farm instance and the counts behind the decision. Same snapshot, same plan.

Idle truth. A worker counts as idle only when no evidence says otherwise:
- the schedd: a job there (ON_WORKER: running, JobStatus 2; transferring its output, 6; suspended,
  7) whose RemoteHost is one of the worker's slots, or names its startd (the part after the slot's
  '@'), makes the worker busy whatever its slot ads say, and a drained one not yet terminable;
- the scaler's own observations: `observed_idle_since` maps each worker seen idle in every cycle of
  an unbroken run to the time of the first cycle of that run. A worker missing from it is seen idle
  for the first time now: idle for 0 s. The plan returns the map for the next cycle (the loop keeps
  it in memory, never in a file; a skipped cycle or a restart starts it afresh, which can only
  delay a drain);
- the ads only as a lower bound: a slot ad is refreshed every UPDATE_INTERVAL (300 s by default),
  so its EnteredCurrentState or NumDynamicSlotsTime may be long out of date. A worker's idle time is
  the shorter of what its ads say and what the scaler observed.
A snapshot without `observed_idle_since` is therefore planned as the first cycle of a fresh scaler:
it drains nothing (unless idle-time is 0). To replay a later cycle, the snapshot carries the map.
Left to the ads alone: a job that starts and ends between two cycles; once an ad refreshed after
its end arrives (within UPDATE_INTERVAL), NumDynamicSlotsTime shows that end.

Drains. Only a worker the scaler drained itself is terminated once drained: every slot ad of it in
state Drained names the scaler's drain (DrainReason starts with DRAIN_REASON_PREFIX, what apply.py
gives condor_drain). One drained by anyone else (an admin's maintenance, condor_defrag), or without
a DrainReason, is left alone (OTHER, with that reason), drained or still draining: never
terminated, never counted as the scaler's drain nor as free CPUs.

Slot ads. Any startd holding the pool's token advertises what it likes: a number the planner
reads of a slot ad that no 64-bit number holds (1e300, NaN, an infinity) is read as absent, never
a failed cycle (check_snapshot); so is a Cpus, Memory or GPUs no machine has: negative, or more
than SLOT_RESOURCES. Absent means unknown to every reader, and each errs on the safe side: no
EnteredCurrentState, idle from now (never drained early); no NumDynamicSlotsTime, only
EnteredCurrentState and the scaler's own sightings; no LastHeardFrom, a dynamic slot is never
taken for stale (the worker looks busy the longer); no Cpus, Memory or GPUs, an unclaimed slot adds
nothing to the supply (at worst one more launch, within max-vms), and consolidation counts the
slot as one CPU, and a worker with a claimed one as of unknown load (never drained for it).
Nor is a worker believed to have more than its type: when the farm knows the type it launched
(the type its tag vfarm:type names, even where it counts under another type's placement: a type
no longer allowed on its cloud; in a farm of one type, cpus-per-vm when the section sets
it: the default 1 says nothing of the site's workers), the unclaimed CPUs,
memory and GPUs its slot ads add up to are read as at most the type's (memory and GPUs where the
type declares them) less what its other slots hold (claimed, or in any state but Unclaimed): for
the supply, and for consolidation's idle CPUs. A forged ad claiming 64 free CPUs on a 4-CPU worker
hides no demand and drains no other worker. The plan warns, naming each such worker and what its
ads claimed (a misconfigured startd, or a type's figures that are not the cloud's, show up the
same way). A worker whose type tag names no type of the farm is read as its ads say.
Instances' and the collector's numbers stay strict: the cloud and the collector are no pool
user's to write.
"""

from __future__ import annotations

import collections
import datetime
import functools
import hashlib
import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace
from typing import Any, NamedTuple, Optional, Union

from ..config.condor import INSTANCE_ATTRIBUTE, VERDICT_ATTRIBUTE
from ..config.scale import ScaleSpec, WorkerType
from . import consolidate, fit
from .model import (  # noqa: F401 - Plan and Worker: the planner's types, for its callers
    ACTIVE,
    CLOUD_TAG,
    DRAIN_REASON_PREFIX,
    END_OF,
    END_TAG,
    ENDED,
    FARM_TAG,
    JOINED,
    LIVE,
    TYPE_TAG,
    Action,
    BlackHole,
    CloudFigures,
    Decision,
    LaunchOption,
    Plan,
    TypeFigures,
    Unfit,
    Worker,
    WorkerState,
    cloud_state,
    not_a_worker,
    tag,
)

# Instance states, in the order the status table lists them.
STATES = tuple(state.value for state in WorkerState)
REQUIRED = ("now", "jobs", "slots", "instances")
# What the scaler remembers from cycle to cycle (in memory only), fed back with each snapshot.
OBSERVED = "observed_idle_since"
JOINED_KEY = "joined"  # ids of farm instances this scaler has seen in the pool
# [{id, launched, fate, type, cloud}]: the newest decided launches (joined or lost), for the black
# hole once the cloud no longer lists them (Nova forgets a deleted server at once)
ENDED_KEY = "ended"
INTENTS = "launch_intents"  # {type: {"token", "count"}}: launches of unknown outcome, retried with the same token
CONSOLIDATING = "consolidating"  # ids of workers this scaler drained for consolidation
BACKOFF = "cloud_backoff"  # {"launch:TYPE" or "terminate" (hybrid: "launch@CLOUD", "terminate@CLOUD"): epoch seconds}: no such call before then
RUNNING = 2  # JobStatus of a running job
IDLE_JOB = 1
TRANSFERRING_OUTPUT = 6
SUSPENDED = 7
# The JobStatus of a job on a worker, still holding its claim: the schedd's evidence that the
# worker is busy. A tuple: `in` compares, so a JobStatus that is a list (any ad) raises nothing.
ON_WORKER = (RUNNING, TRANSFERRING_OUTPUT, SUSPENDED)
BLACK_HOLE_LOSSES = 3
BLACK_HOLE_FIRST = 300.0
BLACK_HOLE_MAX = 3600.0
# Decided launches remembered per placement (ENDED_KEY): enough for the black hole's longest back-off.
ENDED_KEEP = BLACK_HOLE_LOSSES + math.ceil(math.log2(BLACK_HOLE_MAX / BLACK_HOLE_FIRST)) + 1

Number = Union[int, float]


class SnapshotError(ValueError):
    """A snapshot that cannot be planned from; the message is one line for the user."""


# The numbers plan() reads, per list, that must fit in 64 bits (sums of them never overflow a float).
NUMBER_FIELDS = {
    # Any pool user's job may carry what it likes: a request out of range is read by fit.rank (more than
    # any type offers, or none), a time out of range as no time (scan_jobs); never a failed cycle.
    "jobs": (),
    # Any startd with the pool's token advertises what it likes: see SLOT_NUMBERS.
    "slots": (),
    "instances": ("LaunchTime",),
    "collector": ("DaemonStartTime", "MyCurrentTime", "MonitorSelfAge"),
}
# The numbers plan() reads of a slot ad: one that is no finite 64-bit number is read as absent
# (check_snapshot; what absent means to each reader: the module's doc).
SLOT_NUMBERS = ("Cpus", "EnteredCurrentState", "NumDynamicSlotsTime", "Memory", "GPUs", "LastHeardFrom")
# The times scan_jobs reads of a job ad, likewise.
JOB_TIMES = ("EnteredCurrentStatus", "QDate")
NUMBER_LIMIT = 2**63
# The most of each resource a slot ad is read with: far beyond any machine (the largest hold some
# thousand CPUs, some ten TB of memory, some ten GPUs), so no real slot is misread. A negative
# amount or more than this is impossible, and read as absent too: it would cancel the free
# resources of other slots, or hide the waiting jobs' demand.
SLOT_RESOURCES = {"Cpus": 2**16, "Memory": 2**30, "GPUs": 2**10}  # Memory in MB, as slot ads count it
# Where each number the planner reads of an ad is read as it is; outside (NaN too), as absent.
Ranges = dict[str, tuple[Number, Number]]
SLOT_RANGES: Ranges = {name: (0, SLOT_RESOURCES[name]) if name in SLOT_RESOURCES else (-NUMBER_LIMIT, NUMBER_LIMIT) for name in SLOT_NUMBERS}
JOB_RANGES: Ranges = {name: (-NUMBER_LIMIT, NUMBER_LIMIT) for name in JOB_TIMES}


def _shown(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _check_numbers(ad: dict[str, Any], where: str, keys: tuple[str, ...]) -> None:
    for key in keys:
        value = ad.get(key)
        kind = value.__class__
        if kind is int or kind is float:
            if -NUMBER_LIMIT <= value <= NUMBER_LIMIT:  # type: ignore[operator]  # false for NaN and the infinities too
                continue
        elif not isinstance(value, (int, float)) or isinstance(value, bool) or (math.isfinite(value) and abs(value) <= NUMBER_LIMIT):
            continue
        raise SnapshotError(f"'{where}.{key}' is out of range (a 64-bit number), got {_shown(value)}")


def check_snapshot(data: Any) -> dict[str, Any]:
    """DATA as a snapshot, or SnapshotError saying (in one line, with the place) what is wrong
    with it: the shape plan() relies on, and the numbers it reads of instances and the collector
    within 64 bits. The jobs' and slot ads' numbers are read, never refused (scan_jobs, fit.rank;
    a slot ad's number outside its range, SLOT_RANGES, is left out of the snapshot returned, a
    copy then: read as absent)."""
    if not isinstance(data, dict):
        raise SnapshotError(f"a snapshot is a JSON object with {', '.join(REQUIRED)}; got {type(data).__name__}")
    missing = [key for key in REQUIRED if key not in data]
    if missing:
        raise SnapshotError(f"the snapshot lacks {', '.join(repr(m) for m in missing)}")
    if not _is_number(data["now"]) or abs(data["now"]) > NUMBER_LIMIT:
        raise SnapshotError(f"'now' must be epoch seconds (a number), got {_shown(data['now'])}")
    for key in ("jobs", "slots", "instances"):
        items = data[key]
        if not isinstance(items, list):
            raise SnapshotError(f"'{key}' must be a list, got {type(items).__name__}")
        fields = NUMBER_FIELDS[key]
        for i, item in enumerate(items):
            if item.__class__ is not dict and not isinstance(item, dict):
                raise SnapshotError(f"'{key}[{i}]' must be an object, got {type(item).__name__}")
            for name in fields:  # the common case inline (a 64-bit int or float, or absent): 100,000 jobs are read each cycle
                value = item.get(name)
                kind = value.__class__
                if value is None or ((kind is int or kind is float) and -NUMBER_LIMIT <= value <= NUMBER_LIMIT):
                    continue
                _check_numbers(item, f"{key}[{i}]", (name,))
    data = _readable_slots(data)
    for i, instance in enumerate(data["instances"]):
        if not isinstance(instance.get("InstanceId"), str):
            raise SnapshotError(f"'instances[{i}]' has no InstanceId")
        tags = instance.get("Tags")
        if tags is not None and not (isinstance(tags, list) and all(isinstance(t, dict) and isinstance(t.get("Key"), str) for t in tags)):
            raise SnapshotError(f"'instances[{i}].Tags' must be a list of {{Key, Value}} with text keys, got {_shown(tags)}")
    _check_epochs(data, OBSERVED, "instance id")
    _check_memory(data)
    collector = data.get("collector")
    if collector is not None and not isinstance(collector, (dict, list)):
        raise SnapshotError(f"'collector' must be an ad or a list of ads, got {type(collector).__name__}")
    ads = collector if isinstance(collector, list) else [collector] if collector is not None else []
    for i, ad in enumerate(ads):
        if isinstance(ad, dict):
            _check_numbers(ad, f"collector[{i}]" if isinstance(collector, list) else "collector", NUMBER_FIELDS["collector"])
    return data


def _readable_slots(data: dict[str, Any]) -> dict[str, Any]:
    """DATA with each slot ad's SLOT_NUMBERS outside SLOT_RANGES left out (a copy of DATA and of
    those ads when there are any; DATA itself otherwise)."""
    slots: list[dict[str, Any]] = data["slots"]
    readable: Optional[list[dict[str, Any]]] = None
    ranges = tuple(SLOT_RANGES.items())
    for i, slot in enumerate(slots):
        for name, (low, high) in ranges:  # the common case inline (an int or float in range, or absent)
            value = slot.get(name)
            kind = value.__class__
            if value is None or ((kind is int or kind is float) and low <= value <= high):
                continue
            if readable is None:
                readable = list(slots)
            readable[i] = _without_odd_numbers(slot, SLOT_RANGES)
            break
    return data if readable is None else {**data, "slots": readable}


def _check_memory(data: dict[str, Any]) -> None:
    """The scaler's memory a snapshot may carry besides observed_idle_since."""
    for key in (JOINED_KEY, CONSOLIDATING):
        ids = data.get(key)
        if ids is not None and not (isinstance(ids, list) and all(isinstance(i, str) for i in ids)):
            raise SnapshotError(f"'{key}' must be a list of instance ids")
    intents = data.get(INTENTS)
    if intents is not None:
        if not isinstance(intents, dict):
            raise SnapshotError(f"'{INTENTS}' must be an object of type: {{token, count}}, got {type(intents).__name__}")
        for name, intent in intents.items():
            if not (isinstance(intent, dict) and isinstance(intent.get("token"), str) and isinstance(intent.get("count"), int)
                    and not isinstance(intent.get("count"), bool) and 0 < intent["count"] <= NUMBER_LIMIT):
                raise SnapshotError(f"'{INTENTS}.{name}' must be {{\"token\": TEXT, \"count\": a positive integer}}")
    _check_epochs(data, BACKOFF, "operation")
    ended = data.get(ENDED_KEY)
    if ended is not None:
        if not isinstance(ended, list):
            raise SnapshotError(f"'{ENDED_KEY}' must be a list of {{id, launched, fate, type, cloud}}, got {type(ended).__name__}")
        for n, entry in enumerate(ended):
            if not (isinstance(entry, dict) and isinstance(entry.get("id"), str) and _is_number(entry.get("launched"))
                    and abs(entry["launched"]) <= NUMBER_LIMIT and entry.get("fate") in ("joined", "lost")
                    and all(isinstance(entry.get(k), (str, type(None))) for k in ("type", "cloud"))):
                raise SnapshotError(f"'{ENDED_KEY}[{n}]' must be {{\"id\": TEXT, \"launched\": epoch seconds, \"fate\": \"joined\" or \"lost\", "
                                    f"\"type\" and \"cloud\": TEXT or null}}")
        twice = sorted(iid for iid, n in collections.Counter(entry["id"] for entry in ended).items() if n > 1)
        if twice:
            raise SnapshotError(f"'{ENDED_KEY}' names an instance twice: {twice[0]!r}")


def _check_epochs(data: dict[str, Any], key: str, what: str) -> None:
    """DATA[KEY], when there, maps WHAT (text) to epoch seconds."""
    times = data.get(key)
    if times is None:
        return
    if not isinstance(times, dict):
        raise SnapshotError(f"'{key}' must be an object of {what}: epoch seconds, got {type(times).__name__}")
    for name, when in times.items():
        if not _is_number(when) or abs(when) > NUMBER_LIMIT:
            raise SnapshotError(f"'{key}.{name}' must be epoch seconds (a number), got {_shown(when)}")


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def epoch(value: Any) -> Optional[float]:
    """EC2's LaunchTime (ISO 8601 as the CLI and JSON print it, or epoch seconds) as seconds."""
    if _is_number(value):
        return float(value)
    if isinstance(value, datetime.datetime):
        moment = value
    elif isinstance(value, str):
        text = value.strip()
        if text.endswith(("Z", "z")):
            text = text[:-1] + "+00:00"
        try:
            moment = datetime.datetime.fromisoformat(text)
        except ValueError:
            return None
    else:
        return None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=datetime.timezone.utc)  # EC2 times are UTC
    return moment.timestamp()


def farm_instances(instances: list[dict[str, Any]], name: str) -> list[dict[str, Any]]:
    """The instances of farm NAME that are pending or running; every other one is ignored."""
    return [i for i in instances if tag(i, FARM_TAG) == name and cloud_state(i) in LIVE]


def _number(value: Any, default: Number) -> Number:
    return value if _is_number(value) else default


def collector_started(collector: Any) -> Optional[float]:
    """When the (most recently started) collector started, or None when no ad says."""
    ads = collector if isinstance(collector, list) else [collector] if isinstance(collector, dict) else []
    starts = []
    for ad in ads:
        if not isinstance(ad, dict):
            continue
        if _is_number(ad.get("DaemonStartTime")):
            starts.append(float(ad["DaemonStartTime"]))
        elif _is_number(ad.get("MyCurrentTime")) and _is_number(ad.get("MonitorSelfAge")):
            # HTCondor 23.9's collector ad has no DaemonStartTime.
            starts.append(float(ad["MyCurrentTime"]) - float(ad["MonitorSelfAge"]))
    return max(starts) if starts else None


def _startd(name: str) -> str:
    """The startd's name in a slot's name ("slot1_2@w-i-1@host" -> "w-i-1@host")."""
    return name.split("@", 1)[1] if "@" in name else name


class JobScan(NamedTuple):
    running: dict[str, int]  # jobs on a worker (ON_WORKER) per startd (running_by_startd)
    waiting: list[dict[str, Any]]  # idle jobs that have waited waiting-time
    young: list[dict[str, Any]]  # idle jobs that have not (yet: no demand, but the negotiator may match them)


def _without_odd_numbers(ad: dict[str, Any], ranges: Ranges) -> dict[str, Any]:
    """AD without those of RANGES' keys whose values are no numbers in their range (read as absent), a copy if any."""
    odd = {key for key, (low, high) in ranges.items() if key in ad and not (_is_number(ad[key]) and low <= ad[key] <= high)}
    return {key: value for key, value in ad.items() if key not in odd} if odd else ad


def scan_jobs(jobs: list[dict[str, Any]], now: float, waiting_time: float) -> JobScan:
    """One pass over the queue (100,000 jobs and more on a big pool): the jobs on a worker (running,
    transferring output, suspended: ON_WORKER) counted per startd, the idle jobs that have waited
    long enough (since EnteredCurrentStatus, else QDate) collected; a time no 64-bit number holds
    is read as no time. An entry with JobCount N stands for N jobs identical in every attribute
    the planner reads (the schedd's group-by query, which discover uses for idle jobs)."""
    running: dict[str, int] = {}
    waiting: list[dict[str, Any]] = []
    young: list[dict[str, Any]] = []
    limit = NUMBER_LIMIT
    for place, job in enumerate(jobs):
        get = job.get
        entered, queued = get("EnteredCurrentStatus"), get("QDate")
        # The common case inline (64-bit numbers, or absent); anything else is read in full.
        if not ((entered is None or ((entered.__class__ is int or entered.__class__ is float) and -limit <= entered <= limit))
                and (queued is None or ((queued.__class__ is int or queued.__class__ is float) and -limit <= queued <= limit))):
            job = _without_odd_numbers(job, JOB_RANGES)
            get = job.get
            entered, queued = get("EnteredCurrentStatus"), get("QDate")
        count = 1
        if "JobCount" in job:
            count = job["JobCount"]
            if count.__class__ is not int or not 0 < count <= limit:
                raise SnapshotError(f"'jobs[{place}].JobCount' must be a positive integer (how many identical jobs the entry stands for), "
                                    f"got {_shown(count)}")
        status = get("JobStatus")
        if status == IDLE_JOB:
            # Past the checks above, a number is finite and within 64 bits.
            since: Any = entered if entered.__class__ is int or entered.__class__ is float else queued
            if (since.__class__ is int or since.__class__ is float) and now - since >= waiting_time:
                waiting.append(job)
            elif since.__class__ is int or since.__class__ is float:
                young.append(job)
        elif status in ON_WORKER:
            host = get("RemoteHost")
            if host.__class__ is str and host:
                at = host.find("@")
                key = host[at + 1:] if at >= 0 else host  # _startd, inline: one call per running job
                running[key] = running.get(key, 0) + count
    return JobScan(running, waiting, young)


def running_by_startd(jobs: list[dict[str, Any]]) -> dict[str, int]:
    """How many jobs the schedd places on each startd (running, transferring output or suspended:
    ON_WORKER; by the job's RemoteHost; an entry with JobCount N counts N), as scan_jobs counts
    them, for a reader that needs no more of the queue."""
    counts: dict[str, int] = {}
    for job in jobs:
        host = job.get("RemoteHost")
        if job.get("JobStatus") in ON_WORKER and isinstance(host, str) and host:
            key = _startd(host)
            count = job.get("JobCount", 1)
            counts[key] = counts.get(key, 0) + (count if count.__class__ is int and count > 0 else 1)
    return counts


def _hosts(slots: list[dict[str, Any]]) -> set[str]:
    """The startds and machines of SLOTS, as a running job's RemoteHost names them."""
    keys = {_startd(s["Name"]) for s in slots if isinstance(s.get("Name"), str)}
    return keys | {s["Machine"] for s in slots if isinstance(s.get("Machine"), str)}


def running_on(slots: list[dict[str, Any]], running: dict[str, int]) -> int:
    """The schedd's jobs (ON_WORKER) on the worker holding SLOTS: on one of its startds or machines."""
    return sum(running.get(key, 0) for key in _hosts(slots))


def running_unlisted(slots: list[dict[str, Any]], running: dict[str, int]) -> int:
    """The schedd's jobs (ON_WORKER) on startds that none of SLOTS (the pool's) belongs to: their
    ads are gone from the collector (expired in a network break, say) while the jobs run on."""
    listed = _hosts(slots)
    return sum(count for key, count in running.items() if key not in listed)


def current_slots(slots: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """A worker's slot ads less the dynamic slots its partitionable slot has since given back: a
    dynamic slot's ad the collector heard before its partitionable slot's newer ad, which no
    longer lists it among its children (ChildName), is stale. The startd deleted that slot when
    its claim ended; the collector keeps the old ad, Claimed, until it expires (ClassAdLifetime,
    15 minutes by default), and the worker would look busy all that time."""
    parents = {str(s["Name"]): s for s in slots if s.get("PartitionableSlot") and isinstance(s.get("Name"), str)}
    kept = []
    for s in slots:
        name = s.get("Name")
        if s.get("DynamicSlot") and isinstance(name, str) and "@" in name:
            slot, _, startd = name.partition("@")
            parent = parents.get(f"{slot.rsplit('_', 1)[0]}@{startd}")
            if parent is not None and _is_number(parent.get("LastHeardFrom")) and _is_number(s.get("LastHeardFrom")) \
                    and parent["LastHeardFrom"] > s["LastHeardFrom"] and name not in _listed(parent.get("ChildName")):
                continue
        kept.append(s)
    return kept


def _listed(value: Any) -> list[Any]:
    """An ad's list attribute (ChildName), or no items when it is anything else."""
    return value if isinstance(value, list) else []


class Memo:
    """What one plan() call reads more than once: an instance's launch time (classify, then
    black_holes) and the placement of each (type tag, cloud tag) pair (3,000 instances, a few types)."""

    def __init__(self, spec: ScaleSpec) -> None:
        self.spec = spec
        self.placed: dict[tuple[Optional[str], Optional[str]], WorkerType] = {}
        self.times: dict[Any, Optional[float]] = {}

    def placement(self, kind: Optional[str], cloud: Optional[str]) -> WorkerType:
        found = self.placed.get((kind, cloud))
        if found is None:
            found = self.placed[kind, cloud] = self.spec.placement(kind, cloud)
        return found

    def epoch(self, value: Any) -> Optional[float]:
        if value.__class__ is not str:
            return epoch(value)
        if value not in self.times:
            self.times[value] = epoch(value)
        return self.times[value]


def classify(instance: dict[str, Any], slots: list[dict[str, Any]], now: float, spec: ScaleSpec, collector_young: bool,
             running: int = 0, observed_since: Optional[float] = None, memo: Optional[Memo] = None,
             unplaced: Callable[[], int] = lambda: 0) -> Worker:
    """One farm instance's state, with its reason and the figures behind it. RUNNING: the jobs the
    schedd places there (ON_WORKER: running, transferring output, suspended); OBSERVED_SINCE:
    since when this scaler has seen it idle in every cycle (None: not before now); UNPLACED: how
    many jobs the schedd places on startds the collector lists no ad of (an instance without ads
    may be running them: it is never declared lost then), asked only for an instance that would
    be lost. A worker with a Drained slot is the scaler's to end only if the scaler drained it
    (_others_drain)."""
    memo = memo or Memo(spec)
    iid = str(instance["InstanceId"])
    slots = current_slots(slots) if slots else slots
    launched = memo.epoch(instance.get("LaunchTime"))
    age = now - launched if launched is not None else None
    states = [s.get("State") for s in slots]
    claimed = states.count("Claimed")
    on = tag(instance, CLOUD_TAG)
    placed = memo.placement(tag(instance, TYPE_TAG), on)
    # The cloud it runs on, where its drain is counted and its termination goes (and backs off),
    # even when no type of the farm may run there any more (its placement is then another cloud's).
    cloud = on if on is not None and on != placed.on and spec.cloud_named(on) is not None else placed.on

    def worker(state: WorkerState, reason: str, idle_since: Optional[float] = None, seen: Optional[float] = None) -> Worker:
        return Worker(iid, placed.name, state, reason, age, len(slots), claimed, idle_since, seen, cloud)

    if not slots:
        if age is None:
            # No launch time: it cannot be shown to be late, so it is not declared lost.
            return worker(WorkerState.BOOTING, "not in the pool yet; launch time unknown")
        if age >= spec.boot_timeout:
            if collector_young:
                why = f"not in the pool after {age:.0f}s, but the collector restarted less than {spec.boot_timeout:.0f}s ago"
                return worker(WorkerState.BOOTING, why)
            if unplaced():
                why = (f"no slot ads {age:.0f}s after launch, but the schedd has {unplaced()} job(s) on startds the collector does not list: "
                       "it may be running them")
                return worker(WorkerState.OTHER, why)
            return worker(WorkerState.LOST, f"not in the pool {age:.0f}s after launch (boot-timeout {spec.boot_timeout:.0f}s)")
        return worker(WorkerState.BOOTING, f"launched {age:.0f}s ago, not in the pool yet")
    if "Drained" in states:
        drained = all(s.get("State") == "Drained" and s.get("Activity") == "Idle" for s in slots)
        still = f"the schedd still has {running} job(s) there" if running else f"{claimed} slot(s) still claimed" if claimed else ""
        foreign = _others_drain(slots)
        if foreign is not None:
            # Not the scaler's to end, nor to count as its drain (consolidation's budget).
            done = "drained" if drained and not running else "being drained"
            return worker(WorkerState.OTHER, f"{done} by someone else ({foreign}){', ' + still if still else ''}: left alone")
        if running:
            return worker(WorkerState.DRAINING, f"draining, {still}")
        if drained:
            return worker(WorkerState.DRAINED, "every slot drained and idle")
        return worker(WorkerState.DRAINING, f"draining, {still}" if still else "draining")
    if claimed:
        return worker(WorkerState.BUSY, f"{claimed} of {len(slots)} slot(s) claimed")
    if running:
        # The slot ads lag (UPDATE_INTERVAL); the schedd knows its jobs now.
        return worker(WorkerState.BUSY, f"the schedd has {running} job(s) there (running, transferring output or suspended), "
                                        "whatever its slot ads say")
    if all(s == "Unclaimed" for s in states):
        entered = [float(s["EnteredCurrentState"]) for s in slots if _is_number(s.get("EnteredCurrentState"))]
        # Without the attribute the idle time is unknown: count it from now (never drained early).
        by_ads = max(entered) if len(entered) == len(slots) else now
        # A partitionable slot stays Unclaimed while its dynamic slots run jobs, so its
        # EnteredCurrentState is its join time: the end of its last job is when its number of
        # dynamic slots last changed (NumDynamicSlotsTime, seen on HTCondor 23.9). Without this
        # a worker would look idle for its whole life and be drained as its last job ends.
        changed = [float(s["NumDynamicSlotsTime"]) for s in slots if s.get("PartitionableSlot") and _is_number(s.get("NumDynamicSlotsTime"))]
        by_ads = max([by_ads, *changed])
        # The ads are only a lower bound: the scaler must also have seen it idle all along.
        seen = min(now, observed_since) if observed_since is not None else now
        since = max(by_ads, seen)
        why = f"every slot unclaimed for {now - by_ads:.0f}s by its ads, seen idle in every cycle for {now - seen:.0f}s"
        return worker(WorkerState.IDLE, why, since, seen)
    odd = sorted({str(s) for s in states if s != "Unclaimed"})
    return worker(WorkerState.OTHER, f"slot state(s) {', '.join(odd)}: neither idle nor busy")


def _others_drain(slots: list[dict[str, Any]]) -> Optional[str]:
    """Whose drain a worker's Drained SLOTS show when it is not the scaler's (their DrainReason
    does not start with DRAIN_REASON_PREFIX): that reason, quoted, or that they name none; None
    when each of them names the scaler's drain."""
    for s in slots:
        if s.get("State") == "Drained":
            reason = s.get("DrainReason")
            if not isinstance(reason, str):
                return "no DrainReason"
            if not reason.startswith(DRAIN_REASON_PREFIX):
                return f"reason {_shown(reason)}"
    return None


def client_token(name: str, first_attempt: float, count: int) -> str:
    """EC2's idempotency token (at most 64 ASCII characters) for one launch intent."""
    digest = hashlib.sha256(f"{name}\0{first_attempt:.6f}\0{count}".encode()).hexdigest()[:40]
    return f"vfarm-{digest}"


def launch_key(worker_type: WorkerType) -> str:
    """The back-off key of launches of one type; in a hybrid farm, of launches on one cloud."""
    return f"launch@{worker_type.on}" if worker_type.on is not None else f"launch:{worker_type.name}"


def terminate_key(cloud: Optional[str]) -> str:
    """The back-off key of terminations (in a hybrid farm: on one cloud)."""
    return f"terminate@{cloud}" if cloud is not None else "terminate"


class Fate(NamedTuple):
    """What became of one launch of the farm (LAUNCHED: epoch seconds), for the black hole."""

    launched: float
    id: str
    fate: str  # joined, lost or booting
    kind: Optional[str]  # its vfarm:type and vfarm:cloud tags
    cloud: Optional[str]
    listed: bool = True  # False: remembered, the cloud no longer lists it


def launch_fates(instances: list[dict[str, Any]], workers: dict[str, Worker], joined: set[str], spec: ScaleSpec,
                 memo: Optional[Memo] = None, remembered: Iterable[dict[str, Any]] = ()) -> dict[str, list[Fate]]:
    """The fate of each launch of the farm, per placement, newest first: from its instances (ended
    ones included) and, for those the cloud no longer lists, what the scaler REMEMBERED of them
    (ENDED_KEY entries: Nova forgets a deleted server at once, EC2 after an hour).

    Fate of a launch: joined (has been in the pool: known joined, or ended with `vfarm:end=drained`,
    or joined now), lost (`vfarm:end=lost`, lost now, or ended before ever joining without a tag of
    ours: it powered itself off, e.g. a failed final check), or booting (undecided)."""
    memo = memo or Memo(spec)
    fates: dict[str, list[Fate]] = {t.name: [] for t in spec.placements}
    listed: set[str] = set()

    def add(launched: float, iid: str, fate: str, kind: Any, cloud: Any, listed: bool = True) -> None:
        kind, cloud = (str(kind) if kind is not None else None), (str(cloud) if cloud is not None else None)
        fates[memo.placement(kind, cloud).name].append(Fate(launched, iid, fate, kind, cloud, listed))

    for inst in instances:
        tags = {t.get("Key"): t.get("Value") for t in inst.get("Tags") or () if isinstance(t, dict)}
        if tags.get(FARM_TAG) != spec.name:
            continue
        iid = str(inst.get("InstanceId"))
        listed.add(iid)
        launched = memo.epoch(inst.get("LaunchTime"))
        if launched is None:
            continue
        end = tags.get(END_TAG)
        current = workers.get(iid)
        state = current.state if current is not None else None
        if iid in joined or end == END_OF[WorkerState.DRAINED] or state in JOINED:
            fate = "joined"
        elif end == END_OF[WorkerState.LOST] or state is WorkerState.LOST:
            fate = "lost"
        elif cloud_state(inst) in LIVE:
            fate = "booting"
        else:
            fate = "lost"  # ended without our tag, never seen in the pool
        add(launched, iid, fate, tags.get(TYPE_TAG), tags.get(CLOUD_TAG))
    for entry in remembered:
        # A type the farm no longer lists is no placement's history (it would count under the first).
        if entry["id"] not in listed and spec.lists_type(entry.get("type")):
            add(float(entry["launched"]), entry["id"], entry["fate"], entry.get("type"), entry.get("cloud"), listed=False)
    for history in fates.values():
        history.sort(key=lambda f: (f.launched, f.id), reverse=True)
    return fates


def ended_memory(fates: dict[str, list[Fate]], spec: ScaleSpec) -> list[dict[str, Any]]:
    """The decided launches to remember for the next cycle (ENDED_KEY): the newest ENDED_KEEP of each
    placement, as many as the black hole's longest back-off counts (of the types the farm lists)."""
    kept = []
    for history in fates.values():
        decided = [f for f in history if f.fate != "booting" and spec.lists_type(f.kind)][:ENDED_KEEP]
        kept += [{"id": f.id, "launched": f.launched, "fate": f.fate, "type": f.kind, "cloud": f.cloud} for f in decided]
    return sorted(kept, key=lambda e: (e["launched"], e["id"]))


def black_holes(instances: list[dict[str, Any]], workers: dict[str, Worker], joined: set[str], spec: ScaleSpec,
                now: float, memo: Optional[Memo] = None, remembered: Iterable[dict[str, Any]] = ()) -> dict[str, BlackHole]:
    """The black-hole state of each type (in a hybrid farm: of each type on each cloud), from the
    fates of its launches (launch_fates)."""
    return _black_holes(launch_fates(instances, workers, joined, spec, memo, remembered), spec, now)


def _black_holes(fates: dict[str, list[Fate]], spec: ScaleSpec, now: float) -> dict[str, BlackHole]:
    """When the newest BLACK_HOLE_LOSSES decided launches of a placement were all lost, its launches
    stop for BLACK_HOLE_FIRST seconds, doubling per further loss up to BLACK_HOLE_MAX, counted from
    when the newest became lost (LaunchTime + boot-timeout); after that, one probe at a time until
    one joins. `lost` names the lost launches the cloud still lists (the scaler reads their consoles)."""
    holes = {}
    for name, history in fates.items():
        lost = [f.id for f in history if f.fate == "lost" and f.listed]
        streak, in_flight = 0, 0
        newest_lost: Optional[float] = None
        for f in history:
            if f.fate == "booting":
                in_flight += 1
                continue
            if f.fate != "lost":
                break
            streak += 1
            if newest_lost is None:
                newest_lost = f.launched + spec.boot_timeout
        streak_ids = [f.id for f in history if f.fate != "booting"][:streak]
        if streak < BLACK_HOLE_LOSSES:
            holes[name] = BlackHole(streak=streak, in_flight=in_flight, lost=lost, streak_ids=streak_ids)
            continue
        delay = min(BLACK_HOLE_MAX, BLACK_HOLE_FIRST * 2 ** (streak - BLACK_HOLE_LOSSES))
        until = (newest_lost if newest_lost is not None else now) + delay
        holes[name] = BlackHole(streak, delay, until, in_flight, active=True, blocked=now < until, probing=now >= until, lost=lost,
                                streak_ids=streak_ids)
    return holes


def _amounts(slots: Iterable[dict[str, Any]]) -> fit.Resources:
    """What SLOTS advertise in all (an absent amount: none)."""
    slots = list(slots)
    return fit.Resources(sum(int(_number(s.get("Cpus"), 0)) for s in slots), sum(int(_number(s.get("Memory"), 0)) for s in slots),
                         sum(int(_number(s.get("GPUs"), 0)) for s in slots))


def _slot_supply(slots: list[dict[str, Any]]) -> fit.Resources:
    """The unclaimed resources of an active worker's SLOTS; none while it drains (someone else's
    drain: the scaler's own are not active), as a drained startd takes no new job whatever a
    lagging Unclaimed ad of it says; none once its final check failed (its START refuses every
    job until the power-off)."""
    if any(s.get("State") == "Drained" or s.get(VERDICT_ATTRIBUTE) == "failed" for s in slots):
        return fit.Resources()
    return _amounts(s for s in slots if s.get("State") == "Unclaimed")


def _at_most(free: fit.Resources, slots: list[dict[str, Any]], worker_type: WorkerType) -> fit.Resources:
    """FREE, a worker's unclaimed resources by its SLOTS, as at most what a worker of WORKER_TYPE
    has (its CPUs; its memory and GPUs where the type declares them) less what its other current
    slots hold (every state but Unclaimed; a slot given back since is not counted: current_slots)."""
    held = _amounts(s for s in current_slots(slots) if s.get("State") != "Unclaimed")
    return fit.Resources(min(free.cpus, max(0, worker_type.cpus - held.cpus)),
                         free.memory if worker_type.memory is None else min(free.memory, max(0, worker_type.memory - held.memory)),
                         free.gpus if worker_type.gpus is None else min(free.gpus, max(0, worker_type.gpus - held.gpus)))


def _overstated(spec: ScaleSpec, iid: str, worker_type: WorkerType, claimed: fit.Resources, believed: fit.Resources) -> str:
    """A worker whose ads claimed more than its type has, for the plan's warning."""
    read = [f"{have} {unit} free read as {kept}" for have, kept, unit in ((claimed.cpus, believed.cpus, "CPUs"),
            (claimed.memory, believed.memory, "MB of memory"), (claimed.gpus, believed.gpus, "GPUs")) if have != kept]
    of = f"type {worker_type.kind}" if spec.typed else f"cpus-per-vm {spec.cpus_per_vm}"
    return f"{iid} ({of}: {', '.join(read)})"


def _known_types(spec: ScaleSpec, listed: list[dict[str, Any]], workers: list[Worker]) -> dict[str, WorkerType]:
    """The type each of WORKERS is known to have been launched as, by LISTED (the instances), whose
    figures its ads are read as at most (_at_most): the type its tag vfarm:type names where the farm
    lists that type, not the placement the worker counts under (a worker of a type no longer allowed
    on its cloud, or without a cloud tag, counts under another placement, of another type, yet has
    what it was launched with). A farm of one type: that type for every worker if the section sets
    cpus-per-vm, none on the default. A worker whose tag names no listed type: absent (its ads are
    read as they are)."""
    if not spec.typed:
        return {w.id: spec.types[0] for w in workers} if spec.cpus_per_vm_given else {}
    types = {t.name: t for t in spec.types}
    tagged = {str(i["InstanceId"]): types[kind] for i in listed if (kind := tag(i, TYPE_TAG)) in types}
    return {w.id: tagged[w.id] for w in workers if w.id in tagged}


def _others(listed: list[dict[str, Any]], spec: ScaleSpec, now: float, memo: Memo) -> list[dict[str, Any]]:
    """The farm's instances that are neither live nor ended (stopped, unknown, error...): no
    worker, shown for a look by hand."""
    others = []
    for inst in listed:
        state = cloud_state(inst)
        if tag(inst, FARM_TAG) != spec.name or state in LIVE or state in ENDED:
            continue
        launched = memo.epoch(inst.get("LaunchTime"))
        kind, cloud = tag(inst, TYPE_TAG), tag(inst, CLOUD_TAG)
        others.append({"instance": str(inst.get("InstanceId")), "state": state, "age": now - launched if launched is not None else None,
                       "reason": not_a_worker(state), "type": spec.worker_type(str(kind) if kind is not None else None).name,
                       "cloud": str(cloud) if cloud is not None else None})
    return others


def _unlisted_types(spec: ScaleSpec, listed: list[dict[str, Any]], workers: list[Worker]) -> dict[str, str]:
    """By id, the type tag of each of WORKERS whose vfarm:type names no type the farm lists (a
    farm file reloaded or restarted without it): what it has is unknown to the spec."""
    tagged = {str(i["InstanceId"]): str(kind) for i in listed if not spec.lists_type(kind := tag(i, TYPE_TAG))}
    return {w.id: tagged[w.id] for w in workers if w.id in tagged}


def plan(snapshot: dict[str, Any], spec: ScaleSpec) -> Plan:
    """The decisions for one snapshot (see the module's doc). Pure: reads nothing else.
    Read the farm, fit the waiting jobs, then decide in this order: launches (and holds), drains of
    idle workers, consolidation, terminations. Each step sees the decisions before it."""
    snapshot = check_snapshot(snapshot)
    now = float(snapshot["now"])
    warnings: list[str] = []
    memo = Memo(spec)
    scanned = scan_jobs(snapshot["jobs"], now, spec.waiting_time)
    started = collector_started(snapshot.get("collector"))
    instances, by_instance = _workers(snapshot, spec, now, scanned, started, memo)
    known = {str(i.get("InstanceId")) for i in snapshot["instances"] if tag(i, FARM_TAG) == spec.name}
    joined = {iid for iid in snapshot.get(JOINED_KEY) or () if iid in known} | {w.id for w in instances if w.state in JOINED}
    fates = launch_fates(snapshot["instances"], {w.id: w for w in instances}, joined, spec, memo, snapshot.get(ENDED_KEY) or ())
    holes = _black_holes(fates, spec, now)
    farm = _farm_counts(spec, now, instances, by_instance, holes, {k: float(v) for k, v in (snapshot.get(BACKOFF) or {}).items()},
                        _known_types(spec, snapshot["instances"], instances), _unlisted_types(spec, snapshot["instances"], instances))
    fitted, unfit = _fit_waiting(scanned, spec, warnings)
    if farm.unlisted and spec.max_cpus is not None:
        kinds = ", ".join(sorted(set(farm.unlisted.values())))
        warnings.append(f"{len(farm.unlisted)} live worker(s) of type(s) the farm no longer lists ({kinds}): max-cpus counts each as the CPUs "
                        f"its ads advertise, at least the largest listed type's")
    if farm.overstated:
        shown = farm.overstated[:3] + ([f"{len(farm.overstated) - 3} more"] if len(farm.overstated) > 3 else [])
        warnings.append(f"{len(farm.overstated)} worker(s) advertise more free resources than their type has, read as at most the type's "
                        f"less what their other slots hold (a misconfigured startd or type, or ads from another holder of the pool's "
                        f"token): {'; '.join(shown)}")
    if scanned.young:
        young = fit.rank(scanned.young, spec.placements, requirements=spec.typed)
        farm.young_kinds = frozenset(spec.worker_type(spec.placements[i].name).kind for g in young.groups for i in g.choices)

    launching = _launching(farm, fitted)
    decisions, intents = _launch_decisions(farm, launching, snapshot.get(INTENTS) or {})
    decisions += _idle_drains(farm, launching)
    merged = _consolidation(farm, launching, decisions, snapshot.get(CONSOLIDATING) or ())
    decisions += [Decision(Action.DRAIN, c.reason, instance=c.worker.id, type=c.worker.type, cloud=c.worker.cloud) for c in merged.chosen]
    decisions += _terminations(farm)

    counted = collections.Counter(w.state for w in instances)
    return Plan(
        now=now, decisions=decisions, instances=instances, waiting=fitted.count, demand=sum(f.demand for f in farm.figures.values()),
        supply=sum(f.supply for f in farm.figures.values()), active=farm.active, states={state.value: counted[state] for state in WorkerState},
        collector_started=started, warnings=warnings, types=farm.figures, unfit=unfit,
        # Every worker seen idle in this cycle, since when: the next cycle's observed_idle_since.
        observed_idle_since={w.id: w.seen_idle_since for w in instances if w.state is WorkerState.IDLE and w.seen_idle_since is not None},
        joined=sorted(joined), intents=intents, clouds=_cloud_figures(farm, launching, decisions), consolidating=merged.remembered,
        ended=ended_memory(fates, spec), others=_others(snapshot["instances"], spec, now, memo),
        young=sum(job.get("JobCount", 1) for job in scanned.young),
    )


def _workers(snapshot: dict[str, Any], spec: ScaleSpec, now: float, scanned: JobScan, started: Optional[float],
             memo: Memo) -> tuple[list[Worker], dict[str, list[dict[str, Any]]]]:
    """The farm's instances as workers in a state (by instance id), and the slot ads of each."""
    collector_young = started is not None and now - started < spec.boot_timeout
    by_instance: dict[str, list[dict[str, Any]]] = {}
    for slot in snapshot["slots"]:
        owner = slot.get(INSTANCE_ATTRIBUTE)
        if isinstance(owner, str):
            by_instance.setdefault(owner, []).append(slot)
    observed = snapshot.get(OBSERVED) or {}
    # Read only for an instance that would be lost (rare): a pass over every slot ad of the pool.
    unplaced = functools.cache(lambda: running_unlisted(snapshot["slots"], scanned.running))
    instances: list[Worker] = []
    for inst in sorted(farm_instances(snapshot["instances"], spec.name), key=lambda i: str(i["InstanceId"])):
        slots = by_instance.get(inst["InstanceId"], [])
        seen = observed.get(inst["InstanceId"])
        instances.append(classify(inst, slots, now, spec, collector_young, running_on(slots, scanned.running) if slots else 0,
                                  float(seen) if seen is not None else None, memo, unplaced))
    return instances, by_instance


def _fit_waiting(scanned: JobScan, spec: ScaleSpec, warnings: list[str]) -> tuple[fit.Fitted, list[Unfit]]:
    """The waiting jobs (idle for waiting-time), each on the type that holds it with the least
    waste; the jobs no type can hold, each reason once in WARNINGS."""
    fitted = fit.rank(scanned.waiting, spec.placements, requirements=spec.typed)
    unfit = [Unfit(tuple(ids), why, fitted.unfit_count[why]) for why, ids in fitted.unfit.items()]
    for u in unfit:
        warnings.append(f"{u.count} idle job(s) ({fit.some(u.jobs)}) {u.reason}: no worker type can ever run them, they are no demand")
    if fitted.unevaluated:
        warnings.append("jobs' Requirements not evaluated: HTCondor's ClassAd library (the htcondor package) is missing")
    return fitted, unfit


@dataclass
class _Farm:
    """One cycle's counts of the farm: what each placement holds, and the farm's caps left."""

    spec: ScaleSpec
    now: float
    instances: list[Worker]
    by_instance: dict[str, list[dict[str, Any]]]  # slot ads per instance id
    figures: dict[str, TypeFigures]  # per placement
    supply: dict[str, fit.Resources]  # free or booting, per placement
    backoff: dict[str, float]  # BACKOFF's keys: no such cloud call before then
    type_active: collections.Counter[str]
    cloud_active: collections.Counter[str]
    active: int
    live_cpus: int  # max-cpus counts what a cloud's quota in cores counts: every live worker, draining ones included
    known: dict[str, WorkerType] = field(default_factory=dict)  # by id, the type a worker is known to be: read as at most its amounts
    overstated: list[str] = field(default_factory=list)  # those whose ads claimed more (for the plan's warning)
    unlisted: dict[str, str] = field(default_factory=dict)  # live workers of a type no longer listed: their type tag (a warning)
    young_kinds: frozenset[str] = frozenset()  # the types some idle job younger than waiting-time fits

    @property
    def room_left(self) -> int:
        """Workers max-vms lets start."""
        return max(0, self.spec.max_vms - self.active)

    @property
    def cpu_room(self) -> Optional[int]:
        """CPUs max-cpus lets start (None: no max-cpus)."""
        return max(0, self.spec.max_cpus - self.live_cpus) if self.spec.max_cpus is not None else None


def _farm_counts(spec: ScaleSpec, now: float, instances: list[Worker], by_instance: dict[str, list[dict[str, Any]]], holes: dict[str, BlackHole],
           backoff: dict[str, float], known: dict[str, WorkerType], unlisted: Optional[dict[str, str]] = None) -> _Farm:
    """The farm's counts; KNOWN: by id, the type of each worker whose type the farm knows
    (_known_types), whose free resources are read as at most that type's (_at_most); UNLISTED: by
    id, the type tag of each live worker whose type the farm no longer lists (_unlisted_types)."""
    placements = spec.placements
    overstated: list[str] = []
    unlisted = unlisted or {}
    largest = max(t.cpus for t in spec.types)

    def type_of(w: Worker) -> WorkerType:
        """The type W was launched as: its known type, else its placement's."""
        return known.get(w.id) or spec.worker_type(w.type)

    def cpus_of(w: Worker) -> int:
        """W's CPUs as max-cpus counts them: a worker of a type no longer listed has what its ads
        advertise (TotalCpus), at least the largest listed type's CPUs."""
        if w.id not in unlisted:
            return type_of(w).cpus
        advertised = [_number(s.get("TotalCpus"), 0) for s in by_instance.get(w.id, ())]
        return max([largest, *(int(c) for c in advertised if 0 < c <= NUMBER_LIMIT)])

    figures = {p.name: TypeFigures(p.name, black_hole=holes[p.name], launch_backoff_until=backoff.get(launch_key(p), 0.0))
               for p in placements}
    supply = {p.name: fit.Resources() for p in placements}
    for w in instances:
        if w.state not in ACTIVE:
            continue
        figures[w.type].active += 1
        if w.state is WorkerState.BOOTING:
            supply[w.type] = supply[w.type] + fit.capacity(type_of(w))
        else:
            slots = by_instance.get(w.id, [])
            free = _slot_supply(slots)
            launched_as = known.get(w.id)
            if launched_as is not None:
                believed = _at_most(free, slots, launched_as)
                if believed != free:
                    overstated.append(_overstated(spec, w.id, launched_as, free, believed))
                free = believed
            supply[w.type] = supply[w.type] + free
    for name, free in supply.items():
        figures[name].supply = free.cpus
    # A type's max counts the workers launched as it (known), not those counted under its placements.
    type_active = collections.Counter({p.kind: 0 for p in placements})
    for w in instances:
        if w.state in ACTIVE:
            type_active[type_of(w).kind] += 1
    # A cloud's max counts the workers it holds: by the cloud each runs on, not its placement's.
    cloud_active = collections.Counter({c.name: 0 for c in spec.clouds})
    for w in instances:
        if w.state in ACTIVE and w.cloud is not None:
            cloud_active[w.cloud] += 1
    return _Farm(spec, now, instances, by_instance, figures, supply, backoff, type_active, cloud_active, active=sum(f.active for f in figures.values()),
                 live_cpus=sum(cpus_of(w) for w in instances), known=known, overstated=overstated,
                 unlisted={w.id: unlisted[w.id] for w in instances if w.id in unlisted and w.state in ACTIVE})


@dataclass
class _Launching:
    """What this cycle starts of each placement, and what held the rest back."""

    fitted: fit.Fitted
    over_threshold: bool
    allowed: dict[str, int]  # at most per placement, by its own limits (its max, its cloud's, black hole, back-off)
    held: dict[str, str]  # placements those limits hold at 0, and why
    shared: Shared
    assigned: fit.Assignment
    launches: dict[str, int]
    min_only: set[str]  # placements started only for min-vms


def _launching(farm: _Farm, fitted: fit.Fitted) -> _Launching:
    """How many of each placement start: what the waiting jobs need within every limit, then
    min-vms's workers of the first placements that may start."""
    spec = farm.spec
    over_threshold = fitted.count > spec.waiting_jobs_threshold
    allowed, held = _own_limits(farm)
    shared = _shared_limits(farm)
    assigned = fit.assign(fitted, spec.placements, farm.supply, allowed, farm.room_left, shared, farm.cpu_room)
    for name, fig in farm.figures.items():
        fig.waiting, fig.demand, fig.wanted = assigned.waiting[name], assigned.demand[name], assigned.wanted[name] if over_threshold else 0
    launches = {name: (n if over_threshold else 0) for name, n in assigned.launch.items()}
    short = spec.min_vms - farm.active - sum(launches.values())
    min_only: set[str] = set()
    for p in spec.placements:
        extra = min(short, allowed[p.name] - launches[p.name], farm.room_left - sum(launches.values()), _shared_room(shared, p.name, launches),
                    _cpu_room(farm, launches) // p.cpus)
        if extra > 0:
            min_only |= {p.name} if launches[p.name] == 0 else set()
            launches[p.name] += extra
            short -= extra
    return _Launching(fitted, over_threshold, allowed, held, shared, assigned, launches, min_only)


def _own_limits(farm: _Farm) -> tuple[dict[str, int], dict[str, str]]:
    """How many of each placement may start this cycle by its own limits (its type's max, its
    cloud's max, black hole, back-off), and why a placement held at 0 is. The farm's caps (max-vms,
    max-cpus) are fit.assign's to hand out; so are a hybrid farm's limits shared by several
    placements (a type's max over its clouds, a cloud's max over its types), in the farm's order."""
    spec, now = farm.spec, farm.now
    allowed: dict[str, int] = {}
    held: dict[str, str] = {}
    for p in spec.placements:
        f = farm.figures[p.name]
        t = spec.worker_type(p.kind)
        room = t.max - farm.type_active[p.kind] if t.max is not None else NUMBER_LIMIT
        cloud = spec.cloud_named(p.on)
        if cloud is not None and cloud.max is not None:
            room = min(room, cloud.max - farm.cloud_active[cloud.name])
        limit = max(0, room)
        hole = f.black_hole
        if hole.blocked:
            limit, held[p.name] = 0, (f"NOT launching, black hole back-off ({hole.streak} lost in a row) for {hole.until - now:.0f}s more")
        elif hole.probing:
            if hole.in_flight:
                limit, held[p.name] = 0, f"a probe worker is still booting after a black hole ({hole.streak} lost in a row)"
            else:
                limit = min(limit, 1)
        if now < f.launch_backoff_until:
            limit, held[p.name] = 0, f"launch postponed, cloud back-off for {f.launch_backoff_until - now:.0f}s more after a failed launch"
        allowed[p.name] = limit
    return allowed, held


def _launch_decisions(farm: _Farm, launching: _Launching, intents_seen: dict[str, Any]) -> tuple[list[Decision], dict[str, tuple[str, int]]]:
    """A launch (with its fallbacks), a hold or a forgotten launch intent per placement, and the
    launch intents kept for the next cycle."""
    spec, now, launches = farm.spec, farm.now, launching.launches
    intents = {name: (str(i["token"]), int(i["count"])) for name, i in intents_seen.items()}
    kept: dict[str, tuple[str, int]] = {}
    decisions: list[Decision] = []
    for p in spec.placements:
        f, n = farm.figures[p.name], launches[p.name]
        t = spec.worker_type(p.kind)
        intent = intents.get(p.name)
        of_type = (f" of type {p.kind}" if spec.typed else "") + (f" on cloud {p.on}" if p.on is not None else "")
        if n <= 0:
            if f.wanted > 0:
                reached = _reached(farm, p, launches)
                decisions.append(Decision(Action.HOLD, f"{f.wanted} more worker(s){of_type} wanted but {launching.held.get(p.name, reached)}",
                                          type=p.name, cloud=p.on))
                if intent is not None:
                    kept[p.name] = intent  # still wanted: retried with its token once allowed
            elif intent is not None:
                decisions.append(Decision(Action.FORGET, f"launch of {intent[1]} worker(s){of_type} of unknown outcome no longer wanted",
                                          type=p.name, count=intent[1], token=intent[0], cloud=p.on))
            continue
        if p.name in launching.min_only:
            why = f"min-vms is {spec.min_vms}, {farm.active} active"
        else:
            why = f"{f.waiting} waiting job(s) need {f.demand} CPU(s), {f.supply} free or booting: {f.wanted} more worker(s) of {t.cpus} CPUs"
            why = f"type {p.kind}: {why}" if spec.typed else why
            why = f"cloud {p.on}: {why}" if p.on is not None else why
            if f.wanted > n and not f.black_hole.probing:
                why += ", capped at " + _reached(farm, p, launches, capped=True)
        if f.black_hole.probing:
            why = f"probe after a black hole ({f.black_hole.streak} lost in a row); " + why
        passed_over = _held_before(farm, launching, p)
        if passed_over:
            why += "; instead of " + "; ".join(passed_over)
        if intent is not None and intent[1] <= n:
            token, n = intent[0], intent[1]  # the same call again: the cloud hands back what a lost reply started
            why += "; the same token as a launch of unknown outcome"
        else:
            token = client_token(_token_name(spec, p), now, n)
            if intent is not None:
                # A cloud refuses a token again with another count: what the first call started, if
                # anything, is listed by now or counted as a lost launch later.
                decisions.append(Decision(Action.FORGET, f"launch of {intent[1]} worker(s){of_type} of unknown outcome forgotten: {n} wanted "
                                                         f"now, launched with a new token", type=p.name, count=intent[1], token=intent[0], cloud=p.on))
        options = _fallback(farm, launching, p) if launching.over_threshold else ()
        decisions.append(Decision(Action.LAUNCH, why, type=p.name, count=n, token=token, fallback=options, cloud=p.on))
    return decisions, kept


def _held_before(farm: _Farm, launching: _Launching, placement: WorkerType) -> list[str]:
    """The placements held at 0 (black hole, back-off, a probe booting) that jobs PLACEMENT now
    holds went past (fit.assign's passed_over), each with why it is held."""
    spec = farm.spec
    placements = {p.name: p for p in spec.placements}
    shown = []
    for name in launching.assigned.passed_over.get(placement.name, ()):
        q = placements[name]
        if q.name in launching.held:
            what = " on ".join(filter(None, [f"type {q.kind}" if spec.typed else "", f"cloud {q.on}" if q.on is not None else ""]))
            shown.append(f"{what or q.name}: {launching.held[q.name]}")
    return shown


def _idle_drains(farm: _Farm, launching: _Launching) -> list[Decision]:
    """Workers idle for idle-time, the longest idle first, never below min-vms; while the queue is
    quiet, all of them. While jobs wait and max-vms or max-cpus holds back the workers of the types
    they need, as many idle workers of other types as make room (workers under max-vms; CPUs under
    max-cpus, less those of workers already on their way out): jobs that waited while a worker stayed
    idle for idle-time cannot run there (a farm of several types would starve otherwise); never one
    of a type waiting jobs are fitted to."""
    spec, now, launches, over_threshold = farm.spec, farm.now, launching.launches, launching.over_threshold
    # Held back: workers max-vms or max-cpus keeps from starting (not a type's own max, black hole or back-off).
    held_back: dict[str, int] = {}
    for p in spec.placements:
        capped = min(launching.assigned.capped[p.name], farm.figures[p.name].wanted - launches[p.name]) if p.name not in launching.held else 0
        if capped > 0:
            kind = spec.worker_type(p.name).kind
            held_back[kind] = held_back.get(kind, 0) + capped
    make_room = sum(held_back.values()) if over_threshold and farm.room_left - sum(launches.values()) <= 0 else 0
    make_cpus = 0
    if over_threshold and farm.cpu_room is not None and held_back:
        leaving_cpus = sum(spec.worker_type(w.type).cpus for w in farm.instances if w.state not in ACTIVE)
        needed_cpus = sum(n * spec.worker_type(kind).cpus for kind, n in held_back.items())
        free_cpus = _cpu_room(farm, launches)
        if free_cpus < max(spec.worker_type(kind).cpus for kind in held_back):  # max-cpus is what holds them back
            make_cpus = max(0, needed_cpus - free_cpus - leaving_cpus)
    if over_threshold and not make_room and not make_cpus:
        return []
    # Never a worker of a type some waiting job is fitted to: those jobs may be about to land there;
    # nor one of a type a job submitted less than waiting-time ago fits (the negotiator has not
    # matched it yet: it would wait for a new worker's boot).
    wanted_kinds = {spec.worker_type(p.name).kind for p in spec.placements if farm.figures[p.name].waiting > 0}
    candidates = [w for w in farm.instances if w.state is WorkerState.IDLE and w.idle_since is not None and now - w.idle_since >= spec.idle_time
                  and (not over_threshold or spec.worker_type(w.type).kind not in wanted_kinds)
                  and spec.worker_type(w.type).kind not in farm.young_kinds]
    # Nor one a waiting job idle for less than idle-time fits now, whatever the threshold says: the
    # negotiator may match it there at its next cycle; drained, the job would wait for a new worker's
    # boot, or for ever below waiting-jobs-threshold. Past idle-time the negotiator had its chance.
    matchable = _matchable(farm, launching.fitted, candidates)
    for w in candidates:
        if w.id in matchable:
            w.reason += "; kept: a waiting job idle for less than idle-time fits its free slot(s) (the negotiator may match it there)"
    candidates = [w for w in candidates if w.id not in matchable]
    candidates.sort(key=lambda w: (w.idle_since, w.id))
    room = max(0, farm.active - spec.min_vms)
    if over_threshold:
        # Enough workers for max-vms and enough CPUs for max-cpus, the longest idle first.
        freed, taken = 0, 0
        while taken < min(room, len(candidates)) and (taken < make_room or freed < make_cpus):
            freed += spec.worker_type(candidates[taken].type).cpus
            taken += 1
        room = taken
    needed = ", ".join(f"{n} of type {kind}" for kind, n in held_back.items())
    limits = " and ".join(limit for limit, binds in ((f"max-vms {spec.max_vms}", make_room), (f"max-cpus {spec.max_cpus}", make_cpus)) if binds)
    decisions: list[Decision] = []
    for w in candidates[:room]:
        assert w.idle_since is not None
        why = f"idle for {now - w.idle_since:.0f}s (idle-time {spec.idle_time:.0f}s)"
        if over_threshold:
            why += f"; room under {limits} for the workers the waiting jobs need ({needed})"
        decisions.append(Decision(Action.DRAIN, why, instance=w.id, type=w.type, cloud=w.cloud))
    for w in candidates[room:]:
        if not over_threshold:
            w.reason += f"; kept for min-vms {spec.min_vms}"
    return decisions


def _matchable(farm: _Farm, fitted: fit.Fitted, workers: list[Worker]) -> set[str]:
    """Those of WORKERS (idle) one of whose unclaimed slots holds a waiting job of FITTED that
    has been idle for less than idle-time and may run on the worker's type."""
    if not workers:
        return set()
    horizon = farm.now - farm.spec.idle_time
    needs: dict[int, set[fit.Resources]] = {}  # by placement index: what such jobs ask
    for group in fitted.groups:
        if group.ages and max(group.ages) > horizon:
            r = group.request
            for i in group.choices:
                needs.setdefault(i, set()).add(fit.Resources(r.cpus, r.memory or 0, r.gpus))
    # Only the smallest asks matter (none smaller in every amount): a few, however long the queue.
    least: dict[int, list[fit.Resources]] = {}
    for i, asks in needs.items():
        front = least[i] = []
        for a in sorted(asks, key=lambda r: (r.cpus, r.memory, r.gpus)):  # any that holds less comes before
            if not any(b.memory <= a.memory and b.gpus <= a.gpus for b in front):
                front.append(a)
    index = {p.name: i for i, p in enumerate(farm.spec.placements)}
    return {w.id for w in workers if any(_slot_holds(s, ask) for ask in least.get(index.get(w.type, -1), ())
                                         for s in farm.by_instance.get(w.id, []) if s.get("State") == "Unclaimed")}


def _slot_holds(slot: dict[str, Any], ask: fit.Resources) -> bool:
    """Whether SLOT's advertised resources hold ASK (an amount the slot does not advertise: no bound)."""
    return all(need <= _number(slot.get(key), need) for key, need in (("Cpus", ask.cpus), ("Memory", ask.memory), ("GPUs", ask.gpus)))


def _consolidation(farm: _Farm, launching: _Launching, decisions: list[Decision], remembered: Iterable[str]) -> consolidate.Consolidation:
    """Half-empty workers to drain so that the others fill (scaler/consolidate.py), within what
    min-vms leaves beside the drains already decided. REMEMBERED: the ids earlier cycles chose."""
    spec = farm.spec
    leaving = [str(d.instance) for d in decisions if d.action is Action.DRAIN]
    # Quiet: no launch, no waiting jobs over the threshold, and no job just submitted that a worker
    # could take (it is not demand yet, but it may land on the free CPUs consolidation counts).
    quiet = not launching.over_threshold and not any(d.action is Action.LAUNCH for d in decisions) and not farm.young_kinds
    loads = {w.id: consolidate.load_of(farm.by_instance.get(w.id, ()), farm.now) for w in farm.instances if w.state in consolidate.OPEN}
    for iid, launched_as in farm.known.items():  # no more idle CPUs than its type has, less those in use (as _at_most)
        if iid in loads:
            load = loads[iid]
            loads[iid] = replace(load, free=min(load.free, max(0, launched_as.cpus - load.used)))
    return consolidate.choose(farm.instances, loads, remembered, spec.idle_cpus_budget, spec.disruption_budget,
                              max(0, farm.active - spec.min_vms - len(leaving)), quiet, leaving)


def _terminations(farm: _Farm) -> list[Decision]:
    """Lost and drained instances, never one holding a claim; held while the cloud backs off."""
    decisions: list[Decision] = []
    for w in farm.instances:
        if w.state in END_OF and w.claimed == 0:
            terminate_backoff = farm.backoff.get(terminate_key(w.cloud), 0.0)
            if farm.now < terminate_backoff:
                decisions.append(Decision(Action.HOLD, f"terminate postponed: cloud back-off for {terminate_backoff - farm.now:.0f}s more; {w.reason}",
                                          instance=w.id, type=w.type, cloud=w.cloud))
            else:
                decisions.append(Decision(Action.TERMINATE, w.reason, instance=w.id, type=w.type, cloud=w.cloud))
    return decisions


def _cloud_figures(farm: _Farm, launching: _Launching, decisions: list[Decision]) -> dict[str, CloudFigures]:
    """Per cloud of a hybrid farm: its workers by state, what this plan starts there and what
    the launches' fallbacks would start there instead."""
    spec, launches = farm.spec, launching.launches
    fallen: dict[str, int] = {}
    for option in (o for d in decisions if d.action is Action.LAUNCH for o in d.fallback):
        if option.cloud is not None:
            fallen[option.cloud] = fallen.get(option.cloud, 0) + option.count
    clouds = {c.name: CloudFigures(c.name, c.kind, c.max, farm.cloud_active[c.name], sum(launches[p.name] for p in spec.placements if p.on == c.name),
                                   fallen.get(c.name, 0), {state.value: 0 for state in WorkerState},
                                   farm.backoff.get(f"launch@{c.name}", 0.0), farm.backoff.get(terminate_key(c.name), 0.0))
              for c in spec.clouds}
    for w in farm.instances:
        if w.cloud in clouds:
            clouds[w.cloud].states[w.state.value] += 1
    return clouds


# Limits shared by several placements: (the placements, in order, and how many more may start among them).
Shared = list[tuple[list[str], int]]


def _shared_limits(farm: _Farm) -> Shared:
    """A hybrid farm's limits over several placements: each type's max over its clouds, each cloud's max over its types."""
    spec, type_active, cloud_active = farm.spec, farm.type_active, farm.cloud_active
    if not spec.hybrid:
        return []
    shared: Shared = []
    for t in spec.types:
        members = [p.name for p in spec.placements if p.of == t.name]
        if t.max is not None and len(members) > 1:
            shared.append((members, max(0, t.max - type_active[t.name])))
    for c in spec.clouds:
        members = [p.name for p in spec.placements if p.on == c.name]
        if c.max is not None and len(members) > 1:
            shared.append((members, max(0, c.max - cloud_active[c.name])))
    return shared


def _shared_room(shared: Shared, name: str, launches: dict[str, int]) -> int:
    """How many more NAME may start within the shared limits it is part of."""
    return min([limit - sum(launches[m] for m in members) for members, limit in shared if name in members], default=NUMBER_LIMIT)


def _cpu_room(farm: _Farm, launches: dict[str, int]) -> int:
    """CPUs max-cpus leaves for more launches beyond LAUNCHES (no max-cpus: no limit)."""
    if farm.cpu_room is None:
        return NUMBER_LIMIT
    return max(0, farm.cpu_room - sum(n * farm.spec.worker_type(name).cpus for name, n in launches.items()))


def _reached(farm: _Farm, placement: WorkerType, launches: dict[str, int], capped: bool = False) -> str:
    """Which maximum binds PLACEMENT beside LAUNCHES: its type's max, its cloud's max, max-cpus,
    or max-vms. CAPPED: the short form, for a launch capped at it."""
    spec, type_active, cloud_active, active, live_cpus = farm.spec, farm.type_active, farm.cloud_active, farm.active, farm.live_cpus
    t = spec.worker_type(placement.kind)
    cloud = spec.cloud_named(placement.on)
    if t.max is not None and type_active[t.name] + sum(launches[p.name] for p in spec.placements if p.kind == t.name) >= t.max:
        return f"max {t.max}" if capped else f"max {t.max}{f' of type {t.name}' if spec.typed else ''} reached ({type_active[t.name]} active)"
    on_cloud = sum(launches[p.name] for p in spec.placements if p.on == placement.on)
    if cloud is not None and cloud.max is not None and cloud_active[cloud.name] + on_cloud >= cloud.max:
        return f"max {cloud.max} on cloud {cloud.name}" + ("" if capped else f" reached ({cloud_active[cloud.name]} active)")
    planned = sum(n * spec.worker_type(name).cpus for name, n in launches.items())
    if spec.max_cpus is not None and live_cpus + planned + placement.cpus > spec.max_cpus:
        figures = f"{live_cpus} CPUs live" + (f", {planned} in this plan's launches" if planned else "")
        return f"max-cpus {spec.max_cpus} ({figures})" if capped else f"max-cpus {spec.max_cpus} reached ({figures})"
    return f"max-vms {spec.max_vms} ({active} active)" if capped else f"max-vms {spec.max_vms} reached ({active} active)"


def _fallback(farm: _Farm, launching: _Launching, refused: WorkerType) -> tuple[LaunchOption, ...]:
    """What to start instead if the cloud refuses REFUSED for quota or capacity: the plan again
    without that type (in a hybrid farm: without any type on that cloud, so the next clouds take
    the rest), with the other launches of this plan going ahead: what they start is booting supply
    and uses up their limits and the farm's caps, so the fallback and they never exceed them."""
    spec = farm.spec
    if len(spec.placements) == 1:
        return ()
    closed = {p.name for p in spec.placements if p.name == refused.name or (refused.on is not None and p.on == refused.on)}
    going = {p.name: launching.launches[p.name] for p in spec.placements if p.name not in closed and launching.launches[p.name] > 0}
    supply = dict(farm.supply)
    for name, n in going.items():
        one = fit.capacity(spec.worker_type(name))
        supply[name] = supply[name] + fit.Resources(n * one.cpus, n * one.memory, n * one.gpus)
    allowed = {name: 0 if name in closed else max(0, limit - going.get(name, 0)) for name, limit in launching.allowed.items()}
    shared = [(members, max(0, limit - sum(going.get(m, 0) for m in members))) for members, limit in launching.shared]
    room = max(0, farm.room_left - sum(going.values()))
    cpu_room = farm.cpu_room
    if cpu_room is not None:
        cpu_room = max(0, cpu_room - sum(n * spec.worker_type(name).cpus for name, n in going.items()))
    instead = fit.assign(launching.fitted, spec.placements, supply, allowed, room, shared, cpu_room)
    options = []
    for p in spec.placements:
        more = instead.launch[p.name]
        if p.name not in closed and more > 0:
            options.append(LaunchOption(p.name, more, client_token(f"{_token_name(spec, p)}:instead-of:{refused.name}", farm.now, more), p.on))
    return tuple(options)


def _token_name(spec: ScaleSpec, worker_type: WorkerType) -> str:
    """What a launch's token is made from: the farm, and its type (a placement, TYPE@CLOUD, in a
    hybrid farm) when the farm lists types or clouds."""
    return f"{spec.name}:{worker_type.name}" if spec.typed or spec.hybrid else spec.name
