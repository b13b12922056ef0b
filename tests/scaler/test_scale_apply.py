"""The scaler's apply step and loop, fast: back-off on cloud errors, the black hole, skipped
cycles, SIGTERM, metrics and --status, against an in-memory cloud and pool (and moto for EC2)."""

from __future__ import annotations

import logging
import os
import shlex
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any, Optional

import pytest

from tests.fixtures.condor_pool import free_port
from tests.fixtures.moto import NO_CAPACITY_TYPE, Ec2Endpoint
from vfarm.cli import scale as commands
from vfarm.config import scale as scale_spec
from vfarm.scaler import apply, backends, discover, loop
from vfarm.scaler import plan as planner

NAME = "farm"
SPEC = scale_spec.parse({"name": NAME, "cloud": {"type": "ec2", "image-id": "ami-1", "instance-type": "m1.small"},
                         "pool": {"collector": "127.0.0.1:9"}, "max-vms": 5, "cpus-per-vm": 2, "waiting-time": 0,
                         "idle-time": 100, "boot-timeout": 600, "check-every": 15})


def instance(iid: str, launched: float, state: str = "running", end: Optional[str] = None) -> dict[str, Any]:
    tags = [{"Key": "vfarm:farm", "Value": NAME}, {"Key": "vfarm:managed", "Value": "true"}]
    if end:
        tags.append({"Key": "vfarm:end", "Value": end})
    return {"InstanceId": iid, "LaunchTime": launched, "State": {"Name": state}, "Tags": tags}


def slot(iid: str, state: str = "Unclaimed", entered: float = 0.0, cpus: int = 2, name: Optional[str] = None) -> dict[str, Any]:
    return {"Name": name or f"slot1@w-{iid}@h", "VfarmInstanceId": iid, "State": state, "Activity": "Idle" if state != "Claimed" else "Busy",
            "Cpus": cpus, "EnteredCurrentState": entered, "SlotType": "Partitionable", "MyAddress": f"<127.0.0.1:{len(iid)}>"}


def job(n: int, status: int = 1, since: float = 0.0, remote: Optional[str] = None) -> dict[str, Any]:
    ad: dict[str, Any] = {"ClusterId": n, "ProcId": 0, "JobStatus": status, "EnteredCurrentStatus": since, "RequestCpus": 1}
    if remote:
        ad["RemoteHost"] = remote
    return ad


class FakeCloud:
    """An in-memory cloud: ClientToken idempotency as EC2's, failures on demand."""

    def __init__(self, clock: list[float]) -> None:
        self.clock = clock
        self.instances: dict[str, dict[str, Any]] = {}
        self.tokens: dict[str, list[str]] = {}
        self.fail: dict[str, str] = {}  # operation -> message
        self.lose_reply = False  # the launch happens, the reply is lost
        self.forgets_ended = False  # as Nova: a terminated instance is no longer listed
        self.launched = 0
        self.calls: list[tuple[str, Any]] = []

    def farm_instances(self) -> list[dict[str, Any]]:
        self.calls.append(("describe", None))
        if "describe" in self.fail:
            raise apply.CloudError(self.fail["describe"])
        return [dict(i, Tags=list(i["Tags"])) for i in self.instances.values()]

    def launch(self, count: int, token: str, worker_type: scale_spec.WorkerType) -> list[str]:
        self.calls.append(("launch", (count, token)))
        if "launch" in self.fail:
            raise apply.CloudError(self.fail["launch"])
        if token not in self.tokens:
            ids = [f"i-{self.launched + k:04d}" for k in range(count)]
            self.launched += count
            for iid in ids:
                self.instances[iid] = instance(iid, self.clock[0], "pending")
            self.tokens[token] = ids
        if self.lose_reply:
            self.lose_reply = False
            raise apply.CloudError("EC2 endpoint did not reply in time (launch)")
        return self.tokens[token]

    def terminate(self, ends: dict[str, str]) -> None:
        self.calls.append(("terminate", dict(ends)))
        if "terminate" in self.fail:
            raise apply.CloudError(self.fail["terminate"])
        for iid, end in ends.items():
            self.instances[iid]["Tags"].append({"Key": "vfarm:end", "Value": end})
            self.instances[iid]["State"] = {"Name": "terminated"}
            if self.forgets_ended:
                del self.instances[iid]


class FakeDrain:
    def __init__(self) -> None:
        self.drained: list[str] = []
        self.reasons: dict[str, str] = {}  # the plan's reason of each drain

    def drain(self, instance_id: str, slots: list[dict[str, Any]], reason: str) -> None:
        self.drained.append(instance_id)
        self.reasons[instance_id] = reason


def advertised(reason: str) -> str:
    """The DrainReason a startd advertises once the scaler drained it for REASON: the -reason word
    CondorDrain gives condor_drain (HTCondor 23.9 advertises it as given)."""
    argv = apply.CondorDrain("cm:9618").command("slot1@w", reason)
    return argv[argv.index("-reason") + 1]


