"""A binding max-vms: a worker is the scarce resource. When the least-waste workers would be more
than max-vms leaves, the jobs that need a new worker are packed onto the types that hold the most
of them per worker (fewest workers), the oldest jobs first. Where no cap binds, nothing changes.
And the make-room drains come only when max-vms or max-cpus holds workers back, never a type's own
max."""

from __future__ import annotations

from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from vfarm.config import loader as configuration
from vfarm.config import scale as scale_spec
from vfarm.scaler import plan as planner

NOW = 1_700_000_000.0
SIZES = """\
scale:
  name: mixed
  cloud: {type: ec2, image-id: ami-1, instance-type: m1.small}
  max-vms: 30
  waiting-time: 0
  idle-time: 600
  boot-timeout: 100
  types:
    - {name: w1, cpus: 1}
    - {name: w2, cpus: 2}
    - {name: w4, cpus: 4}
    - {name: w8, cpus: 8}
"""


def spec(text: str = SIZES) -> scale_spec.ScaleSpec:
    return scale_spec.parse(configuration.load_text(text, "farm.yaml").sections["scale"])


def sized(jobs: list[tuple[int, int]]) -> list[dict[str, Any]]:
    """Jobs of (CPUs, seconds waited)."""
    return [{"ClusterId": n, "ProcId": 0, "JobStatus": 1, "EnteredCurrentStatus": NOW - waited, "RequestCpus": cpus}
            for n, (cpus, waited) in enumerate(jobs)]


def instance(iid: str, kind: str, launched: float = NOW - 10) -> dict[str, Any]:
    return {"InstanceId": iid, "LaunchTime": launched, "State": {"Name": "running"},
            "Tags": [{"Key": "vfarm:farm", "Value": "mixed"}, {"Key": "vfarm:type", "Value": kind}]}


def launches(result: planner.Plan) -> dict[str, int]:
    return {d.type or "": d.count for d in result.decisions if d.action == "launch"}


def test_under_a_binding_max_vms_jobs_fill_fewer_larger_workers() -> None:
    # 300 one-CPU jobs, room for 30 workers: one w1 each would start 30 of them; 30 w8 start 240.
    result = planner.plan({"now": NOW, "jobs": sized([(1, 600)] * 300), "slots": [], "instances": []}, spec())
    assert launches(result) == {"w8": 30}
    assert result.types["w8"].waiting == 300 and result.types["w8"].wanted == 38
    # 40 jobs, room 30: one w1 each would not start them all; 5 w8 do, and leave 25 workers' room for the next ones.
    result = planner.plan({"now": NOW, "jobs": sized([(1, 1000 - n) for n in range(40)]), "slots": [], "instances": []}, spec())
    assert launches(result) == {"w8": 5} and result.types["w8"].waiting == 40
    # Room for one (29 w1 booting, which hold no 2-CPU job): 3 two-CPU jobs need one w8 (a w4 holds 2);
    # 2 of them fit one w4 as well as one w8: the smaller (least waste).
    w1 = [instance(f"i-{k}", "w1") for k in range(29)]
    result = planner.plan({"now": NOW, "jobs": sized([(2, 600)] * 3), "slots": [], "instances": w1}, spec())
    assert launches(result) == {"w8": 1} and result.types["w2"].wanted == 0
    result = planner.plan({"now": NOW, "jobs": sized([(2, 600)] * 2), "slots": [], "instances": w1}, spec())
    assert launches(result) == {"w4": 1}
    # Room enough: least waste, one w1 per job (as without a cap).
    result = planner.plan({"now": NOW, "jobs": sized([(1, 600)] * 30), "slots": [], "instances": []}, spec())
    assert launches(result) == {"w1": 30}


def test_the_free_resources_of_the_least_waste_type_are_used_before_packing() -> None:
    booting = [instance(f"i-{k}", "w1") for k in range(30)]  # max-vms reached; each will hold one job
    result = planner.plan({"now": NOW, "jobs": sized([(1, 600)] * 40), "slots": [], "instances": booting}, spec())
    assert result.launch == 0 and result.types["w1"].waiting == 30 and result.types["w8"].waiting == 10


@settings(max_examples=200, deadline=None)
@given(asked=st.lists(st.tuples(st.sampled_from([1, 1, 2, 4, 8]), st.integers(0, 3000)), max_size=40),
       booting=st.lists(st.sampled_from(["w1", "w2", "w4", "w8"]), max_size=4), max_vms=st.integers(0, 16))
def test_while_jobs_are_held_back_by_max_vms_no_smaller_worker_starts(asked: list[tuple[int, int]], booting: list[str], max_vms: int) -> None:
    """When max-vms holds jobs back, every worker started is of the largest type: a smaller one
    would hold jobs that the largest holds in fewer workers, leaving room for the held-back ones.
    Where max-vms does not bind, the plan is the one without it."""
    farm = spec(SIZES.replace("max-vms: 30", f"max-vms: {max_vms}"))
    instances = [instance(f"i-{k}", kind) for k, kind in enumerate(booting)]
    result = planner.plan({"now": NOW, "jobs": sized(asked), "slots": [], "instances": instances}, farm)
    started = launches(result)
    assert result.active + result.launch <= max(max_vms, result.active)
    held_back = {name: f.wanted - started.get(name, 0) for name, f in result.types.items() if f.wanted > started.get(name, 0)}
    if held_back:
        assert set(started) <= {"w8"}, (started, held_back)
    free = planner.plan({"now": NOW, "jobs": sized(asked), "slots": [], "instances": instances}, spec(SIZES.replace("max-vms: 30", "max-vms: 1000")))
    if result.active + free.launch <= max_vms:  # max-vms does not bind: least waste, as without it
        assert started == launches(free)


