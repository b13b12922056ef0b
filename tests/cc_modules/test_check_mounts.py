"""The final check at every boot: what localfs set up (its record's `mounts`) must be in place.

localfs runs once per instance; EC2 blanks the instance store on a stop and start and keeps the
instance id, so the next boot has no volumes and localfs does not run again. The check reads
/proc/self/mountinfo and /proc/swaps (here: files under the test's root) and compares devices by
number, which tests give through `check.device_number`."""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path
from typing import Any, Optional

import pytest

from tests.fakesystem import FakeMachine, FakeRunner
from vfarm import files
from vfarm.cc_modules import cc_localfs, check, handling

SECTION = {"parts": {"cvmfs": 17, "cvmfs-mount": "/var/lib/cvmfs", "home": 58, "tmp": 8, "swap": 100}}
# The LVs as the kernel numbers them, under each of their names.
NUMBERS = {"/dev/vg_local/cvmfs": "253:0", "/dev/vg_local/home": "253:1", "/dev/vg_local/tmp": "253:2", "/dev/vg_local/swap": "253:3",
           "/dev/dm-3": "253:3", "/dev/nvme0n1p1": "259:1"}
MOUNTINFO_HEAD = "22 1 259:1 / / rw,relatime - ext4 /dev/nvme0n1p1 rw\n23 22 0:21 / /proc rw - proc proc rw\n"
SWAPS_HEAD = "Filename\t\t\t\tType\t\tSize\t\tUsed\t\tPriority\n"


class Recorder:
    def __init__(self) -> None:
        self.calls: list[list[str]] = []

    def __call__(self, argv: list[str]) -> None:
        self.calls.append(list(argv))


def numbers_of(root: Path, present: dict[str, str]) -> Any:
    """A `check.device_number` for ROOT: the block devices PRESENT (path -> MAJOR:MINOR)."""

    def number(path: Path) -> Optional[str]:
        return present.get("/" + str(path.relative_to(root)))

    return number


def boot_root(tmp_path: Path) -> Path:
    """An image's root whose cloud-init finished cleanly, before localfs ran."""
    root = tmp_path / "root"
    for folder in ("etc", "home/debian", "tmp", "run/cloud-init", "dev", "proc/self"):
        (root / folder).mkdir(parents=True)
    (root / "etc/fstab").write_text("LABEL=root / ext4 defaults 0 1\n")
    (root / "run/cloud-init/status.json").write_text(json.dumps({"v1": {"init": {"errors": [], "start": 1.0, "finished": 2.0}}}))
    (root / "run/cloud-init/result.json").write_text(json.dumps({"v1": {"errors": []}}))
    (root / "dev/console").write_text("")
    return root


def kernel_view(root: Path, mounts: list[tuple[str, str]], swaps: list[str]) -> None:
    """ROOT's /proc: MOUNTS (mount point, MAJOR:MINOR) made in that order after the root's own (one
    on a point already mounted has the mount on top there for its parent), active SWAPS."""
    top: dict[str, int] = {}
    lines = []
    for n, (target, number) in enumerate(mounts):
        lines.append(f"{30 + n} {top.get(target, 22)} {number} / {target.replace(' ', chr(92) + '040')} rw - ext4 x rw")
        top[target] = 30 + n
    (root / "proc/self/mountinfo").write_text(MOUNTINFO_HEAD + "".join(line + "\n" for line in lines))
    (root / "proc/swaps").write_text(SWAPS_HEAD + "".join(f"{name}\tpartition\t1048572\t0\t-2\n" for name in swaps))


def verdict(root: Path) -> dict[str, Any]:
    """The newest verdict line on ROOT's console (it keeps every boot's)."""
    line = [line for line in (root / "dev/console").read_text().splitlines() if line.startswith(check.VERDICT_PREFIX)][-1]
    found: dict[str, Any] = json.loads(line[len(check.VERDICT_PREFIX) :])
    return found


