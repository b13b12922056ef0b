"""max-cpus: a farm-level limit on the CPUs of the live workers, as a cloud's quota in cores.

It binds across types like max-vms (jobs are held, not sent to another type), is handed out in
queue order (the oldest jobs first, whatever their type), names itself in the hold reason and in
the loop's first line, bounds min-vms launches, counts every cloud of a hybrid farm, and lets idle
workers of other types make room; a farm without it plans exactly as before."""

from __future__ import annotations

import logging
import threading
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.scaler.test_scale_packing import SIZES as PACKING_SIZES
from tests.scaler.test_scale_packing import sized
from vfarm.cli import scale as scale_cli
from vfarm.config import loader as configuration
from vfarm.config import scale as scale_spec
from vfarm.scaler import apply, loop
from vfarm.scaler import plan as planner
from vfarm.scaler.model import DRAIN_REASON_PREFIX

NOW = 1_700_000_000.0
FARM = """\
scale:
  name: mixed
  cloud: {type: ec2, image-id: ami-1, instance-type: m1.small}
  max-vms: 100
  max-cpus: 20
  waiting-time: 0
  idle-time: 600
  boot-timeout: 100
  types:
    - {name: small, cpus: 2, memory: 8G}
    - {name: large, cpus: 8, memory: 32G}
"""


def spec(text: str = FARM) -> scale_spec.ScaleSpec:
    return scale_spec.parse(configuration.load_text(text, "farm.yaml").sections["scale"])


def job(n: int, cpus: int = 1, memory: int = 1024) -> dict[str, Any]:
    return {"ClusterId": n, "ProcId": 0, "JobStatus": 1, "EnteredCurrentStatus": NOW - 60, "RequestCpus": cpus, "RequestMemory": memory}


def instance(iid: str, kind: str, launched: float = NOW - 10, state: str = "running") -> dict[str, Any]:
    tags = [{"Key": "vfarm:farm", "Value": "mixed"}, {"Key": "vfarm:type", "Value": kind}]
    return {"InstanceId": iid, "LaunchTime": launched, "State": {"Name": state}, "Tags": tags}


def idle_slot(iid: str, cpus: int) -> dict[str, Any]:
    return {"Name": f"slot1@w-{iid}@host", "VfarmInstanceId": iid, "State": "Unclaimed", "Activity": "Idle", "Cpus": cpus,
            "Memory": cpus * 4096, "EnteredCurrentState": NOW - 3600, "PartitionableSlot": True}


def launches(result: planner.Plan) -> dict[str, int]:
    return {d.type or "": d.count for d in result.decisions if d.action == "launch"}


def holds(result: planner.Plan) -> list[str]:
    return [d.reason for d in result.decisions if d.action == "hold"]


def live_cpus(result: planner.Plan, farm: scale_spec.ScaleSpec) -> int:
    return sum(farm.worker_type(w.type).cpus for w in result.instances)


def test_the_setting_parses_and_bad_values_are_refused_in_one_line() -> None:
    assert spec().max_cpus == 20
    assert spec(FARM.replace("  max-cpus: 20\n", "")).max_cpus is None
    for bad in ("-1", "many", "1.5", "2000000000"):
        with pytest.raises(configuration.ConfigError) as err:
            configuration.load_text(FARM.replace("max-cpus: 20", f"max-cpus: {bad}"), "farm.yaml")
        text = str(err.value)
        assert text.startswith("farm.yaml:5:") and "max-cpus" in text and text.count("\n") == 0, text


def aged(ad: dict[str, Any], waited: float) -> dict[str, Any]:
    return {**ad, "EnteredCurrentStatus": NOW - waited}


def test_the_cap_binds_across_types_and_holds_jobs_where_they_fit() -> None:
    farm = spec()
    # 2 large (16 CPUs) and 4 small (8 CPUs) wanted: 24 CPUs over max-cpus 20.
    large = [job(n, cpus=8, memory=4000) for n in range(2)]
    small = [job(10 + n, cpus=2, memory=4000) for n in range(4)]
    jobs = [aged(j, 600) for j in small] + [aged(j, 300) for j in large]
    result = planner.plan({"now": NOW, "jobs": jobs, "slots": [], "instances": []}, farm)
    # In queue order: the small jobs waited longest (8 CPUs), then large: one (16 > 12 left), the other held; none moves to small.
    assert launches(result) == {"small": 4, "large": 1}
    assert result.types["large"].waiting == 2 and result.types["small"].waiting == 4
    assert holds(result) == []
    launch = next(d for d in result.decisions if d.type == "large")
    assert launch.reason.endswith("capped at max-cpus 20 (0 CPUs live, 16 in this plan's launches)"), launch.reason
    # The large jobs older: they take 16 first, whatever the order the farm lists its types in; 2 small fit in the 4 left.
    jobs = [aged(j, 300) for j in small] + [aged(j, 600) for j in large]
    result = planner.plan({"now": NOW, "jobs": jobs, "slots": [], "instances": []}, farm)
    assert launches(result) == {"large": 2, "small": 2}
    assert result.types["small"].waiting == 4 and result.types["small"].wanted == 4
    # Live workers count with their type's cpus, booting and draining ones alike: 2 large = 16 of 20.
    live = [instance("i-l1", "large"), instance("i-l2", "large")]
    result = planner.plan({"now": NOW, "jobs": jobs, "slots": [], "instances": live}, farm)
    assert launches(result) == {"small": 2}
    assert live_cpus(result, farm) + 2 * 2 <= 20


