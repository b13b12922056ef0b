"""tools/farm_demo.py and tools/demo.py around their real work (a pool, VMs): the --out folder,
the page's port, and ending on SIGTERM/SIGHUP with nothing left running."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace

import pytest

from tools import farm_demo
from vfarm.clouds import local_farm

ROOT = Path(__file__).resolve().parents[2]


def test_out_that_is_not_the_demos_is_refused_untouched(tmp_path: Path) -> None:
    """`--out .` in a checkout: as root, the old rmtree deleted it."""
    (tmp_path / "README.md").write_text("a checkout\n")
    with pytest.raises(farm_demo.DemoError, match=r"not empty and not an earlier demo's folder \(no \.vfarm-farm-demo\)"):
        farm_demo.prepare_out(tmp_path)
    assert (tmp_path / "README.md").read_text() == "a checkout\n"
    (tmp_path / "file").write_text("")
    with pytest.raises(farm_demo.DemoError, match="not a folder"):
        farm_demo.prepare_out(tmp_path / "file")


def test_out_of_an_earlier_demo_is_emptied_and_a_new_one_made(tmp_path: Path) -> None:
    out = tmp_path / "new/farm-demo"
    farm_demo.prepare_out(out)
    assert [p.name for p in out.iterdir()] == [farm_demo.MARKER]
    (out / "local/farm").mkdir(parents=True)
    (out / "scale.log").write_text("an earlier run\n")
    farm_demo.prepare_out(out)
    assert [p.name for p in out.iterdir()] == [farm_demo.MARKER]
    empty = tmp_path / "empty"
    empty.mkdir()
    farm_demo.prepare_out(empty)
    assert (empty / farm_demo.MARKER).is_file()


@pytest.fixture
def busy_port() -> Iterator[int]:
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        yield listener.getsockname()[1]


def test_a_port_in_use_or_out_of_range_is_refused(busy_port: int, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(farm_demo.DemoError, match=rf"--port {busy_port}: 127\.0\.0\.1:{busy_port} cannot be bound"):
        farm_demo.check_port(busy_port)
    for bad in ("0", "65536", "http"):
        with pytest.raises(SystemExit):
            farm_demo.main(["--port", bad])
        assert "argument --port: expected a whole number" in capsys.readouterr().err
    # Refused before anything starts (the pool, the out folder).
    assert farm_demo.main(["--port", str(busy_port), "--out", "/nonexistent/never-made"]) == 2
    assert not Path("/nonexistent").exists()


@pytest.mark.integration
def test_a_page_forward_that_cannot_listen_is_an_error(busy_port: int, tmp_path: Path) -> None:
    pool = SimpleNamespace(master_pid=os.getpid())
    with pytest.raises(farm_demo.DemoError, match=rf"socat on 127\.0\.0\.1:{busy_port}\) ended at once .*Address already in use"):
        farm_demo.page_forward(pool, busy_port, tmp_path / "forward.log")  # type: ignore[arg-type]


# A demo in miniature: a helper process group started as the scaler is, stopped in a finally.
DEMO = """
import sys, time
sys.path.insert(0, sys.argv[1])
from tools import farm_demo
from vfarm.clouds import local_farm
from tools.demo import exit_on_signals
exit_on_signals()
helper = farm_demo.start_group(["sh", "-c", "sleep 300 & wait"])
try:
    print(helper.pid, flush=True)
    time.sleep(300)
finally:
    farm_demo.stop_group(helper, timeout=10)
    print("cleaned up", flush=True)
"""


@pytest.mark.integration
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGHUP])
def test_sigterm_and_sighup_end_a_demo_through_its_clean_up(sig: signal.Signals) -> None:
    demo = subprocess.Popen([sys.executable, "-c", DEMO, str(ROOT)], stdout=subprocess.PIPE, text=True)
    group = 0
    try:
        assert demo.stdout is not None
        group = int(demo.stdout.readline())
        deadline = time.monotonic() + 10
        while len(local_farm.group_members(group)) < 2:  # sh and its sleep
            assert time.monotonic() < deadline, "the helper group did not start"
            time.sleep(0.05)
        demo.send_signal(sig)
        assert demo.wait(timeout=30) == 128 + sig
        assert demo.stdout.read() == "cleaned up\n"
        deadline = time.monotonic() + 10
        while local_farm.group_members(group):
            assert time.monotonic() < deadline, "the demo's helper group outlived it"
            time.sleep(0.05)
    finally:  # whatever failed: nothing of this test keeps running
        demo.kill()
        demo.wait()
        if group and local_farm.group_members(group):
            os.killpg(group, signal.SIGKILL)


def test_demo_help_starts_nothing(capsys: pytest.CaptureFixture[str]) -> None:
    from tools import demo

    assert demo.main(["--help"]) == 0
    assert "passed on to `vfarm launch local`" in capsys.readouterr().out