class World:
    """Clock, cloud, pool and a scaler over them."""

    def __init__(self, caplog: pytest.LogCaptureFixture, spec: scale_spec.ScaleSpec = SPEC) -> None:
        self.now = [1_000_000.0]
        self.cloud = FakeCloud(self.now)
        self.drain = FakeDrain()
        self.jobs: list[dict[str, Any]] = []
        self.slots: list[dict[str, Any]] = []
        self.collector: list[dict[str, Any]] = []
        self.pool_down: Optional[str] = None
        self.spec = spec
        self.metrics = loop.Metrics(spec.name)
        caplog.set_level(logging.INFO, logger="vfarm.test")
        self.scaler = self.new_scaler()

    def new_scaler(self) -> loop.Scaler:
        """A fresh scaler over the same cloud and pool: what a restart gives."""
        return loop.Scaler(self.spec, self.cloud, self.drain, logging.getLogger("vfarm.test"), metrics=self.metrics,
                           clock=lambda: self.now[0], pool=self.pool)

    def pool(self) -> dict[str, Any]:
        if self.pool_down:
            raise discover.DiscoverError(self.pool_down)
        return {"jobs": list(self.jobs), "slots": list(self.slots), "collector": list(self.collector)}

    def tick(self, seconds: float) -> None:
        self.now[0] += seconds


def launches(cloud: FakeCloud) -> list[Any]:
    return [c[1] for c in cloud.calls if c[0] == "launch"]


def test_a_launch_carries_the_tag_and_a_retried_launch_reuses_its_token(caplog: pytest.LogCaptureFixture) -> None:
    w = World(caplog)
    w.jobs = [job(i) for i in range(3)]  # 3 CPUs wanted: 2 workers of 2
    w.cloud.lose_reply = True  # the instances start, the reply never arrives
    result = w.scaler.cycle()
    assert result is not None and result.launch == 2 and w.scaler.outcome is not None and w.scaler.outcome.cloud_errors == {"launch": 1}
    assert len(w.cloud.instances) == 2
    w.tick(15)  # back-off: 15 s after the first failure
    w.cloud.instances.clear()  # not visible yet (eventual consistency): the plan wants 2 again
    w.scaler.cycle()
    first, second = launches(w.cloud)
    assert first == second  # same count, same ClientToken: the cloud hands back the same two
    assert "launched i-0000 i-0001" in caplog.text
    assert "cloud error (launch)" in caplog.text


def test_a_launch_of_unknown_outcome_replaced_by_a_smaller_one_is_forgotten_aloud(caplog: pytest.LogCaptureFixture) -> None:
    w = World(caplog)
    w.jobs = [job(i) for i in range(3)]
    w.cloud.lose_reply = True
    w.scaler.cycle()
    w.tick(15)
    w.cloud.instances.clear()  # not listed (yet): the plan wants workers again, fewer now
    w.jobs = [job(0)]
    result = w.scaler.cycle()
    assert result is not None
    [forget] = result.of(planner.Action.FORGET)
    assert (forget.count, forget.token) == (2, launches(w.cloud)[0][1])
    assert forget.reason == "launch of 2 worker(s) of unknown outcome forgotten: 1 wanted now, launched with a new token"
    assert launches(w.cloud)[-1][0] == 1 and launches(w.cloud)[-1][1] != forget.token
    assert "forget: launch of 2 worker(s) of unknown outcome forgotten" in caplog.text


def test_cloud_errors_back_off_exponentially_and_the_loop_survives(caplog: pytest.LogCaptureFixture) -> None:
    w = World(caplog)
    w.jobs = [job(1)]
    w.cloud.fail["launch"] = "EC2 endpoint: the cloud refused 1 x m1.small (quota or capacity: InstanceLimitExceeded: ...)"
    attempts = []
    for _ in range(12):  # 12 cycles of 15 s = 180 s
        w.scaler.cycle()
        attempts.append(len(launches(w.cloud)))
        w.tick(15)
    # attempts at 0, 15 (after 15 s), 45 (30 s), 105 (60 s); the next only at 225
    at = [i * 15 for i, n in enumerate(attempts) if i == 0 or n > attempts[i - 1]]
    assert at == [0, 15, 45, 105]
    assert caplog.text.count("cloud error (launch)") == 4 and "postponed, cloud back-off" in caplog.text
    assert 'vfarm_scale_cloud_errors_total{farm="farm",operation="launch"} 4.0' in w.metrics.text()
    w.cloud.fail.clear()
    w.tick(120)
    w.scaler.cycle()
    assert len(w.cloud.instances) == 1 and w.scaler.applier.backoff["launch:default"].failures == 0
    backoff = apply.Backoff(15, 900)
    assert [backoff.failed(0) for _ in range(8)] == [15, 30, 60, 120, 240, 480, 900, 900]


