"""End-to-end: real boots of real cloud-init images under qemu (issue 6). Each test is one instance.

The cvmfs section meets the real CernVM-FS client, built from upstream's source by set-up: the
seed example's section, pointed at the test repository alice.cern.ch (its stratum 0 and a
Debian squid in a network namespace of their own, reached by the guest as 10.0.2.100:3128; see
tests/fixtures/cvmfs_guest.py). A boot is good only when the client mounts: every published file
reads back through the mount with its checksum, the cache is on the cvmfs LV with the quota
vfarm computed (`quota-limit: auto`), `cvmfs_config showconfig` in the guest gives every value
vfarm wrote, and squid's access log shows the client's requests.

The install path (the pinned version from the local packages in CERN's apt layout) runs on the
plain bookworm and trixie images; the other boots use `bookworm-cvmfs`, the client preinstalled
as image builders bake CernVM images, so only the install-path tests pay for the install.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.fixtures.cvmfs_guest import GUEST_PROXY, KEYS_DIR, SERVER_URL, GuestSite, guest_site, key_part, site_config, site_section
from tests.fixtures.cvmfs_repo import REPOSITORY
from tests.fixtures.vm import BOOT_TIMEOUT, Booted, BootFn, Text, collected_text, lv_extents, mounts, plan_extents, swap_devices
from vfarm.cc_modules import cc_cvmfs
from vfarm.clouds import cvmfs_local
from vfarm.clouds.images import HARNESS_MARK
from vfarm.config import cvmfs as cvmfs_spec

pytestmark = pytest.mark.vm

ROOT = Path(__file__).resolve().parents[2]
SEED = ROOT / "examples" / "torino.yaml"
PREINSTALLED = "bookworm-cvmfs"
MARKER = """#cloud-config
runcmd:
  - [sh, -c, "head -c 16 /dev/urandom | od -An -tx1 | tr -d ' \\\\n' > /home/vfarm-local-marker"]
"""


@pytest.fixture
def site() -> Iterator[GuestSite]:
    """The test repository's stratum 0 and squid, and the host port that reaches the squid (one per test: its own access log)."""
    with guest_site() as running:
        yield running


def seed_text() -> str:
    return site_config(SEED.read_text())


def seed_section() -> dict[str, Any]:
    section: dict[str, Any] = site_section(yaml.safe_load(SEED.read_text())["cvmfs"])
    return section


def key_attachment(site: GuestSite) -> tuple[str, str, str]:
    return ("cvmfs-key.py", "part-handler", key_part(site.site.published))


def showconfig(text: str) -> dict[str, str]:
    """`cvmfs_config showconfig REPO` as NAME -> value (the client's own parse of the files)."""
    values = {}
    for line in text.splitlines():
        name, sep, rest = line.partition("=")
        if sep and name.startswith("CVMFS_"):
            values[name] = rest.split("    # from ", 1)[0].strip()
    return values


def assert_real_client(text: Text, site: GuestSite, requests_before: int = 0) -> None:
    """What the real client shows inside the guest, against what vfarm meant to write."""
    cvmfs = "/var/log/vfarm-local/cvmfs"
    blocks, block_size = (int(n) for n in text(f"{cvmfs}/cache-fs.txt").split())
    quota_mb = cvmfs_spec.auto_quota_mb(blocks * block_size)
    assert 0 < quota_mb < blocks * block_size // (1 << 20)
    section = seed_section()
    meant: dict[str, str] = {}
    for path, settings in cc_cvmfs.config_files(section).items():
        rendered = cvmfs_spec.render(settings, quota_mb, cc_cvmfs.HEADER)
        assert text(path) == rendered, path  # the files, byte for byte
        for line in rendered.splitlines():
            name, sep, value = line.partition("=")
            if sep and not line.startswith("#"):
                meant[name] = value.strip('"')
    # The client's own parser reads every value as vfarm wrote it (the server URL with @fqrn@ expanded).
    seen = showconfig(text(f"{cvmfs}/showconfig-{REPOSITORY}.txt"))
    for name, value in meant.items():
        assert seen.get(name) == value.replace("@fqrn@", REPOSITORY), (name, value, seen.get(name))
    assert meant["CVMFS_HTTP_PROXY"] == GUEST_PROXY and meant["CVMFS_QUOTA_LIMIT"] == str(quota_mb)
    assert meant["CVMFS_SERVER_URL"] == SERVER_URL and meant["CVMFS_KEYS_DIR"] == KEYS_DIR
    # Mounted: every published file reads back through the mount with the checksum it was written with.
    assert "OK" in text(f"{cvmfs}/probe-{REPOSITORY}.txt"), text(f"{cvmfs}/probe-{REPOSITORY}.txt")
    sums = [line.split(maxsplit=1) for line in text(f"{cvmfs}/sha256-{REPOSITORY}.txt").splitlines() if line.strip()]
    read = {name: digest for digest, name in sums}  # sha256sum prints DIGEST  NAME
    assert read == site.site.published.manifest["files"], text(f"{cvmfs}/sha256-{REPOSITORY}.txt")[-2000:]
    assert text(f"{cvmfs}/symlink-{REPOSITORY}.txt").strip() == "v1"
    # The running mount: cache base and quota as configured, the cache filled on the cvmfs LV.
    running = showconfig(text(f"{cvmfs}/parameters-{REPOSITORY}.txt"))  # `cvmfs_talk parameters`: the same NAME=VALUE # from FILE
    assert running["CVMFS_CACHE_BASE"] == "/var/lib/cvmfs" and running["CVMFS_QUOTA_LIMIT"] == str(quota_mb), running
    assert mounts(text).get("/var/lib/cvmfs") == "/dev/mapper/vg_local-cvmfs"
    assert any(line.startswith("/var/lib/cvmfs/shared/") for line in text(f"{cvmfs}/cache-files.txt").splitlines())
    assert GUEST_PROXY in text(f"{cvmfs}/proxy-{REPOSITORY}.txt")
    # squid carried the client's requests to the stratum 0.
    requests = site.requests()[requests_before:]
    assert any(".cvmfspublished" in line for line in requests), requests
    assert any("/data/" in line for line in requests), requests