@settings(max_examples=100, deadline=None)
@given(asked=st.lists(st.tuples(st.sampled_from([1, 2, 4, 8]), st.integers(0, 3000)), max_size=30),
       booting=st.lists(st.sampled_from(["w1", "w2", "w4", "w8"]), max_size=4))
def test_where_no_cap_binds_each_job_keeps_its_least_waste_type(asked: list[tuple[int, int]], booting: list[str]) -> None:
    farm = spec(SIZES.replace("max-vms: 30", "max-vms: 1000"))
    instances = [instance(f"i-{k}", kind) for k, kind in enumerate(booting)]
    result = planner.plan({"now": NOW, "jobs": sized(asked), "slots": [], "instances": instances}, farm)
    for kind in ("w1", "w2", "w4", "w8"):
        assert result.types[kind].waiting == sum(1 for cpus, _w in asked if f"w{cpus}" == kind)


ROOM = """\
scale:
  name: mixed
  cloud: {type: ec2, image-id: ami-1, instance-type: m1.small}
  max-vms: 3
  waiting-time: 0
  idle-time: 600
  types:
    - {name: small, cpus: 2, memory: 8G}
    - {name: large, cpus: 8, memory: 32G, max: 1}
"""


def test_make_room_only_when_max_vms_or_max_cpus_holds_workers_back() -> None:
    """A type held back by its own max gains nothing from draining other types' idle workers."""
    small = [{"Name": f"slot1@w-{iid}@host", "VfarmInstanceId": iid, "State": "Unclaimed", "Activity": "Idle", "Cpus": 2, "Memory": 8192,
              "EnteredCurrentState": NOW - 3600, "PartitionableSlot": True} for iid in ("i-s1", "i-s2")]
    large = {"Name": "slot1@w-i-l1@host", "VfarmInstanceId": "i-l1", "State": "Claimed", "Activity": "Busy", "Cpus": 8, "Memory": 32768,
             "EnteredCurrentState": NOW - 3600}
    workers = [instance("i-s1", "small", NOW - 7200), instance("i-s2", "small", NOW - 7200), instance("i-l1", "large", NOW - 7200)]
    seen = {"i-s1": NOW - 3000, "i-s2": NOW - 2000}
    big = [{"ClusterId": n, "ProcId": 0, "JobStatus": 1, "EnteredCurrentStatus": NOW - 60, "RequestCpus": 8, "RequestMemory": 4000} for n in range(2)]
    snapshot = {"now": NOW, "jobs": big, "slots": small + [large], "instances": workers, "observed_idle_since": seen}
    # max-vms 3 reached, and large at its own max 1: the two 8-CPU jobs wait for large; max-vms is not what holds them.
    result = planner.plan(snapshot, spec(ROOM))
    assert result.launch == 0 and result.types["large"].wanted == 2 and result.drain == []
    [hold] = [d.reason for d in result.decisions if d.action == "hold"]
    assert "max 1 of type large reached" in hold, hold
    # Without the type's max, max-vms is what holds them: the idle small workers make room.
    result = planner.plan(snapshot, spec(ROOM.replace(", max: 1", "")))
    assert result.drain == ["i-s1", "i-s2"]


def test_the_queue_order_is_exact_up_to_its_buckets_and_keeps_every_job_beyond() -> None:
    from vfarm.scaler import fit

    def fitted(ages: dict[float, int], old: dict[float, int]) -> fit.Fitted:
        groups = [fit.Group(fit.Request(1, None, 0, None), (0,), sum(ages.values()), ages),
                  fit.Group(fit.Request(8, None, 0, None), (0,), sum(old.values()), old)]
        return fit.Fitted(groups, {}, sum(g.count for g in groups))

    few = fitted({float(t): 1 for t in range(100)}, {50.5: 3})
    assert few.queue_order() == sorted([(float(t), 0, 1) for t in range(100)] + [(50.5, 1, 3)])
    # One job a second for a day (86,400 distinct ages): buckets of 1/AGE_BUCKETS of the span, every job counted once,
    # the oldest first; a job is never put behind one that came a bucket's width or more after it.
    many = fitted({float(t): 1 for t in range(86_400)}, {43_200.0: 7})
    order = many.queue_order()
    assert len(order) <= 2 * (fit.AGE_BUCKETS + 1) and sum(n for _s, g, n in order if g == 0) == 86_400
    assert [s for s, _g, _n in order] == sorted(s for s, _g, _n in order)
    width = 86_399 / fit.AGE_BUCKETS
    [(since, _g, n)] = [e for e in order if e[1] == 1]
    assert n == 7 and 43_200.0 - width < since <= 43_200.0
    assert sum(n for s, g, n in order if g == 0 and s < since) >= 43_200 - width