def test_an_unreachable_pool_or_cloud_skips_the_cycle_and_changes_nothing(caplog: pytest.LogCaptureFixture) -> None:
    w = World(caplog)
    w.cloud.instances["i-lost"] = instance("i-lost", w.now[0] - 5000)  # would be terminated as lost
    w.jobs = [job(1)]
    w.pool_down = "collector 127.0.0.1:9: Failed to connect"
    assert w.scaler.cycle() is None
    w.pool_down = None
    w.cloud.fail["describe"] = "EC2 endpoint http://127.0.0.1:9 not answering"
    assert w.scaler.cycle() is None
    assert not [c for c in w.cloud.calls if c[0] != "describe"] and not w.drain.drained
    assert caplog.text.count("cycle skipped, nothing changed") == 2
    text = w.metrics.text()
    assert 'vfarm_scale_cycles_total{farm="farm",result="skipped"} 2.0' in text
    assert 'vfarm_scale_cloud_errors_total{farm="farm",operation="discover"} 1.0' in text
    w.cloud.fail.clear()
    w.scaler.cycle()
    assert ("terminate", {"i-lost": "lost"}) in w.cloud.calls


def test_a_broken_startds_numbers_stop_no_cycle(caplog: pytest.LogCaptureFixture) -> None:
    """Any startd holding the pool's token may advertise numbers outside 64 bits: they are read as
    absent, and the farm's cycle goes on."""
    w = World(caplog)
    w.cloud.instances["i-lost"] = instance("i-lost", w.now[0] - 5000)  # terminated as lost by any cycle that runs
    w.slots = [{"Name": "slot1@w", "Cpus": 10**30, "EnteredCurrentState": float("nan"), "LastHeardFrom": -1e300, "VfarmInstanceId": "i-other"}]
    assert w.scaler.cycle() is not None
    assert ("terminate", {"i-lost": "lost"}) in w.cloud.calls and "cycle skipped" not in caplog.text
    assert 'vfarm_scale_cycles_total{farm="farm",result="applied"} 1.0' in w.metrics.text()


def test_ads_the_planner_cannot_read_skip_the_cycle_without_a_traceback(caplog: pytest.LogCaptureFixture) -> None:
    w = World(caplog)
    w.cloud.instances["i-lost"] = instance("i-lost", w.now[0] - 5000)  # would be terminated as lost
    w.collector = [{"MyType": "Collector", "MyCurrentTime": w.now[0], "MonitorSelfAge": 10**30}]  # outside 64 bits
    assert w.scaler.cycle() is None
    assert "cycle skipped, nothing changed" in caplog.text and "Traceback" not in caplog.text
    assert not [c for c in w.cloud.calls if c[0] != "describe"]
    assert 'vfarm_scale_cycles_total{farm="farm",result="skipped"} 1.0' in w.metrics.text()


def test_drain_then_terminate_only_without_a_claim(caplog: pytest.LogCaptureFixture) -> None:
    w = World(caplog)
    w.cloud.instances["i-a"] = instance("i-a", w.now[0] - 1000)
    w.cloud.instances["i-b"] = instance("i-b", w.now[0] - 1000)
    w.slots = [slot("i-a", entered=w.now[0] - 500), slot("i-b", "Claimed", entered=w.now[0] - 500)]
    w.jobs = [job(1, status=2, remote="slot1@w-i-b@h")]
    w.scaler.cycle()  # its ads say idle for 500 s, but this scaler has not seen it idle yet
    assert w.drain.drained == []
    w.tick(60)
    w.scaler.cycle()
    assert w.drain.drained == []
    w.tick(40)
    w.scaler.cycle()  # seen idle in every cycle for idle-time
    assert w.drain.drained == ["i-a"] and not [c for c in w.cloud.calls if c[0] == "terminate"]
    assert "drain i-a: idle for 100s (idle-time 100s)" in caplog.text
    w.slots[0] = {**slot("i-a"), "State": "Drained", "Activity": "Idle", "Draining": True, "DrainReason": advertised(w.drain.reasons["i-a"])}
    w.scaler.cycle()
    assert ("terminate", {"i-a": "drained"}) in w.cloud.calls
    assert w.cloud.instances["i-b"]["State"]["Name"] == "running"


