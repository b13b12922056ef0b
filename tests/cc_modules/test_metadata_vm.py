"""A worker VM that gets its user-data as a cloud gives it keeps the pool's secret from its jobs
(`-m "vm and pool"`): `vfarm launch local --metadata`'s way (cloud-init's Ec2 datasource reads an
EC2-style metadata service at 169.254.169.254, no seed), the trixie image with `condor` baked in,
a real HTCondor pool in a network namespace of its own at 169.254.0.100 (the guest's pool
forward in that network), the condor section's metadata guard on (its default).

A real job runs on the worker as the slot user and tries to read the user-data: refused. Then a
root script on the worker reads it: served, the same bytes the service holds. The guard's nft
table is there to show, the token file is 0600 root, and the summary is ok."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.cc_modules.test_condor_vm import BOOT_TIMEOUT, JOB_TIMEOUT, JOBS_DIR, JOIN_TIMEOUT, hold_until_the_job_ran
from tests.fixtures.condor_pool import SUBMITTER, UID_DOMAIN, CondorPool, namespaced_pool, wait_for
from tests.fixtures.vm import Booting, collected
from vfarm.cc_modules.metadata_guard import TABLE
from vfarm.clouds.local import METADATA_ADDRESS, METADATA_POOL
from vfarm.clouds.local_launch import make_instance
from vfarm.config import loader as configuration
from vfarm.config.condor import TOKEN_FILE
from vfarm.mime_builder import mime

pytestmark = [pytest.mark.vm, pytest.mark.pool]

SEEN = "/var/log/vfarm-test"  # what the root script saw, read from the disk after power-off
USERDATA_URL = f"http://{METADATA_ADDRESS}/latest/user-data"
def fetch(redirect: str = "") -> str:
    """Shell lines that read the user-data as the metadata service serves it: `served SHA256` or `refused WHY`."""
    return f"""python3 - {redirect}<<'PY'
import hashlib, urllib.request
try:
    with urllib.request.urlopen("{USERDATA_URL}", timeout=20) as reply:
        print("served", hashlib.sha256(reply.read()).hexdigest())
except Exception as err:
    print("refused", type(err).__name__, err)
PY
"""
# The job, as the slot user: who it is, then the fetch; then it lets the root script go on.
JOB_SCRIPT = f"""#!/bin/sh
echo "user: $(id -un) $(id -u)"
{fetch()}n=0; while [ ! -d {JOBS_DIR} ] && [ $n -lt 600 ]; do sleep 0.5; n=$((n+1)); done
echo ran > {JOBS_DIR}/done
"""
# cloud-init's final stage, as root: holds the harness's power-off and, in the background (the
# worker takes the job only once cloud-init has finished and the check found it fit), waits until
# the job ran, then the same fetch and what to show.
ROOT_SCRIPT = f"#!/bin/sh\ninstall -d -m 0700 {SEEN}\n" + hold_until_the_job_ran(
    f"{fetch(f'> {SEEN}/root-fetch ')}nft list table inet {TABLE} > {SEEN}/guard 2>&1\nstat -c '%a %U' {TOKEN_FILE} > {SEEN}/token-mode\n")
CONFIG = """\
#multiple-config
condor:
  central-manager: {address}
  token: {token}
  join-timeout: 300
  config: {{ENABLE_IPV6: false}}
"""


@pytest.fixture(scope="module")
def link_local_pool() -> Iterator[CondorPool]:
    with namespaced_pool(METADATA_POOL) as pool:
        yield pool


def submit_probe(pool: CondorPool, iid: str) -> int:
    pool.write(f"/home/{SUBMITTER}/probe.sh", JOB_SCRIPT, mode="0755", owner=SUBMITTER)
    return pool.submit_file("probe.sub", f"""\
universe = vanilla
executable = /home/{SUBMITTER}/probe.sh
should_transfer_files = YES
when_to_transfer_output = ON_EXIT
output = /home/{SUBMITTER}/probe-$(Cluster).out
error = /home/{SUBMITTER}/probe-$(Cluster).err
request_cpus = 1
request_memory = 64
requirements = VfarmInstanceId == "{iid}"
queue
""")


def test_a_job_cannot_read_the_user_data_root_can(link_local_pool: CondorPool, tmp_path: Path) -> None:
    pool = link_local_pool
    token = pool.token(f"condor@{UID_DOMAIN}")
    config = configuration.load_text(CONFIG.format(address=METADATA_POOL, token=token), "worker.yaml")
    root_script = mime.Attachment("text/x-shellscript", "root-fetch.sh", ROOT_SCRIPT.encode())
    instance = make_instance(config, image="trixie-condor", handlers="baked", data_disk="blank", disk="1G", attach=(root_script,),
                             folder=tmp_path / "vm", pool_forward=f"{METADATA_POOL}:{pool.port}", netns=f"/proc/{pool.master_pid}/ns/net",
                             metadata=True)
    assert not (instance.folder / "seed.iso").exists()
    iid = instance.instance_id
    booting = Booting(instance, BOOT_TIMEOUT)
    try:
        ads = wait_for(lambda: pool.ads("Startd", f'VfarmInstanceId == "{iid}"') or booting.done(), JOIN_TIMEOUT, f"{iid}'s startd in the pool")
        assert ads is not True, f"the VM ended before joining: {collected(instance, tmp_path)}"
        cluster = submit_probe(pool, iid)
        ads = wait_for(lambda: pool.finished(cluster), JOB_TIMEOUT, f"job {cluster} done on {iid}")
        assert [(ad["ExitCode"], ad["NumJobStarts"]) for ad in ads] == [(0, 1)]
        job = pool.run(["cat", f"/home/{SUBMITTER}/probe-{cluster}.out"]).stdout
    finally:
        result = booting.wait()
    assert result.powered_off and result.harness_poweroff, result
    user = job.splitlines()[0]
    assert user.startswith("user: ") and not user.endswith(" 0"), job  # not root
    assert "\nrefused " in job and "served" not in job, job
    served = hashlib.sha256(instance.userdata).hexdigest()
    assert (instance.read(f"{SEEN}/root-fetch") or b"").decode().split() == ["served", served], collected(instance, tmp_path)
    guard = (instance.read(f"{SEEN}/guard") or b"").decode()
    assert f"table inet {TABLE}" in guard and METADATA_ADDRESS in guard, guard
    assert (instance.read(f"{SEEN}/token-mode") or b"").decode().split() == ["600", "root"]
    summary = instance.summary()
    assert summary is not None and summary["result"] == "ok", collected(instance, tmp_path)
    requests = (instance.folder / "metadata-requests.log").read_text()
    assert "GET /latest/user-data 200" in requests, requests  # cloud-init's read (and root's) came this way
    instance.remove()
