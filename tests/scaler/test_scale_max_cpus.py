"""max-cpus: a farm-level limit on the CPUs of the live workers, as a cloud's quota in cores.

It binds across types like max-vms (jobs are held, not sent to another type), names itself in the
hold reason, bounds min-vms launches, and lets idle workers of other types make room; a farm
without it plans exactly as before."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from vfarm.cli import scale as scale_cli
from vfarm.config import loader as configuration
from vfarm.config import scale as scale_spec
from vfarm.scaler import plan as planner

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


def test_the_cap_binds_across_types_and_holds_jobs_where_they_fit() -> None:
    farm = spec()
    # 2 large (16 CPUs) and 4 small (8 CPUs) wanted: 24 CPUs over max-cpus 20.
    jobs = [job(n, cpus=8, memory=4000) for n in range(2)] + [job(10 + n, cpus=2, memory=4000) for n in range(4)]
    result = planner.plan({"now": NOW, "jobs": jobs, "slots": [], "instances": []}, farm)
    # In the farm's order: small first (8 CPUs), then large: one (16 > 12 left), the other held; none moves to small.
    assert launches(result) == {"small": 4, "large": 1}
    assert result.types["large"].waiting == 2 and result.types["small"].waiting == 4
    assert holds(result) == []
    launch = next(d for d in result.decisions if d.type == "large")
    assert launch.reason.endswith("capped at max-cpus 20 (0 CPUs live, 16 in this plan's launches)"), launch.reason
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
    jobs = [job(n, cpus=8, memory=4000) for n in range(2)] + [job(10 + n, cpus=2, memory=4000) for n in range(4)]
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
    draining = [{**s, "State": "Drained", "Activity": "Retiring"} for s in slots[:3]]
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
