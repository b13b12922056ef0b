"""One scaler per farm on a host (scaler/runlock.py): a second `vfarm scale` that may change the
farm is refused while the first runs; looking (--dry-run, --status, --snapshot) never is; the lock
goes with its process, however that ends; --status says whether a scaler runs here."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from vfarm.scaler import loop, runlock
from vfarm.scaler import plan as planner

from .test_scale_apply import SPEC, World, commands, instance, stderr_until


@pytest.fixture
def run_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    folder = tmp_path / "run"
    monkeypatch.setenv("VFARM_RUN_DIR", str(folder))
    return folder


def test_a_second_holder_of_one_farm_is_refused_with_the_first_ones_pid(run_dir: Path) -> None:
    with runlock.hold("torino") as path:
        assert path == run_dir / "scale-torino.lock" and path.read_text() == f"{os.getpid()}\n"
        assert path.stat().st_mode & 0o777 == 0o600  # no other user may open it, so none may lock it
        assert runlock.running("torino") == (True, os.getpid())
        with pytest.raises(runlock.RunLockError) as refused:
            with runlock.hold("torino"):
                pass
        message = str(refused.value)
        assert message.startswith(f"farm torino: another vfarm scale runs it on this host (pid {os.getpid()})")
        assert "--dry-run, --status and --snapshot" in message and "\n" not in message
        with runlock.hold("milano"):  # another farm's scaler is no conflict
            assert runlock.running("milano")[0]
    assert runlock.running("torino") == (False, None)
    assert path.read_text() == ""  # no pid of a process that is gone
    with runlock.hold("torino"):  # released at the end of the block
        pass


@pytest.mark.integration
def test_looking_never_makes_a_starting_scaler_fail(run_dir: Path, tmp_path: Path) -> None:
    """`running()` (every --status, every cycle of a status page) reads /proc/locks and takes no
    lock, so a scaler starting meanwhile is never refused: another process looks as fast as it can
    while this one takes and leaves the lock 3000 times."""
    with runlock.hold("torino"):
        pass
    looker = subprocess.Popen([sys.executable, "-c", "import sys\nfrom vfarm.scaler import runlock\n"
                               "print('looking', flush=True)\nwhile True: runlock.running('torino')"],
                              stdout=subprocess.PIPE, text=True, env={**os.environ, "VFARM_RUN_DIR": str(run_dir)})
    try:
        assert looker.stdout is not None and looker.stdout.readline() == "looking\n"
        for _ in range(3000):
            with runlock.hold("torino"):
                pass
        assert looker.poll() is None
    finally:
        looker.kill()
        looker.wait()


def test_no_lock_file_means_no_scaler_and_a_folder_others_may_write_is_refused(run_dir: Path) -> None:
    assert runlock.running("torino") == (False, None)
    run_dir.mkdir(mode=0o777)
    os.chmod(run_dir, 0o777)
    with pytest.raises(runlock.RunLockError, match="not a folder of this user's that only it may write to"):
        with runlock.hold("torino"):
            pass
    os.chmod(run_dir, 0o755)
    (run_dir / "scale-torino.lock").symlink_to(run_dir / "elsewhere")
    with pytest.raises(runlock.RunLockError, match="cannot open .*scale-torino.lock"):
        with runlock.hold("torino"):
            pass
    assert not (run_dir / "elsewhere").exists()


def test_a_users_scaler_is_refused_while_roots_runs_the_farm(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    root_dir, user_dir = tmp_path / "run-vfarm", tmp_path / "state"
    monkeypatch.setenv("VFARM_RUN_DIR", str(root_dir))
    with runlock.hold("torino"):
        monkeypatch.setattr(runlock, "SYSTEM_RUN_DIR", root_dir)
        monkeypatch.setenv("VFARM_RUN_DIR", str(user_dir))
        assert runlock.running("torino") == (True, os.getpid())
        with pytest.raises(runlock.RunLockError, match=f"pid {os.getpid()}.*lock: {root_dir}/scale-torino.lock"):
            with runlock.hold("torino"):
                pass
    with runlock.hold("torino") as path:  # root's ended: the user's own lock
        assert path == user_dir / "scale-torino.lock"


@pytest.mark.integration
def test_roots_scaler_is_refused_while_a_users_runs_the_farm(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Root finds a user's scaler of the farm by its lock wherever it is (the holders' open files),
    unless VFARM_RUN_DIR names the one folder to look in."""
    if os.geteuid() != 0:
        pytest.skip("root's view of other processes' open files")  # CI runs as root
    farm = f"user-farm-{os.getpid()}"
    user_lock = tmp_path / "home/.local/state/vfarm" / f"scale-{farm}.lock"
    user_lock.parent.mkdir(parents=True)
    holder = subprocess.Popen([sys.executable, "-c", "import fcntl, os, sys\nfd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT, 0o600)\n"
                               "fcntl.flock(fd, fcntl.LOCK_EX)\nprint('held', flush=True)\nsys.stdin.read()", str(user_lock)],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None and holder.stdout.readline() == "held\n"
        monkeypatch.delenv("VFARM_RUN_DIR")
        monkeypatch.setattr(runlock, "SYSTEM_RUN_DIR", tmp_path / "run-vfarm")
        assert runlock.running(farm) == (True, holder.pid)
        with pytest.raises(runlock.RunLockError, match=f"pid {holder.pid}.*lock: {user_lock}"):
            with runlock.hold(farm):
                pass
        monkeypatch.setenv("VFARM_RUN_DIR", str(tmp_path / "tests"))  # one folder named: only it counts
        assert runlock.running(farm) == (False, None)
        with runlock.hold(farm):
            pass
    finally:
        holder.kill()
        holder.wait()
    monkeypatch.delenv("VFARM_RUN_DIR")
    with runlock.hold(farm) as path:  # the user's ended
        assert path == tmp_path / "run-vfarm" / f"scale-{farm}.lock"


def test_the_lock_folder_by_user(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("VFARM_RUN_DIR", raising=False)
    monkeypatch.setattr(os, "geteuid", lambda: 0)
    assert runlock.lock_path("torino") == Path("/run/vfarm/scale-torino.lock")
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    monkeypatch.setenv("XDG_STATE_HOME", "/home/ada/.state")
    assert runlock.run_dir() == Path("/home/ada/.state/vfarm")
    monkeypatch.delenv("XDG_STATE_HOME")
    monkeypatch.setenv("HOME", "/home/ada")
    assert runlock.run_dir() == Path("/home/ada/.local/state/vfarm")


def test_proc_locks_lines_are_read_as_the_kernel_writes_them(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    locks = tmp_path / "locks"
    locks.write_text("1: POSIX  ADVISORY  WRITE 77 00:2a:99 0 EOF\n"
                     "2: FLOCK  ADVISORY  WRITE 4242 fd:01:123456 0 EOF\n"
                     "2: -> FLOCK  ADVISORY  WRITE 5151 fd:01:123456 0 EOF\n"
                     "3: FLOCK  ADVISORY  READ 88 garbage 0 EOF\n")
    monkeypatch.setattr(runlock, "PROC_LOCKS", locks)
    assert runlock._flock_holders() == {(0xFD, 1, 123456): 4242}  # a waiter (->) holds nothing
    monkeypatch.setattr(runlock, "PROC_LOCKS", tmp_path / "none")
    assert runlock._flock_holders() is None


def test_status_says_whether_a_scaler_of_the_farm_runs_here(run_dir: Path, caplog: pytest.LogCaptureFixture) -> None:
    w = World(caplog)
    w.cloud.instances["i-a"] = instance("i-a", w.now[0] - 100)
    snapshot = w.scaler.discover()
    result = planner.plan(snapshot, SPEC)
    idle = loop.status_document(result, snapshot, SPEC, w.scaler.applier.read_verdict)
    assert idle["scaler_here"] == {"running": False, "pid": None}
    assert commands._scaler_here(idle["scaler_here"]) == "scaler: no vfarm scale of this farm runs on this host\n"
    with runlock.hold(SPEC.name):
        busy = loop.status_document(result, snapshot, SPEC, w.scaler.applier.read_verdict)
    assert busy["scaler_here"] == {"running": True, "pid": os.getpid()}
    assert commands._scaler_here(busy["scaler_here"]) == f"scaler: pid {os.getpid()} runs this farm on this host\n"


FARM = ("check: {}\nscale:\n  name: t\n"
        "  cloud: {type: ec2, image-id: ami-1, instance-type: m1.small, endpoint-url: 'http://127.0.0.1:9', handlers: baked}\n"
        "  pool: {collector: '127.0.0.1:9'}\n  max-vms: 1\n  check-every: 1h\n")


@pytest.mark.integration
def test_a_second_scale_of_a_running_farm_is_refused_until_the_first_ends(tmp_path: Path) -> None:
    """Two real `vfarm scale` processes: the loop holds the farm (its pool is down: it runs on,
    skipping cycles); a second loop or --once is refused in one line naming the loop's pid, before
    anything is contacted; --once --dry-run goes on to the pool (and fails there); once the loop is
    killed (SIGKILL: no clean-up of its own) the farm is free again."""
    farm = tmp_path / "farm.yaml"
    farm.write_text(FARM)
    env = {**os.environ, "AWS_ACCESS_KEY_ID": "x", "AWS_SECRET_ACCESS_KEY": "y", "AWS_EC2_METADATA_DISABLED": "true",
           "VFARM_RUN_DIR": str(tmp_path / "run")}

    def scale(*extra: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "vfarm", "scale", str(farm), *extra], text=True, capture_output=True, timeout=120, env=env)

    first = subprocess.Popen([sys.executable, "-m", "vfarm", "scale", str(farm)], stderr=subprocess.PIPE, text=True, env=env)
    try:
        seen = stderr_until(first, "cycle skipped, nothing changed: collector 127.0.0.1:9")
        assert first.poll() is None, "".join(seen)

        for extra in ([], ["--once"]):
            refused = scale(*extra)
            assert refused.returncode == 1 and not refused.stdout, refused
            assert refused.stderr.startswith(f"vfarm: farm t: another vfarm scale runs it on this host (pid {first.pid})"), refused.stderr
            assert refused.stderr.count("\n") == 1
        looked = scale("--once", "--dry-run")
        assert looked.returncode == 1 and looked.stderr.startswith("vfarm: collector 127.0.0.1:9"), looked.stderr
    finally:
        first.send_signal(signal.SIGKILL)
        first.communicate(timeout=60)
    after = scale("--once")
    assert after.returncode == 1 and after.stderr.startswith("vfarm: collector 127.0.0.1:9"), after.stderr
