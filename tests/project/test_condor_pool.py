"""The real HTCondor pool fixture, and what the scaler relies on in a real pool.

Run with `-m pool`. Waits are on events (an ad in the collector, a job leaving the queue), with
timeouts far above the measured times (pool start 3 s, a 3 s job done in about 9 s).
"""

from __future__ import annotations

import json
import tempfile
import time
from pathlib import Path
from typing import Any

import pytest

from tests.fixtures.condor_pool import CondorPool, ensure_rootfs, processes_in_namespace, wait_for
from vfarm.config import scale as scale_spec
from vfarm.scaler import plan as planner
from vfarm.scaler.model import DRAIN_REASON_PREFIX

pytestmark = pytest.mark.pool

JOB_TIMEOUT = 90.0


def finished(pool: CondorPool, cluster: int, count: int) -> list[Any]:
    """Waits until COUNT jobs of CLUSTER are in the history; their ads."""
    def done() -> list[Any]:
        history = pool.history(cluster)
        return history if not pool.jobs(cluster) and len(history) >= count else []

    return list(wait_for(done, JOB_TIMEOUT, f"cluster {cluster} done"))


def test_jobs_submitted_from_the_host_run_once_and_exit_0(condor_pool: CondorPool) -> None:
    started = time.monotonic()
    cluster = condor_pool.submit(2, 2)
    ads = finished(condor_pool, cluster, 2)
    assert sorted((ad["NumJobStarts"], ad["ExitCode"]) for ad in ads) == [(1, 0), (1, 0)]
    print(f"2 jobs of 2 s: submitted to done in {time.monotonic() - started:.1f} s")


def test_a_simulated_worker_advertises_its_instance_id_and_leaves(condor_pool: CondorPool) -> None:
    started = time.monotonic()
    condor_pool.add_worker("i-join", cpus=2, memory=1024)
    joined = time.monotonic() - started
    ads = condor_pool.ads("Startd", 'VfarmInstanceId == "i-join"')
    assert [(ad["VfarmInstanceId"], ad["Cpus"], ad["State"]) for ad in ads] == [("i-join", 2, "Unclaimed")]
    masters = condor_pool.wait_for_ad("Master", 'VfarmInstanceId == "i-join"', 30, "the worker's master ad")
    assert len(masters) == 1
    took = condor_pool.remove_worker("i-join")
    condor_pool.worker_gone("i-join")
    print(f"worker joined in {joined:.1f} s, stopped in {took:.1f} s")


def test_graceful_drain_of_a_token_only_worker_lets_the_job_finish(condor_pool: CondorPool) -> None:
    """condor_drain -graceful (run in the pool's root folder, as an admin): the running job ends
    normally, the worker takes no new job, and the planner then sees it drained.

    From the host, htcondor2 25.14's `Startd(ad).drainJobs()` fails here ("Startd failed to start
    draining jobs"; the worker logs IDTOKENS authentication failed: it holds no signing key), even
    with an admin token: `Collector.locate()` does not ask for the startd's remote-admin capability
    (`_condor_PrivRemoteAdminCapability`), which `condor_drain` uses to reach a token-only worker."""
    iid = "i-drain"
    condor_pool.add_worker(iid, cpus=1, memory=1024)
    cluster = condor_pool.submit(1, 8, requirements=f'VfarmInstanceId == "{iid}"')
    wait_for(lambda: [j for j in condor_pool.jobs(cluster) if j.get("JobStatus") == 2], JOB_TIMEOUT, "the job running")
    pslot = next(ad["Name"] for ad in condor_pool.ads("Startd", f'VfarmInstanceId == "{iid}" && SlotType == "Partitionable"'))
    drained_at = time.monotonic()
    # The scaler terminates only what it drained: its drains carry its reason (a real admin's do not).
    result = condor_pool.run(["condor_drain", "-graceful", "-reason", f"{DRAIN_REASON_PREFIX}test", pslot])
    assert "Sent request to drain" in result.stdout + result.stderr
    # A second job for the same worker must not start there while it drains.
    later = condor_pool.submit(1, 1, requirements=f'VfarmInstanceId == "{iid}"')

    spec = scale_spec.parse({"name": "test", "cloud": {"type": "local"}, "max-vms": 3, "cpus-per-vm": 1, "idle-time": 0, "waiting-time": 0})
    instance = {"InstanceId": iid, "State": {"Name": "running"}, "LaunchTime": "2020-01-01T00:00:00Z", "Tags": [{"Key": "vfarm:farm", "Value": "test"}]}

    def planned() -> planner.Plan:
        # Exactly what the planner reads: `condor_status -json` and `condor_q -json` output.
        slots = json.loads(condor_pool.run(["condor_status", "-json"]).stdout or "[]")
        jobs = json.loads(condor_pool.run(["condor_q", "-allusers", "-json"]).stdout or "[]")
        return planner.plan({"now": time.time(), "jobs": jobs, "slots": slots, "instances": [instance]}, spec)

    states = set()

    def drained() -> bool:
        plan = planned()
        states.add(plan.instances[0].state)
        return plan.terminate == [iid]

    wait_for(drained, JOB_TIMEOUT, "the worker drained", interval=0.5)
    assert "draining" in states  # seen while the job still ran
    ads = finished(condor_pool, cluster, 1)
    assert [(ad["NumJobStarts"], ad["ExitCode"]) for ad in ads] == [(1, 0)]
    assert [j.get("JobStatus") for j in condor_pool.jobs(later)] == [1]  # still idle: nothing new started
    print(f"drain requested to drained: {time.monotonic() - drained_at:.1f} s")
    condor_pool.run(["condor_rm", str(later)], check=False)
    condor_pool.remove_worker(iid)


def test_a_pool_of_its_own_starts_and_stops_leaving_no_process() -> None:
    with tempfile.TemporaryDirectory(prefix="vfarm-pool-") as state:
        pool = CondorPool(ensure_rootfs(), Path(state))
        pool.start()
        try:
            pool.add_worker("i-stray", cpus=1)
            namespace = pool.namespace
            assert namespace and len(processes_in_namespace(namespace)) >= 6
        finally:
            pool.stop()
        assert processes_in_namespace(namespace) == []
        print(f"pool start {pool.timings['start']:.1f} s, stop {pool.timings['stop']:.1f} s")
        assert pool.timings["stop"] < 30