def test_localfs_volumes_gone_after_a_stop_and_start_power_the_worker_off(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                                          capsys: pytest.CaptureFixture[str]) -> None:
    root = boot_root(tmp_path)
    machine = FakeMachine().add_vg("vg_local", 5000)
    status = handling.execute("localfs", lambda: SECTION, cc_localfs.work, directory=root / "var/log/vfarm", root=root,
                              runner=FakeRunner(machine=machine))
    assert status["status"] == "ok", status["reason"]
    # The record says what fstab says, in fstab's order.
    assert status["mounts"] == [["/dev/vg_local/cvmfs", "/var/lib/cvmfs"], ["/dev/vg_local/home", "/home"],
                                ["/dev/vg_local/tmp", "/tmp"], ["/dev/vg_local/swap", "swap"]]

    # First boot: what localfs mounted, as the kernel shows it (/tmp's tmpfs of the image under
    # ours; the swap named /dev/dm-3, the LV's other name): ok, nothing powers off.
    monkeypatch.setattr(check, "device_number", numbers_of(root, NUMBERS))
    assert {target[len(str(root)) :] for target in machine.mounts} == {"/var/lib/cvmfs", "/home", "/tmp"}
    kernel_view(root, [("/tmp", "0:30"), ("/var/lib/cvmfs", "253:0"), ("/home", "253:1"), ("/tmp", "253:2")], ["/dev/dm-3"])
    runner = Recorder()
    summary = check.run_check(check.Paths(root), wait=0, run=runner)
    assert summary["result"] == "ok", summary["problems"]
    assert [(h["name"], h["status"]) for h in summary["handlers"]] == [("localfs", "ok")] and runner.calls == []

    # Stopped and started: the instance store is blank, the VG gone, the mount points on the root
    # disk; the same instance id, so localfs does not run again and its record still says ok.
    monkeypatch.setattr(check, "device_number", numbers_of(root, {"/dev/nvme0n1p1": "259:1"}))
    kernel_view(root, [("/tmp", "0:30")], [])
    assert check.main(["--root", str(root), "--wait", "0", "--dry-run"]) == 1  # the dry run says it and changes nothing
    assert "localfs  missing" in capsys.readouterr().out and runner.calls == []
    summary = check.run_check(check.Paths(root), wait=0, run=runner)
    localfs = summary["handlers"][0]
    gone = ("/var/lib/cvmfs not mounted from /dev/vg_local/cvmfs (no such device); /home not mounted from /dev/vg_local/home (no such device); "
            "/tmp not mounted from /dev/vg_local/tmp (no such device); swap /dev/vg_local/swap not active (no such device)")
    assert (localfs["status"], localfs["failed"]) == ("missing", True)
    assert localfs["reason"] == f"set up, but not in place at this boot: {gone}"
    assert summary["result"] == "failed" and summary["decision"]["action"] == "poweroff"
    assert summary["decision"]["reason"].startswith("localfs: missing: set up, but not in place at this boot: /var/lib/cvmfs not mounted")
    assert len(runner.calls) == 1 and runner.calls[0][:4] == ["shutdown", "-P", "--", "now"]
    assert verdict(root)["failed"] == [["localfs", "missing", f"set up, but not in place at this boot: {gone}"[: check.VERDICT_MAX_TEXT]]]


