"""Which worker type each waiting job goes to, and how many workers of each type the queue needs.

Rules (pure; the planner calls them with what one snapshot saw):
- A job asks for RequestCpus (default 1, rounded up), RequestMemory (MB) and RequestGPUs (default 0).
  A number is taken as it is; an expression (`condor_q -json` prints it as "/Expr(...)/") is
  evaluated with HTCondor's own ClassAd library over the job's attributes it names. A type holds
  the job when it offers at least those CPUs and GPUs, and the memory when the type declares its
  memory (a type without `memory` is never checked on it, as a farm of one type never was).
- Requirements are evaluated, with HTCondor's ClassAd library, against what a worker of the type is
  known to advertise: Cpus, Memory (when declared), GPUs and VfarmWorkerType (the type's name). The
  job side carries the attributes the expression names. A type is refused only when the expression
  is false; a clause on anything else a worker would advertise (Arch, OpSys, Disk,
  HasFileTransfer, ...) is undefined here and so never refuses a type; an expression that tests for
  undefined (`=?=`, `=!=`, `is`, `isnt`, `?:`, isUndefined(), ifThenElse(), ...) would turn such a
  clause into false, so it refuses no type at all. A farm of one type (no `types`) evaluates no
  Requirements and checks only CPUs, as before types. Without the ClassAd library
  Requirements are not evaluated at all (a warning says so) and requests that are expressions count
  as their defaults.
- Among the types that hold a job, the one with the least waste is chosen: the share of the type's
  CPUs (memory, GPUs: those it declares) left over once as many such jobs as fit are packed on one
  worker, averaged over those resources; then the lowest cost, then the order of the list.
- Per type, the workers wanted are the most of, per resource, (asked - free or booting) / offered,
  rounded up. When a type may start fewer by its own limit (its max, its black hole or back-off),
  the jobs it cannot hold move to their next choice; jobs no other type holds stay and are held.
  Free slots of one type are not counted for jobs that chose another.
- The farm's caps (max-vms, a count of workers; max-cpus, their CPUs) are handed out in queue
  order: the jobs that waited longest (EnteredCurrentStatus, else QDate) get their workers first,
  whatever their type; a younger job gets only what is left that no older one could use. When a
  cap is what binds, jobs stay with their type (held), as another type has no room either. Ages
  are exact up to AGE_BUCKETS distinct ones, beyond that compared at 1/AGE_BUCKETS of the span
  between the oldest and the youngest waiting job (the planner's time stays that of a few groups).
- When max-vms binds (the least-waste workers would be more than it leaves), a worker is the
  scarce resource: the jobs that need a new worker (past the free or booting resources of their
  least-waste type) go to the type that holds all the waiting jobs of their request in the fewest
  workers (ties: least waste, the smallest such type they fill), where they fill workers together;
  when jobs are still held back that way, to the type that holds the most of them per worker.
  Where no cap binds, every job keeps its least-waste type.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Optional

from ..config.scale import DEFAULT_TYPE, WorkerType
from .model import TYPE_ATTR

EXPR = re.compile(r"^/Expr\((.*)\)/$", re.S)
NAMES = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
# ClassAd words that are not attribute names.
KEYWORDS = {"MY", "TARGET", "true", "false", "undefined", "error", "isnt", "is", "parent"}
# Operators and functions that turn an undefined attribute into true or false (`X =!= undefined`):
# on the few attributes a type is known to advertise, such an expression says nothing of a worker.
UNDEFINED_AWARE = re.compile(r"=\?=|=!=|\bisnt\b|\bis\b|\?|\b(isUndefined|isError|ifThenElse|isBoolean|isInteger|isReal|isString|isList|isClassAd)\s*\(", re.I)


AGE_BUCKETS = 256  # distinct ages the queue order tells apart at most (see Fitted.queue_order)
NUMBER_LIMIT = 2**63


@dataclass(frozen=True)
class Resources:
    cpus: int = 0
    memory: int = 0
    gpus: int = 0

    def __add__(self, other: Resources) -> Resources:
        return Resources(self.cpus + other.cpus, self.memory + other.memory, self.gpus + other.gpus)


def capacity(worker_type: WorkerType) -> Resources:
    return Resources(worker_type.cpus, worker_type.memory or 0, worker_type.gpus or 0)


@dataclass(frozen=True)
class Request:
    cpus: int
    memory: Optional[int]
    gpus: int
    requirements: Optional[str]  # the expression's text; None: no Requirements to evaluate
    context: tuple[tuple[str, Any], ...] = ()  # the job's attributes the expression names


def _expression(value: Any) -> Optional[str]:
    if isinstance(value, str):
        found = EXPR.match(value)
        if found:
            return found.group(1)
    return None


def _context(job: dict[str, Any], text: str) -> tuple[tuple[str, Any], ...]:
    """The job's attributes TEXT names, as a hashable tuple (scalars only)."""
    names = sorted({n for n in NAMES.findall(text) if n not in KEYWORDS and n in job})
    return tuple((n, job[n]) for n in names if isinstance(job[n], (str, int, float, bool)))


