"""The host runner: a failure names the command and its real cause, not only its last words."""

from __future__ import annotations

import subprocess

import pytest

from vfarm.clouds.hostcmd import CommandError, cause, run, start

pytestmark = pytest.mark.integration  # starts processes (see tests/conftest.py)

MMDEBSTRAP_TAIL = """I: automatically chosen format: directory
I: running apt-get update...
E: Unable to locate package not-a-package
E: apt-get --yes install failed
E: mmdebstrap failed to run
"""


def test_the_first_error_line_is_the_cause_and_the_last_is_kept() -> None:
    assert cause(MMDEBSTRAP_TAIL, 1) == "E: Unable to locate package not-a-package; E: mmdebstrap failed to run"


def test_a_single_line_or_nothing() -> None:
    assert cause("cp: cannot stat 'x': No such file or directory\n", 1) == "cp: cannot stat 'x': No such file or directory"
    assert cause("", 3) == "exit 3"
    assert cause("just some words\nthe end\n", 2) == "the end"


def test_a_real_failure_keeps_the_cause_and_the_whole_output() -> None:
    script = "printf 'I: working\\nE: Unable to locate package nope\\nE: mmdebstrap failed to run\\n' >&2; exit 1"
    with pytest.raises(CommandError) as caught:
        run(["sh", "-c", script])
    assert str(caught.value).startswith("sh -c ")
    assert "E: Unable to locate package nope; E: mmdebstrap failed to run" in str(caught.value)
    assert "I: working" in caught.value.output


def test_a_missing_program_is_one_line() -> None:
    with pytest.raises(CommandError, match="^no-such-program-vfarm: not installed"):
        run(["no-such-program-vfarm"])
    with pytest.raises(CommandError, match="^no-such-program-vfarm: not installed"):
        start(["no-such-program-vfarm"])


def test_start_gives_a_running_process_with_no_stdin() -> None:
    proc = start(["cat"], stdout=subprocess.PIPE)
    out, _ = proc.communicate(timeout=30)
    assert proc.returncode == 0 and out == b""