def test_volumes_present_but_not_mounted_or_hidden_are_missing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The devices are there (a mount that failed at boot, a swap not activated): named without
    "no such device"; a mount made over ours hides it; a mount point with a blank is read back."""
    root = tmp_path
    (root / "proc/self").mkdir(parents=True)
    (root / "var/log/vfarm").mkdir(parents=True)
    record = {"status": "ok", "mounts": [["/dev/vg_local/data", "/srv/my data"], ["/dev/vg_local/home", "/home"],
                                         ["/dev/vg_local/tmp", "/tmp"], ["/dev/vg_local/swap", "swap"]]}
    (root / "var/log/vfarm/localfs.status.json").write_text(json.dumps(record))
    monkeypatch.setattr(check, "device_number", numbers_of(root, {**NUMBERS, "/dev/vg_local/data": "253:4"}))
    kernel_view(root, [("/srv/my data", "253:4"), ("/tmp", "253:2"), ("/tmp", "0:30")], [])
    facts = check.discover(check.Paths(root))
    assert facts["mounted"]["/srv/my data"] == "253:4" and facts["mounted"]["/tmp"] == "0:30"
    localfs = check.plan(facts, check.Settings())["handlers"][0]
    assert localfs["status"] == "missing", localfs
    assert localfs["reason"] == ("set up, but not in place at this boot: /home not mounted from /dev/vg_local/home; "
                                 "/tmp not mounted from /dev/vg_local/tmp; swap /dev/vg_local/swap not active")


def test_device_numbers_follow_symlinks_to_block_devices_only(tmp_path: Path) -> None:
    """/dev/VG/LV is a symlink to ../dm-N: its number is the block device's, as the kernel writes
    it in mountinfo (and in sysfs); anything but a block device has none."""
    (tmp_path / "file").write_text("")
    assert check.device_number(tmp_path / "file") is None and check.device_number(tmp_path / "absent") is None
    assert check.device_number(Path("/dev/null")) is None  # a character device
    blocks = [p for p in sorted(Path("/dev").iterdir()) if p.is_block_device() and Path(f"/sys/class/block/{p.name}/dev").exists()]
    if not blocks:
        pytest.skip("no block device in this host's /dev")
    (tmp_path / "lv").symlink_to(blocks[0])
    assert check.device_number(tmp_path / "lv") == Path(f"/sys/class/block/{blocks[0].name}/dev").read_text().strip()


def test_only_a_handler_that_succeeded_is_held_to_its_mounts() -> None:
    """A failed handler keeps its own reason; a record of another instance stays one; a record
    without mounts (an older vfarm, another handler) asks nothing; a mounts item of another shape
    is none; all in place is ok."""
    mounts = [["/dev/vg_local/home", "/home"], "junk", ["/dev/vg_local/swap", 3]]
    facts = {"records": {"localfs": {"status": "failed", "reason": "lvcreate failed", "mounts": mounts},
                         "old": {"status": "ok", "instance_id": "i-old", "mounts": mounts},
                         "cvmfs": {"status": "ok"},
                         "here": {"status": "ok", "mounts": mounts}},
             "devices": {"/dev/vg_local/home": "253:1"}, "swaps": [],
             "instance_id": "i-1"}
    gone = ("missing", "set up, but not in place at this boot: /home not mounted from /dev/vg_local/home")
    for mounted, here in (({"/home": "253:1"}, ("ok", "")), ({}, gone)):
        facts["mounted"] = mounted
        handlers = {h["name"]: (h["status"], h["reason"]) for h in check.plan(facts, check.Settings())["handlers"]}
        assert handlers["here"] == here
        assert handlers["localfs"] == ("failed", "lvcreate failed") and handlers["cvmfs"] == ("ok", "")
        assert handlers["old"][0] == "never-ran" and "another instance" in handlers["old"][1]


def test_the_mount_on_top_of_a_point_is_the_one_no_other_there_is_mounted_on(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """mountinfo lists mounts in the order they were made, and a moved mount keeps its place: after
    `mount B /y; mount A /x; mount --move /y /x`, B is on top of /x but listed before A (the lines
    below are what Linux 6.18 wrote for it). On top is the mount at a point that no other mount at
    that point has for its parent; a plain overmount (listed last) reads the same. A mount made
    later over a folder above a point hides what is mounted there."""
    (tmp_path / "proc/self").mkdir(parents=True)
    (tmp_path / "var/log/vfarm").mkdir(parents=True)
    record = {"status": "ok", "mounts": [["/dev/vg_local/home", "/home"], ["/dev/vg_local/tmp", "/tmp"]]}
    (tmp_path / "var/log/vfarm/localfs.status.json").write_text(json.dumps(record))
    monkeypatch.setattr(check, "device_number", numbers_of(tmp_path, NUMBERS))
    moved = "66 67 253:1 / /home rw,relatime - ext4 /dev/mapper/vg_local-home rw\n67 22 0:41 / /home rw,relatime - tmpfs A rw\n"
    stacked = "68 22 0:30 / /tmp rw - tmpfs tmpfs rw\n69 68 253:2 / /tmp rw - ext4 /dev/mapper/vg_local-tmp rw\n"
    (tmp_path / "proc/self/mountinfo").write_text(MOUNTINFO_HEAD + moved + stacked)
    facts = check.discover(check.Paths(tmp_path))
    assert facts["mounted"] == {"/": "259:1", "/proc": "0:21", "/home": "253:1", "/tmp": "253:2"}
    assert check.plan(facts, check.Settings())["handlers"][0]["status"] == "ok"
    # The other way round: A, made first, moved over our /home, which it hides though listed before it.
    (tmp_path / "proc/self/mountinfo").write_text(MOUNTINFO_HEAD + "66 67 0:41 / /home rw - tmpfs A rw\n67 22 253:1 / /home rw - ext4 x rw\n" + stacked)
    facts = check.discover(check.Paths(tmp_path))
    assert facts["mounted"]["/home"] == "0:41"
    assert check.plan(facts, check.Settings())["handlers"][0]["reason"] == "set up, but not in place at this boot: /home not mounted from /dev/vg_local/home"
    # A mount stacked on / later is never entered (a path's walk starts below it): it hides nothing.
    (tmp_path / "proc/self/mountinfo").write_text(MOUNTINFO_HEAD + moved + stacked + "70 22 0:50 / / rw - tmpfs over rw\n")
    facts = check.discover(check.Paths(tmp_path))
    assert facts["mounted"] == {"/": "259:1", "/proc": "0:21", "/home": "253:1", "/tmp": "253:2"}
    # One made later over a folder above our volume's point hides it.
    record["mounts"] = [["/dev/vg_local/cvmfs", "/var/lib/cvmfs"]]
    (tmp_path / "var/log/vfarm/localfs.status.json").write_text(json.dumps(record))
    (tmp_path / "proc/self/mountinfo").write_text(MOUNTINFO_HEAD + "60 22 253:0 / /var/lib/cvmfs rw - ext4 x rw\n61 22 0:50 / /var rw - tmpfs over rw\n")
    facts = check.discover(check.Paths(tmp_path))
    assert facts["mounted"] == {"/": "259:1", "/proc": "0:21", "/var": "0:50"}
    reason = check.plan(facts, check.Settings())["handlers"][0]["reason"]
    assert reason == "set up, but not in place at this boot: /var/lib/cvmfs not mounted from /dev/vg_local/cvmfs"


def test_shadowed_mounts_are_those_another_mount_hides_at_their_point_or_above() -> None:
    """Rows as findmnt gives them (id, parent, point, source). Hidden: B's first mount of /home
    under the one moved over it (listed before it), /data/x under the /data made after it. Not
    hidden: the mounts in /data's tree, /, /proc, the one on top of /home."""
    rows = [("22", "1", "/", "/dev/vda1"), ("23", "22", "/proc", "proc"),
            ("66", "67", "/home", "A"), ("67", "22", "/home", "/dev/vg/home"),
            ("70", "22", "/data/x", "/dev/vdb"), ("71", "22", "/data", "tmpfs"), ("72", "71", "/data/y", "/dev/vdc"),
            ("73", "72", "/data/y/z", "/dev/vdd[/z]")]
    assert files.split_mounts(rows)[1] == [("/home", "/dev/vg/home"), ("/data/x", "/dev/vdb")]
    assert files.split_mounts([row for row in rows if row[0] not in ("67", "70")])[1] == []
    # Stacked on / later: never entered (a walk starts below it), itself the one hidden.
    assert files.split_mounts([*rows, ("80", "22", "/", "over")])[1] == [("/home", "/dev/vg/home"), ("/data/x", "/dev/vdb"), ("/", "over")]
    # A chroot's listing: its mounts' parent is not listed; they are one tree all the same.
    assert files.split_mounts([("74", "66", "/data/x", "X"), ("75", "66", "/data", "T"), ("76", "66", "/proc", "p")])[1] == [("/data/x", "X")]