def test_the_hold_reason_names_max_cpus() -> None:
    farm = spec()
    live = [instance("i-l1", "large"), instance("i-l2", "large"), instance("i-s1", "small")]  # 18 CPUs
    result = planner.plan({"now": NOW, "jobs": [job(n, cpus=8, memory=4000) for n in range(20)], "slots": [], "instances": live}, farm)
    assert result.launch == 0
    assert holds(result) == ["18 more worker(s) of type large wanted but max-cpus 20 reached (18 CPUs live)"], holds(result)
    assert "(min 0, max 100, max-cpus 20)" in scale_cli.render(result, farm).splitlines()[0]  # what --snapshot prints
    # The CPUs this plan's own launches take count too, and are named.
    jobs = [aged(job(n, cpus=8, memory=4000), 300) for n in range(2)] + [aged(job(10 + n, cpus=2, memory=4000), 600) for n in range(4)]
    result = planner.plan({"now": NOW, "jobs": jobs, "slots": [], "instances": []}, spec(FARM.replace("max-cpus: 20", "max-cpus: 12")))
    assert launches(result) == {"small": 4}
    assert holds(result) == ["2 more worker(s) of type large wanted but max-cpus 12 reached (0 CPUs live, 8 in this plan's launches)"]


def test_min_vms_launches_respect_max_cpus() -> None:
    farm = spec(FARM.replace("max-cpus: 20", "max-cpus: 5\n  min-vms: 4"))
    result = planner.plan({"now": NOW, "jobs": [], "slots": [], "instances": []}, farm)
    assert launches(result) == {"small": 2}  # 2 x 2 CPUs; a third would take 6 > 5


def test_idle_workers_of_other_types_make_room_under_max_cpus() -> None:
    farm = spec()
    small = [f"i-s{k}" for k in range(5)]  # 10 CPUs of idle small workers, idle-time past
    workers = [instance(iid, "small", NOW - 7200) for iid in small] + [instance("i-l1", "large", NOW - 7200)]
    slots = [idle_slot(iid, 2) for iid in small] + [{**idle_slot("i-l1", 8), "State": "Claimed", "Activity": "Busy"}]
    seen = {iid: NOW - 3000 + k for k, iid in enumerate(small)}
    big = [job(n, cpus=8, memory=4000) for n in range(2)]
    result = planner.plan({"now": NOW, "jobs": big, "slots": slots, "instances": workers, "observed_idle_since": seen}, farm)
    # 18 CPUs live, max-cpus 20: no large may start; 2 large need 16, 2 left: 14 CPUs to free = 7 small, 5 there.
    assert result.launch == 0 and result.types["large"].wanted == 2
    assert result.drain == small, result.drain
    drain = next(d for d in result.decisions if d.action == "drain")
    assert drain.reason == ("idle for 3000s (idle-time 600s); room under max-cpus 20 for the workers the waiting jobs need (2 of type large)"), \
        drain.reason
    # Only as many CPUs as needed: one large job needs 8, 2 free: 6 to free = 3 small.
    result = planner.plan({"now": NOW, "jobs": big[:1], "slots": slots, "instances": workers, "observed_idle_since": seen}, farm)
    assert result.drain == small[:3]
    # Workers already on their way out count as freed: the next cycle drains no more.
    draining = [{**s, "State": "Drained", "Activity": "Retiring", "Draining": True, "DrainReason": f"{DRAIN_REASON_PREFIX}{d.reason}"}
                for s, d in zip(slots[:3], result.of(planner.Action.DRAIN))]  # as the startds advertise the scaler's drains
    result = planner.plan({"now": NOW, "jobs": big[:1], "slots": draining + slots[3:], "instances": workers, "observed_idle_since": seen}, farm)
    assert result.drain == [] and result.launch == 0
    # Idle for less than idle-time: kept.
    recent = {iid: NOW - 100 for iid in small}
    assert planner.plan({"now": NOW, "jobs": big, "slots": slots, "instances": workers, "observed_idle_since": recent}, farm).drain == []
    # Without max-cpus (max-vms not binding either): launches, no drain while jobs wait.
    result = planner.plan({"now": NOW, "jobs": big, "slots": slots, "instances": workers, "observed_idle_since": seen},
                          spec(FARM.replace("  max-cpus: 20\n", "")))
    assert result.drain == [] and launches(result) == {"large": 2}


