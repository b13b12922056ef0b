"""A real boot as on EC2 with an instance store: the metadata service says the data disk is
ephemeral0, so cloud-init's own `mounts` would mount it at /mnt (its default), in the init stage
right after the part-handlers ran. localfs takes that disk (`devices`, `force`: it comes with a
filesystem, as a Xen instance store does): vfarm's user-data tells `mounts` to leave it alone, so
no fstab line mounts a PV at the next boot."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from tests.fixtures.vm import BOOT_TIMEOUT, collected_text, mounts
from vfarm.clouds.local_launch import make_instance
from vfarm.config import loader as configuration

pytestmark = pytest.mark.vm

CONFIG = "localfs:\n  devices: [/dev/vdb]\n  force: true\n  parts:\n    home: 50\n"


@pytest.mark.parametrize("image", ["bookworm", "trixie"])  # cloud-init 22.4 and 25.1
def test_the_instance_store_cloud_init_would_mount_at_mnt_becomes_the_volume_group(tmp_path: Path, image: str) -> None:
    disk = tmp_path / "store.raw"
    subprocess.run(["mkfs.ext4", "-q", "-F", "-L", "ephemeral0", str(disk), "2G"], check=True)
    instance = make_instance(configuration.load_text(CONFIG, "ec2.yaml"), image=image, handlers="baked", data_disk=str(disk),
                             folder=tmp_path / "vm", metadata=True, instance_store=True)
    try:  # one boot: cloud-init's mounts runs once per instance; the fstab it leaves is what later boots mount
        result = instance.boot(timeout=BOOT_TIMEOUT)
        assert result.powered_off and result.harness_poweroff, f"{result.outcome}; console {result.console}"
        instance.collect(tmp_path / "boot-1")
        text = collected_text(tmp_path / "boot-1")
        fstab = text("/etc/fstab")
        active = [line.split() for line in fstab.splitlines() if line.split() and not line.lstrip().startswith("#")]
        assert not [fields for fields in active if fields[0] == "/dev/vdb" or fields[1] == "/mnt"], fstab
        seen = mounts(text)
        assert "/mnt" not in seen and seen.get("/home") == "/dev/mapper/vg_local-home", seen
        summary = json.loads(text("/var/log/vfarm/summary.json"))
        assert summary["result"] == "ok", summary
        # cloud-init read the instance store from the metadata (ephemeral0 is /dev/vdb) and would have mounted it: our entry said no.
        log = text("/var/log/cloud-init.log")
        assert "Not including ephemeral0, already previously included" in log, log[-3000:]
    finally:
        instance.remove()
