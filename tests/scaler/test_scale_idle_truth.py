"""Idle truth: a worker is drained only when no evidence says it is busy, whatever its lagging ads say.

The planner on hand-worked snapshots (the schedd's running jobs, the scaler's own observations,
ads only as a lower bound), then the whole cycle (loop.Scaler, its observations in memory) on
generated timelines: jobs start and end on workers, the collector's slot ads are refreshed only
every UPDATE_INTERVAL, cycles fail or the scaler restarts now and then; by the timeline's ground
truth, no worker is ever drained less than idle-time after its last job ended.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any, Optional

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from vfarm.config import scale as scale_spec
from vfarm.scaler import discover, loop
from vfarm.scaler import plan as planner
from vfarm.scaler.model import DRAIN_REASON_PREFIX

NOW = 1_700_000_000.0
FARM = "farm"
HOST = "host"


def spec(idle_time: float, check_every: float = 15) -> scale_spec.ScaleSpec:
    return scale_spec.parse({"name": FARM, "cloud": {"type": "ec2"}, "max-vms": 10, "cpus-per-vm": 4, "waiting-time": 0,
                             "idle-time": idle_time, "check-every": check_every, "boot-timeout": 600})


def instance(iid: str, launched: float, state: str = "running") -> dict[str, Any]:
    return {"InstanceId": iid, "LaunchTime": launched, "State": {"Name": state}, "Tags": [{"Key": "vfarm:farm", "Value": FARM}]}


def pslot(iid: str, joined: float, changed: float, state: str = "Unclaimed", activity: str = "Idle") -> dict[str, Any]:
    """A partitionable slot's ad as HTCondor 23.9 sends it: Unclaimed while its dynamic slots work."""
    return {"Name": f"slot1@w-{iid}@{HOST}", "Machine": HOST, "State": state, "Activity": activity, "Cpus": 4,
            "PartitionableSlot": True, "EnteredCurrentState": joined, "NumDynamicSlotsTime": changed, "VfarmInstanceId": iid}


def running_job(proc: int, remote: str) -> dict[str, Any]:
    return {"ClusterId": 1, "ProcId": proc, "JobStatus": 2, "RequestCpus": 1, "QDate": NOW - 999, "EnteredCurrentStatus": NOW - 30,
            "RemoteHost": remote}


def snapshot(slots: list[dict[str, Any]], jobs: Optional[list[dict[str, Any]]] = None, observed: Any = None) -> dict[str, Any]:
    snap = {"now": NOW, "jobs": jobs or [], "slots": slots, "instances": [instance("i-a", NOW - 9999)]}
    return snap if observed is None else {**snap, planner.OBSERVED: observed}


def only(result: planner.Plan) -> planner.Worker:
    info = result.instances[0]
    return info


# --- the planner: each kind of evidence --------------------------------------------------------

def test_a_job_the_schedd_runs_there_makes_the_worker_busy_whatever_its_stale_ad_says() -> None:
    stale = pslot("i-a", NOW - 9999, NOW - 9000)  # the ad says idle for 2.5 h
    watched = {"i-a": NOW - 9000}
    assert planner.plan(snapshot([stale], observed=watched), spec(60)).drain == ["i-a"]
    for remote in (f"slot1_1@w-i-a@{HOST}", f"slot1@w-i-a@{HOST}", HOST):  # a dynamic slot, the slot itself, its machine
        result = planner.plan(snapshot([stale], [running_job(0, remote)], observed=watched), spec(60))
        assert result.drain == [] and only(result).state == "busy", remote
        assert "the schedd has 1 job(s) there" in only(result).reason
        assert result.observed_idle_since == {}  # not seen idle in this cycle: the next one starts afresh
    elsewhere = planner.plan(snapshot([stale], [running_job(0, f"slot1_1@w-i-b@{HOST}")], observed=watched), spec(60))
    assert elsewhere.drain == ["i-a"]  # another worker's job on the same machine name's startd does not count
    idle = {**running_job(0, f"slot1_1@w-i-a@{HOST}"), "JobStatus": 1}
    assert only(planner.plan(snapshot([stale], [idle], observed=watched), spec(60))).state == "idle"  # an idle job is no evidence


