"""A real worker VM joins a real HTCondor pool (`-m "vm and pool"`): the trixie image with `condor`
baked in (`--image trixie-condor`), a blank data disk, localfs + condor + the final check.

Network (the hard rule of htcondor-facts.md): the pool runs in a network namespace of its own,
listening on 10.0.2.100:9618 there; qemu runs inside the same namespace, its guest reaching only
10.0.2.100:9618 (restrict=on, guestfwd through a socat per connection); every client of the pool
(condor_status, condor_submit) runs inside it too. Nothing on the host connects to 10.0.2.100.

Good token: the worker joins, a job submitted on the pool side runs there with its working
directory on the localfs part, the summary is all ok. Wrong token: the worker never joins, the
final check powers it off and the summary names condor. Launch-to-joined is printed (`-s`)."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.fixtures.condor_pool import UID_DOMAIN, CondorPool, namespaced_pool, wait_for
from tests.fixtures.vm import Booting, collected
from vfarm.clouds.images import HARNESS_HOLD
from vfarm.clouds.local import LocalInstance
from vfarm.clouds.local_launch import make_instance
from vfarm.config import loader as configuration
from vfarm.mime_builder import mime

pytestmark = [pytest.mark.vm, pytest.mark.pool]

POOL_ADDRESS = "10.0.2.100"  # inside the pool's namespace only
BOOT_TIMEOUT = 1200.0  # boot to login 77-92 s, joined at 101-105 s under TCG (htcondor-facts.md); a job and the check after
JOIN_TIMEOUT = 600.0  # the test's wait for the ad; the handler's own join-timeout is below
JOB_TIMEOUT = 600.0  # from the ad: the rest of the boot, the final check, then the job
JOBS_DIR = "/srv/vfarm-jobs"


def hold_until_the_job_ran(then: str = "") -> str:
    """Shell lines of a boot script: hold the local harness's power-off and, in the background (the
    worker takes jobs only once cloud-init has finished and the final check found it fit), wait (at
    most 10 minutes) until the pool's test job has run here, run THEN, and let the power-off go."""
    return (f"install -d -m 1777 {JOBS_DIR}\ntouch {HARNESS_HOLD}\n(\nn=0\n"
            f"while [ $n -lt 1200 ] && [ ! -e {JOBS_DIR}/done ]; do sleep 0.5; n=$((n+1)); done\n"
            f"{then}rm -f {HARNESS_HOLD}\n) >/dev/null 2>&1 &\n")


WAIT_FOR_JOB = "#!/bin/sh\n# vfarm VM test only: hold the power-off until the pool's test job has run here.\n" + hold_until_the_job_ran()
CONFIG = """\
#multiple-config
localfs:
  vg: vg_local
  devices: [/dev/vdb]
  parts:
    scratch: {{size: 60%VG, mount: /scratch}}
condor:
  central-manager: {address}
  token: {token}
  execute: /scratch/condor
  attributes: {{Site: T2_IT_Local}}
  join-timeout: {join_timeout}
  config: {{ENABLE_IPV6: false}}
"""


@pytest.fixture(scope="module")
def vm_pool() -> Iterator[CondorPool]:
    with namespaced_pool(POOL_ADDRESS) as pool:
        yield pool


def launch(pool: CondorPool, tmp: Path, token: str, join_timeout: int, attach: tuple[mime.Attachment, ...]) -> LocalInstance:
    config = configuration.load_text(CONFIG.format(address=POOL_ADDRESS, token=token, join_timeout=join_timeout), "worker.yaml")
    return make_instance(config, image="trixie-condor", handlers="baked", data_disk="blank", disk="4G", attach=attach, folder=tmp / "vm",
                         pool_forward=f"{POOL_ADDRESS}:{pool.port}", netns=f"/proc/{pool.master_pid}/ns/net")


def submit_inside(pool: CondorPool, iid: str) -> int:
    """A job for this worker, submitted inside the pool's folder by the test user."""
    description = f"""\
universe = vanilla
executable = /bin/sh
transfer_executable = false
arguments = "-c 'df -P . | tail -1; pwd; id -un; n=0; while [ ! -d {JOBS_DIR} ] && [ $n -lt 600 ]; do sleep 0.5; n=$((n+1)); done; echo ran > {JOBS_DIR}/done'"
should_transfer_files = YES
when_to_transfer_output = ON_EXIT
output = /home/vfarm/job-$(Cluster).out
error = /home/vfarm/job-$(Cluster).err
request_cpus = 1
request_memory = 64
requirements = VfarmInstanceId == "{iid}"
queue
"""
    return pool.submit_file("job.sub", description)


