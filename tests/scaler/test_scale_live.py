"""`vfarm scale --once --dry-run --save-snapshot` against the real pool and a real EC2 API (moto),
and the saved snapshot replayed with `--snapshot`: the same decisions."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from tests.fixtures.condor_pool import CondorPool
from tests.fixtures.moto import Ec2Endpoint
from vfarm.config import scale as scale_spec
from vfarm.scaler import discover
from vfarm.scaler import plan as planner

pytestmark = pytest.mark.pool


def vfarm(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "vfarm", *args], text=True, capture_output=True, timeout=120, env=dict(os.environ))


def decisions(plan: dict[str, Any]) -> tuple[Any, ...]:
    return plan["launch"], plan["drain"], plan["terminate"], [(i["id"], i["state"]) for i in plan["instances"]]


def test_pool_snapshot_reads_jobs_slots_and_the_collector(condor_pool: CondorPool) -> None:
    condor_pool.add_worker("i-seen", cpus=2)
    cluster = condor_pool.submit(1, 1, requirements='VfarmInstanceId == "nowhere"')  # stays idle
    try:
        found = discover.pool_snapshot(condor_pool.collector_address)
        assert any(s.get("VfarmInstanceId") == "i-seen" and s["Cpus"] == 2 for s in found["slots"])
        # Idle jobs come as groups (the schedd's group-by query): JobCount, JobIds, the attributes the planner reads.
        group = next(j for j in found["jobs"] if j["JobStatus"] == 1 and str(j.get("JobIds", "")).startswith(f"{cluster}."))
        assert group["JobCount"] == 1 and group["RequestCpus"] == 1 and "Id" not in group and "QDate" in group and "Requirements" in group
        assert found["collector"] and "MonitorSelfAge" in found["collector"][0]
    finally:
        condor_pool.run(["condor_rm", str(cluster)], check=False)
        condor_pool.remove_worker("i-seen")


def test_idle_jobs_are_read_as_groups_that_plan_as_the_jobs_one_by_one(condor_pool: CondorPool) -> None:
    never = 'VfarmInstanceId == "nowhere"'
    clusters = [condor_pool.submit(3, 1, requirements=never), condor_pool.submit(2, 1, cpus=2, requirements=never),
                # Requirements naming a job attribute that differs job by job: each value its own group.
                # cpus given by name: the ** then fills **extra only (mypy cannot tell its keys from `cpus`)
                condor_pool.submit(2, 1, cpus=1, requirements=f'{never} && MY.VfarmTestTag =!= "p0"', **{"+VfarmTestTag": '"p$(ProcId)"'})]
    try:
        found = discover.pool_snapshot(condor_pool.collector_address)
        ours = [j for j in found["jobs"] if int(str(j.get("JobIds", "0.")).split(".")[0]) in clusters]
        by_cluster = {c: sorted(j["JobCount"] for j in ours if str(j["JobIds"]).startswith(f"{c}.")) for c in clusters}
        assert by_cluster == {clusters[0]: [3], clusters[1]: [2], clusters[2]: [1, 1]}
        assert sorted(j.get("VfarmTestTag") for j in ours if str(j["JobIds"]).startswith(f"{clusters[2]}.")) == ["p0", "p1"]
        # The same queue read one ad per job plans alike.
        one_by_one = [discover.ad_to_json(ad) for ad in condor_pool.schedd().query(
            constraint=f"JobStatus == 1 && ClusterId >= {clusters[0]}", projection=[*discover.JOB_ATTRIBUTES, "VfarmTestTag"])]
        farm = scale_spec.parse({"name": "g", "cloud": {"type": "ec2"}, "max-vms": 10, "waiting-time": 0,
                                 "types": [{"name": "one", "cpus": 1}, {"name": "two", "cpus": 2}]})
        plans = [planner.plan({"now": time.time(), "jobs": jobs, "slots": [], "instances": []}, farm) for jobs in (ours, one_by_one)]
        assert [(p.launch, p.waiting, {n: f.wanted for n, f in p.types.items()}) for p in plans] == [(7, 7, {"one": 5, "two": 2})] * 2
    finally:
        for cluster in clusters:
            condor_pool.run(["condor_rm", str(cluster)], check=False)


def test_what_one_user_submits_is_read_never_a_failed_cycle(condor_pool: CondorPool) -> None:
    """A job asking for 1e300 CPUs, or a ClassAd list of them, as condor_submit lets any user
    write it: the plan reports the one and counts the other at the default, and goes on."""
    never = 'VfarmInstanceId == "nowhere"'
    clusters = [condor_pool.submit(1, 1, requirements=never, request_cpus="1e300"),
                condor_pool.submit(1, 1, requirements=never, request_cpus="{1, 2}"),
                condor_pool.submit(2, 1, requirements=never)]
    try:
        found = discover.pool_snapshot(condor_pool.collector_address)
        ours = [j for j in found["jobs"] if int(str(j.get("JobIds", "0.")).split(".")[0]) in clusters]
        assert sorted(str(j["RequestCpus"]) for j in ours) == sorted(["1", "1e+300", "[1, 2]"]), ours
        farm = scale_spec.parse({"name": "g", "cloud": {"type": "ec2"}, "max-vms": 10, "waiting-time": 0, "cpus-per-vm": 1})
        plan = planner.plan({"now": time.time(), "jobs": ours, "slots": [], "instances": []}, farm)
        assert (plan.launch, plan.waiting) == (3, 3)
        assert [u.jobs for u in plan.unfit] == [(f"{clusters[0]}.0",)] and "ask for more than cpus-per-vm" in plan.warnings[0]
    finally:
        for cluster in clusters:
            condor_pool.run(["condor_rm", str(cluster)], check=False)


def test_a_suspended_job_is_the_schedds_evidence_that_its_worker_is_busy(condor_pool: CondorPool) -> None:
    """condor_suspend: the job is JobStatus 7 and keeps its RemoteHost; discover reads it with the
    running ones, so the planner counts it on its worker (what a lagging slot ad would not show)."""
    from tests.fixtures.condor_pool import wait_for

    iid = "i-suspend"
    condor_pool.add_worker(iid, cpus=1, memory=1024)
    cluster = condor_pool.submit(1, 120, requirements=f'VfarmInstanceId == "{iid}"')
    try:
        wait_for(lambda: [j for j in condor_pool.jobs(cluster) if j.get("JobStatus") == 2], 90, "the job running")
        condor_pool.run(["condor_suspend", str(cluster)])
        wait_for(lambda: [j for j in condor_pool.jobs(cluster) if j.get("JobStatus") == 7], 90, "the job suspended")
        found = discover.pool_snapshot(condor_pool.collector_address)
        ours = [j for j in found["jobs"] if j.get("ClusterId") == cluster]
        assert [(j["JobStatus"], j["RemoteHost"].split("@")[1]) for j in ours] == [(7, f"w-{iid}")], ours
        slots = [s for s in found["slots"] if s.get("VfarmInstanceId") == iid]
        assert planner.running_on(slots, planner.running_by_startd(found["jobs"])) == 1
    finally:
        condor_pool.run(["condor_rm", str(cluster)], check=False)
        condor_pool.remove_worker(iid)


def test_an_unreachable_collector_is_an_error_never_an_empty_pool() -> None:
    with pytest.raises(discover.DiscoverError, match="collector 127.0.0.1:9"):
        discover.pool_snapshot("127.0.0.1:9")


def test_once_dry_run_then_replay(condor_pool: CondorPool, ec2_endpoint: Ec2Endpoint, tmp_path: Path) -> None:
    client = ec2_endpoint.client()
    tags = [{"ResourceType": "instance", "Tags": [{"Key": "vfarm:farm", "Value": "live"}, {"Key": "vfarm:managed", "Value": "true"}]}]
    ids = [i["InstanceId"] for i in client.run_instances(ImageId=ec2_endpoint.image_id, MinCount=2, MaxCount=2, TagSpecifications=tags)["Instances"]]
    joined, booting = sorted(ids)
    condor_pool.add_worker(joined, cpus=2)
    token = tmp_path / "admin.token"
    token.write_text((condor_pool.admin_token_dir / "autoscaler").read_text())
    farm = tmp_path / "farm.yaml"
    farm.write_text(
        "scale:\n  name: live\n"
        f"  cloud: {{type: ec2, image-id: {ec2_endpoint.image_id}, instance-type: m1.small,"
        f" endpoint-url: '{ec2_endpoint.url}', region: {ec2_endpoint.region}}}\n"
        f"  pool: {{collector: '{condor_pool.collector_address}', token-file: admin.token}}\n"
        "  max-vms: 4\n  cpus-per-vm: 2\n  idle-time: 0\n  waiting-time: 0\n"
    )
    saved = tmp_path / "snap.json"
    try:
        live = vfarm("scale", str(farm), "--once", "--dry-run", "--save-snapshot", str(saved), "--json")
        assert live.returncode == 0, live.stderr
        plan = json.loads(live.stdout)
        assert decisions(plan) == (0, [joined], [], sorted([(booting, "booting"), (joined, "idle")]))
        snapshot = json.loads(saved.read_text())
        assert set(snapshot) == {"now", "jobs", "slots", "instances", "collector", "observed_idle_since", "joined", "launch_intents", "cloud_backoff",
                                 "consolidating", "ended"}
        replay = vfarm("scale", str(farm), "--snapshot", str(saved), "--json")
        assert replay.returncode == 0, replay.stderr
        assert json.loads(replay.stdout) == plan
        unwritable = vfarm("scale", str(farm), "--once", "--dry-run", "--save-snapshot", str(tmp_path))  # a folder
        assert unwritable.returncode == 1 and unwritable.stderr.startswith(f"vfarm: {tmp_path}: cannot write: ") and unwritable.stderr.count("\n") == 1
    finally:
        condor_pool.remove_worker(joined)


def test_once_with_the_collector_down_changes_nothing_and_says_why(tmp_path: Path) -> None:
    farm = tmp_path / "farm.yaml"
    farm.write_text("scale:\n  name: live\n  cloud: {type: ec2, image-id: ami-1, instance-type: m1.small}\n  pool: {collector: '127.0.0.1:9'}\n  max-vms: 1\n")
    result = vfarm("scale", str(farm), "--once", "--dry-run", "--save-snapshot", str(tmp_path / "snap.json"))
    assert result.returncode == 1 and "collector 127.0.0.1:9" in result.stderr and result.stderr.count("\n") == 1
    assert not (tmp_path / "snap.json").exists()
    assert scale_spec.parse({"name": "x", "cloud": {}, "max-vms": 1}).collector is None
