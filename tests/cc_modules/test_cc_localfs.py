"""cc_localfs on a fake machine: the plan, the commands, safety rules, failures and records."""

from __future__ import annotations

import json
import logging
import os
import shutil
from pathlib import Path
from typing import Any

import pytest

from tests.fakesystem import FakeMachine, FakeRunner
from vfarm import files
from vfarm.cc_modules import cc_localfs, handling
from vfarm.cc_modules import record as record_mod
from vfarm.cc_modules import runner as runner_mod
from vfarm.config import localfs as localfs_spec
from vfarm.config.localfs import parse

TORINO = {"parts": {"cvmfs": 17, "cvmfs-mount": "/var/lib/cvmfs", "home": 58, "tmp": 8, "swap": 100}}
IMAGE_FSTAB = "LABEL=root / ext4 defaults 0 1\ntmpfs /tmp tmpfs defaults 0 0\n"
AT_BOOT = "defaults,nofail,x-systemd.before=local-fs.target"  # what fstab gets for the default options


@pytest.fixture
def root(tmp_path: Path) -> Path:
    root = tmp_path / "root"
    (root / "etc").mkdir(parents=True)
    (root / "etc/fstab").write_text(IMAGE_FSTAB)
    (root / "home/debian").mkdir(parents=True)
    (root / "home/debian/.profile").write_text("# image content\n")
    (root / "tmp").mkdir()
    return root


def run(root: Path, runner: FakeRunner, section: Any = TORINO) -> dict[str, Any]:
    return handling.execute("localfs", lambda: section, cc_localfs.work, directory=root.parent / "log", root=root, runner=runner)


def fresh_machine() -> FakeMachine:
    return FakeMachine().add_vg("vg_local", 5000)


def test_first_boot_creates_exact_extents_and_fstab(root: Path) -> None:
    machine = fresh_machine()
    runner = FakeRunner(machine=machine)
    status = run(root, runner)
    assert status["status"] == "ok", status["reason"]
    assert status["changed"] is True
    lvcreates = {c[c.index("-n") + 1]: int(c[c.index("-l") + 1]) for c in runner.calls if c[0] == "lvcreate"}
    # 17/58/8 % of 5000 extents, swap = all that is left (5000 - 850 - 2900 - 400)
    assert lvcreates == {"cvmfs": 850, "home": 2900, "tmp": 400, "swap": 850}
    assert all("--addtag" in c and "vfarm" in c for c in runner.calls if c[0] == "lvcreate")
    fstab = (root / "etc/fstab").read_text()
    assert "/dev/vg_local/home\t/home\text4\tdefaults,nofail,x-systemd.before=local-fs.target\t0\t2" in fstab
    assert "/dev/vg_local/swap\tnone\tswap\tsw,nofail\t0\t0" in fstab
    assert "# vfarm localfs: replaced by /dev/vg_local/tmp: tmpfs /tmp tmpfs defaults 0 0" in fstab
    assert fstab.count("/dev/vg_local/tmp\t") == 1
    assert ["chmod", "1777", str(root / "tmp")] in runner.calls
    assert ["swapon", "/dev/vg_local/swap"] in runner.calls
    record = json.loads((root.parent / "log/localfs.status.json").read_text())
    assert record["status"] == "ok" and record["handler"] == "localfs" and record["finished"] >= record["started"]
    assert any(step["action"] == "lvcreate" and step["ok"] for step in record["steps"])
    log = (root.parent / "log/localfs.log").read_text()
    assert "running: lvcreate" in log and "exit 0 after" in log


def test_second_run_changes_nothing(root: Path) -> None:
    machine = fresh_machine()
    run(root, FakeRunner(machine=machine))
    fstab = (root / "etc/fstab").read_text()
    again = FakeRunner(machine=machine)
    status = run(root, again)
    assert status["status"] == "ok" and status["changed"] is False
    assert again.changing_calls() == []
    assert (root / "etc/fstab").read_text() == fstab


def test_a_mount_point_inside_another_is_mounted_after_it_now_and_at_boot(root: Path) -> None:
    """/data/scratch listed before /data: mounted after it (else /data hides it), and after it in
    fstab (mounted in the file's order at boot); a second run changes nothing."""
    nested = {"parts": {"scratch": 10, "scratch-mount": "/data/scratch", "data": 50, "data-mount": "/data", "home": 20}}
    machine = fresh_machine()
    runner = FakeRunner(machine=machine)
    assert run(root, runner, nested)["status"] == "ok"
    mounted = [c[-1] for c in runner.calls if c[0] == "mount" and "/run/vfarm/" not in c[-1]]  # not /home's carry mount
    assert mounted == [str(root / "data"), str(root / "home"), str(root / "data/scratch")]  # the others in the config's order
    fstab = (root / "etc/fstab").read_text()
    assert fstab.index("\t/data\t") < fstab.index("\t/home\t") < fstab.index("\t/data/scratch\t")
    again = FakeRunner(machine=machine)
    status = run(root, again, nested)
    assert status["status"] == "ok" and status["changed"] is False and again.changing_calls() == []


def booted_machine(root: Path) -> FakeMachine:
    """TORINO's volumes made by an earlier run, mounted and swapped on."""
    machine = fresh_machine()
    for name, extents, fs in (("cvmfs", 850, "ext4"), ("home", 2900, "ext4"), ("tmp", 400, "ext4"), ("swap", 850, "swap")):
        machine.add_lv("vg_local", name, extents, fs=fs)
    for name, target in (("cvmfs", "var/lib/cvmfs"), ("home", "home"), ("tmp", "tmp")):
        machine.mounts[str(root / target)] = f"/dev/mapper/vg_local-{name}"
    machine.swaps.append("/dev/mapper/vg_local-swap")
    return machine


def torino_fstab(options: str, swap_options: str) -> str:
    lines = [f"/dev/vg_local/{n}\t/{t}\text4\t{options}\t0\t2" for n, t in (("cvmfs", "var/lib/cvmfs"), ("home", "home"), ("tmp", "tmp"))]
    return "LABEL=root / ext4 defaults 0 1\n# vfarm localfs\n" + "\n".join(lines) + f"\n/dev/vg_local/swap\tnone\tswap\t{swap_options}\t0\t0\n"


def test_second_boot_with_our_lvs_present_and_mounted(root: Path) -> None:
    machine = booted_machine(root)
    (root / "etc/fstab").write_text(torino_fstab(AT_BOOT, "sw,nofail"))
    runner = FakeRunner(machine=machine)
    status = run(root, runner)
    assert status["status"] == "ok", status["reason"]
    assert runner.changing_calls() == []
    assert status["changed"] is False