class ClassAds:
    """HTCondor's ClassAd library for expressions, with results cached per expression and context."""

    def __init__(self) -> None:
        try:
            import classad2
        except ImportError:
            self.lib: Any = None
        else:
            self.lib = classad2
        self._values: dict[tuple[str, tuple[tuple[str, Any], ...]], Any] = {}
        self._matches: dict[tuple[Request, str], bool] = {}

    def _ad(self, context: tuple[tuple[str, Any], ...]) -> Any:
        ad = self.lib.ClassAd()
        for key, value in context:
            text = _expression(value)
            ad[key] = self.lib.ExprTree(text) if text is not None else value
        return ad

    def value(self, job: dict[str, Any], attr: str) -> Any:
        """ATTR of JOB: as it is, or evaluated when it is an expression (None when it cannot be)."""
        raw = job.get(attr)
        text = _expression(raw)
        if text is None:
            return raw
        if self.lib is None:
            return None
        key = (text, _context(job, text))
        if key not in self._values:
            try:
                ad = self._ad(key[1])
                ad["_vfarm_value"] = self.lib.ExprTree(text)
                result = ad.eval("_vfarm_value")
            except Exception:  # noqa: BLE001 - an expression this library cannot read: unknown
                result = None
            self._values[key] = result if isinstance(result, (int, float)) and not isinstance(result, bool) else None
        return self._values[key]

    def refuses(self, request: Request, worker_type: WorkerType) -> bool:
        """Whether the job's Requirements are false on what a worker of WORKER_TYPE advertises."""
        if request.requirements is None or self.lib is None or UNDEFINED_AWARE.search(request.requirements):
            return False
        key = (request, worker_type.kind)  # the placements of one type on several clouds answer alike
        if key not in self._matches:
            try:
                job = self._ad(request.context)
                job["RequestCpus"] = request.cpus
                job["RequestGPUs"] = request.gpus
                if request.memory is not None:
                    job["RequestMemory"] = request.memory
                job["Requirements"] = self.lib.ExprTree(request.requirements)
                machine = {"Cpus": worker_type.cpus, TYPE_ATTR: worker_type.kind}
                if worker_type.gpus is not None:
                    machine["GPUs"] = worker_type.gpus
                if worker_type.memory is not None:
                    machine["Memory"] = worker_type.memory
                # As the matchmaker reads it: a name without MY. or TARGET. is the job's
                # attribute, else the machine's (`VfarmWorkerType == "large"` as written).
                for name, value in machine.items():
                    if name not in job:
                        job[name] = value
                result = job.lookup("Requirements").eval(job, self.lib.ClassAd(machine))
            except Exception:  # noqa: BLE001 - unreadable: it refuses nothing
                result = None
            self._matches[key] = result is False
        return self._matches[key]


_PLAIN = (int, float, bool)  # request values read the same whatever the job's other attributes


def _number(value: Any) -> Optional[int]:
    """VALUE as a request, rounded up: a number from 0 (a negative request would cancel other
    jobs' demand) to NUMBER_LIMIT (more than any type offers); None for anything else (NaN, text,
    a list: the request's default then)."""
    if isinstance(value, (int, float)) and not isinstance(value, bool) and value == value:
        return 0 if value <= 0 else NUMBER_LIMIT if value >= NUMBER_LIMIT else math.ceil(value)
    return None