def test_a_worker_drained_by_someone_else_is_never_terminated_and_every_view_says_why(caplog: pytest.LogCaptureFixture) -> None:
    """An admin drains a farm worker for maintenance (condor_drain -reason ...): the scaler leaves it
    alone, and --status (table and JSON: the status page's data), the plan's table and its JSON
    (--snapshot, --dry-run) say whose drain it is. Once the admin cancels the drain it is a worker
    like any: idle for idle-time, the scaler drains it itself, and that drain it terminates."""
    w = World(caplog)
    w.cloud.instances["i-a"] = instance("i-a", w.now[0] - 1000)
    maintenance = {**slot("i-a"), "State": "Drained", "Activity": "Idle", "Draining": True, "DrainReason": "maintenance: new disk",
                   "DrainingRequestId": "d8a1"}
    w.slots = [maintenance]
    for _ in range(4):
        w.scaler.cycle()
        w.tick(60)
    assert not [c for c in w.cloud.calls if c[0] == "terminate"] and w.drain.drained == []
    why = "drained by someone else (reason 'maintenance: new disk'): left alone"
    snapshot = w.scaler.discover()
    result = planner.plan(snapshot, SPEC)
    status = loop.status_document(result, snapshot, SPEC, w.scaler.applier.read_verdict)
    assert [(r["instance"], r["state"], r["reason"]) for r in status["instances"]] == [("i-a", "other", why)]
    assert why in commands.render_status(status["instances"], SPEC, result)
    assert why in commands.render(result, SPEC)
    assert [(i["id"], i["state"], i["reason"]) for i in result.to_json()["instances"]] == [("i-a", "other", why)]
    w.slots = [{**slot("i-a"), "EnteredCurrentState": w.now[0]}]  # condor_drain -cancel
    for _ in range(3):
        w.scaler.cycle()
        w.tick(50)
    assert w.drain.drained == ["i-a"] and not [c for c in w.cloud.calls if c[0] == "terminate"]
    w.slots = [{**maintenance, "DrainReason": advertised(w.drain.reasons["i-a"]), "DrainingRequestId": "e01f"}]
    w.scaler.cycle()
    assert ("terminate", {"i-a": "drained"}) in w.cloud.calls


def test_black_hole_stops_launches_loudly_then_probes(caplog: pytest.LogCaptureFixture) -> None:
    spec = scale_spec.parse({**{"name": NAME, "cloud": {"type": "ec2"}, "max-vms": 3, "cpus-per-vm": 1, "waiting-time": 0,
                                "boot-timeout": 100, "check-every": 10}})
    w = World(caplog, spec)
    w.jobs = [job(i) for i in range(3)]
    w.scaler.cycle()
    assert len(w.cloud.instances) == 3  # they never join: a bad image
    w.tick(100)
    w.scaler.cycle()  # all three lost: terminated, and launching stops
    lost_at = w.now[0]
    assert [c[1] for c in w.cloud.calls if c[0] == "terminate"] == [{"i-0000": "lost", "i-0001": "lost", "i-0002": "lost"}]
    assert len(launches(w.cloud)) == 1
    assert "BLACK HOLE: the last 3 launched instance(s) were all lost" in caplog.text
    assert any(r.levelno == logging.ERROR and "NOT launching" in r.getMessage() for r in caplog.records)
    assert 'vfarm_scale_black_hole{farm="farm"} 1.0' in w.metrics.text()

    # A restart forgets nothing that matters: the tags on the ended instances tell the story.
    w.scaler = w.new_scaler()
    w.tick(290)
    w.scaler.cycle()
    assert len(launches(w.cloud)) == 1
    w.now[0] = lost_at + 300  # 5 min after the third loss: one probe, not three
    w.scaler.cycle()
    assert launches(w.cloud)[-1][0] == 1
    w.tick(10)
    w.scaler.cycle()  # the probe is still booting: nothing more
    assert len(launches(w.cloud)) == 2
    w.tick(90)  # the probe is lost too: 4 in a row, back-off doubles to 10 min
    w.scaler.cycle()
    hole = planner.black_holes(w.cloud.farm_instances(), {}, set(), spec, w.now[0])["default"]
    assert (hole.streak, hole.delay, hole.blocked) == (4, 600.0, True)
    w.now[0] = hole.until
    w.scaler.cycle()
    probe = [i for i, d in w.cloud.instances.items() if d["State"]["Name"] == "pending"]
    assert len(probe) == 1 and len(launches(w.cloud)) == 3
    w.slots = [slot(probe[0], entered=w.now[0])]  # this one joins: the hole is closed
    w.jobs += [job(9)]
    w.tick(10)
    result = w.scaler.cycle()
    assert result is not None and result.types["default"].black_hole.active is False
    assert launches(w.cloud)[-1][0] > 1


