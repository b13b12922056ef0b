"""Idle jobs as groups: a snapshot entry with JobCount N (the schedd's group-by query, as discover
reads idle jobs) stands for N jobs identical in every attribute the planner reads. The plan is the
one the same jobs listed one by one give; a JobCount that is not a positive integer is one line."""

from __future__ import annotations

import json
import re
from typing import Any, Optional

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from vfarm.config import scale as scale_spec
from vfarm.scaler import plan as planner

pytestmark = pytest.mark.unit

NOW = 1_700_000_000
KEYS = ("JobStatus", "QDate", "EnteredCurrentStatus", "RequestCpus", "RequestMemory", "RequestGPUs", "Requirements")


def grouped(jobs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """JOBS as discover reads them: running ones one by one, idle ones grouped by KEYS (as the
    schedd's group-by query does, with JobCount and JobIds "first ... last")."""
    out = [j for j in jobs if j["JobStatus"] != 1]
    groups: dict[str, list[dict[str, Any]]] = {}
    for j in jobs:
        if j["JobStatus"] == 1:
            groups.setdefault(json.dumps([j.get(k) for k in KEYS]), []).append(j)
    for members in groups.values():
        ids = [f"{j['ClusterId']}.{j['ProcId']}" for j in members]
        ad = {k: members[0][k] for k in KEYS if k in members[0]}
        out.append({**ad, "JobCount": len(members), "JobIds": ids[0] if len(ids) == 1 else f"{ids[0]} ... {ids[-1]}"})
    return out


def comparable(result: planner.Plan) -> dict[str, Any]:
    data = result.to_json()
    data["unfit"] = [(u["count"], u["reason"]) for u in data["unfit"]]  # the ids differ: one per group
    data["warnings"] = [re.sub(r"job\(s\) \([^)]*\)", "job(s)", w) for w in data["warnings"]]
    return data


jobs_strategy = st.lists(st.tuples(st.sampled_from([1, 1, 2]), st.integers(0, 3), st.sampled_from([1, 2, 4, 8, 16]),
                                   st.sampled_from([None, 1024, 4096, 65536]), st.sampled_from([None, 0, 1]),
                                   st.sampled_from([None, 'TARGET.VfarmWorkerType == "t0"', "TARGET.Cpus >= 4"])),
                         max_size=60)


@settings(max_examples=150, deadline=None)
@given(asked=jobs_strategy, typed=st.booleans(), waiting_time=st.sampled_from([0, 40, 100]), booting=st.integers(0, 3),
       max_vms=st.integers(0, 8))
def test_a_grouped_queue_plans_as_the_same_jobs_one_by_one(asked: list[tuple[int, int, int, Optional[int], Optional[int], Optional[str]]],
                                                          typed: bool, waiting_time: int, booting: int, max_vms: int) -> None:
    jobs = []
    for n, (status, age, cpus, memory, gpus, req) in enumerate(asked):
        ad: dict[str, Any] = {"ClusterId": 1 + n // 10, "ProcId": n % 10, "JobStatus": status, "QDate": NOW - 50 * age,
                              "EnteredCurrentStatus": NOW - 50 * age, "RequestCpus": cpus}
        if memory is not None:
            ad["RequestMemory"] = memory
        if gpus is not None:
            ad["RequestGPUs"] = gpus
        if req is not None:
            ad["Requirements"] = f"/Expr({req})/"
        if status == 2:
            ad["RemoteHost"] = f"slot1_{n}@w-i-run@host"
        jobs.append(ad)
    section: dict[str, Any] = {"name": "g", "cloud": {"type": "ec2"}, "max-vms": max_vms, "waiting-time": waiting_time, "boot-timeout": 600}
    if typed:
        section["types"] = [{"name": "t0", "cpus": 2, "memory": 4096}, {"name": "t1", "cpus": 8, "memory": 32768, "gpus": 1}]
    else:
        section["cpus-per-vm"] = 4
    farm = scale_spec.parse(section)
    instances = [{"InstanceId": f"i-b{k}", "LaunchTime": NOW - 10, "State": {"Name": "running"},
                  "Tags": [{"Key": "vfarm:farm", "Value": "g"}, {"Key": "vfarm:type", "Value": "t0" if typed else "default"}]}
                 for k in range(booting)]
    one_by_one = planner.plan({"now": NOW, "jobs": jobs, "slots": [], "instances": instances}, farm)
    groups = planner.plan({"now": NOW, "jobs": grouped(jobs), "slots": [], "instances": instances}, farm)
    assert comparable(groups) == comparable(one_by_one)
    assert sum(u.count for u in groups.unfit) == sum(len(u.jobs) for u in one_by_one.unfit)


@pytest.mark.parametrize("count", [0, -3, 2.5, "7", True, None, 2**64])
def test_a_job_count_that_is_not_a_positive_integer_is_one_line(count: Any) -> None:
    farm = scale_spec.parse({"name": "g", "cloud": {"type": "ec2"}, "max-vms": 3, "cpus-per-vm": 4})
    group = {"JobStatus": 1, "QDate": NOW - 100, "EnteredCurrentStatus": NOW - 100, "RequestCpus": 1, "JobCount": count, "JobIds": "1.0 ... 1.9"}
    with pytest.raises(planner.SnapshotError, match=r"^'jobs\[1\]\.JobCount' must be a positive integer .*, got ") as caught:
        planner.plan({"now": NOW, "jobs": [{"JobStatus": 2, "ClusterId": 1, "ProcId": 0}, group], "slots": [], "instances": []}, farm)
    assert "\n" not in str(caught.value)


def test_a_group_no_type_holds_is_reported_with_its_job_ids_and_count() -> None:
    farm = scale_spec.parse({"name": "g", "cloud": {"type": "ec2"}, "max-vms": 3, "cpus-per-vm": 4})
    group = {"JobStatus": 1, "QDate": NOW - 100, "EnteredCurrentStatus": NOW - 100, "RequestCpus": 16, "JobCount": 5000, "JobIds": "3.0 ... 3.4999"}
    result = planner.plan({"now": NOW, "jobs": [group], "slots": [], "instances": []}, farm)
    assert [(u.jobs, u.count) for u in result.unfit] == [(("3.0 ... 3.4999",), 5000)]
    assert result.waiting == 0 and result.launch == 0
    assert any(w.startswith("5000 idle job(s) (3.0 ... 3.4999) ask for more than cpus-per-vm (4) CPUs") for w in result.warnings)
