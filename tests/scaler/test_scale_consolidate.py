"""Consolidation: half-empty workers drained gracefully so the others fill, within the disruption budget.

The planner on hand-worked snapshots of partitionable slots, then on generated timelines: jobs of
1, 2, 4 and 8 CPUs arrive and end, a negotiator places them on workers that are not draining, slot
ads refresh only now and then (the schedd knows its running jobs at once), the plan's drains and
terminations are carried out; by the timeline's ground truth, never more workers drained for
consolidation than the disruption budget, and never a worker terminated while a job runs there.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from vfarm.config import scale as scale_spec
from vfarm.config.loader import ConfigError, load_text
from vfarm.scaler import consolidate
from vfarm.scaler import plan as planner
from vfarm.scaler.model import DRAIN_REASON_PREFIX, Action

NOW = 1_700_000_000.0
FARM = "farm"
CPUS = 8
TICK = 15.0
# The DrainReason a startd the scaler drained advertises (HTCondor 23.9): condor_drain's -reason.
SCALERS_DRAIN = f"{DRAIN_REASON_PREFIX}consolidation: 9 idle CPU(s) on the farm's workers"


def spec(**extra: Any) -> scale_spec.ScaleSpec:
    section = {"name": FARM, "cloud": {"type": "ec2"}, "max-vms": 10, "cpus-per-vm": CPUS, "waiting-time": 0, "idle-time": 60,
               "boot-timeout": 600, **extra}
    return scale_spec.parse(section)


def instance(iid: str) -> dict[str, Any]:
    return {"InstanceId": iid, "LaunchTime": NOW - 9999, "State": {"Name": "running"}, "Tags": [{"Key": "vfarm:farm", "Value": FARM}]}


def worker_slots(iid: str, jobs: list[int], drained: bool = False, cpus: int = CPUS, drain_reason: str = SCALERS_DRAIN) -> list[dict[str, Any]]:
    """A partitionable slot and one dynamic slot per job (its CPUs), as the collector shows them;
    a drained one with the drain attributes of its startd (DRAIN_REASON: whose drain it is)."""
    free = cpus - sum(jobs)
    state = "Drained" if drained else "Unclaimed"
    pslot = {"Name": f"slot1@{iid}", "Machine": f"m-{iid}", "State": state, "Activity": "Retiring" if drained and jobs else "Idle",
             "Cpus": free, "PartitionableSlot": True, "EnteredCurrentState": NOW - 9999, "NumDynamicSlotsTime": NOW - 600,
             "VfarmInstanceId": iid, **({"Draining": True, "DrainReason": drain_reason} if drained else {})}
    dynamic = [{"Name": f"slot1_{n + 1}@{iid}", "Machine": f"m-{iid}", "State": "Claimed", "Activity": "Retiring" if drained else "Busy",
                "Cpus": c, "DynamicSlot": True, "EnteredCurrentState": NOW - 600, "JobStart": NOW - 600, "MaxJobRetirementTime": 3600,
                "VfarmInstanceId": iid} for n, c in enumerate(jobs)]
    return [pslot, *dynamic]


def running(iid: str, jobs: list[int], cluster: int) -> list[dict[str, Any]]:
    return [{"ClusterId": cluster, "ProcId": n, "JobStatus": 2, "RequestCpus": c, "QDate": NOW - 900, "EnteredCurrentStatus": NOW - 600,
             "RemoteHost": f"slot1_{n + 1}@{iid}"} for n, c in enumerate(jobs)]


def snapshot(load: dict[str, list[int]], drained: tuple[str, ...] = (), idle_jobs: int = 0, drain_reason: str = SCALERS_DRAIN,
             **memory: Any) -> dict[str, Any]:
    slots, jobs = [], []
    for k, (iid, cpus) in enumerate(sorted(load.items())):
        slots += worker_slots(iid, cpus, iid in drained, drain_reason=drain_reason)
        jobs += running(iid, cpus, 100 + k)
    jobs += [{"ClusterId": 1, "ProcId": n, "JobStatus": 1, "RequestCpus": 1, "QDate": NOW - 900, "EnteredCurrentStatus": NOW - 900}
             for n in range(idle_jobs)]
    return {"now": NOW, "jobs": jobs, "slots": slots, "instances": [instance(iid) for iid in sorted(load)], **memory}


def consolidation(result: planner.Plan) -> list[planner.Decision]:
    return [d for d in result.of(planner.Action.DRAIN) if d.reason.startswith("consolidation")]


# --- the rules on hand-worked snapshots --------------------------------------------------------

def test_the_least_loaded_busy_worker_is_drained_when_idle_cpus_exceed_the_budget() -> None:
    result = planner.plan(snapshot({"i-a": [4, 2], "i-b": [1], "i-c": [2, 2, 2]}), spec())
    # Idle CPUs: 2 + 7 + 2 = 11 > 8 (one worker's worth); i-b's one CPU fits in the 4 the others have.
    assert [d.instance for d in consolidation(result)] == ["i-b"]
    assert "11 idle CPU(s)" in consolidation(result)[0].reason and "1 of 8 CPUs in use" in consolidation(result)[0].reason
    assert result.consolidating == ["i-b"] and result.to_json()["consolidating"] == ["i-b"]
    assert result.terminate == []  # it still runs a job: drained gracefully, never terminated now



# Cpus no slot has, as any startd holding the pool's token may advertise them: read as absent.
IMPOSSIBLE_CPUS = [-1, -(2**62), 2**62, planner.SLOT_RESOURCES["Cpus"] + 1, 1e300, float("nan")]


@pytest.mark.parametrize("cpus", IMPOSSIBLE_CPUS, ids=repr)
def test_a_worker_whose_claimed_cpus_are_unknown_is_never_drained_for_consolidation(cpus: Any) -> None:
    """How much a worker's jobs hold is unknown when a claimed slot's Cpus is: it is no candidate
    (its jobs might not fit in the others' idle CPUs); a worker of known load still is."""
    both = snapshot({"i-a": [1], "i-b": [1]})  # 7 + 7 idle CPUs, above 8: the least loaded goes, i-a by its id
    assert [d.instance for d in consolidation(planner.plan(both, spec()))] == ["i-a"]
    for ad in both["slots"]:
        if ad["Name"] == "slot1_1@i-a":
            ad["Cpus"] = cpus
    assert [d.instance for d in consolidation(planner.plan(both, spec()))] == ["i-b"]


@pytest.mark.parametrize("cpus", IMPOSSIBLE_CPUS, ids=repr)
def test_free_cpus_no_slot_has_drain_no_worker_for_consolidation(cpus: Any) -> None:
    """A partitionable slot advertising more free CPUs than any machine has (or fewer than none)
    lends the farm no idle CPUs beyond one: no worker, neither its own nor another, is drained for it."""
    farm = snapshot({"i-a": [1], "i-b": [4, 3]})  # 7 + 1 idle CPUs: not above 8, nothing to consolidate
    pslot = next(ad for ad in farm["slots"] if ad["Name"] == "slot1@i-b")
    del pslot["Cpus"]
    absent = planner.plan(farm, spec())
    assert consolidation(absent) == []
    pslot["Cpus"] = cpus
    result = planner.plan(farm, spec())
    assert consolidation(result) == [] and result.to_json() == absent.to_json()


def test_free_cpus_beyond_what_a_workers_type_has_drain_no_worker_for_consolidation() -> None:
    """A slot in a busy worker's name (any startd holding the pool's token may advertise one)
    claiming 64 free CPUs: the planner believes no more than the worker's CPUs (cpus-per-vm) less
    what its claimed slots hold, none here, so no other worker is drained to fill it."""
    farm = snapshot({"i-a": [4, 2], "i-b": [8]})  # 2 + 0 idle CPUs: nothing to consolidate
    assert consolidation(planner.plan(farm, spec())) == []
    farm["slots"].append({"Name": "slot2@i-b", "Machine": "m-i-b", "State": "Unclaimed", "Activity": "Idle", "Cpus": 64,
                          "EnteredCurrentState": NOW - 9999, "VfarmInstanceId": "i-b"})
    result = planner.plan(farm, spec())
    assert consolidation(result) == [] and result.drain == []
    assert [w for w in result.warnings if "i-b" in w], result.warnings


def test_within_the_budget_nothing_is_drained() -> None:
    assert consolidation(planner.plan(snapshot({"i-a": [4, 2], "i-b": [4, 2], "i-c": [2, 2, 2]}), spec())) == []  # 2 + 2 + 2 idle
    assert len(consolidation(planner.plan(snapshot({"i-a": [4, 2], "i-b": [2], "i-c": [2, 2, 2]}), spec()))) == 1  # 2 + 6 + 2 = 10 > 8
    assert consolidation(planner.plan(snapshot({"i-a": [4, 2], "i-b": [2], "i-c": [2, 2, 2]}), spec(**{"consolidate-idle-cpus": 10}))) == []


def test_a_worker_whose_jobs_would_not_fit_elsewhere_is_kept() -> None:
    # 4 + 4 = 8 idle CPUs above a budget of 2, but each worker's 4 used CPUs need more than the other's 4 free... exactly 4: fits.
    assert [d.instance for d in consolidation(planner.plan(snapshot({"i-a": [4], "i-b": [4]}), spec(**{"consolidate-idle-cpus": 2})))] == ["i-a"]
    # 3 + 3 idle, 5 used each: neither fits in the other's 3.
    assert consolidation(planner.plan(snapshot({"i-a": [5], "i-b": [5]}), spec(**{"consolidate-idle-cpus": 2}))) == []


def test_no_consolidation_while_jobs_wait_or_when_turned_off() -> None:
    load = {"i-a": [1], "i-b": [1]}
    assert len(consolidation(planner.plan(snapshot(load), spec()))) == 1
    assert consolidation(planner.plan(snapshot(load, idle_jobs=3), spec())) == []
    assert consolidation(planner.plan(snapshot(load), spec(**{"disruption-budget": 0}))) == []
    assert consolidation(planner.plan(snapshot(load), spec(**{"min-vms": 2}))) == []  # never below min-vms


def test_the_disruption_budget_counts_remembered_and_draining_workers() -> None:
    load = {"i-a": [1], "i-b": [1], "i-c": [1]}
    assert len(consolidation(planner.plan(snapshot(load), spec(**{"disruption-budget": 2})))) == 2
    # A worker drained earlier whose ads do not show it yet: the scaler's memory counts it.
    remembered = planner.plan(snapshot(load, consolidating=["i-a"]), spec())
    assert consolidation(remembered) == [] and remembered.consolidating == ["i-a"]
    # After a restart (no memory): a draining worker that still runs jobs counts.
    assert consolidation(planner.plan(snapshot(load, drained=("i-a",)), spec())) == []
    # A remembered worker that is gone (terminated) no longer counts.
    gone = planner.plan(snapshot({"i-b": [1], "i-c": [1]}, consolidating=["i-a"]), spec())
    assert [d.instance for d in consolidation(gone)] == ["i-b"] and gone.consolidating == ["i-b"]


def test_a_worker_someone_else_drains_is_no_drain_of_the_scalers_budget() -> None:
    """The disruption budget counts the scaler's own drains. A worker an admin (or condor_defrag)
    drains while its jobs run is left alone: neither counted against the budget nor a place for jobs."""
    load = {"i-a": [1], "i-b": [1], "i-c": [1]}
    assert consolidation(planner.plan(snapshot(load, drained=("i-a",)), spec())) == []  # the scaler's: counted
    result = planner.plan(snapshot(load, drained=("i-a",), drain_reason="defrag"), spec())
    assert [d.instance for d in consolidation(result)] == ["i-b"] and result.consolidating == ["i-b"]
    assert result.instances[0].state == "other" and "being drained by someone else (reason 'defrag')" in result.instances[0].reason


def test_the_free_cpus_of_a_worker_drained_as_idle_are_no_room_for_the_others() -> None:
    """i-a, idle for idle-time, is drained in this plan: its 8 free CPUs cannot take i-b's jobs,
    so without them the farm's idle CPUs (1 + 4 = 5) are within the budget: nothing consolidates."""
    result = planner.plan(snapshot({"i-a": [], "i-b": [2, 2], "i-c": [4, 3]}, observed_idle_since={"i-a": NOW - 9999}), spec())
    assert [d.instance for d in result.of(planner.Action.DRAIN)] == ["i-a"] and consolidation(result) == []


def test_a_job_just_submitted_keeps_idle_workers_and_the_farm_from_consolidating() -> None:
    """Jobs younger than waiting-time are no demand yet, but the negotiator may be about to match
    them to the free CPUs: no idle worker of a type they fit is drained, and nothing consolidates."""
    young = [{"ClusterId": 9, "ProcId": n, "JobStatus": 1, "RequestCpus": 1, "QDate": NOW - 10, "EnteredCurrentStatus": NOW - 10}
             for n in range(14)]
    busy = snapshot({"i-a": [1], "i-b": [1]})
    assert [d.instance for d in consolidation(planner.plan(busy, spec()))] == ["i-a"]  # without the new jobs: consolidates
    assert consolidation(planner.plan({**busy, "jobs": busy["jobs"] + young}, spec(**{"waiting-time": 40}))) == []
    idle = snapshot({"i-a": []}, observed_idle_since={"i-a": NOW - 9999})
    assert [d.instance for d in planner.plan(idle, spec()).of(planner.Action.DRAIN)] == ["i-a"]
    kept = planner.plan({**idle, "jobs": young[:1]}, spec(**{"waiting-time": 40}))
    assert kept.of(planner.Action.DRAIN) == [] and kept.launch == 0


def test_a_consolidation_drain_that_failed_is_not_remembered(caplog: pytest.LogCaptureFixture) -> None:
    """A drain refused once (condor_drain could not reach the pool) does not hold the disruption
    budget for the worker's life: the next cycle chooses again, and the drain is tried again."""
    import logging

    from vfarm.scaler import apply, loop

    load = {"i-a": [1], "i-b": [1], "i-c": [1]}

    class Cloud:
        def farm_instances(self) -> list[dict[str, Any]]:
            return [instance(i) for i in sorted(load)]

    class Drain:
        calls: list[str] = []

        def drain(self, iid: str, slots: list[dict[str, Any]], reason: str) -> None:
            self.calls.append(iid)
            if len(self.calls) == 1:
                raise apply.DrainError("condor_drain: connection refused")

    def pool() -> dict[str, Any]:
        taken = snapshot(load)
        return {"jobs": taken["jobs"], "slots": taken["slots"], "collector": []}

    clock = [NOW]
    drainer = Drain()
    scaler = loop.Scaler(spec(**{"disruption-budget": 1}), Cloud(), drainer, logging.getLogger("vfarm.test"),  # type: ignore[arg-type]
                         clock=lambda: clock[0], pool=pool)
    for _ in range(3):
        scaler.cycle()
        clock[0] += TICK
    assert drainer.calls[:2] == ["i-a", "i-a"], drainer.calls  # tried again the next cycle, then remembered


def test_a_drained_worker_the_schedd_still_runs_a_job_on_is_not_terminated() -> None:
    snap = snapshot({"i-a": []}, drained=("i-a",))
    assert planner.plan(snap, spec()).terminate == ["i-a"]
    snap["jobs"] = running("i-a", [1], 7)  # its ads lag: the schedd knows the job still runs there
    result = planner.plan(snap, spec())
    assert result.terminate == [] and result.instances[0].state == "draining" and "the schedd still has 1 job(s) there" in result.instances[0].reason


def test_settings_defaults_and_checks() -> None:
    assert spec().idle_cpus_budget == CPUS and spec().disruption_budget == 1
    typed = scale_spec.parse({"name": FARM, "cloud": {"type": "ec2"}, "max-vms": 4,
                              "types": [{"name": "s", "cpus": 2}, {"name": "l", "cpus": 16}]})
    assert typed.idle_cpus_budget == 16
    assert spec(**{"consolidate-idle-cpus": 0}).idle_cpus_budget == 0
    findings = scale_spec.check({"name": FARM, "cloud": {"type": "ec2"}, "max-vms": 2, "disruption-budget": 3})
    assert [f.message for f in findings] == ["disruption-budget (3) is larger than max-vms (2)"]
    text = "#multiple-config\nscale:\n  name: f\n  cloud: {type: local}\n  max-vms: 2\n  disruption-budget: {budget}\n"
    for budget, message in (("-1", "disruption-budget"), ("3", "disruption-budget (3) is larger than max-vms (2)")):
        with pytest.raises(ConfigError) as caught:
            load_text(text.replace("{budget}", budget), "farm.yaml")
        assert "farm.yaml:6:" in str(caught.value) and message in str(caught.value)
    load_text(text.replace("{budget}", "2"), "farm.yaml")


def test_a_snapshot_with_a_bad_consolidating_memory_is_refused() -> None:
    with pytest.raises(planner.SnapshotError, match="'consolidating' must be a list of instance ids"):
        planner.plan(snapshot({"i-a": [1]}, consolidating={"i-a": 1}), spec())


# --- generated timelines -----------------------------------------------------------------------

@dataclass
class SimWorker:
    id: str
    jobs: dict[int, tuple[int, float]] = field(default_factory=dict)  # job id: (cpus, end)
    drained: bool = False
    for_consolidation: bool = False
    ads: Optional[list[dict[str, Any]]] = None  # what the collector shows (refreshed now and then)


@dataclass
class Timeline:
    arrivals: list[list[tuple[int, int]]]  # per cycle: (cpus, cycles it runs)
    refresh: list[list[bool]]  # per cycle, per worker slot: does its ad refresh
    budget: int
    idle_cpus: int


def timelines() -> st.SearchStrategy[Timeline]:
    job = st.tuples(st.sampled_from((1, 1, 2, 4, 8)), st.integers(1, 12))
    return st.builds(Timeline, st.lists(st.lists(job, max_size=4), min_size=5, max_size=40),
                     st.lists(st.lists(st.booleans(), min_size=6, max_size=6), min_size=40, max_size=40),
                     st.integers(1, 3), st.integers(0, 12))


@settings(max_examples=60, deadline=None)
@given(timelines())
def test_never_more_than_the_budget_drained_for_consolidation_and_never_a_job_killed(line: Timeline) -> None:
    farm = spec(**{"max-vms": 6, "disruption-budget": line.budget, "consolidate-idle-cpus": line.idle_cpus})
    workers = {f"i-{n}": SimWorker(f"i-{n}") for n in range(6)}
    queue: list[tuple[int, int, float]] = []  # (job id, cpus, run time)
    memory: dict[str, Any] = {}
    started: dict[int, int] = {}
    next_id = 0
    for cycle in range(len(line.arrivals) + 30):
        now = NOW + cycle * TICK
        for w in workers.values():
            for jid in [j for j, (_c, end) in w.jobs.items() if end <= now]:
                del w.jobs[jid]
        for cpus, runs in line.arrivals[cycle] if cycle < len(line.arrivals) else ():
            queue.append((next_id, cpus, runs * TICK))
            next_id += 1
        for item in list(queue):  # the negotiator: in queue order, onto the first worker with room that takes new jobs
            jid, cpus, runtime = item
            for w in sorted(workers.values(), key=lambda w: w.id):
                if not w.drained and CPUS - sum(c for c, _e in w.jobs.values()) >= cpus:
                    w.jobs[jid] = (cpus, now + runtime)
                    started[jid] = started.get(jid, 0) + 1
                    queue.remove(item)
                    break
        slots, jobs = [], []
        for k, w in enumerate(sorted(workers.values(), key=lambda w: w.id)):
            held = [c for c, _e in w.jobs.values()]  # the CPUs of each job it runs
            if w.ads is None or line.refresh[cycle % len(line.refresh)][k]:
                w.ads = worker_slots(w.id, held, w.drained)
            slots += w.ads
            jobs += running(w.id, held, 1000 + k)
        jobs += [{"ClusterId": jid, "ProcId": 0, "JobStatus": 1, "RequestCpus": c, "QDate": now - 60, "EnteredCurrentStatus": now - 60}
                 for jid, c, _r in queue]
        snap = {"now": now, "jobs": jobs, "slots": slots, "instances": [instance(iid) for iid in sorted(workers)], **memory}
        result = planner.plan(snap, farm)
        memory = {planner.OBSERVED: result.observed_idle_since, planner.JOINED_KEY: result.joined,
                  planner.CONSOLIDATING: result.consolidating}
        for iid in result.terminate:
            assert not workers[iid].jobs, f"{iid} terminated while {len(workers[iid].jobs)} job(s) run there"
            del workers[iid]
        for decision in result.of(planner.Action.DRAIN):
            w = workers[str(decision.instance)]
            w.drained = True
            w.for_consolidation = w.for_consolidation or decision.reason.startswith("consolidation")
        draining = [w.id for w in workers.values() if w.for_consolidation]
        assert len(draining) <= line.budget, f"cycle {cycle}: {draining} drained for consolidation, budget {line.budget}"
    assert all(n == 1 for n in started.values())


def test_a_worker_whose_job_a_drain_would_evict_is_not_drained_for_consolidation() -> None:
    """HTCondor evicts a job on a draining worker MaxJobRetirementTime after the job started: a
    worker whose job has less retirement time left than it has run is left alone (its ads say so)."""
    base = snapshot({"i-a": [1], "i-b": [2], "i-c": [1]})
    assert [d.instance for d in planner.plan(base, spec()).decisions if d.action is Action.DRAIN] == ["i-a"]

    def aged(snap: dict[str, Any], iid: str, **ad: Any) -> dict[str, Any]:
        return {**snap, "slots": [{**s, **ad} if s.get("DynamicSlot") and s["VfarmInstanceId"] == iid else s for s in snap["slots"]]}

    for ad in ({"JobStart": NOW - 7200}, {"JobStart": NOW - 1900}, {"MaxJobRetirementTime": 0}):
        drained = [d.instance for d in planner.plan(aged(base, "i-a", **ad), spec()).decisions if d.action is Action.DRAIN]
        assert drained == ["i-c"], ad  # the next least loaded, whose job is young
    # Half its retirement time run, not more: still drained.
    drained = [d.instance for d in planner.plan(aged(base, "i-a", JobStart=NOW - 1800), spec()).decisions if d.action is Action.DRAIN]
    assert drained == ["i-a"]
    assert consolidate.load_of([{"State": "Claimed", "Cpus": 1, "JobStart": NOW - 10, "MaxJobRetirementTime": 0}], NOW).evicts
    assert not consolidate.load_of([{"State": "Claimed", "Cpus": 1, "JobStart": NOW - 10, "MaxJobRetirementTime": 0}]).evicts
    assert not consolidate.load_of([{"State": "Claimed", "Cpus": 1, "JobStart": "x", "MaxJobRetirementTime": 0}], NOW).evicts


def test_a_partitionable_slot_given_out_whole_is_no_free_cpu() -> None:
    """Its ad says Cpus 0 once every CPU went to a dynamic slot: that worker is full, not one CPU idle."""
    full = [{"State": "Unclaimed", "Cpus": 0, "PartitionableSlot": True},
            {"State": "Claimed", "Cpus": 2, "DynamicSlot": True}, {"State": "Claimed", "Cpus": 2, "DynamicSlot": True}]
    assert consolidate.load_of(full) == consolidate.Load(used=4, free=0)
    # Without a number it stays one of each, as before; a claimed slot of 0 CPUs is an unknown load.
    assert consolidate.load_of([{"State": "Unclaimed"}, {"State": "Claimed", "Cpus": 0}]) == consolidate.Load(used=1, free=1, known=False)