def test_black_hole_holds_on_a_cloud_that_forgets_ended_instances(caplog: pytest.LogCaptureFixture) -> None:
    # Nova lists a deleted server no more: the scaler remembers the fates of its ended launches.
    spec = scale_spec.parse({"name": NAME, "cloud": {"type": "ec2"}, "max-vms": 3, "cpus-per-vm": 1, "waiting-time": 0,
                             "boot-timeout": 100, "check-every": 10})
    w = World(caplog, spec)
    w.cloud.forgets_ended = True
    w.jobs = [job(i) for i in range(3)]
    w.scaler.cycle()
    w.tick(100)
    w.scaler.cycle()  # all three lost and terminated: the cloud forgets them
    lost_at = w.now[0]
    assert w.cloud.instances == {} and len(launches(w.cloud)) == 1
    for _ in range(5):
        w.tick(50)
        result = w.scaler.cycle()
        assert result is not None and result.types["default"].black_hole.blocked
    assert len(launches(w.cloud)) == 1
    w.now[0] = lost_at + 300
    w.scaler.cycle()
    assert launches(w.cloud)[-1][0] == 1  # one probe
    w.tick(100)
    result = w.scaler.cycle()  # the probe is lost too: the back-off doubles
    assert result is not None and (result.types["default"].black_hole.streak, result.types["default"].black_hole.delay) == (4, 600.0)
    assert len(w.scaler.ended) == 4 and {e["fate"] for e in w.scaler.ended} == {"lost"}
    w.now[0] = result.types["default"].black_hole.until
    w.scaler.cycle()
    probe = [i for i, d in w.cloud.instances.items() if d["State"]["Name"] == "pending"]
    assert len(probe) == 1 and len(launches(w.cloud)) == 3
    w.slots = [slot(probe[0], entered=w.now[0])]  # it joins (and, later ended, the cloud forgets it)
    w.jobs = []
    w.tick(10)
    w.scaler.cycle()
    assert [e["fate"] for e in w.scaler.ended][-1] == "joined"
    del w.cloud.instances[probe[0]]
    w.slots = []
    w.jobs = [job(i) for i in range(3)]
    w.tick(10)
    result = w.scaler.cycle()  # the newest decided launch joined: launches go on, whole
    assert result is not None and result.types["default"].black_hole.active is False
    assert launches(w.cloud)[-1][0] == 3


def test_the_black_holes_memory_keeps_the_newest_decided_launches_of_each_type() -> None:
    spec = scale_spec.parse({"name": NAME, "cloud": {"type": "ec2"}, "max-vms": 3, "boot-timeout": 100})
    insts = [instance(f"i-{k:02d}", 1000.0 + k, "terminated", "lost") for k in range(12)] + [instance("i-new", 3000.0, "pending")]
    result = planner.plan({"now": 3010.0, "jobs": [], "slots": [], "instances": insts}, spec)
    assert [e["id"] for e in result.ended] == [f"i-{k:02d}" for k in range(12 - planner.ENDED_KEEP, 12)]
    assert result.ended[-1] == {"id": "i-11", "launched": 1011.0, "fate": "lost", "type": None, "cloud": None}
    # fed back with nothing listed, the same black hole; a listed instance wins over what is remembered
    again = planner.plan({"now": 3010.0, "jobs": [], "slots": [], "instances": [], "ended": result.ended}, spec)
    hole, remembered = result.types["default"].black_hole, again.types["default"].black_hole
    assert (remembered.active, remembered.blocked, remembered.delay, remembered.until) == (True, True, 3600.0, hole.until)
    assert remembered.streak == planner.ENDED_KEEP and remembered.lost == []  # no console to read of what the cloud forgot
    listed = planner.plan({"now": 3010.0, "jobs": [], "slots": [], "instances": [instance("i-11", 1011.0, "terminated", "drained")],
                           "ended": result.ended}, spec)
    assert listed.types["default"].black_hole.active is False
    # A type the farm no longer lists is nobody's history (not the first type's); an id twice is refused.
    gone = [{**e, "type": "retired"} for e in result.ended]
    assert planner.plan({"now": 3010.0, "jobs": [], "slots": [], "instances": [], "ended": gone}, spec).types["default"].black_hole.streak == 0
    with pytest.raises(planner.SnapshotError, match="'ended' names an instance twice: 'i-11'"):
        planner.plan({"now": 1.0, "jobs": [], "slots": [], "instances": [], "ended": [result.ended[-1], {**result.ended[-1], "type": None}]}, spec)
    with pytest.raises(planner.SnapshotError, match=r"'ended\[0\]' must be"):
        planner.plan({"now": 1.0, "jobs": [], "slots": [], "instances": [], "ended": [{"id": "i-1", "launched": 1.0, "fate": "gone"}]}, spec)


def test_black_hole_back_off_doubles_to_an_hour() -> None:
    spec = scale_spec.parse({"name": NAME, "cloud": {"type": "ec2"}, "max-vms": 3, "boot-timeout": 100})
    delays = []
    for lost in range(3, 10):
        insts = [instance(f"i-{k}", 1000.0 + k, "terminated", "lost") for k in range(lost)]
        delays.append(planner.black_holes(insts, {}, set(), spec, 0.0)["default"].delay)
    assert delays == [300, 600, 1200, 2400, 3600, 3600, 3600]
    # the newest decided launch joined: no black hole, whatever came before
    insts = [instance(f"i-{k}", 1000.0 + k, "terminated", "lost") for k in range(5)] + [instance("i-new", 2000.0, "terminated", "drained")]
    assert planner.black_holes(insts, {}, set(), spec, 0.0)["default"].active is False
    # ended without our tag and never seen joined (it powered itself off): lost
    assert planner.black_holes([instance(f"i-{k}", 1000.0 + k, "terminated") for k in range(3)], {}, set(), spec, 0.0)["default"].active