def assert_seed_example(text: Text, vg: dict[str, int], harness_poweroff: bool, site: GuestSite, requests_before: int = 0) -> None:
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
    # The pinned version (the seed's 2.12.0, as Debian's package version), set up and mounted.
    assert text("/var/log/vfarm-local/packages.txt").strip() == f"cvmfs {cvmfs_local.client_version()}"
    assert_real_client(text, site, requests_before)
    assert harness_poweroff, "a good instance must not power itself off"


def assert_booted_seed_example(booted: Booted, site: GuestSite, boot: int = -1, requests_before: int = 0) -> None:
    assert_seed_example(booted.view(boot), booted.instance.vg, booted.boots[boot].harness_poweroff, site, requests_before)


def planned(text: Text) -> list[str]:
    """The steps the cvmfs module planned (its record's plan step)."""
    status = json.loads(text("/var/log/vfarm/cvmfs.status.json"))
    steps: list[str] = next(s for s in status["steps"] if s["action"] == "plan")["steps"]
    return steps


def test_seed_example_baked_preinstalled_then_reboot(boot_vm: BootFn, site: GuestSite) -> None:
    booted = boot_vm(seed_text(), image=PREINSTALLED, handlers="baked", forwards=site.forwards,
                     attach=[key_attachment(site), ("marker.yaml", "cloud-config", MARKER)], reboots=1)
    assert_booted_seed_example(booted, site, boot=0)
    assert "install" not in planned(booted.view(0)), "the client is in the image: nothing to install"
    marker = booted.text("/var/log/vfarm-local/marker.txt", 0).strip()
    assert len(marker) == 32, marker
    # The reboot: same instance, nothing changes, the file written before it is still there, the
    # repository mounts again.
    assert_booted_seed_example(booted, site, boot=1)
    assert booted.text("/var/log/vfarm-local/marker.txt", 1).strip() == marker
    for path in ("/etc/fstab", "/etc/cvmfs/default.local", "/etc/cvmfs/domain.d/cern.ch.local", "/var/log/vfarm-local/lvs.json",
                 "/var/log/vfarm/localfs.status.json", "/var/log/vfarm/cvmfs.status.json"):
        assert booted.text(path, 1) == booted.text(path, 0), path
    assert len(booted.text("/var/log/vfarm-local/boots.log", 1).splitlines()) == 2


def test_launch_local_the_seed_example_installs_bookworm(tmp_path: Path, site: GuestSite) -> None:
    """The README's main job through the command line, on the plain image: the pinned version is
    installed from the local packages the way a site installs from CERN's repository."""
    config, key = tmp_path / "seed.yaml", tmp_path / "cvmfs-key.py"
    config.write_text(seed_text())
    key.write_text(key_part(site.site.published))
    out = tmp_path / "out"
    forward = f"3128={site.forwards[3128]}"
    done = subprocess.run([sys.executable, "-m", "vfarm", "launch", "local", str(config), "--handlers", "embed", "--collect", str(out),
                           "--forward", forward, "--attach", f"{key}:part-handler", "--timeout", str(BOOT_TIMEOUT)],
                          capture_output=True, text=True, timeout=3 * BOOT_TIMEOUT)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "vfarm final check: OK" in done.stdout and "localfs  ok" in done.stdout, done.stdout
    assert "cloud-init 22.4.2: modules:final" in done.stderr and "locally built CernVM-FS packages" in done.stderr
    instance = json.loads((out / "instance.json").read_text())
    text = collected_text(out)
    assert_seed_example(text, instance["vg"], HARNESS_MARK in (out / "console-1.log").read_text(errors="replace"), site)
    assert planned(text)[:3] == ["write-file", "update", "install"], planned(text)
    apt_line = text("/etc/apt/sources.list.d/vfarm-cvmfs.list")
    assert apt_line == "deb [trusted=yes] http://10.0.2.100/cvmfs bookworm-prod main\n", apt_line
    fetched = (out / "http-requests.log").read_text()
    assert "GET /cvmfs/pool/main/c/cvmfs/cvmfs_" in fetched and "GET /cvmfs/dists/bookworm-prod/" in fetched, fetched
    assert json.loads((out / "var/log/vfarm-local/lsblk.json").read_text())["blockdevices"]
    assert not Path(instance["folder"]).exists(), "without --keep the instance folder goes"


