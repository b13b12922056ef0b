"""A worker that failed stays out after a restart, in `embed` and `include --pin` too (`-m vm`): a
real boot of the bookworm image (cloud-init 22.4) WITHOUT vfarm baked in (`bookworm-plain`: no baked
check that would run at every boot anyway), rebooted from its own disk.

With `embed`, `include` and `--pin` the final check is cloud-init's power_state condition, which
runs once per instance. On later boots the part that carries the check (the embed library part;
with --pin the pin loader, which starts the check the first boot wrote if it is still the pinned
one) starts it itself, from the init stage, detached, as a baked image's cc_vfarm_check does; so a
worker whose first boot failed is judged again and powers itself off again, instead of coming back
unchecked (its condor startd would say "pending" and take jobs)."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from tests.fixtures.vm import BootFn

pytestmark = pytest.mark.vm

CONFIG = "localfs:\n  devices: [/dev/vdb]\n  parts:\n    home: 50\n"


@pytest.mark.parametrize("handlers,pin", [("embed", False), ("include", True)], ids=["embed", "include-pin"])
def test_a_worker_that_failed_powers_off_again_after_a_reboot(boot_vm: BootFn, tmp_path: Path, handlers: str, pin: bool) -> None:
    content = tmp_path / "content"
    content.mkdir()
    (content / "keep-me.txt").write_text("site data\n")
    disk = tmp_path / "used.raw"  # a disk holding a filesystem: localfs refuses it, the boot fails
    subprocess.run(["mkfs.ext4", "-q", "-F", "-L", "sitedata", "-d", str(content), str(disk), "1G"], check=True)
    booted = boot_vm(CONFIG, image="bookworm-plain", handlers=handlers, pin=pin, data_disk=str(disk), reboots=1)
    first, second = booted.json("/var/log/vfarm/summary.json", 0), booted.json("/var/log/vfarm/summary.json", 1)
    assert first["result"] == "failed" and booted.boots[0].self_poweroff, first
    # The second boot: cloud-init runs no per-instance work (no power_state condition, no handler),
    # and still the check judged it, from the first boot's records, and powered it off.
    assert booted.boots[1].self_poweroff, f"the second boot was not checked: console {booted.boots[1].console}"
    assert second["result"] == "failed" and second["generated"] != first["generated"], second
    assert "vfarm check: FAILED" in booted.console(1)
    localfs = next(h for h in second["handlers"] if h["name"] == "localfs")
    assert localfs["status"] == "failed" and "/dev/vdb" in localfs["reason"], localfs
    assert booted.instance.read_data_disk("/keep-me.txt") == b"site data\n"
    if pin:  # the handlers came from the harness's server, through the pin loader's sha256 check
        fetched = booted.instance.http_requests
        assert any(r.startswith("GET /handlers/localfs_handler.py 200") for r in fetched), fetched