@pytest.mark.parametrize("shape", ["stacked", "nested", "flat"])
def test_reading_many_mounts_stays_linear(shape: str) -> None:
    """5,000 mounts stacked at one point (a script looping `mount`), nested 300 deep, or side by
    side: each mount is walked once (the first version took 13 s on the stack). Generous: a speed
    target lives in benchmarks; a quadratic walk misses this by far."""
    root = [("1", "0", "/", "r")]
    if shape == "stacked":
        mounts = root + [(str(n), str(n - 1), "/x", "s") for n in range(2, 5002)]
    elif shape == "nested":
        mounts = root + [(str(n), str(n - 1), "/d" * (n - 1), "n") for n in range(2, 302)]
    else:
        mounts = root + [(str(n), "1", f"/srv/{n}/a/b/c", "f") for n in range(2, 5002)]
    started = time.perf_counter()
    top = files.on_top(mounts)
    assert time.perf_counter() - started < 1.0
    assert len(top) == {"stacked": 2, "nested": 301, "flat": 5001}[shape]


def test_a_localfs_record_of_an_older_vfarm_says_its_volumes_are_not_verified() -> None:
    """localfs's record lists `mounts` since the check verifies them; an ok record of localfs
    without the key (an older vfarm wrote it) cannot be verified: the summary says so, on that
    handler's row, and guesses nothing (no failure, no warning). Other handlers never list any."""
    facts: dict[str, Any] = {"records": {"localfs": {"status": "ok", "reason": "2 volume(s)"}, "cvmfs": {"status": "ok"}}, "instance_id": "i-1",
                             "status": {"v1": {"init": {"errors": [], "start": 1.0, "finished": 2.0}}}, "result": {"v1": {"errors": []}}}
    summary = check.plan(facts, check.Settings())
    handlers = {h["name"]: (h["status"], h["reason"], h["failed"]) for h in summary["handlers"]}
    assert handlers == {"localfs": ("ok", "2 volume(s); volumes not verified: its record (an older vfarm's) lists no mounts", False),
                        "cvmfs": ("ok", "", False)}
    assert (summary["result"], summary["warnings"]) == ("ok", [])
    assert "volumes not verified" in check.render(summary)
    facts["records"]["localfs"] = {"status": "ok", "mounts": []}  # a record that lists none: nothing to verify, nothing to say
    assert check.plan(facts, check.Settings())["handlers"][0]["reason"] == ""


