"""Fast tier for the local qemu backend: everything around the boot, without booting."""

from __future__ import annotations

import json
import subprocess
import urllib.request
from pathlib import Path

import pytest

from vfarm.clouds import local
from vfarm.clouds.images import Image

pytestmark = pytest.mark.integration  # starts processes (see tests/conftest.py)


def fake_image(tmp_path: Path) -> Image:
    tmp_path.mkdir(parents=True, exist_ok=True)
    for name in ("disk.raw", "vmlinuz", "initrd.img"):
        (tmp_path / name).write_bytes(b"x")
    return Image("bookworm", tmp_path, tmp_path / "disk.raw", tmp_path / "vmlinuz", tmp_path / "initrd.img", {})


def test_qemu_line_reaches_only_the_loopback_forward(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(local, "_KVM", False)
    instance = local.LocalInstance(fake_image(tmp_path), b"", folder=tmp_path / "i")
    argv = instance.qemu_argv(port=8080)
    assert argv[argv.index("-accel") + 1] == "tcg,thread=single" and argv[argv.index("-smp") + 1] == "2"
    netdev = argv[argv.index("-netdev") + 1]
    assert "restrict=on" in netdev
    assert netdev.endswith("guestfwd=tcp:10.0.2.100:80-cmd:socat - TCP:127.0.0.1:8080")
    assert "hostfwd" not in netdev
    assert "-netdev" not in instance.qemu_argv(port=None), "no network unless something is served"
    pc = instance.qemu_argv(port=None, machine="pc")
    assert pc[pc.index("-machine") + 1] == "pc" and "virtio-blk-pci,drive=d0" in pc


def test_microvm_under_tcg_is_told_the_hosts_tsc_rate_when_cpuinfo_gives_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text("processor\t: 0\ncpu MHz\t\t: 1996.249\nflags\t\t: fpu tsc constant_tsc nonstop_tsc tsc_known_freq\n")
    assert local.host_tsc_khz(cpuinfo, tmp_path / "no-cpufreq") == 1996249
    (tmp_path / "cpufreq").mkdir()  # "cpu MHz" is then a current clock frequency, not the TSC's
    assert local.host_tsc_khz(cpuinfo, tmp_path / "cpufreq") is None
    cpuinfo.write_text("cpu MHz\t\t: 1996.249\nflags\t\t: fpu tsc\n")  # a TSC that may change its rate
    assert local.host_tsc_khz(cpuinfo, tmp_path / "no-cpufreq") is None
    cpuinfo.write_text("cpu MHz\t\t: 3400.000\nflags\t\t: tsc constant_tsc nonstop_tsc aperfmperf\n")  # "cpu MHz" measured
    assert local.host_tsc_khz(cpuinfo, tmp_path / "no-cpufreq") is None
    assert local.host_tsc_khz(tmp_path / "missing", tmp_path / "no-cpufreq") is None

    monkeypatch.setattr(local, "_KVM", False)
    monkeypatch.setattr(local, "host_tsc_khz", lambda: 2000000)
    instance = local.LocalInstance(fake_image(tmp_path), b"", folder=tmp_path / "i")
    micro = instance.qemu_argv(port=None)
    assert micro[micro.index("-append") + 1].endswith(" tsc_early_khz=2000000 tsc=reliable")
    pc = instance.qemu_argv(port=None, machine="pc")
    assert "tsc_early_khz" not in pc[pc.index("-append") + 1]
    monkeypatch.setattr(local, "host_tsc_khz", lambda: None)
    micro = instance.qemu_argv(port=None)
    assert "tsc" not in micro[micro.index("-append") + 1]


def test_seed_has_meta_data_user_data_and_network_config(tmp_path: Path) -> None:
    iso = local.make_seed(tmp_path, b"#cloud-config\n", "i-test", "host-test", network=True)
    listing = subprocess.run(["isoinfo", "-R", "-f", "-i", str(iso)], capture_output=True, text=True).stdout.split()
    assert sorted(listing) == ["/meta-data", "/network-config", "/user-data"]
    label = subprocess.run(["blkid", "-o", "value", "-s", "LABEL", str(iso)], capture_output=True, text=True).stdout.strip()
    assert label == "cidata"
    assert "instance-id: i-test" in (tmp_path / "seed/meta-data").read_text()


def test_loopback_server_serves_and_records(tmp_path: Path) -> None:
    (tmp_path / "hello.txt").write_text("hi\n")
    server = local.LoopbackServer(tmp_path)
    try:
        assert server.server_address[0] == "127.0.0.1"
        with urllib.request.urlopen(f"http://127.0.0.1:{server.port}/hello.txt", timeout=5) as reply:
            assert reply.read() == b"hi\n"
        with pytest.raises(urllib.error.HTTPError):
            urllib.request.urlopen(f"http://127.0.0.1:{server.port}/missing", timeout=5)
    finally:
        server.close()
    assert "GET /hello.txt 200" in server.requests and "GET /missing 404" in server.requests


def test_loopback_server_as_a_context_stops_serving(tmp_path: Path) -> None:
    (tmp_path / "hello.txt").write_text("hi\n")
    with local.LoopbackServer(tmp_path) as server:
        with urllib.request.urlopen(f"{server.url}/hello.txt", timeout=5) as reply:
            assert reply.read() == b"hi\n"
    server.thread.join(timeout=10)
    assert not server.thread.is_alive()  # the base class's exit would only have closed the socket
    with pytest.raises(OSError):
        urllib.request.urlopen(f"{server.url}/hello.txt", timeout=5)


def test_vg_disk_template_carries_an_empty_vg(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VFARM_CACHE", str(tmp_path))
    disk, info = local.vg_disk_template("64M", vg="vg_fasttest")
    assert info["extent_size"] == 4 << 20 and info["extents"] == info["free"] == 15
    assert json.loads(disk.with_suffix(".json").read_text()) == info
    blkid = subprocess.run(["blkid", "-p", "-o", "value", "-s", "TYPE", str(disk)], capture_output=True, text=True).stdout.strip()
    assert blkid == "LVM2_member"
    # Cached: the second call makes nothing new.
    assert local.vg_disk_template("64M", vg="vg_fasttest") == (disk, info)


def ext4_with_a_summary(tmp_path: Path) -> Path:
    """An ext4 image holding /var/log/vfarm/summary.json, as a worker's disk after its check."""
    content = tmp_path / "content"
    (content / "var/log/vfarm").mkdir(parents=True)
    (content / "var/log/vfarm/summary.json").write_text('{"result": "ok"}\n')
    disk = tmp_path / "disk.raw"
    subprocess.run(["mkfs.ext4", "-q", "-F", "-d", str(content), str(disk), "16M"], check=True)
    return disk


def test_debugfs_reads_files_from_an_ext4_image(tmp_path: Path) -> None:
    disk = ext4_with_a_summary(tmp_path)
    assert local.debugfs_read(disk, "/var/log/vfarm/summary.json") == b'{"result": "ok"}\n'
    assert local.debugfs_read(disk, "/nothing/here") is None
    found = local.debugfs_collect(disk, tmp_path / "out", [("/var/log/vfarm", "dir"), ("/etc/fstab", "file")])
    assert found == ["/var/log/vfarm"]
    assert (tmp_path / "out/var/log/vfarm/summary.json").read_text() == '{"result": "ok"}\n'


def test_kvm_is_not_used_without_hardware_virtualisation(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(local, "_KVM", None)
    monkeypatch.setenv("VFARM_ACCEL", "tcg")
    assert local.kvm_works() is False


def test_a_kernel_panic_before_userspace_on_microvm_boots_again_as_pc(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Seen in CI: a trixie kernel under microvm/TCG on a loaded host panicked in a timer interrupt
    # 1.4 s into the boot. Nothing of the guest had run, so booting again as `pc` is honest.
    script = ('if [ "$0" = microvm ]; then echo "Kernel panic - not syncing: Fatal exception in interrupt"; exec sleep 30; '
              'else echo "Run /init as init process"; fi')

    def fake_argv(self: local.LocalInstance, port: int | None, machine: str = "microvm", metadata: str | None = None) -> list[str]:
        return ["sh", "-c", script, machine, "-machine", machine]

    monkeypatch.setattr(local.LocalInstance, "qemu_argv", fake_argv)
    instance = local.LocalInstance(fake_image(tmp_path), b"", folder=tmp_path / "i", quiet=True)
    instance.folder.mkdir(parents=True, exist_ok=True)
    result = instance.boot(timeout=60)
    assert result.outcome == "poweroff"
    assert (instance.folder / "console-1-microvm-early-panic.log").read_text().startswith("Kernel panic")
    # A panic after userspace started is the guest's own: no second boot.
    later = 'echo "Run /init as init process"; echo "Kernel panic - not syncing: Attempted to kill init!"; exec sleep 30'
    monkeypatch.setattr(local.LocalInstance, "qemu_argv", lambda self, port, machine="microvm", metadata=None: ["sh", "-c", later, "x", "-machine", machine])
    assert instance.boot(timeout=60).outcome == "panic"


def test_a_guest_kernel_fault_on_the_first_boot_starts_the_instance_over_from_its_image(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Seen in CI: a trixie guest under TCG died of "Oops: double fault" (impossible EFLAGS) after its
    # check had run. Its disks were written by then: the second boot starts from fresh copies.
    faulted = tmp_path / "faulted"
    script = ('if [ ! -e "$1" ]; then touch "$1"; echo scribbled > "$2"; echo "Run /init as init process"; '
              'echo "[  169.1] Oops: double fault: 0000 [#1] PREEMPT SMP NOPTI"; '
              'echo "Kernel panic - not syncing: Fatal exception in interrupt"; exec sleep 30; fi')

    def fake_argv(self: local.LocalInstance, port: int | None, machine: str = "microvm", metadata: str | None = None) -> list[str]:
        return ["sh", "-c", script, "qemu", str(faulted), str(self.disk), "-machine", machine]

    monkeypatch.setattr(local.LocalInstance, "qemu_argv", fake_argv)
    instance = local.LocalInstance(fake_image(tmp_path / "image"), b"#cloud-config\n", folder=tmp_path / "i", data_disk="blank",
                                   disk_size="1M", quiet=True).prepare()
    result = instance.boot(timeout=60)
    assert result.outcome == "poweroff"
    assert "Oops: double fault" in (instance.folder / "console-1-kernel-fault.log").read_text()
    assert instance.disk.read_bytes() == b"x"  # the image's copy again, not what the faulted boot wrote
    # On a later boot the instance's earlier boots are in its disks: no starting over.
    faulted.unlink()
    assert instance.boot(timeout=60).outcome == "kernel-fault"
    assert instance.disk.read_bytes() == b"scribbled\n"


def test_instance_state_is_private(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The seed carries the user-data (a pool token, proxy credentials): the local state root, the
    instance folder and the seed are its owner's only, as `vfarm build` writes user-data 0600."""
    root = tmp_path / "state"
    root.mkdir(mode=0o755)
    root.chmod(0o755)  # an older vfarm's root: ours, tightened
    monkeypatch.setenv("VFARM_LOCAL_DIR", str(root))
    instance = local.LocalInstance(fake_image(tmp_path / "image"), b"#cloud-config\n", data_disk="blank", disk_size="1M", quiet=True)
    instance.prepare()
    assert instance.folder.parent == root
    modes = {str(p.relative_to(root)): p.stat().st_mode & 0o777 for p in [root, *root.rglob("*")]}
    folder = instance.folder.name
    assert modes == {".": 0o700, folder: 0o700, f"{folder}/seed": 0o700, f"{folder}/seed/user-data": 0o600,
                     f"{folder}/seed/meta-data": 0o600, f"{folder}/seed.iso": 0o600, f"{folder}/disk.raw": 0o600,
                     f"{folder}/data.raw": 0o600, f"{folder}/instance.json": 0o644}


def test_a_state_root_another_user_owns_or_may_write_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    root = tmp_path / "state"
    root.mkdir()
    root.chmod(0o1777)  # as /var/tmp: anyone may create in it
    monkeypatch.setenv("VFARM_LOCAL_DIR", str(root))
    instance = local.LocalInstance(fake_image(tmp_path / "image"), b"", data_disk="blank", disk_size="1M", quiet=True)
    with pytest.raises(local.CommandError, match=r"state is writable by group or others \(mode 1777\)"):
        instance.prepare()
    assert list(root.iterdir()) == []
    root.chmod(0o700)
    monkeypatch.setattr(local.os, "geteuid", lambda: local.os.getuid() + 4242)
    with pytest.raises(local.CommandError, match=r"state belongs to uid \d+, not to this user"):
        instance.prepare()
    monkeypatch.undo()
    link = tmp_path / "elsewhere"
    link.write_text("")
    with pytest.raises(local.CommandError, match="elsewhere is not a folder"):
        local.private_dir(link)


def test_collect_never_reports_an_earlier_runs_files(tmp_path: Path) -> None:
    disk = ext4_with_a_summary(tmp_path)
    dest = tmp_path / "out"
    (dest / "etc").mkdir(parents=True)
    (dest / "etc/fstab").write_text("an earlier run's\n")
    (dest / "var/log/vfarm").mkdir(parents=True)
    (dest / "var/log/vfarm/handler-old.log").write_text("an earlier run's\n")
    (dest / "mine.yaml").write_text("not collected: stays\n")
    found = local.debugfs_collect(disk, dest, [("/var/log/vfarm", "dir"), ("/etc/fstab", "file")])
    assert found == ["/var/log/vfarm"]
    assert not (dest / "etc/fstab").exists() and not (dest / "var/log/vfarm/handler-old.log").exists()
    assert (dest / "var/log/vfarm/summary.json").read_text() == '{"result": "ok"}\n'
    assert (dest / "mine.yaml").exists() and not list(dest.glob(".collect-*"))
