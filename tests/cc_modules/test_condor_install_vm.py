"""`condor: {install: true}` on the plain trixie image, in a real boot (`-m "vm and pool"`): the
condor section installs HTCondor inside cloud-init's init stage, starts it and the worker joins
a real pool.

Debian's condor postinst starts condor.service with a blocking `systemctl start`, and the unit is
ordered after network-online.target, which comes after the very stage running the install: the
handler holds the package's own start off for the install and starts condor itself.

The guest installs from the packages set-up downloaded (tests/fixtures/condor_debs.py), served on
this host's loopback and bridged into the pool's network namespace, where qemu runs; the guest
reaches them as http://10.0.2.100:8080/ (a part-handler part adds that apt source and reads its
index when it is registered, before the condor part is handled). The rest as in test_condor_vm.py.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.fixtures import condor_debs
from tests.fixtures.condor_pool import UID_DOMAIN, CondorPool, loopback_bridge, namespaced_pool, wait_for
from tests.fixtures.vm import Booting, collected
from vfarm.clouds.local_launch import make_instance
from vfarm.clouds.loopback import LoopbackServer
from vfarm.config import loader as configuration
from vfarm.mime_builder import mime

pytestmark = [pytest.mark.vm, pytest.mark.pool]

POOL_ADDRESS = "10.0.2.100"  # inside the pool's namespace only
REPO_PORT = 8080  # the guest's port of the packages at POOL_ADDRESS
# Boot to joined with condor installed from the image's packages: 101-105 s under TCG
# (htcondor-facts.md); the install adds a minute or two. At least 3x that.
BOOT_TIMEOUT = 1500.0
JOIN_TIMEOUT = 900.0
CONFIG = """\
#multiple-config
condor:
  central-manager: {address}
  token: {token}
  install: true
  join-timeout: 300
  config: {{ENABLE_IPV6: false}}
"""
APT_SOURCE = """#part-handler
# vfarm VM test only: the test's condor packages as an apt source, read when cloud-init registers
# this handler, before it walks the config parts after it.
import os
import subprocess

LIST = "/etc/apt/sources.list.d/vfarm-test-condor.list"


def list_types():
    return ["text/x-vfarm-test-condor-debs"]  # no part has this type: the work is done at registration


def handle_part(data, ctype, filename, payload):
    if ctype == "__begin__":
        with open(LIST, "w") as out:
            out.write("deb [trusted=yes] http://{address}:{port}/ ./\\n")
        # Only this source: the image's Debian mirror is out of the guest's reach.
        subprocess.run(["apt-get", "update", "-o", "Dir::Etc::SourceList=" + LIST, "-o", "Dir::Etc::SourceParts=/dev/null"], check=True)
        # A cloud's resolver knows the instance's own name; the local guest has no DNS, so its own
        # name resolves through nss-myhostname (as in the trixie-condor image), or every condor
        # tool waits out DNS time-outs.
        subprocess.run(["apt-get", "install", "-y", "--no-install-recommends", "libnss-myhostname"], check=True,
                       env=dict(os.environ, DEBIAN_FRONTEND="noninteractive"))
"""


@pytest.fixture(scope="module")
def served_pool() -> Iterator[tuple[CondorPool, int]]:
    """The pool, and the host port of the packages, reachable at the same port inside its namespace."""
    repo = condor_debs.cached()
    if repo is None:
        raise RuntimeError("the condor packages for the plain trixie image are not downloaded: run tools/run setup")
    server = LoopbackServer(repo)
    try:
        with namespaced_pool(POOL_ADDRESS) as pool, loopback_bridge(pool, [server.port]):
            yield pool, server.port
    finally:
        server.close()


def test_plain_image_installs_condor_during_the_boot_and_joins(served_pool: tuple[CondorPool, int], tmp_path: Path) -> None:
    pool, port = served_pool
    token = pool.token(f"condor@{UID_DOMAIN}")
    config = configuration.load_text(CONFIG.format(address=POOL_ADDRESS, token=token), "worker.yaml")
    source = mime.Attachment("text/part-handler", "vfarm-test-apt-source.py", APT_SOURCE.format(address=POOL_ADDRESS, port=REPO_PORT).encode())
    instance = make_instance(config, image="trixie", handlers="baked", data_disk="blank", disk="4G", attach=(source,), folder=tmp_path / "vm",
                             pool_forward=f"{POOL_ADDRESS}:{pool.port}", netns=f"/proc/{pool.master_pid}/ns/net",
                             forwards={REPO_PORT: f"127.0.0.1:{port}"})
    iid = instance.instance_id
    booting = Booting(instance, BOOT_TIMEOUT)
    try:
        ads = wait_for(lambda: pool.ads("Startd", f'VfarmInstanceId == "{iid}"') or booting.done(), JOIN_TIMEOUT, f"{iid}'s startd in the pool")
        assert ads is not True, f"the VM ended before joining: {collected(instance, tmp_path)}"
        print(f"\nlaunch-to-joined, installing condor: {time.monotonic() - booting.started:.1f} s ({iid})", flush=True)
    finally:
        result = booting.wait()
    assert result.powered_off and result.harness_poweroff, result
    summary = instance.summary()
    assert summary is not None and summary["result"] == "ok", collected(instance, tmp_path)
    record = json.loads(instance.read("/var/log/vfarm/condor.status.json") or b"{}")
    actions = [step["action"] for step in record["steps"]]
    assert [a for a in actions if a in ("hold-start", "install", "release-start", "start")] == ["hold-start", "install", "release-start", "start"], actions
    print(f"boot to power-off {result.seconds:.1f} s; install {next(s['seconds'] for s in record['steps'] if s['action'] == 'install')} s")
    instance.remove()