def test_sigterm_lets_the_cycle_in_progress_finish(caplog: pytest.LogCaptureFixture) -> None:
    w = World(caplog)
    w.cloud.instances["i-lost"] = instance("i-lost", w.now[0] - 5000)
    original = w.pool

    def pool_then_sigterm() -> dict[str, Any]:
        os.kill(os.getpid(), signal.SIGTERM)  # arrives in the middle of a cycle
        return original()

    w.scaler._pool = pool_then_sigterm
    before = signal.getsignal(signal.SIGTERM)
    started = time.monotonic()
    assert commands._run_loop(w.scaler, None, None) == 0
    assert time.monotonic() - started < 5  # no wait for check-every (15 s) after the stop
    assert ("terminate", {"i-lost": "lost"}) in w.cloud.calls  # the cycle ran to its end
    assert "SIGTERM: stopping after this cycle" in caplog.text and "stopped after 1 cycle(s)" in caplog.text
    assert signal.getsignal(signal.SIGTERM) is before


def test_a_failing_cycle_does_not_end_the_loop(caplog: pytest.LogCaptureFixture) -> None:
    w = World(caplog)
    calls = []

    def broken() -> dict[str, Any]:
        calls.append(1)
        raise RuntimeError("a bug")

    w.scaler._pool = broken
    spec = scale_spec.parse({"name": NAME, "cloud": {"type": "ec2"}, "max-vms": 1, "check-every": 0.01})
    w.scaler.spec = spec
    assert w.scaler.loop(threading.Event(), cycles=3) == 3 and len(calls) == 3
    assert caplog.text.count("cycle failed") == 3
    assert f'vfarm_scale_cycles_total{{farm="{NAME}",result="failed"}} 3.0' in w.metrics.text()  # the dashboard sees them


def test_metrics_content_and_server_on_loopback(caplog: pytest.LogCaptureFixture) -> None:
    w = World(caplog)
    w.cloud.instances["i-a"] = instance("i-a", w.now[0] - 1000)
    w.cloud.instances["i-b"] = instance("i-b", w.now[0] - 10)
    w.slots = [slot("i-a", "Claimed", cpus=2)]
    w.jobs = [job(1), job(2), job(3), job(4), job(5, status=2, remote="slot1@w-i-a@h")]
    w.scaler.cycle()
    text = w.metrics.text()
    for line in ('vfarm_scale_waiting_jobs{farm="farm"} 4.0', 'vfarm_scale_demand_cpus{farm="farm"} 4.0',
                 'vfarm_scale_supply_cpus{farm="farm"} 2.0', 'vfarm_scale_instances{farm="farm",state="busy"} 1.0',
                 'vfarm_scale_instances{farm="farm",state="booting"} 1.0', 'vfarm_scale_instances{farm="farm",state="lost"} 0.0',
                 'vfarm_scale_launches_total{farm="farm"} 1.0', 'vfarm_scale_terminations_total{farm="farm"} 0.0',
                 'vfarm_scale_cycles_total{farm="farm",result="applied"} 1.0'):
        assert line in text, line
    port = free_port()
    server = w.metrics.serve(port)
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
            served = response.read().decode()
        assert 'vfarm_scale_launches_total{farm="farm"} 1.0' in served
        assert server.server_address[0] == "127.0.0.1"
    finally:
        server.shutdown()


def test_status_lists_every_instance_with_state_age_slots_and_jobs(caplog: pytest.LogCaptureFixture) -> None:
    w = World(caplog)
    now = w.now[0]
    w.cloud.instances.update({
        "i-boot": instance("i-boot", now - 30), "i-busy": instance("i-busy", now - 4000), "i-idle": instance("i-idle", now - 700),
        "i-lost": instance("i-lost", now - 9000), "i-stop": instance("i-stop", now - 100, "stopped"),
        "i-gone": instance("i-gone", now - 100, "terminated"), "i-odd": instance("i-odd", now - 100, "error"),
    })
    w.slots = [slot("i-busy", "Claimed", name="slot1_1@w-i-busy@h"), slot("i-busy", "Claimed", name="slot1_2@w-i-busy@h"),
               slot("i-idle", entered=now - 60), {**slot("i-drain"), "State": "Drained"}]
    w.jobs = [job(1, 2, remote="slot1_1@w-i-busy@h"), job(2, 2, remote="slot1_2@w-i-busy@h"), job(3)]
    snapshot = w.scaler.discover()
    result = planner.plan(snapshot, SPEC)
    rows = loop.status_rows(result, snapshot, SPEC)
    assert [(r["instance"], r["state"], r["slots"], r["jobs"]) for r in rows] == [
        ("i-boot", "booting", 0, 0), ("i-busy", "busy", 2, 2), ("i-idle", "idle", 1, 0), ("i-lost", "lost", 0, 0), ("i-stop", "stopped", 0, 0),
        ("i-odd", "error", 0, 0)]
    assert rows[5]["reason"] == "the cloud says 'error': not counted as a worker; look at it (vfarm instances --all-states)"
    # --snapshot's plan lists them too (not the ended one: the cloud lists it only for a while)
    others = commands.render(result, SPEC).split("INSTANCE")[1]
    assert "i-odd " in others and "i-stop " in others and "i-gone" not in others
    assert [(o["instance"], o["state"]) for o in result.to_json()["others"]] == [("i-stop", "stopped"), ("i-odd", "error")]
    text = commands.render_status(rows, SPEC, result)
    lines = text.splitlines()
    assert lines[0].startswith("farm farm: 6 instance(s), 1 waiting job(s)")
    assert lines[2].split() == ["INSTANCE", "STATE", "AGE", "SLOTS", "JOBS", "WHY", "VERDICT"]
    assert lines[4].split()[:5] == ["i-busy", "busy", "67m", "2", "2"]
    assert "needs a clean-up" in lines[-2] and "not counted as a worker" in lines[-1]
    assert not [c for c in w.cloud.calls if c[0] != "describe"]  # looking changes nothing
    # A job on a dynamic slot whose ad has not arrived yet is counted as the planner counts it
    # (by the startd of its RemoteHost), so JOBS agrees with the state beside it.
    w.slots = [slot("i-busy", entered=now - 60)]
    w.jobs = [job(1, 2, remote="slot1_1@w-i-busy@h")]
    snapshot = w.scaler.discover()
    result = planner.plan(snapshot, SPEC)
    busy = next(r for r in loop.status_rows(result, snapshot, SPEC) if r["instance"] == "i-busy")
    assert (busy["state"], busy["jobs"]) == ("busy", 1), busy


