"""Consolidation: which half-empty workers to drain so that the others fill (pure; the planner calls it).

Rules:
- Only while the queue is quiet (the plan launches nothing and no more jobs than
  waiting-jobs-threshold wait): a waiting job would take the idle CPUs anyway.
- The farm's idle CPUs are the unclaimed CPUs of its joined workers that are idle or busy (not
  draining, not drained). At most `consolidate-idle-cpus` of them are left alone.
- Above that, busy workers are drained, the least loaded first (fewest CPUs in use, then the
  largest share left over, then the instance id), and only one whose jobs would fit in the idle
  CPUs of the others. A worker wholly idle is left to `idle-time`; a worker the schedd says is busy
  while its slot ads say idle (the ads lag), or with a claimed slot whose Cpus is unknown (absent,
  or read as absent: the planner's rule for slot numbers), is not a candidate: its load is unknown.
- The drain is graceful (`condor_drain -graceful`, the same as for an idle worker): no new job
  starts there, its jobs run on, and it is terminated only once drained with no claim and no job
  the schedd runs there. HTCondor lets a job run on a draining worker until MaxJobRetirementTime
  after the job started, then evicts it: a worker is no candidate while one of its claimed slots
  has less retirement time left than its job has run (JobStart, MaxJobRetirementTime of its ad;
  a startd that does not set it advertises 0, which evicts at once; an ad without these numbers
  is not judged). A job that runs on past retirement-time is evicted and starts again elsewhere,
  as after any graceful drain.
- Never more than `disruption-budget` workers draining for consolidation at once: those a
  previous cycle chose (the scaler's memory, `consolidating`, kept until the worker is drained,
  whatever its lagging ads say meanwhile) and every draining worker that still runs jobs (after a
  restart the memory is gone; a worker drained for being idle has none). Never below min-vms.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Optional

from .model import Worker, WorkerState

DRAINING = frozenset({WorkerState.DRAINING})
# Taking new jobs: their idle CPUs are the farm's.
OPEN = frozenset({WorkerState.IDLE, WorkerState.BUSY})
# No longer counted against the budget: terminated in this cycle.
GONE = frozenset({WorkerState.DRAINED, WorkerState.LOST})


@dataclass(frozen=True)
class Load:
    """A joined worker's CPUs by its slot ads."""

    used: int  # CPUs of its claimed slots
    free: int  # CPUs of its unclaimed slots
    known: bool = True  # False: a claimed slot's Cpus is unknown, so is what its jobs hold
    evicts: bool = False  # a graceful drain now would likely evict a job: less retirement time left than it has run

    @property
    def total(self) -> int:
        return self.used + self.free


def load_of(slots: Iterable[dict[str, Any]], now: Optional[float] = None) -> Load:
    """A worker's load by its slot ads: a claimed slot without a positive Cpus counts as one CPU
    used (the load is then unknown), an unclaimed one without a Cpus as one free; Cpus 0 is none
    (a partitionable slot whose CPUs all went to its jobs' dynamic slots). With NOW, whether a
    drain would likely evict a job (evicts): by the JobStart and MaxJobRetirementTime its claimed
    slots advertise, where they are numbers."""
    used = free = 0
    known = True
    evicts = False
    for slot in slots:
        cpus = slot.get("Cpus")
        n = int(cpus) if isinstance(cpus, (int, float)) and not isinstance(cpus, bool) and cpus >= 0 else None
        if slot.get("State") == "Claimed":
            used += n or 1
            known = known and bool(n)
            evicts = evicts or (now is not None and _evicted(slot, now))
        elif slot.get("State") == "Unclaimed":
            free += 1 if n is None else n
    return Load(used, free, known, evicts)


def _evicted(slot: dict[str, Any], now: float) -> bool:
    """Whether a graceful drain at NOW would likely evict the job of a claimed SLOT: it has less
    retirement time left (JobStart + MaxJobRetirementTime - NOW) than it has run."""
    start, retirement = slot.get("JobStart"), slot.get("MaxJobRetirementTime")
    if not (isinstance(start, (int, float)) and isinstance(retirement, (int, float))) or isinstance(start, bool) or isinstance(retirement, bool):
        return False  # not advertised as numbers: nothing says it would
    return start + retirement - now < now - start


@dataclass(frozen=True)
class Choice:
    worker: Worker
    reason: str


@dataclass(frozen=True)
class Consolidation:
    chosen: list[Choice]
    idle_cpus: int  # before the choice
    draining: list[str]  # draining for consolidation before the choice
    remembered: list[str]  # what the next cycle is fed: every worker draining for consolidation


def choose(workers: list[Worker], loads: dict[str, Load], remembered: Iterable[str], idle_cpus_budget: int,
           disruption_budget: int, room: int, quiet: bool, leaving: Iterable[str] = ()) -> Consolidation:
    """The workers to drain for consolidation this cycle (see the module's doc). LOADS: by worker
    id, from its slot ads; REMEMBERED: the ids a previous cycle chose; ROOM: how many more workers
    may leave before min-vms; QUIET: no demand this cycle; LEAVING: workers this plan drains
    already (idle ones): their free CPUs are no room for the others' jobs."""
    live = {w.id: w for w in workers}
    earlier = set(remembered)
    # A remembered worker counts until it is drained and terminated, whatever its (lagging) ads say.
    draining = {iid for iid in earlier if iid in live and live[iid].state not in GONE} | {w.id for w in workers if w.state in DRAINING and w.claimed > 0}
    gone = set(leaving)
    counted = [w for w in workers if w.state in OPEN and w.id not in draining and w.id not in gone]
    idle = sum(loads[w.id].free for w in counted if w.id in loads)
    chosen: list[Choice] = []
    slots_left = min(disruption_budget - len(draining), room)
    if quiet and idle > idle_cpus_budget and slots_left > 0:
        candidates = [w for w in counted if w.state is WorkerState.BUSY and w.claimed > 0 and w.id in loads
                      and loads[w.id].known and not loads[w.id].evicts and loads[w.id].used > 0 and loads[w.id].free > 0]
        candidates.sort(key=lambda w: (loads[w.id].used, -loads[w.id].free / loads[w.id].total, w.id))
        left = idle
        for w in candidates:
            if left <= idle_cpus_budget or len(chosen) >= slots_left:
                break
            load = loads[w.id]
            others = left - load.free
            if others < load.used:
                continue  # its jobs would not fit in what the others have free: the farm is not too big by this worker
            chosen.append(Choice(w, f"consolidation: {left} idle CPU(s) on the farm's workers, above consolidate-idle-cpus "
                                    f"{idle_cpus_budget}; least loaded ({load.used} of {load.total} CPUs in use, the others have "
                                    f"{others} free): no new job starts there, its jobs run on within their retirement time"))
            left = others
    return Consolidation(chosen, idle, sorted(draining), sorted({*draining, *(c.worker.id for c in chosen)}))
