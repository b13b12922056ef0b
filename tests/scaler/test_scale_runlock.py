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
        assert runlock.running("torino") == (True, str(os.getpid()))
        with pytest.raises(runlock.RunLockError) as refused:
            with runlock.hold("torino"):
                pass
        message = str(refused.value)
        assert message.startswith(f"farm torino: another vfarm scale runs it on this host (pid {os.getpid()})")
        assert "--dry-run, --status and --snapshot" in message and "\n" not in message
        with runlock.hold("milano"):  # another farm's scaler is no conflict
            assert runlock.running("milano")[0]
    assert runlock.running("torino") == (False, "")
    with runlock.hold("torino"):  # released at the end of the block
        pass


def test_no_lock_file_means_no_scaler_and_a_folder_others_may_write_is_refused(run_dir: Path) -> None:
    assert runlock.running("torino") == (False, "")
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


def test_the_lock_folder_by_user(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("VFARM_RUN_DIR", raising=False)
    monkeypatch.setattr(os, "geteuid", lambda: 0)
    assert runlock.lock_path("torino") == Path("/run/vfarm/scale-torino.lock")
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    monkeypatch.setenv("XDG_RUNTIME_DIR", "/run/user/1000")
    assert runlock.run_dir() == Path("/run/user/1000/vfarm")
    monkeypatch.delenv("XDG_RUNTIME_DIR")
    assert runlock.run_dir().name == "vfarm-1000"


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