@pytest.mark.parametrize("status", [6, 7], ids=["transferring-output", "suspended"])
def test_a_job_transferring_output_or_suspended_there_is_the_schedds_evidence_too(status: int) -> None:
    """A job that transfers its output (JobStatus 6) or is suspended (7) still holds its claim on
    the worker: with slot ads that lag, the worker is busy, and a drained one is not terminated
    (its job's output would be lost). Such a job is no idle demand, and the status shows it."""
    stale = pslot("i-a", NOW - 9999, NOW - 9000)
    watched = {"i-a": NOW - 9000}
    there = {**running_job(0, f"slot1_1@w-i-a@{HOST}"), "JobStatus": status}
    result = planner.plan(snapshot([stale], [there], observed=watched), spec(60))
    assert result.drain == [] and only(result).state == "busy" and result.observed_idle_since == {}
    assert only(result).reason == "the schedd has 1 job(s) there (running, transferring output or suspended), whatever its slot ads say"
    assert (result.waiting, result.demand, result.supply) == (0, 0, 4)  # what the ads say of its CPUs, as for a running job
    drained = {**pslot("i-a", NOW - 9999, NOW - 60, "Drained", "Idle"), "Draining": True, "DrainReason": f"{DRAIN_REASON_PREFIX}idle for 99s"}
    ended = planner.plan(snapshot([drained], [there]), spec(60))
    assert ended.terminate == [] and only(ended).state == "draining" and only(ended).reason == "draining, the schedd still has 1 job(s) there"
    assert planner.plan(snapshot([drained], []), spec(60)).terminate == ["i-a"]
    assert planner.running_by_startd([there]) == {f"w-i-a@{HOST}": 1}
    rows = loop.status_rows(result, snapshot([stale], [there]), spec(60))
    assert [(r["state"], r["jobs"]) for r in rows] == [("busy", 1)]


def test_discover_asks_the_schedd_for_every_job_on_a_worker_and_no_other() -> None:
    """The constraint of discover's first query, evaluated by HTCondor's own ClassAd library."""
    import classad2

    matched = [status for status in range(1, 8) if classad2.ExprTree(discover.ON_WORKER_CONSTRAINT).eval(classad2.ClassAd({"JobStatus": status}))]
    assert matched == [2, 6, 7]  # running, transferring output, suspended; not idle (1), removed (3), completed (4), held (5)


def test_a_dynamic_slots_ad_older_than_its_partitionable_slots_newer_ad_is_stale() -> None:
    """As a real worker VM left them (UPDATE_INTERVAL 300 s): its two dynamic slots' ads, Claimed
    and Busy, last heard when their jobs ran; its partitionable slot's ad, heard since, lists no
    child. The worker is idle (not busy for the 15 minutes the collector keeps those ads); while
    the partitionable slot still lists a child, or has not been heard since, that child counts."""
    parent = {**pslot("i-a", NOW - 900, NOW - 400), "LastHeardFrom": NOW - 200, "NumDynamicSlots": 0, "ChildName": []}
    children = [{"Name": f"slot1_{n}@w-i-a@{HOST}", "Machine": HOST, "State": "Claimed", "Activity": "Busy", "Cpus": 1, "DynamicSlot": True,
                 "LastHeardFrom": NOW - 420, "VfarmInstanceId": "i-a"} for n in (1, 2)]
    watched = {"i-a": NOW - 400}
    result = planner.plan(snapshot([parent, *children], observed=watched), spec(60))
    assert only(result).state == "idle" and result.drain == ["i-a"], only(result).reason
    listed = {**parent, "NumDynamicSlots": 1, "ChildName": [children[0]["Name"]]}
    assert only(planner.plan(snapshot([listed, *children], observed=watched), spec(60))).reason == "1 of 2 slot(s) claimed"
    unheard = {**parent, "LastHeardFrom": NOW - 500}
    assert only(planner.plan(snapshot([unheard, *children], observed=watched), spec(60))).state == "busy"


def test_without_observations_a_worker_is_seen_idle_for_the_first_time_now() -> None:
    stale = pslot("i-a", NOW - 9999, NOW - 9000)
    result = planner.plan(snapshot([stale]), spec(60))
    assert result.drain == [] and only(result).state == "idle" and only(result).idle_since == NOW
    assert "unclaimed for 9000s by its ads, seen idle in every cycle for 0s" in only(result).reason
    assert result.observed_idle_since == {"i-a": NOW}  # what the next cycle is fed
    assert planner.plan(snapshot([stale]), spec(0)).drain == ["i-a"]  # idle-time 0: now is long enough