def fstab_options(text: str) -> dict[str, str]:
    """Device -> options of every line of TEXT that is not a comment."""
    rows = [line.split() for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")]
    return {row[0]: row[3] for row in rows}


def test_every_line_vfarm_writes_has_nofail(root: Path) -> None:
    """EC2 blanks the instance store on a stop: at the next boot our volumes are missing, and a
    line without nofail stops the boot in emergency mode. A filesystem is still mounted before
    local-fs.target (nofail alone drops that order); options that have either keep it once."""
    section = {"parts": {**TORINO["parts"], "scratch": {"size": 5, "mount": "/scratch", "options": "noatime,nofail"}}}
    assert run(root, FakeRunner(machine=fresh_machine()), section)["status"] == "ok"
    options = fstab_options((root / "etc/fstab").read_text())
    ours = {device: value for device, value in options.items() if device.startswith("/dev/vg_local/")}
    assert ours == {"/dev/vg_local/cvmfs": AT_BOOT, "/dev/vg_local/home": AT_BOOT, "/dev/vg_local/tmp": AT_BOOT,
                    "/dev/vg_local/scratch": "noatime,nofail,x-systemd.before=local-fs.target", "/dev/vg_local/swap": "sw,nofail"}
    assert options["LABEL=root"] == "defaults"  # the image's lines are the image's


def test_lines_an_older_vfarm_wrote_get_nofail_in_place_once(root: Path) -> None:
    """An instance set up by a vfarm that wrote no nofail: its lines are ours (our volumes),
    rewritten where they stand, not added again; nothing is mounted again; the next run changes
    nothing."""
    machine = booted_machine(root)
    (root / "etc/fstab").write_text(torino_fstab("defaults", "sw"))
    runner = FakeRunner(machine=machine)
    status = run(root, runner)
    assert status["status"] == "ok", status["reason"]
    assert runner.changing_calls() == []
    assert (root / "etc/fstab").read_text() == torino_fstab(AT_BOOT, "sw,nofail")
    again = FakeRunner(machine=machine)
    status = run(root, again)
    assert status["status"] == "ok" and status["changed"] is False and again.changing_calls() == []


def test_existing_content_is_carried_before_mounting_over(root: Path) -> None:
    runner = FakeRunner(machine=fresh_machine())
    run(root, runner)
    calls = [c for c in runner.calls if "home" in " ".join(c)]
    carry = str(root / "run/vfarm/localfs/home")
    order = [["mount", "-t", "ext4", "/dev/vg_local/home", carry], ["cp", "-a", "-x", f"{root}/home/.", f"{carry}/"], ["umount", carry],
             ["mount", "-t", "ext4", "-o", "defaults", "/dev/vg_local/home", str(root / "home")]]
    positions = [calls.index(c) for c in order]
    assert positions == sorted(positions)
    # /var/lib/cvmfs had no content (nor existed): no carry, a mkdir
    assert not any(c[:2] == ["cp", "-a"] and "cvmfs" in c[3] for c in runner.calls)
    assert ["mkdir", "-p", str(root / "var/lib/cvmfs")] in runner.calls


def test_foreign_lv_with_our_name_is_a_conflict(root: Path) -> None:
    machine = fresh_machine().add_lv("vg_local", "home", 100, tags=())
    runner = FakeRunner(machine=machine)
    status = run(root, runner)
    assert status["status"] == "failed"
    assert "vg_local/home exists but is not vfarm's" in status["reason"]
    assert runner.changing_calls() == []
    assert (root / "etc/fstab").read_text() == IMAGE_FSTAB


def test_disk_with_a_filesystem_is_refused_without_force(root: Path) -> None:
    machine = FakeMachine(devices={"/dev/vdb": 2000}, signatures={"/dev/vdb": "ext4"})
    runner = FakeRunner(machine=machine)
    status = run(root, runner, {**TORINO, "devices": ["/dev/vdb"]})
    assert status["status"] == "failed"
    assert "/dev/vdb holds ext4" in status["reason"] and "force" in status["reason"]
    assert runner.changing_calls() == []


def test_force_wipes_then_creates_the_vg(root: Path) -> None:
    machine = FakeMachine(devices={"/dev/vdb": 2000}, signatures={"/dev/vdb": "ext4"})
    runner = FakeRunner(machine=machine)
    status = run(root, runner, {**TORINO, "devices": ["/dev/vdb"], "force": True})
    assert status["status"] == "ok", status["reason"]
    assert runner.changing_calls()[:3] == [["wipefs", "--all", "/dev/vdb"], ["pvcreate", "--yes", "/dev/vdb"], ["vgcreate", "vg_local", "/dev/vdb"]]


def test_blank_device_gets_a_vg_then_the_volumes(root: Path) -> None:
    machine = FakeMachine(devices={"/dev/vdb": 2000})
    runner = FakeRunner(machine=machine)
    status = run(root, runner, {**TORINO, "devices": ["/dev/vdb"], "vg": "vg_work"})
    assert status["status"] == "ok", status["reason"]
    assert ["vgcreate", "vg_work", "/dev/vdb"] in runner.calls
    assert sorted(k for k in machine.lvs) == ["vg_work/cvmfs", "vg_work/home", "vg_work/swap", "vg_work/tmp"]
    again = FakeRunner(machine=machine)
    assert run(root, again, {**TORINO, "devices": ["/dev/vdb"], "vg": "vg_work"})["status"] == "ok"
    assert again.changing_calls() == []


def test_devices_named_are_used_even_when_another_volume_group_has_free_space(root: Path) -> None:
    """An image's root volume group with spare extents does not take the parts: the devices named
    get the volume group (vg_local by default), on this run and the next."""
    machine = FakeMachine(devices={"/dev/vdb": 2000}).add_vg("vg_root", 256)
    runner = FakeRunner(machine=machine)
    section = {"devices": ["/dev/vdb"], "parts": {"tmp": 10}}
    status = run(root, runner, section)
    assert status["status"] == "ok", status["reason"]
    assert ["vgcreate", "vg_local", "/dev/vdb"] in runner.calls and list(machine.lvs) == ["vg_local/tmp"]
    again = FakeRunner(machine=machine)
    assert run(root, again, section)["status"] == "ok" and again.changing_calls() == []


def test_our_lv_without_filesystem_gets_one_existing_filesystem_never(root: Path) -> None:
    machine = fresh_machine().add_lv("vg_local", "home", 2900, fs="ext4").add_lv("vg_local", "tmp", 400)
    runner = FakeRunner(machine=machine)
    assert run(root, runner)["status"] == "ok"
    mkfs = [c[-1] for c in runner.calls if c[0].startswith("mkfs")]
    assert "/dev/vg_local/tmp" in mkfs and "/dev/vg_local/home" not in mkfs
    assert not any(c[0] == "lvcreate" and "home" in c for c in runner.calls)


def test_wrong_filesystem_on_our_lv_fails(root: Path) -> None:
    machine = fresh_machine().add_lv("vg_local", "home", 2900, fs="xfs")
    status = run(root, FakeRunner(machine=machine))
    assert status["status"] == "failed" and "holds xfs" in status["reason"]


def _changing_commands() -> list[list[str]]:
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "root"
        (root / "etc").mkdir(parents=True)
        (root / "home").mkdir()
        (root / "home/x").write_text("x")
        runner = FakeRunner(machine=fresh_machine())
        run(root, runner)
        return [c[:3] if c[0] != "cp" else c[:2] for c in runner.changing_calls()]


@pytest.mark.parametrize("failing", _changing_commands(), ids=lambda c: " ".join(c).replace("/", "_"))
def test_a_failing_command_stops_the_handler(tmp_path: Path, failing: list[str]) -> None:
    root = tmp_path / "root"
    (root / "etc").mkdir(parents=True)
    (root / "etc/fstab").write_text(IMAGE_FSTAB)
    (root / "home").mkdir()
    (root / "home/x").write_text("x")
    # the rooted paths of this run differ from the ones the list was made with
    prefix = tuple(a.replace(a.split("/root")[0], str(tmp_path)) if "/root" in a else a for a in failing)
    runner = FakeRunner(machine=fresh_machine(), fail=prefix)
    status = run(root, runner)
    assert status["status"] == "failed"
    assert "failed (exit 5)" in status["reason"] and "simulated failure" in status["reason"]
    failed_at = max(i for i, c in enumerate(runner.calls) if c[: len(prefix)] == list(prefix))
    after = runner.calls[failed_at + 1:]
    # nothing ran after it, but the unmount of the copy mount a failed copy leaves
    assert after == ([["umount", str(root / "run/vfarm/localfs/home")]] if prefix[0] in ("cp", "sync") else [])
    assert (root / "etc/fstab").read_text() == IMAGE_FSTAB  # fstab is written last, whole or not at all
    failed = [s for s in status["steps"] if not s["ok"]]
    assert len(failed) == 1 and failed[0]["returncode"] == 5


def test_dry_run_changes_nothing_but_shows_the_plan(root: Path) -> None:
    runner = FakeRunner(machine=fresh_machine(), dry_run=True)
    status = run(root, runner)
    assert status["status"] == "ok" and status["changed"] is False
    assert runner.changing_calls() == []
    assert (root / "etc/fstab").read_text() == IMAGE_FSTAB
    assert "dry-run, not running: lvcreate" in (root.parent / "log/localfs.log").read_text()


def test_ambiguous_volume_group(root: Path) -> None:
    machine = fresh_machine().add_vg("vg_other", 100)
    status = run(root, FakeRunner(machine=machine))
    assert status["status"] == "failed" and "several volume groups" in status["reason"]


def test_fstab_has_no_duplicates() -> None:
    entry = ("/dev/vg/home", "/home", "ext4", "defaults", 0, 2)
    current = "/dev/vg/home /home ext4 defaults 0 2\n/dev/mapper/vg-home /home ext4 defaults 0 2\n"
    text = cc_localfs.fstab_text(current, [entry], {"/dev/vg/home": ["/dev/mapper/vg-home"]})
    assert text == "/dev/vg/home /home ext4 defaults 0 2\n"
    assert cc_localfs.fstab_text(text, [entry], {}) == text
    # A foreign line for /home/ (a trailing slash) is the same mount point: commented out, not kept beside ours.
    foreign = cc_localfs.fstab_text("/dev/sdb1 /home/ ext4 defaults 0 2\n", [entry], {})
    assert foreign.splitlines()[0] == "# vfarm localfs: replaced by /dev/vg/home: /dev/sdb1 /home/ ext4 defaults 0 2", foreign
    assert cc_localfs.fstab_text(foreign, [entry], {}) == foreign
    # Targets written as two of ours (/srv/x/ and /srv/x) each stay their own line on a second run.
    both = [("/dev/vg/a", "/srv/x/", "ext4", "defaults", 0, 2), ("/dev/vg/b", "/srv/x", "ext4", "defaults", 0, 2)]
    text = cc_localfs.fstab_text("", both, {})
    assert cc_localfs.fstab_text(text, both, {}) == text


def test_plan_is_plain_data() -> None:
    facts = cc_localfs.Facts(vgs={"vg_local": {"extent_size": 4 << 20, "extents": 1000, "free": 1000}})
    plan = cc_localfs.plan(parse(TORINO), facts)
    shown = plan.listing()
    assert json.loads(json.dumps(shown)) == shown
    assert [p["extents"] for p in plan.parts] == [170, 580, 80, 170]
    assert [s["extents"] for s in shown if s["action"] == "lvcreate"] == [170, 580, 80, 170]


def test_fstab_write_is_atomic(fs: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    fs.create_file("/etc/fstab", contents=IMAGE_FSTAB)

    def broken_replace(src: str, dst: str) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", broken_replace)
    with pytest.raises(OSError):
        files.atomic_write("/etc/fstab", "half")
    assert Path("/etc/fstab").read_text() == IMAGE_FSTAB
    assert os.listdir("/etc") == ["fstab"]  # no temp file left behind


class _DevicesRunner(runner_mod.Runner):
    """The real runner, with LVM kept to DEVICES (this host's other block devices stay unseen)."""

    def __init__(self, devices: list[str]) -> None:
        super().__init__(logging.getLogger("vfarm.test"))
        self.devices = devices

    def run(self, argv: list[str], **kwargs: Any) -> runner_mod.Result:
        if argv[:2] == ["lvm", "fullreport"]:
            argv = [*argv[:2], "--devices", ",".join(self.devices), *argv[2:]]
        return super().run(argv, **kwargs)


@pytest.mark.integration
def test_discover_reads_the_real_lvm_fullreport(tmp_path: Path) -> None:
    """One real `lvm fullreport` (LVM 2.03 of this host, two loop devices: one PV in a volume group,
    one PV in none) gives discover the VG's extents and both PVs. (LVs need device-mapper, which
    this kernel lacks: the VM tests read those.)"""
    import subprocess

    disks = [tmp_path / "a.raw", tmp_path / "b.raw"]
    loops: list[str] = []
    env = {**os.environ, **cc_localfs.LVM_ENV}
    try:
        for disk in disks:
            subprocess.run(["truncate", "-s", "64M", disk], check=True)
            loops.append(subprocess.run(["losetup", "--find", "--show", disk], check=True, capture_output=True, text=True).stdout.strip())
        only = ["--devices", ",".join(loops)]
        subprocess.run(["pvcreate", "-q", *only, *loops], check=True, env=env, capture_output=True)
        subprocess.run(["vgcreate", "-q", *only, "vg_fullreport", loops[0]], check=True, env=env, capture_output=True)
        with record_mod.Record("localfs", directory=tmp_path / "log") as record:
            ctx = handling.Context(_DevicesRunner(loops), record, tmp_path)
            facts = cc_localfs.discover(parse({"vg": "vg_fullreport", "parts": {"scratch": {"size": "50%VG", "mount": "/scratch"}}}), ctx)
        assert facts.vgs == {"vg_fullreport": {"extent_size": 4 << 20, "extents": 15, "free": 15}}
        assert facts.pvs == {loops[0]: "vg_fullreport", loops[1]: ""}
        assert facts.lvs == {}
        assert "/" in facts.mounts  # read from the real findmnt's IDs and PARENTs
    finally:
        if loops:
            subprocess.run(["vgremove", "-qf", "--devices", ",".join(loops), "vg_fullreport"], env=env, capture_output=True)
        for loop in loops:
            subprocess.run(["losetup", "-d", loop], capture_output=True)


def test_a_copy_that_failed_is_redone_by_the_next_run_and_never_twice(root: Path) -> None:
    """mkfs worked, `cp -a` failed: the copy mount is unmounted; the next run copies (it would
    otherwise mount the new volume over the image's /home and hide it for good), then mounts;
    with /home unmounted later, the marker on the volume says it has the content: no copy again."""
    machine = fresh_machine()
    carry, home = str(root / "run/vfarm/localfs/home"), str(root / "home")
    first = run(root, FakeRunner(machine=machine, fail=("cp", "-a")))
    assert first["status"] == "failed" and "cp -a -x" in first["reason"]
    assert carry not in machine.mounts and home not in machine.mounts
    second = FakeRunner(machine=machine)
    status = run(root, second)
    assert status["status"] == "ok", status["reason"]
    changes = second.changing_calls()
    assert changes.index(["cp", "-a", "-x", f"{home}/.", f"{carry}/"]) < changes.index(["umount", carry]) < changes.index(
        ["mount", "-t", "ext4", "-o", "defaults", "/dev/vg_local/home", home])
    assert (root / "run/vfarm/localfs/home" / cc_localfs.CARRY_MARK).exists()  # the fake's volume: the copy mount's folder
    assert machine.mounts[home] == "/dev/vg_local/home" and carry not in machine.mounts
    again = FakeRunner(machine=machine)
    assert run(root, again)["status"] == "ok" and again.changing_calls() == []
    del machine.mounts[home]  # unmounted by hand, or a reboot before fstab had it
    later = FakeRunner(machine=machine)
    assert run(root, later)["status"] == "ok"
    assert not any(c[0] == "cp" for c in later.calls) and machine.mounts[home] == "/dev/vg_local/home"


def test_a_copy_mount_left_mounted_is_used_and_unmounted(root: Path) -> None:
    """A run killed while copying left the volume mounted at the copy place: the next run copies
    through it (no second mount there) and unmounts it."""
    machine = fresh_machine().add_lv("vg_local", "home", 2900, fs="ext4")
    carry = str(root / "run/vfarm/localfs/home")
    machine.mounts[carry] = "/dev/mapper/vg_local-home"
    (root / "run/vfarm/localfs/home/lost+found").mkdir(parents=True)  # what mkfs.ext4 leaves: no one's data
    runner = FakeRunner(machine=machine)
    assert run(root, runner)["status"] == "ok"
    home_calls = [c for c in runner.changing_calls() if any(carry in a for a in c)]
    assert home_calls == [["cp", "-a", "-x", f"{root}/home/.", f"{carry}/"], ["sync", "--file-system", carry], ["umount", carry]]
    again = FakeRunner(machine=machine)
    assert run(root, again)["status"] == "ok" and again.changing_calls() == []


def real_copy(fail_after: bool = False) -> dict[tuple[str, ...], Any]:
    """`cp -a -x SOURCE/. CARRY/` as cp does it, onto the fake's volume (its copy mount's folder):
    the image's files there, same-named ones replaced; FAIL_AFTER: then exit 5, as a copy that
    died part-way (the disk full at its last file)."""

    def cp(argv: list[str]) -> tuple[int, str, str]:
        shutil.copytree(argv[-2], argv[-1], symlinks=True, dirs_exist_ok=True)
        return (5, "", "cp: error writing: No space left on device") if fail_after else (0, "", "")

    return {("cp",): cp}


@pytest.mark.parametrize("copied", [False, True], ids=["nothing-copied-in-before", "copied-in-from-scratch"])
def test_a_volume_with_data_moved_to_a_mount_point_with_content_is_refused(root: Path, copied: bool) -> None:
    """scratch held the user's files at /scratch (the image's /scratch copied in first, or
    nothing: it was empty); the config moves it to /data, where the image has files of its own.
    Copying them in would overwrite the user's same-named files, mounting it without would hide
    them: refused, naming /data and what to do, with nothing copied and nothing mounted there;
    the next run refuses the same way."""
    if copied:
        (root / "scratch").mkdir()
        (root / "scratch/README").write_text("the image's scratch\n")
    machine = fresh_machine()
    before = {"parts": {"scratch": {"size": 10, "mount": "/scratch"}, "home": 20}}
    assert run(root, FakeRunner(machine=machine, answers=real_copy()), before)["status"] == "ok"
    volume = root / "run/vfarm/localfs/scratch"  # the fake's volume: its copy mount's folder
    assert (volume / cc_localfs.CARRY_MARK).exists() is copied
    volume.mkdir(parents=True, exist_ok=True)
    (volume / "README").write_text("the user's results\n")
    (root / "data").mkdir()
    (root / "data/README").write_text("the image's data\n")
    after = {"parts": {"scratch": {"size": 10, "mount": "/data"}, "home": 20}}
    for _ in range(2):
        runner = FakeRunner(machine=machine, answers=real_copy())
        status = run(root, runner, after)
        assert status["status"] == "failed" and "/data is not empty" in status["reason"], status["reason"]
        assert "choose another mount point for scratch or move /data's files away" in status["reason"]
        assert (volume / "README").read_text() == "the user's results\n"
        assert not any(c[0] == "cp" for c in runner.calls)
        assert str(root / "data") not in machine.mounts and str(volume) not in machine.mounts
        assert machine.mounts[str(root / "scratch")] == "/dev/vg_local/scratch"  # where it was, untouched


def test_a_copy_that_failed_part_way_is_redone(root: Path) -> None:
    """cp died with part of /home on the volume (no mark of a finished copy): the next run sees
    by the mark written before the copy that those files are the image's /home, copies again
    (over them), then mounts; the run after changes nothing."""
    machine = fresh_machine()
    volume, home = root / "run/vfarm/localfs/home", str(root / "home")
    first = run(root, FakeRunner(machine=machine, answers=real_copy(fail_after=True)))
    assert first["status"] == "failed" and "cp -a -x" in first["reason"], first["reason"]
    assert (volume / "debian/.profile").exists() and home not in machine.mounts
    second = FakeRunner(machine=machine, answers=real_copy())
    status = run(root, second)
    assert status["status"] == "ok", status["reason"]
    assert ["cp", "-a", "-x", f"{home}/.", f"{volume}/"] in second.calls and machine.mounts[home] == "/dev/vg_local/home"
    again = FakeRunner(machine=machine)
    assert run(root, again)["status"] == "ok" and again.changing_calls() == []


def test_an_existing_lv_of_ours_counts_at_its_real_size() -> None:
    """home exists with 500 extents (the config now gives it 400): swap gets the 500 really free,
    not 600; parts that no longer fit are refused before any step."""
    extent = 4 << 20
    facts = cc_localfs.Facts(vgs={"vg_local": {"extent_size": extent, "extents": 1000, "free": 500}},
                             lvs={"vg_local/home": {"size": 500 * extent, "tags": ["vfarm"]}}, signatures={"/dev/vg_local/home": "ext4"})
    todo = cc_localfs.plan(parse({"parts": {"home": 40, "swap": 100}}), facts)
    assert [s.listing()["extents"] for s in todo.steps if s.action == "lvcreate"] == [500]
    facts.lvs["vg_local/home"]["size"], facts.vgs["vg_local"]["free"] = 700 * extent, 300
    with pytest.raises(cc_localfs.PlanError, match="the parts need 1100 extents .* has 1000"):
        cc_localfs.plan(parse({"parts": {"home": 40, "tmp": 40}}), facts)
    # swap took all that was free then; a part added since has no room, whatever swap's share now
    facts.lvs = {"vg_local/home": {"size": 300 * extent, "tags": ["vfarm"]}, "vg_local/swap": {"size": 700 * extent, "tags": ["vfarm"]}}
    facts.vgs["vg_local"]["free"] = 0
    with pytest.raises(cc_localfs.PlanError, match="the parts to create need 100 extents .* has 0 free"):
        cc_localfs.plan(parse({"parts": {"home": 30, "scratch": {"size": 10, "mount": "/scratch"}, "swap": 100}}), facts)


def test_parts_too_large_for_the_devices_are_refused_before_the_disk_is_wiped(root: Path) -> None:
    """20G on a disk of 2000 extents (7.8 GiB): refused before wipefs, pvcreate and vgcreate,
    from the devices' sizes (blockdev); a config that fits gets the extents the VG will have."""
    machine = FakeMachine(devices={"/dev/vdb": 2000}, signatures={"/dev/vdb": "dos"})
    runner = FakeRunner(machine=machine)
    status = run(root, runner, {"devices": ["/dev/vdb"], "force": True, "parts": {"home": "20G", "swap": 100}})
    assert status["status"] == "failed" and "need 5120 extents" in status["reason"] and "has 2000" in status["reason"]
    assert runner.changing_calls() == [] and machine.signatures["/dev/vdb"] == "dos"
    facts = cc_localfs.Facts(signatures={"/dev/vdb": "dos"}, sizes={"/dev/vdb": 2000 * (4 << 20) + (1 << 20)})
    todo = cc_localfs.plan(parse({"devices": ["/dev/vdb"], "force": True, "parts": {"home": "7G", "swap": 100}}), facts)
    assert todo.create_vg and [p["extents"] for p in todo.parts] == [1792, 208]


def test_devices_are_compared_with_the_pvs_by_their_real_names(root: Path) -> None:
    """/dev/disk/by-id/virtio-data is /dev/vdb, the name LVM reports: the second run finds the
    volume group made on it; a device that is another volume group's PV under its kernel name
    is never wiped, even with force."""
    (root / "dev/disk/by-id").mkdir(parents=True)
    (root / "dev/vdb").write_text("")
    (root / "dev/disk/by-id/virtio-data").symlink_to("../../vdb")
    link = "/dev/disk/by-id/virtio-data"
    section = {"devices": [link], "parts": {"home": 50, "swap": 100}}
    machine = FakeMachine(devices={"/dev/vdb": 2000}, links={link: "/dev/vdb"})
    assert run(root, FakeRunner(machine=machine), section)["status"] == "ok"
    assert machine.pvs == {"/dev/vdb": "vg_local"}
    again = FakeRunner(machine=machine)
    status = run(root, again, section)
    assert status["status"] == "ok", status["reason"]
    assert again.changing_calls() == []
    taken = FakeMachine(pvs={"/dev/vdb": "vg_root"}, signatures={"/dev/vdb": "LVM2_member"}, links={link: "/dev/vdb"}).add_vg("vg_root", 1000)
    runner = FakeRunner(machine=taken)
    status = run(root, runner, {"vg": "vg_work", "force": True, "devices": [link], "parts": {"home": 50}})
    assert status["status"] == "failed" and f"device {link} (/dev/vdb) already belongs to volume group vg_root" in status["reason"]
    assert runner.changing_calls() == []


def test_a_mount_inside_a_new_mount_point_is_refused(root: Path) -> None:
    """An NFS share mounted at /home/sw would be hidden by the new /home (and copied onto it
    without -x): refused, naming it, before any step."""
    machine = fresh_machine()
    (root / "home/sw").mkdir()
    machine.mounts[str(root / "home/sw")] = "nfs.example.org:/export/sw"
    runner = FakeRunner(machine=machine)
    status = run(root, runner)
    assert status["status"] == "failed" and f"{root}/home/sw mounted inside /home" in status["reason"]
    assert runner.changing_calls() == []


def test_our_volume_mounted_inside_one_still_to_mount_is_mounted_again_after_it(root: Path) -> None:
    """/data/scratch (ours) is mounted, /data is not (a run that failed between them): /data is
    mounted (its copy stays on its own file system) and /data/scratch again on top of it."""
    nested = {"parts": {"scratch": 10, "scratch-mount": "/data/scratch", "data": 50, "data-mount": "/data"}}
    machine = fresh_machine().add_lv("vg_local", "scratch", 500, fs="ext4").add_lv("vg_local", "data", 2500, fs="ext4")
    (root / "data/scratch").mkdir(parents=True)
    machine.mounts[str(root / "data/scratch")] = "/dev/mapper/vg_local-scratch"
    runner = FakeRunner(machine=machine)
    status = run(root, runner, nested)
    assert status["status"] == "ok", status["reason"]
    mounted = [c[-1] for c in runner.calls if c[0] == "mount" and "/run/vfarm/" not in c[-1]]
    assert mounted == [str(root / "data"), str(root / "data/scratch")]
    assert ["cp", "-a", "-x", f"{root}/data/.", f"{root}/run/vfarm/localfs/data/"] in runner.calls
    again = FakeRunner(machine=machine)
    assert run(root, again, nested)["status"] == "ok" and again.changing_calls() == []


def test_a_moved_mount_point_leaves_one_line_for_its_volume(root: Path) -> None:
    """scratch moved from /scratch to /data in the config: its line now says /data, where the old
    one stood (two lines would mount it at both places at the next boot); a line of the admin's
    for another device on /scratch is not ours and stays; the next run changes nothing."""
    machine = fresh_machine()
    before = {"parts": {"scratch": {"size": 10, "mount": "/scratch"}, "home": 20}}
    assert run(root, FakeRunner(machine=machine), before)["status"] == "ok"
    first = (root / "etc/fstab").read_text()
    admins = "/dev/sdc1 /scratch xfs defaults 0 2\n"
    (root / "etc/fstab").write_text(first + admins)
    after = {"parts": {"scratch": {"size": 10, "mount": "/data"}, "home": 20}}
    runner = FakeRunner(machine=machine)
    assert run(root, runner, after)["status"] == "ok"
    assert ["mount", "-t", "ext4", "-o", "defaults", "/dev/vg_local/scratch", str(root / "data")] in runner.calls
    moved = first.replace("/dev/vg_local/scratch\t/scratch\t", "/dev/vg_local/scratch\t/data\t")
    assert moved != first and (root / "etc/fstab").read_text() == moved + admins
    again = FakeRunner(machine=machine)
    status = run(root, again, after)
    assert status["status"] == "ok" and status["changed"] is False and again.changing_calls() == []


def test_fstab_has_one_line_per_volume_of_ours_whatever_it_mounts_it_on() -> None:
    """Our lines are known by their device (under any alias): two volumes that swapped mount
    points keep one line each, rewritten in place; a further line of one of them is dropped;
    the lines of other devices stay where they are."""
    a, b = ("/dev/vg/a", "/x", "ext4", "defaults,nofail", 0, 2), ("/dev/vg/b", "/y", "ext4", "defaults,nofail", 0, 2)
    current = ("/dev/vg/a /y ext4 defaults 0 2\n/dev/sdz1 /z ext4 defaults 0 2\n/dev/mapper/vg-b /x ext4 defaults 0 2\n"
               "/dev/vg/a /x ext4 defaults,nofail 0 2\n")
    text = cc_localfs.fstab_text(current, [a, b], {"/dev/vg/b": ["/dev/mapper/vg-b"]})
    assert text == "/dev/vg/a\t/x\text4\tdefaults,nofail\t0\t2\n/dev/sdz1 /z ext4 defaults 0 2\n/dev/vg/b\t/y\text4\tdefaults,nofail\t0\t2\n"
    assert cc_localfs.fstab_text(text, [a, b], {"/dev/vg/b": ["/dev/mapper/vg-b"]}) == text


@pytest.mark.parametrize("written, read", [("/my\\040dir", "/my dir"), ("ext\\064", "ext4"), ("/a\\134b\\x20", "/a\\b\\x20"),
                                           ("/m\\303\\251", "/m\u00e9"), ("\\043x", "#x"), ("/a\\04", "/a\\04")])
def test_fstab_fields_are_unescaped_as_findmnt_does(written: str, read: str) -> None:
    """What `findmnt --fstab --tab-file` (util-linux 2.38) prints for these fields: any three
    octal digits after a backslash are one byte, nothing else is an escape."""
    assert files.unescape_octal(written) == read


def test_a_foreign_mount_point_is_compared_as_libmount_reads_it() -> None:
    """fstab(5) escapes a space as \\040, but a tool may write any character as `\\ooo`: the
    admin's `/\\150ome` and `/caf\\303\\251` are our /home and /café (commented out, ours added
    once); `\\x20` is no escape, so `/my\\x20dir` is another mount point (left alone). A line of
    our own device written with other escapes is ours: kept, not added again."""
    home, cafe = ("/dev/vg/home", "/home", "ext4", "defaults,nofail", 0, 2), ("/dev/vg/cafe", "/caf\u00e9", "ext4", "defaults,nofail", 0, 2)
    mine = ("/dev/vg/my", "/my dir", "ext4", "defaults,nofail", 0, 2)
    current = "/dev/sdb1 /\\150ome ext4 defaults 0 2\n/dev/sdb2 /caf\\303\\251 xfs defaults 0 2\n/dev/sdb3 /my\\x20dir ext4 defaults 0 2\n"
    text = cc_localfs.fstab_text(current, [home, cafe, mine], {})
    assert text.splitlines() == [
        "# vfarm localfs: replaced by /dev/vg/home: /dev/sdb1 /\\150ome ext4 defaults 0 2",
        "# vfarm localfs: replaced by /dev/vg/cafe: /dev/sdb2 /caf\\303\\251 xfs defaults 0 2",
        "/dev/sdb3 /my\\x20dir ext4 defaults 0 2",
        "# vfarm localfs",
        "/dev/vg/home\t/home\text4\tdefaults,nofail\t0\t2",
        "/dev/vg/cafe\t/caf\u00e9\text4\tdefaults,nofail\t0\t2",
        "/dev/vg/my\t/my\\040dir\text4\tdefaults,nofail\t0\t2",
    ]
    assert cc_localfs.fstab_text(text, [home, cafe, mine], {}) == text
    own = "/dev/vg/\\150ome /\\150ome ext\\064 defaults,nofail 0 2\n"
    assert cc_localfs.fstab_text(own, [home], {}) == own


def kernel_mounts(machine: FakeMachine) -> dict[tuple[str, ...], Any]:
    """mount as the kernel does it: a target that is a symlink is mounted where the link leads
    (and findmnt shows that path)."""

    def mount(argv: list[str]) -> tuple[int, str, str]:
        machine.mounts[os.path.realpath(argv[-1])] = argv[-2]
        return 0, "", ""

    return {("mount",): mount}


def test_a_mount_point_that_is_a_symlink_is_mounted_where_it_leads(root: Path) -> None:
    """/home -> var/home on the image (as on Fedora Atomic images): the plan uses /var/home, where
    mount puts the volume and findmnt shows it; the content is carried from there, fstab's line
    names it, and the next run finds the volume mounted: nothing again, no mount on top."""
    (root / "var").mkdir()
    (root / "home").rename(root / "var/home")
    (root / "home").symlink_to("var/home")
    machine = fresh_machine()
    status = run(root, FakeRunner(machine=machine, answers=kernel_mounts(machine)))
    assert status["status"] == "ok", status["reason"]
    assert machine.mounts[str(root / "var/home")] == "/dev/vg_local/home"
    again = FakeRunner(machine=machine, answers=kernel_mounts(machine))
    status = run(root, again)
    assert status["status"] == "ok" and status["changed"] is False and again.changing_calls() == []
    assert "/dev/vg_local/home\t/var/home\text4\t" + AT_BOOT + "\t0\t2" in (root / "etc/fstab").read_text()


def test_a_mount_point_that_is_a_symlink_to_a_place_validate_refuses_is_refused(root: Path) -> None:
    """validate sees /scratch and /data, and finds nothing wrong; on this image they lead into
    /usr, to /, and to /home, which the home part takes: each refused before any step, as
    validate refuses those places written in the config."""
    (root / "usr/local/scratch").mkdir(parents=True)
    (root / "scratch").symlink_to("usr/local/scratch")
    (root / "data").symlink_to(".")
    (root / "srv").symlink_to("home")
    for mount, reason in (("/scratch", "a symlink to /usr/local/scratch (system folder /usr)"), ("/data", "a symlink to / (system folder /)"),
                          ("/srv", "a symlink to /home (another part's mount point)")):
        section = {"parts": {"home": 20, "extra": {"size": 10, "mount": mount}}}
        assert localfs_spec.check(section) == []
        runner = FakeRunner(machine=fresh_machine())
        status = run(root, runner, section)
        assert status["status"] == "failed" and f"mount point {mount} is {reason}" in status["reason"], status["reason"]
        assert runner.changing_calls() == [] and (root / "etc/fstab").read_text() == IMAGE_FSTAB


FSTAB_GENERATOR = Path("/lib/systemd/system-generators/systemd-fstab-generator")


@pytest.mark.integration
@pytest.mark.skipif(not FSTAB_GENERATOR.exists(), reason="no systemd-fstab-generator on this host")
def test_systemd_wants_our_mounts_before_local_fs_target(root: Path, tmp_path: Path) -> None:
    """This host's systemd-fstab-generator on the fstab a first boot writes: our mounts are wanted,
    not required, by local-fs.target (a missing volume is no emergency mode) and still ordered
    before it, as they were without nofail."""
    import subprocess

    assert run(root, FakeRunner(machine=fresh_machine()))["status"] == "ok"
    units = tmp_path / "units"
    units.mkdir()
    subprocess.run([str(FSTAB_GENERATOR), units, units, units], check=True, capture_output=True, timeout=60,
                   env={"PATH": os.environ["PATH"], "SYSTEMD_FSTAB": str(root / "etc/fstab"), "SYSTEMD_PROC_CMDLINE": ""})
    wanted = sorted(p.name for p in (units / "local-fs.target.wants").iterdir() if p.name.endswith(".mount"))
    assert wanted == ["home.mount", "tmp.mount", "var-lib-cvmfs.mount"]
    assert not (units / "local-fs.target.requires/home.mount").exists()
    assert all("Before=local-fs.target" in (units / name).read_text().splitlines() for name in wanted)


def test_a_foreign_line_at_a_symlink_to_our_mount_point_is_commented_out(root: Path) -> None:
    """/home -> var/home on the image, and the admin's line names /home: mount would put it at
    /var/home, where our volume is, so it is commented out as a line written /var/home is; a
    foreign line at a symlink into a system folder (/var/lock -> /run/lock) is no refusal of the
    config's mount points, and stays; the next run changes nothing."""
    (root / "var").mkdir()
    (root / "home").rename(root / "var/home")
    (root / "home").symlink_to("var/home")
    (root / "run/lock").mkdir(parents=True)
    (root / "var/lock").symlink_to("../run/lock")
    (root / "etc/fstab").write_text(IMAGE_FSTAB + "/dev/sdb1 /home ext4 defaults 0 2\ntmpfs /var/lock tmpfs defaults 0 0\n")
    machine = fresh_machine()
    status = run(root, FakeRunner(machine=machine, answers=kernel_mounts(machine)), {"parts": {"home": 50}})
    assert status["status"] == "ok", status["reason"]
    assert (root / "etc/fstab").read_text().splitlines() == [
        *IMAGE_FSTAB.splitlines(),
        "# vfarm localfs: replaced by /dev/vg_local/home: /dev/sdb1 /home ext4 defaults 0 2",
        "tmpfs /var/lock tmpfs defaults 0 0",
        "# vfarm localfs",
        f"/dev/vg_local/home\t/var/home\text4\t{AT_BOOT}\t0\t2",
    ]
    again = FakeRunner(machine=machine, answers=kernel_mounts(machine))
    status = run(root, again, {"parts": {"home": 50}})
    assert status["status"] == "ok" and status["changed"] is False and again.changing_calls() == []


def test_a_line_we_commented_out_is_put_back_when_no_line_mounts_there_any_more(root: Path) -> None:
    """The admin's /data line gave way to scratch; scratch moves to /scratch: the line is put back
    as it was (nothing else mounts /data at boot now); the next run changes nothing. A line of
    one of our volumes, commented out by hand as ours is, stays as it is (that volume has its own
    line)."""
    machine = fresh_machine()
    admins = "/dev/sdb1 /data xfs defaults 0 2"
    (root / "etc/fstab").write_text(f"{IMAGE_FSTAB}{admins}\n")
    assert run(root, FakeRunner(machine=machine), {"parts": {"scratch": {"size": 10, "mount": "/data"}}})["status"] == "ok"
    assert f"# vfarm localfs: replaced by /dev/vg_local/scratch: {admins}" in (root / "etc/fstab").read_text().splitlines()
    moved = {"parts": {"scratch": {"size": 10, "mount": "/scratch"}}}
    assert run(root, FakeRunner(machine=machine), moved)["status"] == "ok"
    assert (root / "etc/fstab").read_text().splitlines() == [
        *IMAGE_FSTAB.splitlines(), admins, "# vfarm localfs", f"/dev/vg_local/scratch\t/scratch\text4\t{AT_BOOT}\t0\t2"]
    again = FakeRunner(machine=machine)
    assert run(root, again, moved)["status"] == "ok" and again.changing_calls() == []
    entry = ("/dev/vg/a", "/x", "ext4", "defaults", 0, 2)
    own = "# vfarm localfs: replaced by /dev/vg/b: /dev/mapper/vg-a /y ext4 defaults 0 2\n/dev/vg/a\t/x\text4\tdefaults\t0\t2\n"
    assert cc_localfs.fstab_text(own, [entry], {"/dev/vg/a": ["/dev/mapper/vg-a"]}) == own


def test_a_part_removed_from_the_config_is_kept_with_its_line_and_recorded(root: Path) -> None:
    """tmp leaves the config: its LV (its data) stays, mounted, and so does its fstab line (it
    still mounts at boot, where its files are; the image's tmpfs line it replaced stays commented
    out); the record lists it as kept, not among the mounts the final check asks for; nothing
    runs. Put back in the config, it is one of the config's volumes again."""
    machine = fresh_machine()
    assert run(root, FakeRunner(machine=machine))["status"] == "ok"
    fstab = (root / "etc/fstab").read_text()
    without_tmp = {"parts": {k: v for k, v in TORINO["parts"].items() if k != "tmp"}}
    runner = FakeRunner(machine=machine)
    status = run(root, runner, without_tmp)
    assert status["status"] == "ok" and status["changed"] is False and runner.changing_calls() == []
    assert (root / "etc/fstab").read_text() == fstab and "vg_local/tmp" in machine.lvs
    assert status["kept"] == ["vg_local/tmp"] and ["/dev/vg_local/tmp", "/tmp"] not in status["mounts"]
    back = FakeRunner(machine=machine)
    status = run(root, back)
    assert status["kept"] == [] and ["/dev/vg_local/tmp", "/tmp"] in status["mounts"] and back.changing_calls() == []


def test_a_moved_volume_is_unmounted_from_its_old_mount_point(root: Path) -> None:
    """scratch moves from /scratch to /data: mounted at /data, then unmounted from /scratch (a
    plain umount); when that umount fails (busy), the run goes on, the record says the volume
    stays mounted there until the next boot, and the next run changes nothing."""
    before, after = {"parts": {"scratch": {"size": 10, "mount": "/scratch"}}}, {"parts": {"scratch": {"size": 10, "mount": "/data"}}}
    for busy in (False, True):
        machine = fresh_machine()
        assert run(root, FakeRunner(machine=machine), before)["status"] == "ok"
        old = str(root / "scratch")
        runner = FakeRunner(machine=machine, fail=("umount", old) if busy else None)
        status = run(root, runner, after)
        assert status["status"] == "ok", status["reason"]
        changes = runner.changing_calls()
        assert changes.index(["mount", "-t", "ext4", "-o", "defaults", "/dev/vg_local/scratch", str(root / "data")]) < changes.index(["umount", old])
        step = next(s for s in status["steps"] if s["action"] == "umount-moved")
        assert step["ok"] and step["argv"] == ["umount", old]
        assert (old in machine.mounts) is busy and ("simulated failure" in step.get("left_mounted", "")) is busy
        assert "\t/data\t" in (root / "etc/fstab").read_text()
        again = FakeRunner(machine=machine)
        assert run(root, again, after)["status"] == "ok" and again.changing_calls() == []
        (root / "etc/fstab").write_text(IMAGE_FSTAB)


def test_a_moved_volume_under_a_foreign_mount_moved_on_top_of_it_is_not_unmounted(root: Path) -> None:
    """scratch moves from /scratch to /data, but a foreign mount B was moved on top of it at
    /scratch (`mount B /y; mount --move /y /scratch`: findmnt 2.38 lists B first, its parent our
    mount): a plain umount there would take B down, so none is run; scratch is mounted at /data."""
    before, after = {"parts": {"scratch": {"size": 10, "mount": "/scratch"}}}, {"parts": {"scratch": {"size": 10, "mount": "/data"}}}
    machine = fresh_machine()
    assert run(root, FakeRunner(machine=machine), before)["status"] == "ok"
    old = str(root / "scratch")
    rows = [{"target": old, "source": "B", "id": 97, "parent": 98}, {"target": old, "source": "/dev/mapper/vg_local-scratch", "id": 98, "parent": 1}]
    runner = FakeRunner(machine=machine, answers={("findmnt",): (0, json.dumps({"filesystems": rows}), "")})
    status = run(root, runner, after)
    assert status["status"] == "ok", status["reason"]
    assert ["umount", old] not in runner.calls and ["mount", "-t", "ext4", "-o", "defaults", "/dev/vg_local/scratch", str(root / "data")] in runner.calls


def test_at_most_one_commented_out_line_is_put_back_per_place(root: Path) -> None:
    """scratch took /data (the admin's line commented out), then left the config (kept, its line
    too); work took /data (scratch's line commented out), then moved to /srv: only the line
    commented out last comes back, scratch's (two at /data: systemd's generator refuses the
    second); the next run changes nothing. A comment edited by hand (a mount point that is not
    absolute) never comes back."""
    admins = "/dev/sdb1 /data xfs defaults 0 2"
    (root / "etc/fstab").write_text(f"{IMAGE_FSTAB}{admins}\n")
    machine = fresh_machine()
    for parts in ({"scratch": {"size": 10, "mount": "/data"}}, {"work": {"size": 10, "mount": "/data"}}, {"work": {"size": 10, "mount": "/srv"}}):
        assert run(root, FakeRunner(machine=machine), {"parts": parts})["status"] == "ok"
    lines = (root / "etc/fstab").read_text().splitlines()
    assert [fields[0] for fields in map(cc_localfs.fstab_fields, lines) if fields and fields[1] == "/data"] == ["/dev/vg_local/scratch"]
    assert f"# vfarm localfs: replaced by /dev/vg_local/scratch: {admins}" in lines
    again = FakeRunner(machine=machine)
    assert run(root, again, {"parts": parts})["status"] == "ok" and again.changing_calls() == []
    edited = "# vfarm localfs: replaced by X: a b c\n"
    assert cc_localfs.fstab_text(edited, [], {}) == edited


def test_a_commented_out_line_of_a_device_now_a_pv_is_never_put_back(root: Path) -> None:
    """The image's /data line names /dev/vdb (or a symlink to it); the config makes the volume
    group there (force) with scratch at /data: the line is commented out. scratch moves to
    /scratch: the line stays commented out (it would mount a PV at every boot)."""
    (root / "dev/disk/by-id").mkdir(parents=True)
    (root / "dev/disk/by-id/virtio-data").symlink_to("../../vdb")
    for name in ("/dev/vdb", "/dev/disk/by-id/virtio-data"):
        line = f"{name} /data ext4 defaults 0 2"
        (root / "etc/fstab").write_text(f"{IMAGE_FSTAB}{line}\n")
        machine = FakeMachine(devices={"/dev/vdb": 2000}, signatures={"/dev/vdb": "ext4"})
        for mount in ("/data", "/scratch"):
            section = {"devices": ["/dev/vdb"], "force": True, "parts": {"scratch": {"size": 50, "mount": mount}}}
            assert run(root, FakeRunner(machine=machine), section)["status"] == "ok"
        assert f"# vfarm localfs: replaced by /dev/vdb: {line}" in (root / "etc/fstab").read_text().splitlines()  # before the wipe
        assert machine.pvs == {"/dev/vdb": "vg_local"}


def test_a_volume_with_data_moved_onto_content_is_refused_before_anything_is_done(root: Path) -> None:
    """scratch, mounted at /scratch with the user's files, moves to /data, where the image has
    files; tmp is new. What scratch holds is read where it is mounted, so the plan refuses:
    nothing is created, mounted or copied, and a dry run shows the refusal."""
    machine = fresh_machine()
    assert run(root, FakeRunner(machine=machine, answers=real_copy()), {"parts": {"scratch": {"size": 10, "mount": "/scratch"}}})["status"] == "ok"
    for folder in (root / "scratch", root / "run/vfarm/localfs/scratch"):  # the volume as mounted, and the fake's volume
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "results").write_text("the user's results\n")
    (root / "data").mkdir()
    (root / "data/README").write_text("the image's data\n")
    after = {"parts": {"scratch": {"size": 10, "mount": "/data"}, "tmp": 5}}
    for dry_run in (True, False):
        runner = FakeRunner(machine=machine, answers=real_copy(), dry_run=dry_run)
        status = run(root, runner, after)
        assert status["status"] == "failed" and "/data is not empty and volume scratch holds other data" in status["reason"], status["reason"]
        assert runner.changing_calls() == [] and "vg_local/tmp" not in machine.lvs


CLOUD_INIT_MNT = "/dev/vdb\t/mnt\tauto\tdefaults,nofail,x-systemd.requires=cloud-init.service,_netdev,comment=cloudconfig\t0\t2"  # its `mounts`


def ephemeral0(root: Path) -> FakeMachine:
    """An EC2-like instance store as cloud-init's `mounts` leaves it (init stage, before us): ext4 on
    /dev/vdb, mounted at /mnt, its fstab line written."""
    (root / "etc/fstab").write_text(f"{IMAGE_FSTAB}{CLOUD_INIT_MNT}\n")
    return FakeMachine(devices={"/dev/vdb": 2000}, signatures={"/dev/vdb": "ext4"}, mounts={str(root / "mnt"): "/dev/vdb"})


def test_force_unmounts_the_instance_store_cloud_init_mounted_and_comments_out_its_line(root: Path) -> None:
    """Without force: refused in the plan, nothing done (not even the umount). With force: /mnt
    unmounted (plain umount), cloud-init's line commented out, both before the wipe; the record
    says so; the line stays commented out, and the next run changes nothing. A dry run shows it all."""
    machine = ephemeral0(root)
    section = {"devices": ["/dev/vdb"], "parts": {"scratch": {"size": 50, "mount": "/mnt"}}}
    runner = FakeRunner(machine=machine)
    status = run(root, runner, section)
    assert status["status"] == "failed" and "/dev/vdb holds ext4: refusing to pvcreate" in status["reason"], status["reason"]
    assert runner.changing_calls() == [] and (root / "etc/fstab").read_text() == f"{IMAGE_FSTAB}{CLOUD_INIT_MNT}\n"
    forced = {**section, "force": True}
    dry = run(root, FakeRunner(machine=machine, dry_run=True), forced)
    assert [s["action"] for s in dry["steps"]][-5:] == ["umount", "write-fstab", "wipefs", "pvcreate", "vgcreate"]
    assert dry["commented_out"] == [CLOUD_INIT_MNT] and machine.mounts == {str(root / "mnt"): "/dev/vdb"}
    assert (root / "etc/fstab").read_text() == f"{IMAGE_FSTAB}{CLOUD_INIT_MNT}\n"
    runner = FakeRunner(machine=machine)
    status = run(root, runner, forced)
    assert status["status"] == "ok", status["reason"]
    assert runner.changing_calls()[:3] == [["umount", str(root / "mnt")], ["wipefs", "--all", "/dev/vdb"], ["pvcreate", "--yes", "/dev/vdb"]]
    umount = next(s for s in status["steps"] if s["action"] == "umount")
    assert umount["ok"] and umount["device"] == "/dev/vdb" and umount["argv"] == ["umount", str(root / "mnt")]
    assert status["commented_out"] == [CLOUD_INIT_MNT]
    fstab = (root / "etc/fstab").read_text()
    assert fstab.splitlines()[2:] == [f"# vfarm localfs: replaced by /dev/vdb: {CLOUD_INIT_MNT}", "# vfarm localfs",
                                      f"/dev/vg_local/scratch\t/mnt\text4\t{AT_BOOT}\t0\t2"]
    assert machine.mounts == {str(root / "mnt"): "/dev/vg_local/scratch"}
    again = FakeRunner(machine=machine)
    status = run(root, again, forced)
    assert status["status"] == "ok" and again.changing_calls() == [] and (root / "etc/fstab").read_text() == fstab
    assert status["commented_out"] == []


def test_a_busy_mount_stops_the_run_before_anything_is_wiped(root: Path) -> None:
    """umount /mnt fails (a process works there): the run stops, naming the device and where it is
    mounted; nothing is wiped, fstab is as it was."""
    machine = ephemeral0(root)
    runner = FakeRunner(machine=machine, fail=("umount",))
    status = run(root, runner, {"devices": ["/dev/vdb"], "force": True, "parts": {"scratch": {"size": 50, "mount": "/scratch"}}})
    assert status["status"] == "failed" and f"device /dev/vdb is mounted at {root}/mnt and `umount {root}/mnt` failed" in status["reason"]
    assert runner.changing_calls() == [["umount", str(root / "mnt")]] and machine.signatures == {"/dev/vdb": "ext4"}
    assert (root / "etc/fstab").read_text() == f"{IMAGE_FSTAB}{CLOUD_INIT_MNT}\n"


@pytest.mark.parametrize("how", ["covered", "above"])
def test_a_forced_device_mounted_under_another_mount_is_refused_before_anything_changes(root: Path, how: str) -> None:
    """/dev/vdb is mounted at /mnt, and a tmpfs was mounted over /mnt (covered) or over the folder
    above it (above): `umount /mnt` would take the tmpfs, or miss, and wipefs would then find the
    disk busy after fstab's line was released. Refused in the plan, naming the place: nothing run,
    fstab as it was."""
    machine = ephemeral0(root)
    if how == "covered":
        machine.covered, machine.mounts = {str(root / "mnt"): "/dev/vdb"}, {str(root / "mnt"): "tmpfs"}
    else:
        machine.mounts = {str(root / "mnt/data"): "/dev/vdb", str(root / "mnt"): "tmpfs"}
    runner = FakeRunner(machine=machine)
    status = run(root, runner, {"devices": ["/dev/vdb"], "force": True, "parts": {"scratch": {"size": 50, "mount": "/scratch"}}})
    where = root / ("mnt" if how == "covered" else "mnt/data")
    assert status["status"] == "failed" and f"device /dev/vdb is mounted at {where} under another mount: refusing to wipe it" in status["reason"]
    assert runner.changing_calls() == [] and machine.signatures == {"/dev/vdb": "ext4"}
    assert (root / "etc/fstab").read_text() == f"{IMAGE_FSTAB}{CLOUD_INIT_MNT}\n"


@pytest.mark.parametrize("propagated", [True, False])
def test_a_hidden_mount_that_goes_with_the_visible_one_is_no_obstacle(root: Path, propagated: bool) -> None:
    """/dev/vdb at /mnt, and a copy of that mount no path reaches (mount propagation under a
    self-bind on a shared parent puts one there): the plain umount takes both, and the wipe goes
    on. A hidden mount still there after the umount stops the run before fstab changes."""
    machine = ephemeral0(root)
    machine.covered = {str(root / "mnt"): "/dev/vdb"}
    machine.peers = [{str(root / "mnt")}] if propagated else []
    runner = FakeRunner(machine=machine)
    status = run(root, runner, {"devices": ["/dev/vdb"], "force": True, "parts": {"scratch": {"size": 50, "mount": "/scratch"}}})
    if propagated:
        assert status["status"] == "ok", status["reason"]
        assert runner.changing_calls()[:2] == [["umount", str(root / "mnt")], ["wipefs", "--all", "/dev/vdb"]]
    else:
        assert status["status"] == "failed" and f"device /dev/vdb is still mounted at {root}/mnt, under another mount: nothing wiped" in status["reason"]
        assert runner.changing_calls() == [["umount", str(root / "mnt")]] and machine.signatures == {"/dev/vdb": "ext4"}
        assert (root / "etc/fstab").read_text() == f"{IMAGE_FSTAB}{CLOUD_INIT_MNT}\n"


def test_a_mount_gone_with_its_peers_umount_is_no_failure(root: Path) -> None:
    """/mnt is also bound at /mnt2 on a shared parent (peers): the first umount takes both, the
    second finds it gone (`not mounted`): no failure, the wipe goes on."""
    machine = ephemeral0(root)
    machine.mounts[str(root / "mnt2")] = "/dev/vdb"
    machine.peers = [{str(root / "mnt"), str(root / "mnt2")}]
    runner = FakeRunner(machine=machine)
    status = run(root, runner, {"devices": ["/dev/vdb"], "force": True, "parts": {"scratch": {"size": 50, "mount": "/scratch"}}})
    assert status["status"] == "ok", status["reason"]
    assert runner.changing_calls()[:3] == [["umount", str(root / "mnt2")], ["umount", str(root / "mnt")], ["wipefs", "--all", "/dev/vdb"]]


@pytest.mark.parametrize("out", ["not json", '{"filesystems": {"a": 1}}', '{"filesystems": [1]}', "[]"])
def test_findmnt_output_it_cannot_read_fails_the_run_in_one_line(root: Path, out: str) -> None:
    runner = FakeRunner(machine=fresh_machine(), answers={("findmnt",): (0, out, "")})
    status = run(root, runner, {"parts": {"scratch": 50}})
    assert status["status"] == "failed" and status["reason"].startswith("cannot read findmnt's JSON: ") and "\n" not in status["reason"]
    assert runner.changing_calls() == []


def test_a_bind_mount_of_the_forced_device_is_unmounted_before_the_wipe(root: Path) -> None:
    """The image bind-mounts a folder of the instance store (/mnt/scratch at /scratch): findmnt
    names its source `/dev/vdb[/scratch]`. Both mounts are freed before the wipe (else it fails busy)."""
    machine = ephemeral0(root)
    machine.mounts[str(root / "scratch")] = "/dev/vdb[/scratch]"
    runner = FakeRunner(machine=machine)
    status = run(root, runner, {"devices": ["/dev/vdb"], "force": True, "parts": {"data": {"size": 50, "mount": "/data"}}})
    assert status["status"] == "ok", status["reason"]
    assert runner.changing_calls()[:3] == [["umount", str(root / "scratch")], ["umount", str(root / "mnt")], ["wipefs", "--all", "/dev/vdb"]]
    assert [s["device"] for s in status["steps"] if s["action"] == "umount"] == ["/dev/vdb", "/dev/vdb"]


def test_fstab_mount_points_in_use_or_on_a_network_filesystem_are_not_looked_at(root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A stat at or below a mount point whose NFS server is gone hangs (a hard mount): discover
    never resolves a point something is mounted at (the kernel gives its real path) nor one whose
    walk reaches a network filesystem (below its mount point, through a link to it, or through a
    linked folder above it); others it does, links and `..` as the kernel reads them."""
    (root / "etc/fstab").write_text(f"{IMAGE_FSTAB}server:/export /nfs nfs hard 0 0\nserver:/sub /nfs/sub nfs noauto 0 0\n"
                                    "server:/old /nfs-old nfs noauto 0 0\n/dev/vdc /data ext4 noauto 0 0\n/dev/vdd /opt ext4 noauto 0 0\n"
                                    "/dev/vde /a/b ext4 noauto 0 0\n")
    (root / "nfs").mkdir()
    (root / "data").symlink_to("nfs/data")  # leads onto the NFS mount: not followed
    (root / "opt").symlink_to("/srv/opt")  # an absolute link, inside the root: followed
    (root / "a").symlink_to("srv/../nfs/deep")  # a linked folder above the mount point leads onto NFS
    (root / "srv").mkdir()
    looked: list[str] = []
    lstat, real = os.lstat, os.path.realpath

    def recorded(path: Any, *args: Any, **kwargs: Any) -> Any:
        looked.append(str(path))
        return lstat(path, *args, **kwargs)

    def realpath(path: Any, *args: Any, **kwargs: Any) -> str:
        looked.append(str(path))
        return real(path, *args, **kwargs)

    monkeypatch.setattr(cc_localfs.os, "lstat", recorded)
    monkeypatch.setattr(cc_localfs.os.path, "realpath", realpath)
    machine = FakeMachine(mounts={str(root / "nfs"): "server:/export"}).add_vg("vg_local", 1000)
    with record_mod.Record("localfs", directory=root.parent / "log") as record:
        ctx = handling.Context(FakeRunner(machine=machine), record, root)
        facts = cc_localfs.discover(localfs_spec.parse({"parts": {"scratch": {"size": 50, "mount": "/scratch"}}}), ctx)
    assert not [path for path in looked if path == str(root / "nfs") or path.startswith(str(root / "nfs") + "/")], looked
    assert str(root / "nfs-old") in looked and str(root / "opt") in looked and str(root / "a") in looked
    assert facts.links == {"/opt": "/srv/opt"}
    assert facts.unreachable == {mount: "it leads onto the network or FUSE filesystem mounted at /nfs" for mount in ("/nfs/sub", "/data", "/a/b")}
    # `..` after a link goes up from where the link led, as the kernel (and realpath) read it.
    (root / "up").symlink_to("srv/inner")
    assert cc_localfs._walk(ctx, facts, "/up/../y") == ("/srv/y", "")
    machine = FakeMachine(mounts={str(root / "nfs"): "server:/export"}).add_vg("vg_local", 1000)
    status = run(root, FakeRunner(machine=machine), {"parts": {"scratch": {"size": 50, "mount": "/scratch"}}})
    assert status["status"] == "ok", status["reason"]
    # The config's own mount point there: refused before anything changes (a local volume would be
    # mounted before the network filesystem, then hidden under it), and never looked at either.
    looked.clear()
    runner = FakeRunner(machine=FakeMachine(mounts={str(root / "nfs"): "server:/export"}).add_vg("vg_local", 1000))
    status = run(root, runner, {"parts": {"scratch": {"size": 50, "mount": "/a/scratch"}}})
    assert status["status"] == "failed" and status["reason"] == ("mount point /a/scratch: it leads onto the network or FUSE filesystem "
                                                                 "mounted at /nfs: choose a local one"), status["reason"]
    assert runner.changing_calls() == [] and not [path for path in looked if path == str(root / "nfs") or path.startswith(str(root / "nfs") + "/")]
    # A loop of links is refused too, in one line.
    (root / "loop").symlink_to("loop")
    status = run(root, FakeRunner(machine=fresh_machine()), {"parts": {"scratch": {"size": 50, "mount": "/loop/x"}}})
    assert status["reason"] == "mount point /loop/x: its symlinks cannot be followed (too many levels of symbolic links): choose a local one"


def test_lines_naming_the_wiped_device_by_uuid_or_label_are_commented_out_and_stay_so(root: Path) -> None:
    """The device held swap, in use, with a UUID and a label: swapped off before the wipe; the
    lines naming it by what blkid saw on it (UUID=, LABEL="..." as libmount reads it), at a place
    that is not ours, are commented out before the wipe (after it, those names name nothing we
    could know) and never put back, though no line mounts /data; the next run changes nothing.
    Another device's UUID line stays."""
    lines = ["UUID=0f3a-77 none swap sw 0 0", 'LABEL="eph\\040zero" /data ext4 defaults 0 2', "UUID=other /srv ext4 defaults 0 2"]
    (root / "etc/fstab").write_text(IMAGE_FSTAB + "".join(f"{line}\n" for line in lines))
    machine = FakeMachine(devices={"/dev/vdb": 2000}, signatures={"/dev/vdb": "swap"}, ids={"/dev/vdb": "UUID=0f3a-77\nLABEL=eph\\ zero\n"},
                          swaps=["/dev/vdb"])
    section = {"devices": ["/dev/vdb"], "force": True, "parts": {"scratch": {"size": 50, "mount": "/scratch"}}}
    runner = FakeRunner(machine=machine)
    status = run(root, runner, section)
    assert status["status"] == "ok", status["reason"]
    assert runner.changing_calls()[:2] == [["swapoff", "/dev/vdb"], ["wipefs", "--all", "/dev/vdb"]] and machine.swaps == []
    fstab = (root / "etc/fstab").read_text()
    assert fstab.splitlines()[2:5] == [*(f"# vfarm localfs: replaced by /dev/vdb: {line}" for line in lines[:2]), lines[2]]
    assert status["commented_out"] == lines[:2]
    again = FakeRunner(machine=machine)
    assert run(root, again, section)["status"] == "ok" and again.changing_calls() == [] and (root / "etc/fstab").read_text() == fstab


def test_ec2s_device_name_is_a_symlink_to_what_findmnt_and_lvm_say(root: Path) -> None:
    """The config and cloud-init's line say /dev/xvdb, a symlink to nvme1n1 (Nitro), which findmnt
    shows mounted at /mnt: unmounted by that name, the line commented out though /mnt is no mount
    point of ours (scratch goes to /scratch), and a line naming it by another symlink too; the
    next run changes nothing."""
    (root / "dev/disk/by-id").mkdir(parents=True)
    (root / "dev/xvdb").symlink_to("nvme1n1")
    (root / "dev/disk/by-id/nvme-Instance_Storage").symlink_to("../../nvme1n1")
    xvdb = CLOUD_INIT_MNT.replace("/dev/vdb", "/dev/xvdb")
    by_id = "/dev/disk/by-id/nvme-Instance_Storage /srv ext4 defaults 0 2"
    (root / "etc/fstab").write_text(f"{IMAGE_FSTAB}{xvdb}\n{by_id}\n")
    machine = FakeMachine(devices={"/dev/nvme1n1": 2000}, signatures={"/dev/nvme1n1": "ext4"}, mounts={str(root / "mnt"): "/dev/nvme1n1"},
                          links={"/dev/xvdb": "/dev/nvme1n1"})
    section = {"devices": ["/dev/xvdb"], "force": True, "parts": {"scratch": {"size": 50, "mount": "/scratch"}}}
    runner = FakeRunner(machine=machine)
    status = run(root, runner, section)
    assert status["status"] == "ok", status["reason"]
    assert runner.changing_calls()[:2] == [["umount", str(root / "mnt")], ["wipefs", "--all", "/dev/xvdb"]]
    assert machine.pvs == {"/dev/nvme1n1": "vg_local"} and str(root / "mnt") not in machine.mounts
    fstab = (root / "etc/fstab").read_text()
    assert fstab.splitlines()[2:4] == [f"# vfarm localfs: replaced by /dev/xvdb: {line}" for line in (xvdb, by_id)]
    again = FakeRunner(machine=machine)
    assert run(root, again, section)["status"] == "ok" and again.changing_calls() == [] and (root / "etc/fstab").read_text() == fstab


def test_fstab_comments_out_every_line_of_a_pv_and_never_puts_one_back() -> None:
    """fstab_text: a line naming a PV of the config (PVS: any name of it) is commented out wherever
    it mounts, and stays so (its replacer is a device of HELD), while the image's other lines stay."""
    entry = ("/dev/vg/a", "/x", "ext4", "defaults", 0, 2)
    pvs = {"/dev/vdb": "/dev/vdb", "UUID=u1": "/dev/vdb"}
    current = 'UUID="u1" /data ext4 defaults 0 2\n/dev/vdb none swap sw 0 0\n/dev/vdc /srv ext4 defaults 0 2\n'
    text = cc_localfs.fstab_text(current, [entry], {}, held=frozenset(pvs), pvs=pvs)
    assert text.splitlines()[:3] == ['# vfarm localfs: replaced by /dev/vdb: UUID="u1" /data ext4 defaults 0 2',
                                     "# vfarm localfs: replaced by /dev/vdb: /dev/vdb none swap sw 0 0", "/dev/vdc /srv ext4 defaults 0 2"]
    assert cc_localfs.fstab_text(text, [entry], {}, held=frozenset({"/dev/vdb"})) == text  # the UUID unknown after the wipe


@pytest.mark.parametrize("mounted", [True, False], ids=["the-other-disk-mounted", "the-other-disk-not-mounted"])
def test_a_uuid_or_label_the_device_shares_with_another_disk_keeps_that_disks_line(root: Path, mounted: bool) -> None:
    """The forced device was made from the image's snapshot (it carries the root filesystem's
    label) and reuses another disk's label: lines naming those are the other disks', never
    commented out, whether that disk is mounted now (findmnt) or not (blkid finds the label on it
    too); only the device's own UUID line is."""
    lines = ["LABEL=cloudimg-rootfs / ext4 defaults 0 1", "LABEL=data /data ext4 defaults,nofail 0 2", "UUID=5e1c /old ext4 defaults 0 2"]
    (root / "etc/fstab").write_text("".join(f"{line}\n" for line in lines))
    machine = FakeMachine(devices={"/dev/vdb": 2000}, signatures={"/dev/vdb": "ext4", "/dev/vda1": "ext4", "/dev/vdc": "ext4"},
                          ids={"/dev/vdb": "UUID=5e1c\nLABEL=cloudimg-rootfs\n", "/dev/vda1": "LABEL=cloudimg-rootfs\n", "/dev/vdc": "LABEL=data\n"},
                          mounts={str(root): "/dev/vda1", **({str(root / "data"): "/dev/vdc"} if mounted else {})})
    machine.ids["/dev/vdb"] += "LABEL=data\n"
    if mounted:  # and blkid does not list it (the label check alone would not tell): findmnt does
        machine.ids["/dev/vdc"] = ""
    status = run(root, FakeRunner(machine=machine), {"devices": ["/dev/vdb"], "force": True, "parts": {"scratch": {"size": 50, "mount": "/scratch"}}})
    assert status["status"] == "ok", status["reason"]
    assert (root / "etc/fstab").read_text().splitlines()[:3] == [*lines[:2], f"# vfarm localfs: replaced by /dev/vdb: {lines[2]}"]
    assert status["commented_out"] == [lines[2]]


def test_a_device_the_config_lists_beside_an_existing_volume_group_keeps_its_line(root: Path) -> None:
    """The config's volume group exists on another disk: the listed device is never made a PV,
    so its line (mounted at /mnt, no force) stays as it is."""
    line = "/dev/vdb /mnt auto defaults,nofail 0 2"
    (root / "etc/fstab").write_text(f"{IMAGE_FSTAB}{line}\n")
    machine = FakeMachine(devices={"/dev/vdb": 2000}, signatures={"/dev/vdb": "ext4"}, mounts={str(root / "mnt"): "/dev/vdb"},
                          pvs={"/dev/vda2": "vg_local"}).add_vg("vg_local", 2500)
    runner = FakeRunner(machine=machine)
    status = run(root, runner, {"vg": "vg_local", "devices": ["/dev/vdb"], "parts": {"scratch": {"size": 50, "mount": "/scratch"}}})
    assert status["status"] == "ok", status["reason"]
    assert line in (root / "etc/fstab").read_text().splitlines() and status["commented_out"] == []
    assert not [call for call in runner.changing_calls() if call[0] in ("umount", "wipefs", "pvcreate")]


AZURE_MNT = CLOUD_INIT_MNT.replace("/dev/vdb", "/dev/sdb1")  # cloud-init's `mounts` on Azure: the resource disk's partition


def azure_resource(root: Path) -> FakeMachine:
    """Azure's resource disk as cloud-init leaves it: /dev/sdb, a dos partition table, ext4 on
    /dev/sdb1 mounted at /mnt, its fstab line written."""
    (root / "etc/fstab").write_text(f"{IMAGE_FSTAB}{AZURE_MNT}\n")
    return FakeMachine(devices={"/dev/sdb": 2000}, signatures={"/dev/sdb": "dos", "/dev/sdb1": "ext4"}, partitions={"/dev/sdb": ["/dev/sdb1"]},
                       ids={"/dev/sdb1": "UUID=4b1e\nPART_ENTRY_UUID=9c1d5e2a-01\n"}, mounts={str(root / "mnt"): "/dev/sdb1"})


def test_force_frees_a_disk_whose_partition_cloud_init_mounted_and_comments_out_its_line(root: Path) -> None:
    """Without force: refused in the plan (a partition table), nothing done, its partitions not
    even listed. With force: /mnt, where sdb1 is mounted, unmounted and cloud-init's line naming
    sdb1 commented out, both before the wipe (else wipefs finds the disk busy, and the line
    mounts a partition gone at the next boot); never put back; the next run changes nothing."""
    machine = azure_resource(root)
    section = {"devices": ["/dev/sdb"], "parts": {"scratch": {"size": 50, "mount": "/mnt"}}}
    runner = FakeRunner(machine=machine)
    status = run(root, runner, section)
    assert status["status"] == "failed" and "/dev/sdb holds a dos partition table: refusing to pvcreate" in status["reason"], status["reason"]
    assert runner.changing_calls() == [] and not [c for c in runner.calls if c[0] == "lsblk"]
    assert (root / "etc/fstab").read_text() == f"{IMAGE_FSTAB}{AZURE_MNT}\n"
    forced = {**section, "force": True}
    dry = run(root, FakeRunner(machine=machine, dry_run=True), forced)
    assert [s["action"] for s in dry["steps"]][-5:] == ["umount", "write-fstab", "wipefs", "pvcreate", "vgcreate"] and dry["commented_out"] == [AZURE_MNT]
    runner = FakeRunner(machine=machine)
    status = run(root, runner, forced)
    assert status["status"] == "ok", status["reason"]
    assert runner.changing_calls()[:3] == [["umount", str(root / "mnt")], ["wipefs", "--all", "/dev/sdb"], ["pvcreate", "--yes", "/dev/sdb"]]
    umount = next(s for s in status["steps"] if s["action"] == "umount")
    assert umount["ok"] and umount["device"] == "/dev/sdb1"
    assert status["commented_out"] == [AZURE_MNT]
    fstab = (root / "etc/fstab").read_text()
    assert fstab.splitlines()[2:] == [f"# vfarm localfs: replaced by /dev/sdb: {AZURE_MNT}", "# vfarm localfs",
                                      f"/dev/vg_local/scratch\t/mnt\text4\t{AT_BOOT}\t0\t2"]
    assert machine.mounts == {str(root / "mnt"): "/dev/vg_local/scratch"} and machine.pvs == {"/dev/sdb": "vg_local"} and machine.partitions == {}
    again = FakeRunner(machine=machine)
    status = run(root, again, forced)
    assert status["status"] == "ok" and again.changing_calls() == [] and (root / "etc/fstab").read_text() == fstab
    assert status["commented_out"] == [] and not [c for c in again.calls if c[0] == "lsblk"]  # a PV now: not probed again


def test_partitions_in_use_are_freed_and_their_lines_by_any_name_commented_out(root: Path) -> None:
    """The config names the disk by a symlink. Its partitions: sdb1 at /data, sdb3 at /data/inner
    (unmounted first), sdb2 swap in use: all freed before the wipe. Their lines (by UUID=,
    PARTUUID=, a symlink) are commented out, replaced by the configured name; a LABEL sdb1 shares
    with another disk names that disk (its line stays), as do / and another disk's UUID line. The
    next run changes nothing."""
    (root / "dev/disk/cloud").mkdir(parents=True)
    (root / "dev/disk/cloud/azure_resource").symlink_to("../../sdb")
    (root / "dev/disk/cloud/azure_resource-part3").symlink_to("../../sdb3")
    theirs = ["LABEL=cloudimg-rootfs / ext4 defaults 0 1", "LABEL=data /srv ext4 defaults,nofail 0 2", "UUID=other /opt ext4 defaults 0 2"]
    partitions = ["UUID=4b1e /data ext4 defaults 0 2", "PARTUUID=9c1d5e2a-02 none swap sw 0 0",
                  "/dev/disk/cloud/azure_resource-part3 /data/inner ext4 defaults 0 2"]
    (root / "etc/fstab").write_text("".join(f"{line}\n" for line in theirs + partitions))
    machine = FakeMachine(devices={"/dev/sdb": 2000}, partitions={"/dev/sdb": ["/dev/sdb1", "/dev/sdb2", "/dev/sdb3"]},
                          signatures={"/dev/sdb": "gpt", "/dev/sdb1": "ext4", "/dev/sdb2": "swap", "/dev/sdb3": "ext4", "/dev/vdc": "ext4"},
                          ids={"/dev/sdb1": "UUID=4b1e\nLABEL=data\nPART_ENTRY_UUID=9c1d5e2a-01\n", "/dev/sdb2": "PART_ENTRY_UUID=9c1d5e2a-02\n",
                               "/dev/sdb3": "UUID=77aa\n", "/dev/vdc": "LABEL=data\n"},
                          mounts={str(root / "data"): "/dev/sdb1", str(root / "data/inner"): "/dev/sdb3"}, swaps=["/dev/sdb2"],
                          links={"/dev/disk/cloud/azure_resource": "/dev/sdb"})
    section = {"devices": ["/dev/disk/cloud/azure_resource"], "force": True, "parts": {"scratch": {"size": 50, "mount": "/scratch"}}}
    runner = FakeRunner(machine=machine)
    status = run(root, runner, section)
    assert status["status"] == "ok", status["reason"]
    assert runner.changing_calls()[:4] == [["umount", str(root / "data/inner")], ["umount", str(root / "data")], ["swapoff", "/dev/sdb2"],
                                           ["wipefs", "--all", "/dev/disk/cloud/azure_resource"]]
    fstab = (root / "etc/fstab").read_text()
    assert fstab.splitlines()[:6] == [*theirs, *(f"# vfarm localfs: replaced by /dev/disk/cloud/azure_resource: {line}" for line in partitions)]
    assert status["commented_out"] == partitions and machine.swaps == [] and machine.mounts == {str(root / "scratch"): "/dev/vg_local/scratch"}
    again = FakeRunner(machine=machine)
    assert run(root, again, section)["status"] == "ok" and again.changing_calls() == [] and (root / "etc/fstab").read_text() == fstab


def test_a_busy_partition_stops_the_run_before_anything_is_wiped(root: Path) -> None:
    """umount of the partition's mount point fails: the run stops, naming the partition; nothing
    wiped, fstab as it was."""
    machine = azure_resource(root)
    runner = FakeRunner(machine=machine, fail=("umount",))
    status = run(root, runner, {"devices": ["/dev/sdb"], "force": True, "parts": {"scratch": {"size": 50, "mount": "/scratch"}}})
    assert status["status"] == "failed" and f"device /dev/sdb1 is mounted at {root}/mnt and `umount {root}/mnt` failed" in status["reason"]
    assert runner.changing_calls() == [["umount", str(root / "mnt")]] and machine.signatures == {"/dev/sdb": "dos", "/dev/sdb1": "ext4"}
    assert (root / "etc/fstab").read_text() == f"{IMAGE_FSTAB}{AZURE_MNT}\n"


def test_a_disk_with_a_partition_in_another_volume_group_is_never_wiped(root: Path) -> None:
    """As a device of another volume group is not, even with force."""
    machine = FakeMachine(devices={"/dev/sdb": 2000}, signatures={"/dev/sdb": "gpt", "/dev/sdb1": "LVM2_member"}, partitions={"/dev/sdb": ["/dev/sdb1"]},
                          pvs={"/dev/sdb1": "vg_data"}).add_vg("vg_data", 500)
    runner = FakeRunner(machine=machine)
    status = run(root, runner, {"devices": ["/dev/sdb"], "force": True, "parts": {"scratch": {"size": 50, "mount": "/scratch"}}})
    assert status["status"] == "failed" and "device /dev/sdb's partition /dev/sdb1 belongs to volume group vg_data" in status["reason"], status["reason"]
    assert runner.changing_calls() == []


def test_a_disk_with_a_device_stacked_on_its_partition_is_never_wiped(root: Path) -> None:
    """dm-crypt on a partition (lsblk lists it below the disk): refused in the plan, before fstab
    or anything else is touched (wipefs would only fail busy, after the lines were released)."""
    (root / "etc/fstab").write_text(f"{IMAGE_FSTAB}/dev/mapper/secret /secret ext4 defaults 0 2\n")
    machine = FakeMachine(devices={"/dev/sdb": 2000}, signatures={"/dev/sdb": "gpt", "/dev/sdb1": "crypto_LUKS"}, partitions={"/dev/sdb": ["/dev/sdb1"]},
                          stacked={"/dev/sdb": [("/dev/mapper/secret", "crypt")]})
    runner = FakeRunner(machine=machine)
    status = run(root, runner, {"devices": ["/dev/sdb"], "force": True, "parts": {"scratch": {"size": 50, "mount": "/scratch"}}})
    assert status["status"] == "failed" and "device /dev/sdb holds /dev/mapper/secret (crypt)" in status["reason"], status["reason"]
    assert runner.changing_calls() == [] and "/dev/mapper/secret /secret" in (root / "etc/fstab").read_text()
