"""End-to-end: real boots of real cloud-init images under qemu (issue 6). Each test is one instance.

The cvmfs package these boots install is a STAND-IN (vfarm.clouds.cvmfs_standin), served from a
local apt repository on this machine's loopback: the real CernVM-FS client cannot be downloaded
here. Its cvmfs_config checks the files vfarm wrote and records each call; it mounts nothing.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.fixtures.vm import BOOT_TIMEOUT, Booted, BootFn, Text, collected_text, lv_extents, mounts, plan_extents, swap_devices
from vfarm.clouds.images import HARNESS_MARK

pytestmark = pytest.mark.vm

ROOT = Path(__file__).resolve().parents[2]
SEED = ROOT / "examples" / "torino.yaml"
MARKER = """#cloud-config
runcmd:
  - [sh, -c, "head -c 16 /dev/urandom | od -An -tx1 | tr -d ' \\\\n' > /home/vfarm-local-marker"]
"""


def assert_seed_example(text: Text, vg: dict[str, int], harness_poweroff: bool) -> None:
    """Everything the seed example promises, from the files the instance left on its disk."""
    summary = json.loads(text("/var/log/vfarm/summary.json") or "null")
    assert summary is not None, "no summary.json"
    assert summary["result"] == "ok", (summary["problems"], summary["warnings"])
    status = {h["name"]: h["status"] for h in summary["handlers"]}
    assert status["localfs"] == "ok" and status["cvmfs"] == "ok", status
    # LV sizes: exactly what `vfarm plan` says for this volume group.
    assert lv_extents(text) == plan_extents(str(SEED), vg["extents"], vg["extent_size"])
    seen = mounts(text)
    for name, target in (("home", "/home"), ("tmp", "/tmp"), ("cvmfs", "/var/lib/cvmfs")):
        assert seen.get(target) == f"/dev/mapper/vg_local-{name}", (target, seen.get(target))
    swaps = swap_devices(text)
    assert len(swaps) == 1 and swaps[0].startswith("/dev/dm-"), swaps
    fstab = text("/etc/fstab")
    for line in ("/dev/vg_local/cvmfs\t/var/lib/cvmfs\text4", "/dev/vg_local/home\t/home\text4",
                 "/dev/vg_local/tmp\t/tmp\text4", "/dev/vg_local/swap\tnone\tswap"):
        assert line in fstab, fstab
    local = text("/etc/cvmfs/default.local")
    for line in ('CVMFS_REPOSITORIES="alice.cern.ch"', 'CVMFS_HTTP_PROXY="http://t2-squid-01.example.org:3128"',
                 'CVMFS_CACHE_BASE="/var/lib/cvmfs"', 'CVMFS_QUOTA_LIMIT="18000"'):
        assert line in local.splitlines(), local
    # The pinned version, installed from the (stand-in) repository, set up and probed.
    assert text("/var/log/vfarm-local/packages.txt").strip() == "cvmfs 2.1.14"
    calls = text("/var/log/cvmfs-standin.log")
    assert "cvmfs_config setup" in calls and "cvmfs_config probe alice.cern.ch" in calls, calls
    assert harness_poweroff, "a good instance must not power itself off"


def assert_booted_seed_example(booted: Booted, boot: int = -1) -> None:
    assert_seed_example(booted.view(boot), booted.instance.vg, booted.boots[boot].harness_poweroff)


def test_seed_example_baked_bookworm_then_reboot(boot_vm: BootFn) -> None:
    booted = boot_vm(SEED.read_text(), handlers="baked", attach=[("marker.yaml", "cloud-config", MARKER)], reboots=1)
    assert_booted_seed_example(booted, boot=0)
    marker = booted.text("/var/log/vfarm-local/marker.txt", 0).strip()
    assert len(marker) == 32, marker
    # The reboot: same instance, nothing changes, the file written before it is still there.
    assert_booted_seed_example(booted, boot=1)
    assert booted.text("/var/log/vfarm-local/marker.txt", 1).strip() == marker
    for path in ("/etc/fstab", "/etc/cvmfs/default.local", "/var/log/vfarm-local/lvs.json", "/var/log/vfarm/localfs.status.json"):
        assert booted.text(path, 1) == booted.text(path, 0), path
    assert len(booted.text("/var/log/vfarm-local/boots.log", 1).splitlines()) == 2
    installs = booted.text("/var/log/cvmfs-standin.log", 1).count("cvmfs_config setup")
    assert installs == 1, "cvmfs setup ran again on reboot"


def test_launch_local_the_seed_example_embed_bookworm(tmp_path: Path) -> None:
    """The README's main job, through the command line: `vfarm launch local FILE --collect DIR`."""
    out = tmp_path / "out"
    done = subprocess.run([sys.executable, "-m", "vfarm", "launch", "local", str(SEED), "--handlers", "embed", "--collect", str(out),
                           "--timeout", str(BOOT_TIMEOUT)], capture_output=True, text=True, timeout=3 * BOOT_TIMEOUT)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "vfarm final check: OK" in done.stdout and "localfs  ok" in done.stdout, done.stdout
    assert "cloud-init 22.4.2: modules:final" in done.stderr and "STAND-IN" in done.stderr
    instance = json.loads((out / "instance.json").read_text())
    assert_seed_example(collected_text(out), instance["vg"], HARNESS_MARK in (out / "console-1.log").read_text(errors="replace"))
    assert json.loads((out / "var/log/vfarm-local/lsblk.json").read_text())["blockdevices"]
    assert not Path(instance["folder"]).exists(), "without --keep the instance folder goes"