def test_the_idle_time_is_the_shorter_of_the_ads_and_the_observations() -> None:
    stale = pslot("i-a", NOW - 9999, NOW - 9000)
    result = planner.plan(snapshot([stale], observed={"i-a": NOW - 59}), spec(60))
    assert result.drain == [] and only(result).idle_since == NOW - 59
    assert result.observed_idle_since == {"i-a": NOW - 59}  # the run goes on
    fresh = pslot("i-a", NOW - 9999, NOW - 30)  # the ad has caught up with a job the scaler never saw
    result = planner.plan(snapshot([fresh], observed={"i-a": NOW - 9000}), spec(60))
    assert result.drain == [] and only(result).idle_since == NOW - 30
    result = planner.plan(snapshot([stale], observed={"i-a": NOW - 60}), spec(60))
    assert result.drain == ["i-a"] and "idle for 60s (idle-time 60s)" in result.decisions[0].reason
    future = planner.plan(snapshot([stale], observed={"i-a": NOW + 500}), spec(60))  # a clock that went back
    assert future.observed_idle_since == {"i-a": NOW} and future.drain == []


@pytest.mark.parametrize("bad,reason", [([1], "must be an object"), ({"i-a": "soon"}, "'observed_idle_since.i-a' must be epoch seconds"),
                                        ({"i-a": 10**30}, "epoch seconds")])
def test_bad_observations_are_refused_in_one_line(bad: Any, reason: str) -> None:
    with pytest.raises(planner.SnapshotError, match=reason) as err:
        planner.plan(snapshot([], observed=bad), spec(60))
    assert "\n" not in str(err.value)


# --- the whole cycle on timelines ------------------------------------------------------------------

@dataclass
class Job:
    worker: str
    start: float
    end: float

    def runs_at(self, t: float) -> bool:
        return self.start <= t < self.end