def test_worker_vm_joins_runs_a_job_on_its_localfs_part_and_checks_ok(vm_pool: CondorPool, tmp_path: Path) -> None:
    token = vm_pool.token(f"condor@{UID_DOMAIN}")
    wait = mime.Attachment("text/x-shellscript", "wait-for-job.sh", WAIT_FOR_JOB.encode())
    instance = launch(vm_pool, tmp_path, token, 300, (wait,))
    iid = instance.instance_id
    booting = Booting(instance, BOOT_TIMEOUT)
    try:
        ads = wait_for(lambda: vm_pool.ads("Startd", f'VfarmInstanceId == "{iid}"') or booting.done(), JOIN_TIMEOUT, f"{iid}'s startd in the pool")
        joined = time.monotonic() - booting.started
        assert ads is not True, f"the VM ended before joining: {collected(instance, tmp_path)}"
        assert [(ad["Site"], ad["PartitionableSlot"]) for ad in ads] == [("T2_IT_Local", True)]
        print(f"\nlaunch-to-joined: {joined:.1f} s ({iid})", flush=True)
        cluster = submit_inside(vm_pool, iid)
        ads = wait_for(lambda: vm_pool.finished(cluster), JOB_TIMEOUT, f"job {cluster} done on {iid}")
        assert [(ad["ExitCode"], ad["NumJobStarts"]) for ad in ads] == [(0, 1)]
        out = vm_pool.run(["cat", f"/home/vfarm/job-{cluster}.out"]).stdout
        assert "/dev/mapper/vg_local-scratch" in out and " /scratch" in out, out  # its directory is on the localfs part
        assert "/scratch/condor/dir_" in out, out
    finally:
        result = booting.wait()
    assert result.powered_off and result.harness_poweroff, result
    summary = instance.summary()
    assert summary is not None and summary["result"] == "ok", collected(instance, tmp_path)
    names = {h["name"]: h["status"] for h in summary["handlers"]}
    assert names.get("localfs") == "ok" and names.get("condor") == "ok", names
    record = json.loads(instance.read("/var/log/vfarm/condor.status.json") or b"{}")
    assert record["instance_id"] == iid and record["steps"][-1]["action"] == "wait-join"
    guest_log = (instance.read("/var/log/vfarm/condor.log") or b"").decode()
    assert token not in guest_log and token.split(".")[2] not in guest_log
    print(f"boot to power-off {result.seconds:.1f} s; condor handler waited {record['steps'][-1]['seconds']} s for the collector")
    instance.remove()


def test_worker_vm_with_a_wrong_token_powers_itself_off_naming_condor(vm_pool: CondorPool, tmp_path: Path) -> None:
    # Well-formed, signed by a key the pool does not hold.
    token = vm_pool.run(["sh", "-euc", 'umask 077; d=$(mktemp -d); head -c 32 /dev/urandom > "$d/POOL"; '
                         '_CONDOR_SEC_PASSWORD_DIRECTORY="$d" _CONDOR_SEC_TOKEN_POOL_SIGNING_KEY_FILE="$d/POOL" '
                         'condor_token_create -identity "$1" -key POOL; rm -rf "$d"', "sh", f"condor@{UID_DOMAIN}"]).stdout.strip()
    instance = launch(vm_pool, tmp_path, token, 60, ())
    result = instance.boot(timeout=BOOT_TIMEOUT)
    assert result.powered_off, result
    summary = instance.summary()
    assert summary is not None, collected(instance, tmp_path)
    assert summary["result"] == "failed" and summary["decision"]["action"] == "poweroff", summary
    failed = {h["name"]: h for h in summary["handlers"] if h.get("failed")}
    assert list(failed) == ["condor"], summary["handlers"]
    assert failed["condor"]["reason"] == f"not joined: the collector {POOL_ADDRESS}:9618 did not list this worker's startd within 60 s"
    assert vm_pool.ads("Startd", f'VfarmInstanceId == "{instance.instance_id}"') == []
    print(f"\nwrong token: powered off after {result.seconds:.1f} s (by {'the harness' if result.harness_poweroff else 'the instance itself'})")
    instance.remove()