def test_seed_example_include_bookworm(boot_vm: BootFn) -> None:
    booted = boot_vm(SEED.read_text(), handlers="include")
    assert_booted_seed_example(booted)
    fetched = booted.instance.http_requests
    assert any(r.startswith("GET /handlers/localfs_handler.py 200") for r in fetched), fetched
    assert any(r.startswith("GET /handlers/cvmfs_handler.py 200") for r in fetched), fetched
    assert any(r.startswith("GET /handlers/vfarm-check.py 200") for r in fetched), fetched  # the final check comes with them


def test_seed_example_trixie(boot_vm: BootFn) -> None:
    booted = boot_vm(SEED.read_text(), image="trixie", handlers="embed")
    assert "Cloud-init v. 25.1" in booted.console()
    assert_booted_seed_example(booted)


def test_failing_step_ends_in_summary_and_poweroff(boot_vm: BootFn) -> None:
    config = SEED.read_text().replace("version: 2.1.14", "version: 9.9.9")
    booted = boot_vm(config, handlers="baked")
    summary = booted.summary
    assert summary["result"] == "failed"
    failed = {h["name"]: h for h in summary["handlers"] if h["status"] == "failed"}
    assert list(failed) == ["cvmfs"], summary["handlers"]
    assert "9.9.9" in failed["cvmfs"]["reason"], failed["cvmfs"]["reason"]
    assert summary["decision"]["action"] == "poweroff"
    assert booted.boots[0].self_poweroff, "the instance must power itself off"
    assert "vfarm check: FAILED" in booted.console()


def test_unreachable_include_ends_in_summary_and_poweroff(boot_vm: BootFn) -> None:
    # Nothing listens behind this path: cloud-init's init stage aborts and consumes no part.
    booted = boot_vm(SEED.read_text(), handlers="include=http://10.0.2.100/nowhere/")
    summary = booted.summary
    assert summary["result"] == "failed"
    assert "init" in summary["decision"]["reason"] or any("init" in p for p in summary["problems"]), summary["problems"]
    assert any("nowhere" in p or "localfs" in p for p in summary["problems"]), summary["problems"]
    assert booted.boots[0].self_poweroff
    assert any(r.startswith("GET /nowhere/") for r in booted.instance.http_requests)


def test_disk_with_a_filesystem_is_not_touched(boot_vm: BootFn, tmp_path: Path) -> None:
    content = tmp_path / "content"
    content.mkdir()
    (content / "keep-me.txt").write_text("site data\n")
    disk = tmp_path / "used.raw"
    subprocess.run(["mkfs.ext4", "-q", "-F", "-L", "sitedata", "-d", str(content), str(disk), "2G"], check=True)
    config = "localfs:\n  devices: [/dev/vdb]\n  parts:\n    home: 50\n"
    booted = boot_vm(config, handlers="baked", data_disk=str(disk))
    summary = booted.summary
    assert summary["result"] == "failed"
    localfs = next(h for h in summary["handlers"] if h["name"] == "localfs")
    assert localfs["status"] == "failed" and "/dev/vdb" in localfs["reason"], localfs
    assert booted.boots[0].self_poweroff
    # The disk is as it was: still that filesystem, with its file.
    assert booted.instance.read_data_disk("/keep-me.txt") == b"site data\n"
    blkid = subprocess.run(["blkid", "-p", "-o", "export", str(booted.instance.data)], capture_output=True, text=True).stdout
    assert "TYPE=ext4" in blkid and "LABEL=sitedata" in blkid, blkid