def test_seed_example_include_preinstalled(boot_vm: BootFn, site: GuestSite) -> None:
    booted = boot_vm(seed_text(), image=PREINSTALLED, handlers="include", forwards=site.forwards, attach=[key_attachment(site)])
    assert_booted_seed_example(booted, site)
    fetched = booted.instance.http_requests
    assert any(r.startswith("GET /handlers/localfs_handler.py 200") for r in fetched), fetched
    assert any(r.startswith("GET /handlers/cvmfs_handler.py 200") for r in fetched), fetched
    assert any(r.startswith("GET /handlers/vfarm-check.py 200") for r in fetched), fetched  # the final check comes with them


def test_seed_example_installs_trixie(boot_vm: BootFn, site: GuestSite) -> None:
    """The bookworm-built packages install on trixie (its t64 libraries provide the old names) and mount."""
    booted = boot_vm(seed_text(), image="trixie", handlers="embed", forwards=site.forwards, attach=[key_attachment(site)])
    assert "Cloud-init v. 25.1" in booted.console()
    assert_booted_seed_example(booted, site)
    assert "install" in planned(booted.view())
    assert "trixie-prod" in booted.text("/etc/apt/sources.list.d/vfarm-cvmfs.list")


def test_pinned_version_missing_fails_and_powers_off(boot_vm: BootFn) -> None:
    config = seed_text().replace("version: 2.12.0", "version: 9.9.9")
    assert "version: 9.9.9" in config
    # A message that starts with '-': the real shutdown must read it as the wall text, not an option.
    config += "check:\n  message: '--- vfarm worker failed ---'\n"
    booted = boot_vm(config, handlers="baked")
    summary = booted.summary
    assert summary["result"] == "failed"
    failed = {h["name"]: h for h in summary["handlers"] if h["status"] == "failed"}
    assert list(failed) == ["cvmfs"], summary["handlers"]
    reason = failed["cvmfs"]["reason"]
    assert "9.9.9" in reason and cvmfs_local.client_version() in reason, reason
    assert summary["decision"]["action"] == "poweroff"
    assert booted.boots[0].self_poweroff, "the instance must power itself off"
    assert "--- vfarm worker failed ---: vfarm check: FAILED" in booted.console()
    assert booted.text("/var/log/vfarm-local/packages.txt").strip() != f"cvmfs {cvmfs_local.client_version()}"


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


def test_force_takes_a_partitioned_disk(boot_vm: BootFn, tmp_path: Path) -> None:
    """A data disk with a partition table and a filesystem on its partition, as a cloud's resource
    disk may come: with force, localfs reads its partitions with the guest's own lsblk, wipes the
    disk and makes the volume group of it (the kernel drops the partition it knew)."""
    disk, content = tmp_path / "parted.raw", tmp_path / "fs.raw"
    subprocess.run(["truncate", "-s", "2G", str(disk)], check=True)
    with disk.open("r+b") as raw:  # an MBR: one Linux partition from 1 MiB, 512 MiB long
        raw.write(bytes(446) + bytes([0, 0, 0, 0, 0x83, 0, 0, 0]) + (2048).to_bytes(4, "little") + (2048 * 512).to_bytes(4, "little")
                  + bytes(48) + b"\x55\xaa")
    subprocess.run(["mkfs.ext4", "-q", "-F", "-L", "olddata", str(content), "512M"], check=True)
    subprocess.run(["dd", f"if={content}", f"of={disk}", "bs=1M", "seek=1", "conv=notrunc", "status=none"], check=True)
    content.unlink()
    booted = boot_vm("localfs:\n  devices: [/dev/vdb]\n  force: true\n  parts:\n    home: 50\n", handlers="baked", data_disk=str(disk))
    summary = booted.summary
    localfs = next(h for h in summary["handlers"] if h["name"] == "localfs")
    assert summary["result"] == "ok" and localfs["status"] == "ok", localfs
    assert mounts(collected_text(booted.collected))["/home"] == "/dev/mapper/vg_local-home"
    blkid = subprocess.run(["blkid", "-p", "-o", "export", str(booted.instance.data)], capture_output=True, text=True).stdout
    assert "TYPE=LVM2_member" in blkid and "PTTYPE" not in blkid, blkid
