"""The command runner's limits: timeouts that kill the whole command, a default timeout, bounded
output, lenient decoding, and redaction before the log shortens output.

New names of the runner are read with getattr/raising=False, so that these tests fail on their
assertions (not on an import) against a runner without the fix they test."""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path
from typing import Optional

import pytest

from tests.fakesystem import FakeRunner
from vfarm.cc_modules import runner as runner_module
from vfarm.cc_modules.runner import MAX_LOGGED, CommandFailed, Result, Runner

MIB = 1024 * 1024
GONE_WITHIN = 5.0  # seconds a killed process may take to disappear (this container's init reaps late)


@pytest.fixture
def quick_kill(monkeypatch: pytest.MonkeyPatch) -> None:
    """A short SIGTERM grace, so a test's timeout stays about one second."""
    monkeypatch.setattr(runner_module, "KILL_GRACE", 0.5, raising=False)


def _alive(pid: int) -> bool:
    """Whether PID runs (a zombie, killed and not yet reaped by init, does not)."""
    try:
        os.kill(pid, 0)
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rpartition(")")[2].split()[0] != "Z"
    except (ProcessLookupError, FileNotFoundError):
        return False


def _gone(pids: list[int]) -> bool:
    deadline = time.monotonic() + GONE_WITHIN
    while time.monotonic() < deadline:
        if not any(_alive(pid) for pid in pids):
            return True
        time.sleep(0.05)
    return False


def _pids(*files: Path) -> list[int]:
    return [int(f.read_text()) for f in files if f.exists()]


def _kill(pids: list[int]) -> None:
    """Clean-up of what a runner without the fix leaves running."""
    for pid in pids:
        if _alive(pid):
            os.kill(pid, 9)


@pytest.mark.integration
@pytest.mark.usefixtures("quick_kill")
def test_timeout_kills_the_commands_children(logger: logging.Logger, tmp_path: Path) -> None:
    # As apt-get and its dpkg: a child, and one that ignores SIGTERM (SIGKILL must follow).
    plain, stubborn = tmp_path / "plain.pid", tmp_path / "stubborn.pid"
    script = f"sleep 30 & echo $! > {plain}; (trap '' TERM; exec sleep 30) & echo $! > {stubborn}; wait"
    try:
        result = Runner(logger).run(["sh", "-c", script], check=False, timeout=1)
        pids = _pids(plain, stubborn)
        assert len(pids) == 2 and result.returncode == 124
        assert _gone(pids), "a timed-out command's children still run"
    finally:
        _kill(_pids(plain, stubborn))


@pytest.mark.integration
@pytest.mark.usefixtures("quick_kill")
def test_timeout_keeps_the_stderr_written_before_it(logger: logging.Logger) -> None:
    result = Runner(logger).run(["sh", "-c", "echo 'waiting for the dpkg lock' >&2; exec sleep 30"], check=False, timeout=1)
    assert result.returncode == 124
    assert result.stderr.splitlines() == ["waiting for the dpkg lock", "timed out after 1 s"]
    assert result.summary().endswith("failed (exit 124): timed out after 1 s")


@pytest.mark.integration
def test_a_background_child_holding_the_pipes_does_not_hold_the_runner(logger: logging.Logger, tmp_path: Path) -> None:
    pid = tmp_path / "daemon.pid"
    try:
        result = Runner(logger).run(["sh", "-c", f"sleep 30 & echo $! > {pid}; echo started"], check=False, timeout=2)
        assert (result.returncode, result.stdout, result.stderr) == (0, "started\n", "")
        assert result.seconds < 2
    finally:
        _kill(_pids(pid))


def test_a_command_given_no_timeout_gets_the_default(logger: logging.Logger) -> None:
    seen: list[Optional[float]] = []

    class Recording(Runner):
        def _execute(self, argv: list[str], input: Optional[str], env: Optional[dict[str, str]], timeout: Optional[float]) -> Result:
            seen.append(timeout)
            return Result(argv, 0)

    Recording(logger).run(["mount", "/dev/vg/home", "/home"])
    Recording(logger).run(["mkfs.ext4", "/dev/vg/home"], timeout=42)
    # The modules' own tables use 60 s (mkdir) to 1800 s (install).
    assert seen[0] is not None and 60 <= seen[0] <= 1800 and seen[1] == 42


@pytest.mark.integration
@pytest.mark.usefixtures("quick_kill")
def test_the_default_timeout_stops_a_hung_command(logger: logging.Logger, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(runner_module, "DEFAULT_TIMEOUT", 1, raising=False)
    result = Runner(logger).run(["sleep", "4"], check=False)
    assert result.returncode == 124 and result.stderr == "timed out after 1 s"


@pytest.mark.integration
def test_output_past_the_bound_is_a_clear_failure_and_is_not_kept(logger: logging.Logger) -> None:
    with pytest.raises(CommandFailed, match=r"failed \(exit 125\): stdout larger than 4 MiB: not kept whole \(exit 0\)") as failed:
        Runner(logger).run(["head", "-c", str(64 * MIB), "/dev/zero"])
    kept = failed.value.result.stdout
    assert 4 * MIB <= len(kept) <= 4 * MIB + 64 * 1024 and "bytes dropped ...]" in kept


@pytest.mark.integration
def test_output_up_to_the_bound_is_whole_and_stderr_past_it_keeps_its_end(logger: logging.Logger) -> None:
    whole = Runner(logger).run(["head", "-c", str(4 * MIB), "/dev/zero"])
    assert len(whole.stdout) == 4 * MIB and whole.stderr == ""
    noisy = Runner(logger).run(["sh", "-c", f"head -c {5 * MIB} /dev/zero >&2; echo 'E: the real error' >&2"], check=False)
    assert noisy.returncode == 125 and len(noisy.stderr) < 5 * MIB
    assert noisy.stderr.endswith("\0E: the real error\nstderr larger than 4 MiB: not kept whole (exit 0)")


@pytest.mark.integration
def test_output_that_is_not_utf8_does_not_fail_a_command_that_worked(logger: logging.Logger, tmp_path: Path) -> None:
    result = Runner(logger).run(["sh", "-c", r"printf 'LABEL=caf\351\n'; printf 'warning: \377\n' >&2"])
    assert (result.returncode, result.stdout, result.stderr) == (0, "LABEL=caf\ufffd\n", "warning: \ufffd\n")
    assert "warning: \ufffd" in (tmp_path / "run.log").read_text()


def test_the_log_redacts_before_it_shortens(logger: logging.Logger, tmp_path: Path) -> None:
    # The log keeps the last MAX_LOGGED characters: here the cut falls inside the secret's
    # scheme (http://) and inside a JWT's head (eyJ), what redaction recognises them by.
    url = "E: Failed to fetch via http://alice:S3cretProxyPw@squid.example:3128/ "
    stderr = url + "x" * (MAX_LOGGED + url.index("http") + 1 - len(url))
    jwt = "eyJhbGciOiJIUzI1NiIsImtpZCI6IlBPT0wifQ.eyJzdWIiOiJjb25kb3JAcG9vbCJ9.SIGNATUREsignature0123456789abcdefABCDEF"
    token = f"token={jwt} "
    stdout = token + "y" * (MAX_LOGGED + token.index("eyJ") + 1 - len(token))
    FakeRunner(logger, answers={("apt-get",): (100, stdout, stderr)}).run(["apt-get", "update"], check=False)
    log = (tmp_path / "run.log").read_text()
    assert "S3cretProxyPw" not in log and "SIGNATUREsignature" not in log