@settings(max_examples=100, deadline=None)
@given(asked=st.lists(st.tuples(st.sampled_from([1, 2, 4, 8]), st.sampled_from([1000, 4000, 16000])), max_size=30),
       live=st.lists(st.sampled_from(["small", "large"]), max_size=6), max_vms=st.integers(0, 12), min_vms=st.integers(0, 4))
def test_absent_max_cpus_plans_as_before_and_a_huge_one_changes_nothing(asked: list[tuple[int, int]], live: list[str], max_vms: int,
                                                                        min_vms: int) -> None:
    text = FARM.replace("max-vms: 100", f"max-vms: {max(max_vms, min_vms)}\n  min-vms: {min_vms}")
    snapshot = {"now": NOW, "jobs": [job(n, c, m) for n, (c, m) in enumerate(asked)], "slots": [],
                "instances": [instance(f"i-{k}", kind) for k, kind in enumerate(live)]}
    absent = planner.plan(snapshot, spec(text.replace("  max-cpus: 20\n", ""))).to_json()
    assert planner.plan(snapshot, spec(text.replace("max-cpus: 20", "max-cpus: 1000000"))).to_json() == absent


def test_an_untyped_farm_counts_cpus_per_vm() -> None:
    farm = scale_spec.parse({"name": "mixed", "cloud": {"type": "ec2"}, "max-vms": 10, "cpus-per-vm": 4, "max-cpus": 10, "waiting-time": 0})
    result = planner.plan({"now": NOW, "jobs": [job(n) for n in range(12)], "slots": [], "instances": []}, farm)
    assert result.launch == 2
    assert next(d for d in result.decisions if d.action == "launch").reason.endswith("capped at max-cpus 10 (0 CPUs live, 8 in this plan's launches)")


# Four types of 1/2/4/8 CPUs listed small first (each job's least-waste type is the one of its
# CPUs), with room for a thousand workers: max-cpus is what binds.
SIZES = PACKING_SIZES.replace("max-vms: 30", "max-vms: 1000")


def test_the_cpu_budget_goes_to_the_oldest_jobs_first_whatever_their_type() -> None:
    farm = spec(SIZES.replace("max-vms: 1000", "max-vms: 1000\n  max-cpus: 16"))
    # Two 8-CPU jobs waited longest, then twenty 1-CPU jobs: the old rule (the types in the farm's order) gave the 1-CPU
    # jobs 16 w1 workers and held the 8-CPU ones; in queue order the 8-CPU jobs take the 16 CPUs.
    jobs = sized([(8, 900), (8, 800)] + [(1, 600)] * 20)
    result = planner.plan({"now": NOW, "jobs": jobs, "slots": [], "instances": []}, farm)
    assert launches(result) == {"w8": 2}
    assert result.types["w1"].wanted == 20 and result.types["w1"].waiting == 20
    [hold] = holds(result)
    assert hold.startswith("20 more worker(s) of type w1 wanted but max-cpus 16 reached"), hold
    # A younger job gets what no older one could use: one 8-CPU job older, 4 CPUs left over for 1-CPU jobs.
    result = planner.plan({"now": NOW, "jobs": sized([(8, 900), (8, 100)] + [(1, 600)] * 4), "slots": [], "instances": []},
                          spec(SIZES.replace("max-vms: 1000", "max-vms: 1000\n  max-cpus: 12")))
    assert launches(result) == {"w8": 1, "w1": 4}


@settings(max_examples=150, deadline=None)
@given(asked=st.lists(st.tuples(st.sampled_from([1, 2, 4, 8]), st.integers(0, 5000)), max_size=30, unique_by=lambda j: j[1]),
       booting=st.lists(st.sampled_from(["w1", "w2", "w4", "w8"]), max_size=4), max_cpus=st.integers(0, 60))
