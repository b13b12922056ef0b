"""The whole `vfarm scale` loop against real systems: the HTCondor pool (trixie's condor 23.9 on
127.0.0.1) and an EC2 API (moto on 127.0.0.1). The test plays the hypervisor: for every instance
the scaler launches on moto it starts one token-only startd advertising the instance's id, and
stops it once moto says the instance is terminated.

jobs submitted through the bindings -> launches -> workers join -> jobs run -> queue empty ->
idle past idle-time -> graceful drain (condor_drain through pool.admin-command) -> drained ->
terminated on moto; every job started once and exited 0. Waits are on events (instances on moto,
ads, job states) with timeouts far above the measured times.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from tests.fixtures.condor_pool import CLEAN_ENV, CondorPool, free_port, stop_process
from tests.fixtures.moto import Ec2Endpoint

pytestmark = pytest.mark.pool

FARM = "looptest"
JOBS, JOB_SECONDS = 4, 6
TIMEOUT = 240.0  # measured: the whole run takes ~40 s on this 2-core machine


def farm_file(tmp_path: Path, pool: CondorPool, ec2: Ec2Endpoint) -> Path:
    token = tmp_path / "admin.token"
    token.write_text((pool.admin_token_dir / "autoscaler").read_text())
    # How to run HTCondor's admin tools here: inside the pool's namespaces and root folder, with
    # a clean environment (the host's CONDOR_CONFIG means nothing in there).
    admin = ["nsenter", f"--target={pool.master_pid}", "--mount", "--pid", "--", "chroot", str(pool.merged), "env", "-i",
             f"PATH={CLEAN_ENV['PATH']}"]
    farm = tmp_path / "farm.yaml"
    farm.write_text(
        "check: {}\n"
        "scale:\n"
        f"  name: {FARM}\n"
        # baked: the workers' user-data is not this test's subject (a check-only embed is over EC2's 16 KiB).
        f"  cloud: {{type: ec2, image-id: {ec2.image_id}, instance-type: m1.small, endpoint-url: '{ec2.url}', region: {ec2.region}, handlers: baked}}\n"
        f"  pool: {{collector: '{pool.collector_address}', token-file: admin.token, admin-command: {json.dumps(admin)}}}\n"
        "  max-vms: 2\n  cpus-per-vm: 2\n  waiting-time: 0\n  idle-time: 5\n  boot-timeout: 600\n  check-every: 2\n"
    )
    return farm


def farm_instances(ec2: Ec2Endpoint) -> dict[str, dict[str, Any]]:
    pages = ec2.client().describe_instances(Filters=[{"Name": "tag:vfarm:farm", "Values": [FARM]}])
    return {i["InstanceId"]: i for r in pages["Reservations"] for i in r["Instances"]}


def test_the_loop_grows_and_shrinks_the_farm_without_losing_a_job(condor_pool: CondorPool, ec2_endpoint: Ec2Endpoint, tmp_path: Path) -> None:
    farm = farm_file(tmp_path, condor_pool, ec2_endpoint)
    port = free_port()
    log = tmp_path / "scale.log"
    with open(log, "w") as err:
        scaler = subprocess.Popen([sys.executable, "-m", "vfarm", "scale", str(farm), "--metrics-port", str(port)],
                                  stdout=subprocess.DEVNULL, stderr=err, env=dict(os.environ))
    started = time.monotonic()
    workers: dict[str, float] = {}
    gone: set[str] = set()
    cluster = None
    status: Any = None
    try:
        cluster = condor_pool.submit(JOBS, JOB_SECONDS, requirements="VfarmInstanceId =!= undefined")
        ended = False
        while not ended:
            assert scaler.poll() is None, "the scaler died:\n" + log.read_text()[-3000:]
            assert time.monotonic() - started < TIMEOUT, "no end within the timeout:\n" + log.read_text()[-3000:]
            for iid, inst in farm_instances(ec2_endpoint).items():
                state = inst["State"]["Name"]
                if state in ("pending", "running") and iid not in workers:
                    workers[iid] = time.monotonic() - started
                    condor_pool.add_worker(iid, cpus=2, memory=1024)  # the "VM" boots and joins
                elif state in ("shutting-down", "terminated") and iid in workers and iid not in gone:
                    condor_pool.remove_worker(iid)  # the hypervisor switches it off
                    gone.add(iid)
            if len(workers) == 2 and status is None:  # an operator looks while the farm works
                status = subprocess.run([sys.executable, "-m", "vfarm", "scale", str(farm), "--status", "--json"],
                                        text=True, capture_output=True, timeout=60, env=dict(os.environ))
            ended = bool(workers) and gone == set(workers) and not condor_pool.jobs(cluster)
            time.sleep(0.5)
        took = time.monotonic() - started
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
            metrics = response.read().decode()
    finally:
        stop_process(scaler)
        for iid in set(workers) - gone:
            condor_pool.remove_worker(iid)
        if cluster is not None:
            condor_pool.run(["condor_rm", str(cluster)], check=False)
    text = log.read_text()
    print(f"launched {len(workers)} at {sorted(workers.values())} s, all done in {took:.1f} s")
    assert scaler.returncode == 0, text[-3000:]
    assert "SIGTERM: stopping after this cycle" in text

    assert len(workers) == 2  # 4 one-CPU jobs, 2 CPUs per worker, max-vms 2
    assert status.returncode == 0, status.stderr
    seen = json.loads(status.stdout)
    assert seen["farm"] == FARM and sorted(r["instance"] for r in seen["instances"]) == sorted(workers)
    assert {r["state"] for r in seen["instances"]} <= {"booting", "idle", "busy", "draining", "drained"}
    history = condor_pool.history(cluster)
    assert sorted((ad["NumJobStarts"], ad["ExitCode"], ad["JobStatus"]) for ad in history) == [(1, 0, 4)] * JOBS
    ended_tags = {iid: {t["Key"]: t["Value"] for t in inst["Tags"]} for iid, inst in farm_instances(ec2_endpoint).items()}
    assert {iid: tags.get("vfarm:end") for iid, tags in ended_tags.items()} == {iid: "drained" for iid in workers}
    for iid in workers:
        # Drained when idle past idle-time, or earlier by consolidation (its jobs ran to their end).
        assert (f"drain {iid}: idle for" in text or f"drain {iid}: consolidation:" in text) and f"terminate {iid} (drained)" in text
        assert "condor_drain -pool" in text
    assert "launch 2: 4 waiting job(s) need 4 CPU(s)" in text
    assert f'vfarm_scale_launches_total{{farm="{FARM}"}} 2.0' in metrics
    assert f'vfarm_scale_terminations_total{{farm="{FARM}"}} 2.0' in metrics
    assert f'vfarm_scale_drains_total{{farm="{FARM}"}} 2.0' in metrics


def test_the_scalers_drain_of_a_busy_token_only_worker_lets_the_job_finish(condor_pool: CondorPool) -> None:
    """The race the plan cannot see: a job starts on a worker just before its drain arrives.
    CondorDrain (condor_drain -graceful through the admin prefix, as the scaler runs it) lets the
    job run to its end; only then does the planner call the worker drained."""
    from tests.fixtures.condor_pool import wait_for
    from vfarm.config import scale as scale_spec
    from vfarm.scaler import apply, discover
    from vfarm.scaler import plan as planner
    from vfarm.scaler.model import DRAIN_REASON_PREFIX

    iid = "i-race"
    condor_pool.add_worker(iid, cpus=1, memory=1024)
    cluster = condor_pool.submit(1, 8, requirements=f'VfarmInstanceId == "{iid}"')
    try:
        wait_for(lambda: [j for j in condor_pool.jobs(cluster) if j.get("JobStatus") == 2], 90, "the job running")
        admin = ["nsenter", f"--target={condor_pool.master_pid}", "--mount", "--pid", "--", "chroot", str(condor_pool.merged),
                 "env", "-i", f"PATH={CLEAN_ENV['PATH']}"]
        drainer = apply.CondorDrain(condor_pool.collector_address, admin)
        spec = scale_spec.parse({"name": "race", "cloud": {"type": "ec2"}, "max-vms": 1, "idle-time": 0, "waiting-time": 0})
        instance = {"InstanceId": iid, "State": {"Name": "running"}, "LaunchTime": time.time() - 60, "Tags": [{"Key": "vfarm:farm", "Value": "race"}]}

        def planned() -> planner.Plan:
            pool = discover.pool_snapshot(condor_pool.collector_address)
            return planner.plan({"now": time.time(), **pool, "instances": [instance]}, spec)

        slots = [s for s in discover.pool_snapshot(condor_pool.collector_address)["slots"] if s.get("VfarmInstanceId") == iid]
        drainer.drain(iid, slots, "test")
        states = []

        def drained() -> bool:
            plan = planned()
            states.append(plan.instances[0].state)
            assert plan.terminate == [] or not condor_pool.jobs(cluster), "terminate while the job still runs"
            return plan.terminate == [iid]

        wait_for(drained, 90, "the worker drained", interval=0.5)
        assert "draining" in states
        history = condor_pool.history(cluster)
        assert [(ad["NumJobStarts"], ad["ExitCode"]) for ad in history] == [(1, 0)]
        # What the planner knew the drain by: the startd advertises condor_drain's -reason.
        ads = [s for s in discover.pool_snapshot(condor_pool.collector_address)["slots"] if s.get("VfarmInstanceId") == iid]
        assert {s.get("DrainReason") for s in ads if s.get("State") == "Drained"} == {f"{DRAIN_REASON_PREFIX}test"}, ads
    finally:
        condor_pool.run(["condor_rm", str(cluster)], check=False)
        condor_pool.remove_worker(iid)


def test_a_worker_an_admin_drained_is_left_alone(condor_pool: CondorPool) -> None:
    """An admin's `condor_drain -graceful -reason ...` of a farm worker (maintenance): once its ads
    show it drained, the planner leaves it alone, never terminates it; the same worker drained by
    the scaler (test above) is terminated."""
    from tests.fixtures.condor_pool import wait_for
    from vfarm.config import scale as scale_spec
    from vfarm.scaler import discover
    from vfarm.scaler import plan as planner

    iid = "i-maint"
    condor_pool.add_worker(iid, cpus=1, memory=1024)
    try:
        pslot = next(ad["Name"] for ad in condor_pool.ads("Startd", f'VfarmInstanceId == "{iid}" && SlotType == "Partitionable"'))
        condor_pool.run(["condor_drain", "-pool", condor_pool.collector_address, "-graceful", "-reason", "kernel update", pslot])

        def drained() -> list[dict[str, Any]]:
            ads = [s for s in discover.pool_snapshot(condor_pool.collector_address)["slots"] if s.get("VfarmInstanceId") == iid]
            return ads if ads and all(s.get("State") == "Drained" and s.get("Activity") == "Idle" for s in ads) else []

        ads = wait_for(drained, 90, "the worker drained by the admin", interval=0.5)
        assert {s.get("DrainReason") for s in ads} == {"kernel update"}, ads
        spec = scale_spec.parse({"name": "maint", "cloud": {"type": "ec2"}, "max-vms": 1, "idle-time": 0, "waiting-time": 0})
        instance = {"InstanceId": iid, "State": {"Name": "running"}, "LaunchTime": time.time() - 60, "Tags": [{"Key": "vfarm:farm", "Value": "maint"}]}
        plan = planner.plan({"now": time.time(), **discover.pool_snapshot(condor_pool.collector_address), "instances": [instance]}, spec)
        assert plan.terminate == [] and plan.drain == []
        assert (plan.instances[0].state, plan.instances[0].reason) == ("other", "drained by someone else (reason 'kernel update'): left alone")
    finally:
        condor_pool.remove_worker(iid)


def test_a_drain_through_ssh_to_the_central_manager_keeps_its_words(condor_pool: CondorPool, tmp_path: Path) -> None:
    """`admin-command: [ssh, root@CM]` as the README shows it, with the real OpenSSH server on the
    central manager: the reason's parentheses and blanks reach condor_drain as one word, so the
    worker drains (ssh hands the remote shell one line: unquoted, `(` was a syntax error there)."""
    from tests.fixtures.condor_pool import wait_for
    from vfarm.scaler import apply, discover

    key = tmp_path / "admin_key"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True, timeout=60)
    port = condor_pool.start_sshd((tmp_path / "admin_key.pub").read_text())
    ssh = ["ssh", "-i", str(key), "-p", str(port), "-o", "BatchMode=yes", "-o", "StrictHostKeyChecking=no",
           "-o", f"UserKnownHostsFile={tmp_path / 'known_hosts'}", "-o", "LogLevel=ERROR", "root@127.0.0.1"]
    iid = "i-ssh"
    condor_pool.add_worker(iid, cpus=1, memory=1024)
    try:
        slots = [s for s in discover.pool_snapshot(condor_pool.collector_address)["slots"] if s.get("VfarmInstanceId") == iid]
        apply.CondorDrain(condor_pool.collector_address, ssh).drain(iid, slots, "idle for 3700s (idle-time 3600s)")

        def drained() -> list[dict[str, Any]]:
            ads = [s for s in discover.pool_snapshot(condor_pool.collector_address)["slots"] if s.get("VfarmInstanceId") == iid]
            return [s for s in ads if s.get("State") == "Drained"]

        wait_for(drained, 90, "the worker drained through ssh", interval=0.5)
    finally:
        condor_pool.remove_worker(iid)