def test_after_an_ssh_prefix_condor_drain_is_one_shell_quoted_line() -> None:
    """ssh joins the words after the host with blanks for the remote shell: the reason's `(` and a
    slot name's `;` would be read by that shell, so the words go as one quoted line."""
    slot_name = "slot1@w-i-a@h;touch${IFS}/tmp/pwned"
    for prefix in (["ssh", "root@cm.example.org"], ["/usr/bin/ssh", "-p", "22", "root@cm"]):
        argv = apply.CondorDrain("cm:9618", prefix).command(slot_name, "idle for 3700s (idle-time 3600s)")
        assert argv[:-1] == prefix and shlex.split(argv[-1]) == [
            "condor_drain", "-pool", "cm:9618", "-graceful", "-reason", "vfarm scale: idle for 3700s (idle-time 3600s)", slot_name]
    local = apply.CondorDrain("cm:9618", ["sudo", "-u", "condor"]).command("slot1@w", "idle")
    assert local == ["sudo", "-u", "condor", "condor_drain", "-pool", "cm:9618", "-graceful", "-reason", "vfarm scale: idle", "slot1@w"]


@pytest.mark.integration
def test_condor_drain_never_shows_its_prefix_nor_reads_a_name_as_an_option(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """The admin command may carry a password (sshpass -p, a proxy's user:password): neither the
    log line nor a failure shows it. A prefix that cannot run is a DrainError, not a crash."""
    log = tmp_path / "argv"
    drain = apply.CondorDrain("cm:9618", ["bash", "-c", 'printf "%s\\n" "$*" >> "$0"; echo "ERROR: refused" >&2; exit 1', str(log), "--password", "S3CR3T"],
                              log=logging.getLogger("vfarm.test"))
    with caplog.at_level(logging.INFO), pytest.raises(apply.DrainError) as failed:
        drain.drain("i-a", [slot("i-a", name="-slot1@w@h"), slot("i-a", name="slot2@w2@h")], "idle")
    assert "S3CR3T" not in str(failed.value) + caplog.text and "ERROR: refused" in str(failed.value), str(failed.value)
    assert "through admin-command bash" in caplog.text and "run: condor_drain -pool cm:9618" in caplog.text
    assert log.read_text().split()[-1] == "slot2@w2@h"  # the name that starts with '-' was left out
    folder = apply.CondorDrain("cm:9618", [str(tmp_path)])
    with pytest.raises(apply.DrainError, match="cannot run"):
        folder.drain("i-a", [slot("i-a", name="slot1@w@h")], "idle")


@pytest.mark.integration
def test_condor_drain_runs_through_the_host_runner_with_the_admin_prefix(tmp_path: Path) -> None:
    # The admin prefix is a real bash that records its arguments and fails from the second call on.
    log = tmp_path / "argv"
    script = 'printf "%s\\n" "$*" >> "$0"; [ "$(wc -l < "$0")" -le 1 ] || { echo "ERROR: failed to drain" >&2; exit 1; }'
    drain = apply.CondorDrain("cm:9618", ["bash", "-c", script, str(log)], env={"_CONDOR_SEC_TOKEN_DIRECTORY": "/tokens"})
    slots = [slot("i-a", name="slot1_1@w@h") | {"SlotType": "Dynamic"}, slot("i-a", name="slot1@w@h")]
    drain.drain("i-a", slots, "idle for 500s")
    assert log.read_text().splitlines() == ["condor_drain -pool cm:9618 -graceful -reason vfarm scale: idle for 500s slot1@w@h"]
    with pytest.raises(apply.DrainError, match="failed to drain"):
        drain.drain("i-a", slots, "idle")
    with pytest.raises(apply.DrainError, match="no slot name"):
        drain.drain("i-a", [], "idle")


def test_ec2_backend_on_moto_idempotent_launch_tags_and_terminate(ec2_endpoint: Ec2Endpoint) -> None:
    cloud = {"type": "ec2", "image-id": ec2_endpoint.image_id, "instance-type": "m1.small", "endpoint-url": ec2_endpoint.url,
             "region": ec2_endpoint.region, "tags": {"site": "torino"}}
    spec = scale_spec.parse({"name": "moto", "cloud": cloud, "max-vms": 3})
    backend = backends.backend_for(spec, b"#cloud-config\n")
    token = planner.client_token("moto", 1.0, 2)
    first = backend.launch(2, token, spec.types[0])
    assert backend.launch(2, token, spec.types[0]) == first  # a retried call starts nothing more
    found = backend.farm_instances()
    assert sorted(i["InstanceId"] for i in found) == sorted(first)
    tags = {t["Key"]: t["Value"] for t in found[0]["Tags"]}
    assert tags["vfarm:farm"] == "moto" and tags["site"] == "torino" and tags["vfarm:managed"] == "true"
    backend.terminate({first[0]: "lost"})
    ended = {i["InstanceId"]: i for i in backend.farm_instances()}
    assert ended[first[0]]["State"]["Name"] in ("shutting-down", "terminated")
    assert {"Key": "vfarm:end", "Value": "lost"} in ended[first[0]]["Tags"]
    no_room = scale_spec.parse({"name": "moto", "cloud": {**cloud, "instance-type": NO_CAPACITY_TYPE}, "max-vms": 1})
    with pytest.raises(apply.CapacityError, match="InsufficientInstanceCapacity"):
        backends.Ec2Backend(no_room, b"x").launch(1, planner.client_token("moto", 2.0, 1), no_room.types[0])


def stderr_until(proc: subprocess.Popen[str], text: str) -> list[str]:
    """PROC's stderr lines up to the first holding TEXT (all of them if it never comes)."""
    assert proc.stderr is not None
    seen = []
    for line in proc.stderr:
        seen.append(line)
        if text in line:
            break
    return seen


def stop_and_read(proc: subprocess.Popen[str]) -> str:
    """SIGTERM to a `vfarm scale` loop (it ends after its cycle); the rest of its stderr (killed after 120 s)."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
    try:
        return proc.communicate(timeout=120)[1]
    except subprocess.TimeoutExpired:
        proc.kill()
        return proc.communicate()[1]


@pytest.mark.integration
def test_the_loop_command_stops_on_sigterm_with_the_pool_down(tmp_path: Path) -> None:
    farm = tmp_path / "farm.yaml"
    farm.write_text("check: {}\nscale:\n  name: t\n"
                    "  cloud: {type: ec2, image-id: ami-1, instance-type: m1.small, endpoint-url: 'http://127.0.0.1:9', handlers: baked}\n"
                    "  pool: {collector: '127.0.0.1:9'}\n  max-vms: 1\n  check-every: 1h\n")
    env = {**os.environ, "AWS_ACCESS_KEY_ID": "x", "AWS_SECRET_ACCESS_KEY": "y", "AWS_EC2_METADATA_DISABLED": "true"}
    proc = subprocess.Popen([sys.executable, "-m", "vfarm", "scale", str(farm)], stderr=subprocess.PIPE, text=True, env=env)
    seen = stderr_until(proc, "cycle skipped, nothing changed: collector 127.0.0.1:9")
    proc.send_signal(signal.SIGTERM)
    rest = proc.communicate(timeout=120)[1]
    assert proc.returncode == 0, "".join(seen) + rest
    assert "SIGTERM: stopping after this cycle" in rest and "stopped after 1 cycle(s)" in rest


@pytest.mark.integration
def test_status_and_once_with_the_collector_down_are_one_line_errors(tmp_path: Path) -> None:
    farm = tmp_path / "farm.yaml"
    farm.write_text("check: {}\nscale:\n  name: t\n  cloud: {type: ec2, image-id: ami-1, instance-type: m1.small, handlers: baked}\n"
                    "  pool: {collector: '127.0.0.1:9'}\n  max-vms: 1\n")
    for extra in (["--status"], ["--once"], ["--status", "--json"]):
        done = subprocess.run([sys.executable, "-m", "vfarm", "scale", str(farm), *extra], text=True, capture_output=True, timeout=60)
        assert done.returncode == 1 and done.stderr.startswith("vfarm: collector 127.0.0.1:9"), done.stderr
        assert done.stderr.count("\n") == 1 and not done.stdout
    bad = subprocess.run([sys.executable, "-m", "vfarm", "scale", str(farm), "--once", "--metrics-port", "9100"], text=True, capture_output=True, timeout=60)
    assert bad.returncode == 1 and "--metrics-port" in bad.stderr