def test_under_max_cpus_no_older_job_is_held_back_for_a_younger_one_of_another_type(asked: list[tuple[int, int]], booting: list[str],
                                                                                   max_cpus: int) -> None:
    """What a type starts depends only on its own jobs and those older than its youngest: the same
    plan without the younger jobs of other types starts exactly as many of it. (Jobs that waited
    exactly as long are in no order: each waits a different time here.)"""
    farm = spec(SIZES.replace("max-vms: 1000", f"max-vms: 1000\n  max-cpus: {max_cpus}"))
    instances = [instance(f"i-b{k}", kind) for k, kind in enumerate(booting)]
    result = planner.plan({"now": NOW, "jobs": sized(asked), "slots": [], "instances": instances}, farm)
    live = sum(farm.worker_type(w.type).cpus for w in result.instances)
    assert live + sum(n * farm.worker_type(name).cpus for name, n in launches(result).items()) <= max(max_cpus, live)
    for kind in ("w1", "w2", "w4", "w8"):
        mine = [waited for cpus, waited in asked if f"w{cpus}" == kind]
        if not mine:
            continue
        older = [(cpus, waited) for cpus, waited in asked if f"w{cpus}" == kind or waited >= min(mine)]
        alone = planner.plan({"now": NOW, "jobs": sized(older), "slots": [], "instances": instances}, farm)
        assert launches(alone).get(kind, 0) == launches(result).get(kind, 0), (kind, launches(alone), launches(result))


def test_a_hybrid_farm_counts_max_cpus_over_every_cloud() -> None:
    farm = scale_spec.parse(configuration.load_text("""\
scale:
  name: burst
  max-vms: 20
  max-cpus: 24
  waiting-time: 0
  boot-timeout: 100
  clouds:
    - {name: site, type: openstack, image: worker, flavor: m1.small, max: 2}
    - {name: aws, type: ec2, image-id: ami-1, instance-type: m5.large}
  types:
    - name: small
      cpus: 2
      clouds:
        site:
        aws: {instance-type: m5.large}
    - name: large
      cpus: 8
      clouds:
        site: {flavor: m1.xlarge}
        aws: {instance-type: m5.2xlarge}
""", "farm.yaml").sections["scale"])
    on = [{**instance("i-site", "large"), "Tags": [{"Key": "vfarm:farm", "Value": "burst"}, {"Key": "vfarm:type", "Value": "large"},
                                                   {"Key": "vfarm:cloud", "Value": "site"}]}]
    # One large worker booting on site (8 CPUs, it will hold one 8-CPU job); 24 - 8 = 16 CPUs left over both
    # clouds: the older 8-CPU jobs take them (one more on site, its max 2, then aws); the 2-CPU jobs are held.
    jobs = [aged(job(n, cpus=8, memory=1000), 900) for n in range(4)] + [aged(job(10 + n, cpus=2, memory=1000), 300) for n in range(4)]
    result = planner.plan({"now": NOW, "jobs": jobs, "slots": [], "instances": on}, farm)
    assert launches(result) == {"large@site": 1, "large@aws": 1}
    assert live_cpus(result, farm) + 16 == 24
    [aws] = [d for d in result.decisions if d.type == "large@aws"]
    assert aws.reason.endswith("2 more worker(s) of 8 CPUs, capped at max-cpus 24 (8 CPUs live, 16 in this plan's launches)"), aws.reason
    assert [h.split(" wanted")[0] for h in holds(result)] == ["4 more worker(s) of type small on cloud site"], holds(result)
    # Were site to refuse large, its worker goes to aws, within the same CPUs.
    [first] = [d for d in result.decisions if d.type == "large@site"]
    assert [(o.type, o.count) for o in first.fallback] == [("large@aws", 1)]
    # The small jobs older: they take 8 of the 16 CPUs first (4 small workers: one on site, its max, the rest on aws),
    # one 8-CPU job the booting worker, one more the last 8 CPUs; the fourth is held.
    jobs = [aged(j, 300 if j["RequestCpus"] == 8 else 900) for j in jobs]
    result = planner.plan({"now": NOW, "jobs": jobs, "slots": [], "instances": on}, farm)
    assert launches(result) == {"small@site": 1, "small@aws": 3, "large@aws": 1}
    assert live_cpus(result, farm) + 16 == 24


class NoCloud:
    """A cloud the scale loop is never asked anything of (it stops before its first cycle)."""

    def farm_instances(self) -> list[dict[str, Any]]:
        raise AssertionError("no cycle runs")

    def launch(self, count: int, token: str, worker_type: scale_spec.WorkerType) -> list[str]:
        raise AssertionError("no cycle runs")

    def terminate(self, ends: dict[str, str]) -> None:
        raise AssertionError("no cycle runs")


def test_the_loop_says_max_cpus_where_it_says_max_vms(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="vfarm.test")
    stop = threading.Event()
    stop.set()
    for text, told in ((FARM, "(min 0, max 100 workers, max-cpus 20)"), (FARM.replace("  max-cpus: 20\n", ""), "(min 0, max 100 workers)")):
        caplog.clear()
        scaler = loop.Scaler(spec(text), NoCloud(), apply.CondorDrain("cm"), logging.getLogger("vfarm.test"), clock=lambda: NOW,
                             pool=lambda: {"jobs": [], "slots": [], "collector": []})
        assert scaler.loop(stop) == 0
        assert caplog.messages[0] == f"scaling farm mixed every {spec(text).check_every:.0f}s {told}", caplog.messages
