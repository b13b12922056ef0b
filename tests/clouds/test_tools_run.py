"""tools/run's set-up steps, sourced with stand-ins for apt, dpkg and systemctl and the paths it
writes moved to a temporary folder: nothing on this machine is installed or changed."""

from __future__ import annotations

import os
import signal
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
RUN = ROOT / "tools" / "run"

pytestmark = pytest.mark.integration  # runs bash

# Sourced before each script: tools/run's functions, its policy-rc.d in TMP, stand-ins that log.
PRELUDE = f"""
source {RUN}
POLICY_RC=$TMP/policy-rc.d
log() {{ :; }}
dpkg-query() {{ [[ -f $TMP/installed ]] && echo "install ok installed"; return 0; }}
systemctl() {{ echo "systemctl $*" >>"$TMP/calls"; }}
apt-get() {{
  echo "apt-get $*" >>"$TMP/calls"
  [[ $1 == install* || $* == *" install "* ]] || return 0
  grep -q '^exit 101$' "$POLICY_RC" && echo guarded >>"$TMP/calls"
  if [[ -f $TMP/interrupt ]]; then kill -"$(cat "$TMP/interrupt")" $$; fi
  touch "$TMP/installed"
}}
"""


def _default_signals() -> None:
    # A shell started in the background (CI) inherits SIGINT ignored, and bash cannot trap a signal
    # ignored on entry: the bash under test gets the dispositions an interactive run has.
    for number in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(number, signal.SIG_DFL)


def bash(tmp_path: Path, script: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["bash", "-c", PRELUDE + script], capture_output=True, text=True, timeout=60,
                          env={**os.environ, "TMP": str(tmp_path)}, cwd=tmp_path, preexec_fn=_default_signals)


def calls(tmp_path: Path) -> str:
    return (tmp_path / "calls").read_text() if (tmp_path / "calls").exists() else ""


def test_tools_run_parses() -> None:
    assert subprocess.run(["bash", "-n", str(RUN)]).returncode == 0


@pytest.mark.parametrize(("name", "status"), [("INT", 130), ("TERM", 143), ("HUP", 129)])
def test_an_interrupted_install_leaves_no_policy_guard(tmp_path: Path, name: str, status: int) -> None:
    (tmp_path / "interrupt").write_text(name)
    done = bash(tmp_path, "setup_openstack; echo not reached")
    assert done.returncode == status and "not reached" not in done.stdout
    assert "guarded" in calls(tmp_path), "the install ran without the guard"
    assert not (tmp_path / "policy-rc.d").exists(), "the guard that blocks every service start stayed"


def test_a_later_run_removes_a_leftover_guard_and_disables_the_units(tmp_path: Path) -> None:
    """An earlier run was killed (SIGKILL: no trap) after installing the packages."""
    gone = subprocess.Popen(["true"])
    gone.wait()
    (tmp_path / "policy-rc.d").write_text(f"#!/bin/sh\n# vfarm tools/run policy guard, pid={gone.pid}\nexit 101\n")
    (tmp_path / "installed").touch()
    done = bash(tmp_path, "setup_openstack")
    assert done.returncode == 0, done.stderr
    assert not (tmp_path / "policy-rc.d").exists()
    assert "apt-get" not in calls(tmp_path)
    assert "systemctl --root=/ disable --quiet epmd.service" in calls(tmp_path), "the units stay enabled after an interrupted run"


def test_a_sites_own_policy_and_a_running_installs_guard_are_kept(tmp_path: Path) -> None:
    (tmp_path / "policy-rc.d").write_text("#!/bin/sh\n# the site's own\nexit 101\n")
    done = bash(tmp_path, "setup_openstack")
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "policy-rc.d").read_text() == "#!/bin/sh\n# the site's own\nexit 101\n"
    (tmp_path / "policy-rc.d").write_text(f"#!/bin/sh\n# vfarm tools/run policy guard, pid={os.getpid()}\nexit 101\n")
    assert bash(tmp_path, "setup_openstack").returncode == 0
    assert (tmp_path / "policy-rc.d").exists(), "another run's guard went while that run installs"


def test_unit_and_a_demos_help_set_up_the_venv_only(tmp_path: Path) -> None:
    venv = tmp_path / "venv/bin"
    venv.mkdir(parents=True)
    for name in ("pytest", "python"):
        (venv / name).write_text('#!/bin/sh\necho "ran $0 $*"\n')
        (venv / name).chmod(0o755)
    stubs = f"""VENV={tmp_path}/venv
setup() {{ echo FULL SETUP; exit 99; }}
setup_apt() {{ echo "setup_apt $*"; }}
setup_venv() {{ echo setup_venv; }}
"""
    unit = bash(tmp_path, stubs + "main unit -q")
    assert unit.stdout.splitlines() == ["setup_apt python3 python3-venv", "setup_venv", f"ran {venv}/pytest -m unit -q"], unit.stderr
    for demo, script in (("farm-demo", "tools/farm_demo.py"), ("demo", "tools/demo.py")):
        shown = bash(tmp_path, stubs + f"main {demo} --help")
        assert "FULL SETUP" not in shown.stdout and shown.stdout.splitlines()[-1] == f"ran {venv}/python {script} --help"