def request_of(job: dict[str, Any], ads: ClassAds, requirements: bool = True) -> Request:
    cpus = _number(ads.value(job, "RequestCpus"))
    memory = _number(ads.value(job, "RequestMemory"))
    gpus = _number(ads.value(job, "RequestGPUs"))
    text = _expression(job.get("Requirements")) if requirements else None
    return Request(cpus if cpus is not None else 1, memory, gpus if gpus is not None else 0, text, _context(job, text) if text is not None else ())


def holds(worker_type: WorkerType, request: Request) -> bool:
    return (request.cpus <= worker_type.cpus and (worker_type.gpus is None or request.gpus <= worker_type.gpus)
            and (worker_type.memory is None or request.memory is None or request.memory <= worker_type.memory))


def waste(worker_type: WorkerType, request: Request) -> float:
    """The share of a worker left over when packed with as many such jobs as fit (see the module's doc)."""
    dims = [(worker_type.cpus, max(0, request.cpus))]
    if worker_type.memory is not None:
        dims.append((worker_type.memory, max(0, request.memory or 0)))
    if worker_type.gpus:
        dims.append((worker_type.gpus, max(0, request.gpus)))
    fits = min((cap // need for cap, need in dims if need > 0), default=1)
    return sum((cap - fits * need) / cap for cap, need in dims) / len(dims)


@dataclass
class Group:
    """Waiting jobs that ask for the same: their request, their types in order of choice, how many."""

    request: Request
    choices: tuple[int, ...]  # indices into the farm's types
    count: int
    ages: dict[float, int] = field(default_factory=dict)  # since when (EnteredCurrentStatus, else QDate) -> how many


@dataclass
class Fitted:
    groups: list[Group]
    unfit: dict[str, list[str]]  # why -> job ids ("cluster.proc"; a group of jobs: its JobIds, "1.0 ... 1.4999")
    count: int  # waiting jobs some type holds
    unevaluated: bool = False  # Requirements seen but no ClassAd library to evaluate them
    unfit_count: dict[str, int] = field(default_factory=dict)  # why -> how many jobs
    _queue: Optional[list[tuple[float, int, int]]] = field(default=None, repr=False)  # queue_order's, worked out once

    def queue_order(self) -> list[tuple[float, int, int]]:
        """The waiting jobs as (since, group index, how many), the oldest first. Up to AGE_BUCKETS
        distinct ages they are exact; beyond that (a queue trickling in one job a second), ages are
        compared at 1/AGE_BUCKETS of the span between the oldest and the youngest, so that a binding
        cap costs the planner the same on 100,000 distinct ages as on a few hundred."""
        if self._queue is None:
            ages = [group.ages or {0.0: group.count} for group in self.groups]
            if sum(len(a) for a in ages) <= AGE_BUCKETS:
                entries = [(since, g, n) for g, a in enumerate(ages) for since, n in a.items()]
            else:
                oldest, newest = min(min(a) for a in ages), max(max(a) for a in ages)
                scale = AGE_BUCKETS / (newest - oldest) if newest > oldest else 0.0
                entries = []
                for g, a in enumerate(ages):
                    counts = [0] * (AGE_BUCKETS + 1)
                    for since, n in a.items():
                        counts[int((since - oldest) * scale)] += n
                    entries += [(oldest + bucket / scale if scale else oldest, g, n) for bucket, n in enumerate(counts) if n]
            # Ties of age go by the request itself, not by where the schedd listed the jobs: the
            # same queue in another order plans the same.
            keys = [repr(group.request) for group in self.groups]
            self._queue = sorted(entries, key=lambda e: (e[0], keys[e[1]], e[2]))
        return self._queue


def _unfit_reason(request: Request, types: tuple[WorkerType, ...]) -> str:
    if all(t.kind == DEFAULT_TYPE for t in types):
        return f"ask for more than cpus-per-vm ({types[0].cpus}) CPUs"
    if request.cpus > max(t.cpus for t in types):
        return f"ask for {request.cpus} CPUs, more than any type offers ({max(t.cpus for t in types)})"
    declared = [t.memory for t in types if t.memory is not None]
    if request.memory is not None and declared and len(declared) == len(types) and request.memory > max(declared):
        return f"ask for {request.memory} MB of memory, more than any type offers ({max(declared)} MB)"
    if request.gpus > max(t.gpus or 0 for t in types):
        return f"ask for {request.gpus} GPU(s), more than any type offers ({max(t.gpus or 0 for t in types)})"
    if any(holds(t, request) for t in types):
        return "have Requirements that every type holding their CPUs, memory and GPUs refuses (on Cpus, Memory, GPUs, VfarmWorkerType)"
    return f"ask for {request.cpus} CPUs, {request.memory if request.memory is not None else 'no'} MB and {request.gpus} GPU(s): no one type offers all"


def rank(jobs: list[dict[str, Any]], types: tuple[WorkerType, ...], ads: Optional[ClassAds] = None,
         requirements: bool = True) -> Fitted:
    """The waiting JOBS grouped by what they ask, each group with its types in order of choice.
    An entry with JobCount N (a group of identical jobs, as the schedd's group-by query gives it)
    counts as N jobs."""
    ads = ads or ClassAds()
    groups: dict[Request, Group] = {}
    unfit: dict[str, list[str]] = {}
    unfit_count: dict[str, int] = {}
    reasons: dict[Request, str] = {}  # a group's reason is worked out once, not once per job
    count = 0
    unevaluated = False
    plain: dict[tuple[Any, ...], Group] = {}  # groups of requests of plain numbers, by their raw values: most jobs
    for job in jobs:
        get = job.get
        raw = (get("RequestCpus"), get("RequestMemory"), get("RequestGPUs"), get("Requirements") if requirements else None)
        try:
            group = plain.get(raw)
        except TypeError:  # a list or mapping (a ClassAd list, printed as JSON): read below, never a short cut
            group = None
        if group is None:
            request = request_of(job, ads, requirements)
            group = groups.get(request)
            if group is None:
                ranked = sorted((waste(t, request), t.cost, i) for i, t in enumerate(types) if holds(t, request) and not ads.refuses(request, t))
                group = groups[request] = Group(request, tuple(i for _w, _c, i in ranked), 0)
                unevaluated |= request.requirements is not None and ads.lib is None
            if all(value is None or value.__class__ in _PLAIN for value in raw):
                plain[raw] = group  # an expression depends on other attributes: never a short cut
        n = get("JobCount", 1)
        if not group.choices:
            why = reasons.get(group.request)
            if why is None:
                why = reasons[group.request] = _unfit_reason(group.request, types)
            ids = get("JobIds") if "JobCount" in job else None
            unfit.setdefault(why, []).append(str(ids) if ids is not None else f"{get('ClusterId', '?')}.{get('ProcId', '?')}")
            unfit_count[why] = unfit_count.get(why, 0) + n
            continue
        group.count += n
        count += n
        since = get("EnteredCurrentStatus")
        if not (since.__class__ is int or since.__class__ is float):
            since = get("QDate")
            if not (since.__class__ is int or since.__class__ is float):
                since = 0.0
        ages = group.ages
        ages[since] = ages.get(since, 0) + n
    return Fitted([g for g in groups.values() if g.choices], unfit, count, unevaluated, unfit_count)


def some(ids: list[str] | tuple[str, ...], shown: int = 3) -> str:
    """A few job ids for a message."""
    return ", ".join(ids[:shown]) + (f" and {len(ids) - shown} more" if len(ids) > shown else "")


@dataclass
class Assignment:
    launch: dict[str, int] = field(default_factory=dict)  # workers to start per type
    wanted: dict[str, int] = field(default_factory=dict)  # workers the jobs kept by each type need
    waiting: dict[str, int] = field(default_factory=dict)
    demand: dict[str, int] = field(default_factory=dict)  # CPUs
    capped: dict[str, int] = field(default_factory=dict)  # wanted workers max-vms or max-cpus holds back (not the type's own limit)
    # Per type, the types ahead of it in its jobs' choices whose own limit sent those jobs on to it.
    passed_over: dict[str, tuple[str, ...]] = field(default_factory=dict)


def _wanted(worker_type: WorkerType, asked: Resources, free: Resources) -> int:
    offer = capacity(worker_type)
    need = [(asked.cpus - free.cpus, offer.cpus)]
    if worker_type.memory is not None:
        need.append((asked.memory - free.memory, offer.memory))
    if worker_type.gpus:
        need.append((asked.gpus - free.gpus, offer.gpus))
    return max([0, *(math.ceil(short / per) for short, per in need if short > 0)])


def assign(fitted: Fitted, types: tuple[WorkerType, ...], supply: dict[str, Resources], allowed: dict[str, int], room: int,
           shared: Sequence[tuple[Sequence[str], int]] = (), cpus: Optional[int] = None) -> Assignment:
    """How many workers of each type to start (see the module's doc). ALLOWED: at most per type
    (its own limits: its max, its cloud's, black hole, back-off); ROOM: at most in all (max-vms);
    SHARED: (types, at most among them) limits of several types (a hybrid farm's cloud max over its
    types, a type's max over its clouds), binding like a type's own limit (the jobs move on); CPUS:
    at most this many CPUs in all (max-cpus; None: no limit). ROOM and CPUS are the farm's caps:
    when neither binds, every job keeps its least-waste type; when one does, they are handed out in
    queue order (and, under ROOM, jobs are packed onto fewer, larger workers)."""
    free = _by_type(fitted, types, supply, allowed, NUMBER_LIMIT, shared, None)
    started = sum(free.launch.values())
    if started <= room and (cpus is None or sum(free.launch[t.name] * t.cpus for t in types) <= cpus):
        return free
    if started <= room:
        return _in_queue_order(fitted, types, supply, allowed, room, shared, cpus, pack=None)
    # max-vms binds: each request's jobs onto the type that holds them in the fewest workers; when
    # that still holds jobs back, every job that needs a worker onto the type holding most per worker.
    fewest = _in_queue_order(fitted, types, supply, allowed, room, shared, cpus, pack="group")
    if not any(fewest.capped.values()):
        return fewest
    return _in_queue_order(fitted, types, supply, allowed, room, shared, cpus, pack="worker")


def per_worker(worker_type: WorkerType, request: Request) -> int:
    """How many jobs of REQUEST one worker of WORKER_TYPE holds."""
    dims = [(worker_type.cpus, request.cpus)]
    if worker_type.memory is not None:
        dims.append((worker_type.memory, request.memory or 0))
    if worker_type.gpus is not None:
        dims.append((worker_type.gpus, request.gpus))
    return min((cap // need for cap, need in dims if need > 0), default=NUMBER_LIMIT)


def _fitting(have: Resources, worker_type: WorkerType, request: Request, n: int) -> int:
    """How many of N jobs of REQUEST the free resources HAVE of WORKER_TYPE's workers hold."""
    fits = n
    for left, need in ((have.cpus, request.cpus), (have.memory if worker_type.memory is not None else None, request.memory or 0),
                       (have.gpus if worker_type.gpus is not None else None, request.gpus)):
        if left is not None and need > 0:
            fits = min(fits, max(0, left // need))
    return fits


def _shared_by_type(shared: Sequence[tuple[Sequence[str], int]]) -> dict[str, list[int]]:
    """Each type's shared limits, as indices into SHARED."""
    limits_of: dict[str, list[int]] = {}
    for s, (members, _limit) in enumerate(shared):
        for member in members:
            limits_of.setdefault(member, []).append(s)
    return limits_of


def _in_queue_order(fitted: Fitted, types: tuple[WorkerType, ...], supply: dict[str, Resources], allowed: dict[str, int], room: int,
                    shared: Sequence[tuple[Sequence[str], int]], cpus: Optional[int], pack: Optional[str]) -> Assignment:
    """assign() when max-vms (ROOM) or max-cpus (CPUS) binds: the jobs, oldest first, fill the free
    or booting resources of their type, then start workers while the caps leave room; jobs a type's
    own limit stops move to their next choice, jobs a cap stops are held on their type. PACK (max-vms
    binds): jobs that need a new worker go to the type that holds their group (the waiting jobs of
    the same request) in the fewest workers, ties to least waste ("group"), or to the type that
    holds the most of them per worker ("worker"); None: each job keeps its least-waste type."""
    limits_of = _shared_by_type(shared)
    shared_left = [limit for _members, limit in shared]
    own_left = [allowed.get(t.name, 0) for t in types]
    free = [supply.get(t.name, Resources()) for t in types]
    have = list(free)  # free or booting resources, less what older jobs took
    launch = [0] * len(types)
    kept = [Resources()] * len(types)
    waiting = [0] * len(types)
    capped = [False] * len(types)
    passed: list[set[int]] = [set() for _ in types]
    left, cpus_left = room, cpus
    groups = fitted.groups
    chunks = fitted.queue_order()
    packed: dict[int, tuple[int, ...]] = {}
    for _since, g, n in chunks:
        group = groups[g]
        r = group.request
        order = group.choices
        if pack:
            # The free or booting resources of its least-waste type first; the rest onto the type
            # that holds the group's jobs in the fewest workers, where they fill workers together.
            i, first = order[0], types[order[0]]
            placed = _fitting(have[i], first, r, n)
            if placed:
                taken = Resources(r.cpus * placed, (r.memory or 0) * placed, r.gpus * placed)
                have[i] = Resources(have[i].cpus - taken.cpus, have[i].memory - taken.memory, have[i].gpus - taken.gpus)
                kept[i] = kept[i] + taken
                waiting[i] += placed
                n -= placed
            if n:
                if g not in packed:
                    # "group": fewest workers for all the group's jobs, ties to least waste (the smallest
                    # type they fill); "worker": the most jobs per worker.
                    packed[g] = tuple(sorted(order, key=lambda k: (-(-group.count // per_worker(types[k], r)) if pack == "group"
                                                                   else -per_worker(types[k], r), order.index(k))))
                order = packed[g]
        position = 0
        skipped: list[int] = []
        while n > 0:
            i = order[position]
            t = types[i]
            asked = Resources(r.cpus * n, (r.memory or 0) * n, r.gpus * n)
            needed = _wanted(t, asked, have[i])
            own = min([own_left[i], *(shared_left[s] for s in limits_of.get(t.name, ()))])
            cap = min(left, cpus_left // t.cpus if cpus_left is not None and t.cpus > 0 else left)
            started = max(0, min(needed, own, cap))
            if started:
                launch[i] += started
                have[i] = have[i] + Resources(t.cpus * started, (t.memory or 0) * started, (t.gpus or 0) * started)
                own_left[i] -= started
                for s in limits_of.get(t.name, ()):
                    shared_left[s] -= started
                left -= started
                if cpus_left is not None:
                    cpus_left -= started * t.cpus
            placed = _fitting(have[i], t, r, n) if started < needed else n
            have[i] = Resources(have[i].cpus - r.cpus * placed, have[i].memory - (r.memory or 0) * placed, have[i].gpus - r.gpus * placed)
            rest = n - placed
            if rest and own < cap and position + 1 < len(order):
                # Its own limit stops this type: the rest go to their next choice.
                kept[i] = kept[i] + Resources(r.cpus * placed, (r.memory or 0) * placed, r.gpus * placed)
                waiting[i] += placed
                position, n = position + 1, rest
                skipped.append(i)
                continue
            kept[i] = kept[i] + asked
            waiting[i] += n
            passed[i].update(skipped)
            capped[i] = capped[i] or (rest > 0 and cap <= own)
            n = 0
    result = Assignment()
    for i, t in enumerate(types):
        wanted = _wanted(t, kept[i], free[i])
        result.launch[t.name], result.wanted[t.name] = launch[i], wanted
        result.waiting[t.name], result.demand[t.name] = waiting[i], kept[i].cpus
        result.capped[t.name] = wanted - launch[i] if capped[i] else 0
        result.passed_over[t.name] = tuple(types[k].name for k in sorted(passed[i]))
    return result


def _by_type(fitted: Fitted, types: tuple[WorkerType, ...], supply: dict[str, Resources], allowed: dict[str, int], room: int,
             shared: Sequence[tuple[Sequence[str], int]] = (), cpus: Optional[int] = None) -> Assignment:
    """assign() without a binding cap: each type in the farm's order takes the jobs whose least-waste
    choice it is, and the jobs its own limit stops move to their next choice."""
    limits_of = _shared_by_type(shared)
    # Each group's jobs, split by how far down their list of choices they had to go.
    placed: list[tuple[Group, int, int]] = [(g, 0, g.count) for g in fitted.groups]  # group, choice position, jobs
    # Every move takes jobs further down their lists, so this ends; a type that starts fewer after
    # another took a shared limit first can send jobs on again, hence more rounds than types
    # (bounded: the last one moves nothing and holds the rest where they are).
    rounds = 4 * len(types) + 4
    for round_ in range(rounds):
        last = round_ == rounds - 1
        result = Assignment()
        left = room
        cpus_left = cpus
        shared_left = [limit for _members, limit in shared]
        moved: list[tuple[Group, int, int]] = []
        by_type: dict[int, list[tuple[Group, int, int]]] = {}
        for item in placed:
            by_type.setdefault(item[0].choices[item[1]], []).append(item)
        for index, worker_type in enumerate(types):
            name = worker_type.name
            mine = by_type.get(index, [])
            asked = Resources(sum(g.request.cpus * n for g, _p, n in mine), sum((g.request.memory or 0) * n for g, _p, n in mine),
                              sum(g.request.gpus * n for g, _p, n in mine))
            free = supply.get(name, Resources())
            wanted = _wanted(worker_type, asked, free)
            own = min([allowed.get(name, 0), *(shared_left[i] for i in limits_of.get(name, ()))])
            may = max(0, min(own, left, cpus_left // worker_type.cpus if cpus_left is not None else left))
            kept = mine
            # Jobs move on only when this type's own limit binds: with max-vms reached, another
            # type has no room either.
            if wanted > may and may >= own:
                kept = []
                budget = free + Resources(worker_type.cpus * may, (worker_type.memory or 0) * may, (worker_type.gpus or 0) * may)
                used = Resources()
                for group, position, n in mine:
                    r = group.request
                    fits = n
                    for have, need in ((budget.cpus - used.cpus, r.cpus), (budget.gpus - used.gpus if worker_type.gpus is not None else None, r.gpus),
                                       (budget.memory - used.memory if worker_type.memory is not None else None, r.memory or 0)):
                        if have is not None and need > 0:
                            fits = min(fits, max(0, have // need))
                    if fits:
                        kept.append((group, position, fits))
                        used = used + Resources(r.cpus * fits, (r.memory or 0) * fits, r.gpus * fits)
                    if n - fits:
                        if position + 1 < len(group.choices) and not last:
                            moved.append((group, position + 1, n - fits))
                        else:
                            kept.append((group, position, n - fits))  # no other type holds them: held here
                asked = Resources(sum(g.request.cpus * n for g, _p, n in kept), sum((g.request.memory or 0) * n for g, _p, n in kept),
                                  sum(g.request.gpus * n for g, _p, n in kept))
                wanted = _wanted(worker_type, asked, free)
            launch = min(wanted, may)
            left -= launch
            if cpus_left is not None:
                cpus_left -= launch * worker_type.cpus
            for i in limits_of.get(name, ()):
                shared_left[i] -= launch
            result.launch[name], result.wanted[name] = launch, wanted
            result.waiting[name], result.demand[name] = sum(n for _g, _p, n in kept), asked.cpus
            result.capped[name] = 0
            result.passed_over[name] = tuple(types[k].name for k in sorted({c for g, p, n in kept if n for c in g.choices[:p]}))
            by_type[index] = kept
        if not moved:
            return result
        placed = [item for items in by_type.values() for item in items] + moved
    return result


def empty(types: tuple[WorkerType, ...]) -> Assignment:
    zero = {t.name: 0 for t in types}
    return Assignment(dict(zero), dict(zero), dict(zero), dict(zero), dict(zero))
