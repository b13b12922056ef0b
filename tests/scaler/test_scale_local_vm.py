"""`vfarm scale` with `cloud.type: local` and one real worker VM (`-m "vm and pool"`).

Network (the hard rule of htcondor-facts.md): the test makes a network namespace for the pool,
which listens on 10.0.2.100:9618 there; the scaler runs inside that namespace (nsenter --net), and
so do the worker VM it launches (qemu inherits the scaler's namespace; its guest reaches only
10.0.2.100:9618, restrict=on) and every client of the pool (condor_submit, condor_status,
condor_drain through pool.admin-command). Nothing on the host connects to 10.0.2.100.

One job, submitted on the pool side -> the scaler launches ONE worker VM (trixie with condor baked
in) -> it boots, its condor section makes it join (VfarmInstanceId) -> the job runs (started once,
exit 0) -> the queue is empty -> idle past idle-time -> graceful drain (condor_drain) -> drained ->
terminated (qemu killed, folder gone). Every wait is on an event (a folder, an ad, a job state, a
log line of the scaler, qemu's exit); the timeline is printed (`-s`).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.fixtures.condor_pool import CondorPool, local_farm_file, namespaced_pool, stop_process, wait_for
from vfarm.clouds import local_farm

pytestmark = [pytest.mark.vm, pytest.mark.pool]

POOL_ADDRESS = "10.0.2.100"  # inside the test's namespace only
FARM = "vmfarm"
JOB_SECONDS = 10
# Measured (TCG, 2 vCPUs, a 2-core host shared with other work): see the test's printed timeline.
# launch within a cycle or two (check-every 3 s); joined ~100 s after launch; job and drain seconds.
LAUNCH_TIMEOUT = 120.0
JOIN_TIMEOUT = 600.0
JOB_TIMEOUT = 300.0
DRAIN_TIMEOUT = 300.0  # idle-time 20 s, then condor_drain and a cycle or two
GONE_TIMEOUT = 120.0


@pytest.fixture(scope="module")
def ns_pool() -> Iterator[CondorPool]:
    with namespaced_pool(POOL_ADDRESS, prefix="vfarm-scalevm-") as pool:
        yield pool


def farm_file(folder: Path, pool: CondorPool) -> Path:
    return local_farm_file(folder, pool, name=FARM, address=POOL_ADDRESS, max_vms=1, idle_time=20, join_timeout=600, boot_timeout=900,
                           check_every=3)


def submit(pool: CondorPool) -> int:
    """One job for a farm worker (never the pool's own startd), submitted inside the pool's folder."""
    description = f"""\
universe = vanilla
executable = /bin/sh
transfer_executable = false
arguments = "-c 'sleep {JOB_SECONDS}; hostname; pwd'"
should_transfer_files = YES
when_to_transfer_output = ON_EXIT
output = /home/vfarm/scale-$(Cluster).out
error = /home/vfarm/scale-$(Cluster).err
request_cpus = 1
request_memory = 64
requirements = VfarmInstanceId =!= undefined
queue
"""
    return pool.submit_file("scale.sub", description)


def test_vfarm_scale_grows_a_real_worker_vm_runs_the_job_then_drains_and_terminates_it(ns_pool: CondorPool, tmp_path: Path) -> None:
    farm_path = farm_file(tmp_path, ns_pool)
    root = Path(os.environ.get("VFARM_LOCAL_DIR", "/var/tmp/vfarm-local")) / f"test-scale-{uuid.uuid4().hex[:8]}"
    farm = local_farm.LocalFarm(root / "farm")  # the test's view of the same cloud (read-only until clean-up)
    env = {**os.environ, "VFARM_LOCAL_DIR": str(root), "CONDOR_CONFIG": str(ns_pool.host_config)}
    env.pop("_CONDOR_SEC_TOKEN_DIRECTORY", None)
    log = tmp_path / "scale.log"
    with open(log, "w") as err:
        scaler = subprocess.Popen(["nsenter", f"--net=/proc/{ns_pool.master_pid}/ns/net", "--", sys.executable, "-m", "vfarm", "scale",
                                   str(farm_path)], stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=err, env=env)
    started = time.monotonic()
    timeline: dict[str, float] = {}
    iid = ""
    cluster = None

    def scaler_log() -> str:
        return log.read_text(errors="replace")

    def vm_log() -> str:
        if not iid:
            return ""
        folder = farm.instances_dir / iid
        text = ""
        for name in ("supervisor.log", "console-1.log"):
            if (folder / name).exists():
                text += f"--- {name}:\n" + (folder / name).read_text(errors="replace")[-3000:]
        return text

    def watch(what: str) -> None:
        """Fails fast when the scaler died or the VM ended on its own."""
        assert scaler.poll() is None, f"the scaler died while waiting for {what}:\n" + scaler_log()[-3000:]
        if iid and "terminate" not in timeline:
            [inst] = farm.instances(ids=[iid], states=None)
            assert inst["State"]["Name"] in ("pending", "running"), f"{iid} is {inst['State']['Name']} while waiting for {what}: {inst}\n{vm_log()}"

    def mark(name: str) -> None:
        timeline[name] = time.monotonic() - started

    try:
        cluster = submit(ns_pool)
        mark("submitted")

        def launched() -> list[dict[str, Any]]:
            watch("a launch")
            return farm.instances(tag_filters={"vfarm:farm": FARM}, states=None)

        [inst] = wait_for(launched, LAUNCH_TIMEOUT, "the scaler's launch", interval=0.5)
        iid = inst["InstanceId"]
        mark("launched")

        def joined() -> list[Any]:
            watch("the worker to join")
            # Slot ads only: a startd's first ads in the collector need not be its slots yet.
            return [ad for ad in ns_pool.ads("Startd", f'VfarmInstanceId == "{iid}"') if "PartitionableSlot" in ad]

        ads = wait_for(joined, JOIN_TIMEOUT, f"{iid}'s startd in the pool", interval=2)
        mark("joined")
        assert [ad["PartitionableSlot"] for ad in ads] == [True]
        qemu = farm.instances(ids=[iid])[0]["VfarmLocal"]["qemu_pid"]
        console = farm.instances_dir / iid / "console-1.log"


        def done() -> list[dict[str, Any]]:
            watch("the job")
            return ns_pool.finished(cluster)

        finished = wait_for(done, JOB_TIMEOUT, f"job {cluster} done", interval=1)
        mark("job done")
        assert [(ad["NumJobStarts"], ad["ExitCode"], ad["JobStatus"]) for ad in finished] == [(1, 0, 4)]
        assert f"vfarm-{iid[-8:]}" in str(finished[0].get("LastRemoteHost", "")), finished[0].get("LastRemoteHost")

        def drain_started() -> bool:
            watch("the drain")
            return f"drain {iid}: idle for" in scaler_log()

        wait_for(drain_started, DRAIN_TIMEOUT, f"the scaler draining {iid}", interval=0.5)
        mark("drain")
        # Idle is counted from the end of the last job (the partitionable slot's
        # NumDynamicSlotsTime), not from the join: idle-time 20 s, minus the test's own polling lag.
        assert timeline["drain"] - timeline["job done"] >= 20 - 5, timeline
        # The test image's harness would power off after cloud-init: the local cloud cancelled it.
        text = console.read_text(errors="replace")
        assert "vfarm-local: harness done" not in text
        assert "finished at" not in text or "vfarm-local-farm: keeps running after cloud-init" in text

        def terminated() -> bool:
            assert scaler.poll() is None, "the scaler died:\n" + scaler_log()[-3000:]
            return f"terminate {iid} (drained)" in scaler_log()

        wait_for(terminated, DRAIN_TIMEOUT, f"the scaler terminating {iid}", interval=0.5)
        mark("terminate")

        def gone() -> bool:
            [now] = farm.instances(ids=[iid], states=None)
            return now["State"]["Name"] == "terminated" and not (farm.instances_dir / iid).exists()

        wait_for(gone, GONE_TIMEOUT, f"{iid} gone", interval=0.5)
        wait_for(lambda: not local_farm.alive(qemu, None), GONE_TIMEOUT, f"{iid}'s qemu ended", interval=0.5)
        mark("gone")
    finally:
        stop_process(scaler)
        leftover = [i["InstanceId"] for i in farm.instances(states=("pending", "running", "stopped"))]
        listed = farm.instances(tag_filters={"vfarm:farm": FARM}, states=None)
        debug = vm_log()
        farm.terminate(leftover)  # never leave a VM running
        if cluster is not None:
            ns_pool.run(["condor_rm", str(cluster)], check=False)
        if os.environ.get("VFARM_KEEP_VM"):
            print(f"\nkept {root}")
        else:
            shutil.rmtree(root, ignore_errors=True)
        print("\ntimeline (s since submit): " + ", ".join(f"{k} {v:.1f}" for k, v in timeline.items()))
    text = scaler_log()
    assert leftover == [], f"left running: {leftover}\n{debug}"
    assert scaler.returncode == 0 and "SIGTERM: stopping after this cycle" in text, text[-3000:]
    # One worker, launched once, ended as drained: its tombstone says so (the black-hole rule reads it).
    [ended] = listed
    assert ended["InstanceId"] == iid and {"Key": "vfarm:end", "Value": "drained"} in ended["Tags"]
    assert text.count("launched i-local-") == 1, text[-3000:]
    assert "launch 1: 1 waiting job(s) need 1 CPU(s)" in text, text[-3000:]
    assert "condor_drain -pool" in text
    print(f"launch->joined {timeline['joined'] - timeline['launched']:.1f} s, joined->job done {timeline['job done'] - timeline['joined']:.1f} s, "
          f"job done->drain {timeline['drain'] - timeline['job done']:.1f} s, drain->terminate {timeline['terminate'] - timeline['drain']:.1f} s, "
          f"terminate->gone {timeline['gone'] - timeline['terminate']:.1f} s")