@dataclass
class Timeline:
    """Ground truth: workers joined at `joined`, jobs on them; ads refreshed every `update` seconds."""

    workers: dict[str, float]  # instance id -> the phase of its ad refreshes (0 <= phase < update)
    jobs: list[Job]
    update: float
    joined: float = NOW - 1
    drained: dict[str, float] = field(default_factory=dict)
    drain_reasons: dict[str, str] = field(default_factory=dict)  # the DrainReason each drained startd advertises

    def changes(self, iid: str, until: float) -> list[float]:
        return [t for j in self.jobs if j.worker == iid for t in (j.start, j.end) if t <= until]

    def last_refresh(self, iid: str, t: float) -> float:
        """When worker IID last sent its slot ads before T (at join, then every `update` seconds)."""
        phase = self.workers[iid]
        first = self.joined + phase
        if t < first:
            return self.joined
        return first + ((t - first) // self.update) * self.update

    def pool(self, t: float) -> dict[str, Any]:
        """What the collector (ads as last refreshed) and the schedd (its jobs now) answer at T."""
        slots, jobs = [], []
        for iid in self.workers:
            if iid in self.drained:
                slots.append({**pslot(iid, self.joined, self.drained[iid], "Drained", "Idle"), "Draining": True,
                              "DrainReason": self.drain_reasons[iid]})
                continue
            sent = self.last_refresh(iid, t)
            changed = max([self.joined, *self.changes(iid, sent)])
            slots.append(pslot(iid, self.joined, changed))
            for n, job in enumerate(j for j in self.jobs if j.worker == iid and j.runs_at(sent)):
                slots.append({**pslot(iid, self.joined, job.start, "Claimed", "Busy"), "Name": f"slot1_{n + 1}@w-{iid}@{HOST}",
                              "PartitionableSlot": False})
        for k, job in enumerate(self.jobs):
            if job.runs_at(t) and job.worker not in self.drained:
                jobs.append(running_job(k, f"slot1_{k + 1}@w-{job.worker}@{HOST}"))
        return {"jobs": jobs, "slots": slots, "collector": []}

    def last_end(self, iid: str, t: float) -> float:
        return max([self.joined, *(j.end for j in self.jobs if j.worker == iid and j.end <= t)])


class Cloud:
    def __init__(self, instances: dict[str, dict[str, Any]]) -> None:
        self.instances = instances

    def farm_instances(self) -> list[dict[str, Any]]:
        return [dict(i) for i in self.instances.values()]

    def launch(self, count: int, token: str, worker_type: scale_spec.WorkerType) -> list[str]:
        raise AssertionError("nothing waits: no launch")

    def terminate(self, ends: dict[str, str]) -> None:
        for iid in ends:
            self.instances[iid] = {**self.instances[iid], "State": {"Name": "terminated"}}


class Drain:
    def __init__(self, timeline: Timeline, clock: list[float]) -> None:
        self.timeline, self.clock = timeline, clock
        self.for_consolidation: set[str] = set()  # drained busy on purpose (test_scale_consolidate.py)

    def drain(self, instance_id: str, slots: list[dict[str, Any]], reason: str) -> None:
        self.timeline.drained[instance_id] = self.clock[0]
        self.timeline.drain_reasons[instance_id] = DRAIN_REASON_PREFIX + reason  # what condor_drain -reason gives the startd
        if reason.startswith("consolidation"):
            self.for_consolidation.add(instance_id)


def run(timeline: Timeline, config: scale_spec.ScaleSpec, cycles: int, failed: set[int], restarts: set[int]) -> dict[str, float]:
    """Runs the scaler's cycles over TIMELINE (a failed discover in cycles FAILED, a fresh scaler
    at RESTARTS); when each worker was drained for being idle."""
    clock = [NOW]
    cloud = Cloud({iid: instance(iid, NOW - 100) for iid in timeline.workers})
    drain = Drain(timeline, clock)

    def pool() -> dict[str, Any]:
        if cycle in failed:
            raise discover.DiscoverError("collector: timed out")
        return timeline.pool(clock[0])

    def fresh() -> loop.Scaler:
        return loop.Scaler(config, cloud, drain, logging.getLogger("vfarm.test.idle"), clock=lambda: clock[0], pool=pool)

    scaler = fresh()
    for cycle in range(cycles):
        if cycle in restarts:
            scaler = fresh()
        scaler.cycle()
        clock[0] += config.check_every
    return {iid: at for iid, at in timeline.drained.items() if iid not in drain.for_consolidation}


@st.composite
def timelines(draw: Any) -> tuple[Timeline, scale_spec.ScaleSpec, int, set[int], set[int]]:
    check = draw(st.sampled_from([2, 5, 15]))
    update = draw(st.sampled_from([2, 30, 300]))  # test pools' 2 s, HTCondor's default 300 s
    idle_time = draw(st.sampled_from([0, 5, 20, 60, 120, 600]))
    cycles = draw(st.integers(5, 60))
    horizon = cycles * check
    workers = {f"i-{k}": float(draw(st.integers(0, update - 1))) for k in range(draw(st.integers(1, 3)))}
    jobs = []
    for iid in workers:
        for _ in range(draw(st.integers(0, 4))):
            start = NOW + draw(st.integers(-200, horizon))
            # At least one check-every long: some cycle sees the job running (a job that starts and
            # ends between two cycles is left to the ads; see the planner's docstring).
            jobs.append(Job(iid, start, start + draw(st.integers(check, 4 * check + 300))))
    failed = set(draw(st.lists(st.integers(0, cycles - 1), max_size=4)))
    restarts = set(draw(st.lists(st.integers(1, cycles - 1), max_size=2)))
    return Timeline(workers, jobs, float(update)), spec(idle_time, check), cycles, failed, restarts


@settings(max_examples=300, deadline=None)
@given(timelines())
def test_no_worker_is_drained_less_than_idle_time_after_its_last_job_ended(case: Any) -> None:
    timeline, config, cycles, failed, restarts = case
    drained = run(timeline, config, cycles, failed, restarts)
    for iid, at in drained.items():
        assert not [j for j in timeline.jobs if j.worker == iid and j.runs_at(at)], f"{iid} drained at +{at - NOW:.0f}s with a job running"
        ended = timeline.last_end(iid, at)
        assert at - ended >= config.idle_time, (f"{iid} drained {at - ended:.0f}s after its last job ended (idle-time "
                                                f"{config.idle_time:.0f}s, ads every {timeline.update:.0f}s)")


def test_the_issues_timeline_a_stale_ad_no_longer_drains_a_worker_seconds_after_its_job() -> None:
    """The real-VM failure: idle-time 20 s, the worker's partitionable-slot ad refreshed every 300 s,
    drained 4.6 s after its job ended. Now the drain waits for 20 s of idle sightings."""
    timeline = Timeline({"i-a": 0.0}, [Job("i-a", NOW + 3, NOW + 27)], update=300)
    config = spec(20, check_every=2)
    # What the ads alone would have said: the one ad, sent at join, says idle since then; the
    # first cycle after the job (+28) would have drained it.
    ads_only = planner.plan({"now": NOW + 28, **timeline.pool(NOW + 28), "instances": [instance("i-a", NOW - 100)],
                             planner.OBSERVED: {"i-a": NOW - 1000}}, config)
    assert ads_only.drain == ["i-a"]
    drained = run(timeline, config, 40, set(), set())
    assert set(drained) == {"i-a"}
    assert drained["i-a"] - (NOW + 27) == 21  # the job ended at +27, first seen idle at +28, 20 s of sightings