FSTAB_GENERATOR = Path("/usr/lib/systemd/system-generators/systemd-fstab-generator")


@pytest.mark.integration
@pytest.mark.skipif(not FSTAB_GENERATOR.exists(), reason="no systemd-fstab-generator on this host")
def test_the_boot_waits_for_the_volumes_so_the_check_does_not(tmp_path: Path) -> None:
    """Why the check does not wait for a volume itself: systemd's own fstab generator makes of each
    filesystem line localfs writes a mount unit ordered before local-fs.target (nofail alone would
    drop that: x-systemd.before=local-fs.target restores it), and a swap unit is before swap.target
    whatever its options (systemd.swap(5)). sysinit.target is after both, and cloud-final (after
    multi-user.target), hence the check, after it: the boot has waited for each device up to its
    timeout (90 s by default) before the check runs, and systemd does not mount one that comes later."""
    root = boot_root(tmp_path)
    status = handling.execute("localfs", lambda: SECTION, cc_localfs.work, directory=root / "var/log/vfarm", root=root,
                              runner=FakeRunner(machine=FakeMachine().add_vg("vg_local", 5000)))
    assert status["status"] == "ok", status["reason"]
    out = tmp_path / "units"
    for folder in ("normal", "early", "late"):
        (out / folder).mkdir(parents=True)
    env = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "SYSTEMD_FSTAB": str(root / "etc/fstab"), "SYSTEMD_PROC_CMDLINE": "", "SYSTEMD_IN_INITRD": "0"}
    subprocess.run([str(FSTAB_GENERATOR), *(str(out / f) for f in ("normal", "early", "late"))], env=env, check=True, capture_output=True)
    units = {path.name: path.read_text() for path in (out / "normal").glob("*.mount") if path.name != "-.mount"}  # not the image's root
    assert set(units) == {"var-lib-cvmfs.mount", "home.mount", "tmp.mount"}
    for name, text in units.items():
        assert "\nBefore=local-fs.target\n" in text and "nofail" in text, f"{name}:\n{text}"
