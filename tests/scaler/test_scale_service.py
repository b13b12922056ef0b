"""examples/vfarm-scale@.service, the unit the README gives for running `vfarm scale` as a service:
systemd's own checker accepts it, and its ExecStart, run as systemd would run it (the instance name
for %i, the environment file's VFARM_SCALE_ARGS split into words), starts the loop with those
options; its ExecReload makes the loop read the farm file again; the signal it is stopped with
ends the loop with exit 0, which Restart=on-failure leaves stopped."""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest

from tests.fixtures.condor_pool import free_port

from .test_scale_apply import stderr_until, stop_and_read

UNIT = Path(__file__).resolve().parents[2] / "examples" / "vfarm-scale@.service"
INSTALLED = "/usr/local/bin/vfarm"
VFARM = str(Path(sys.executable).parent / "vfarm")


def settings(section: str) -> dict[str, str]:
    """KEY=VALUE lines of one [SECTION] of the unit (no key repeats in it)."""
    found: dict[str, str] = {}
    current = ""
    for line in UNIT.read_text().splitlines():
        if line.startswith("["):
            current = line.strip("[]")
        elif current == section and "=" in line and not line.startswith("#"):
            key, _, value = line.partition("=")
            assert key not in found, f"{key} twice in [{section}]"
            found[key] = value
    return found


def test_the_unit_runs_the_loop_and_says_how_it_stops() -> None:
    service = settings("Service")
    assert service["ExecStart"].startswith(f"{INSTALLED} scale /etc/vfarm/%i.yaml")
    assert service["EnvironmentFile"] == "-/etc/vfarm/%i.env"  # optional
    assert service["Restart"] == "on-failure" and "KillSignal" not in service  # SIGTERM: the loop's own stop
    assert service["KillMode"] == "mixed"  # the signal to vfarm scale alone, not to an admin-command it runs
    assert service["ExecReload"] == "/bin/kill -HUP $MAINPID"  # the loop reads the farm file again


@pytest.mark.integration
def test_systemd_accepts_the_unit(tmp_path: Path) -> None:
    analyze = shutil.which("systemd-analyze")
    assert analyze, "systemd-analyze is missing: tools/run setup installs systemd"
    (tmp_path / UNIT.name).write_text(UNIT.read_text().replace(INSTALLED, VFARM))
    done = subprocess.run([analyze, "verify", str(tmp_path / "vfarm-scale@torino.service")], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and not done.stdout and not done.stderr, done


def exec_start(instance: str, etc: Path) -> list[str]:
    """ExecStart as systemd runs it for INSTANCE, /etc/vfarm being ETC: %i replaced, the environment
    file read, an unquoted $VAR split on blanks into words."""
    service = settings("Service")
    env: dict[str, str] = {}
    env_file = Path(service["EnvironmentFile"].lstrip("-").replace("%i", instance).replace("/etc/vfarm", str(etc)))
    if env_file.exists():
        for line in env_file.read_text().splitlines():
            if line.strip() and not line.startswith("#"):
                key, _, value = line.partition("=")
                env[key.strip()] = value.strip()
    words: list[str] = []
    for word in shlex.split(service["ExecStart"].replace("%i", instance).replace("/etc/vfarm", str(etc))):
        variable = re.fullmatch(r"\$([A-Za-z_][A-Za-z0-9_]*)", word)
        words.extend(env.get(variable.group(1), "").split() if variable else [word])
    return [VFARM if words[0] == INSTALLED else words[0], *words[1:]]


@pytest.mark.integration
def test_its_command_starts_the_loop_with_the_env_files_options_reload_reads_the_file_and_sigterm_ends_it_cleanly(tmp_path: Path) -> None:
    etc = tmp_path / "etc-vfarm"
    etc.mkdir()
    (etc / "torino.yaml").write_text(
        "check: {}\nscale:\n  name: torino\n"
        "  cloud: {type: ec2, image-id: ami-1, instance-type: m1.small, endpoint-url: 'http://127.0.0.1:9', handlers: baked}\n"
        "  pool: {collector: '127.0.0.1:9'}\n  max-vms: 1\n  check-every: 1h\n")
    port = free_port()
    (etc / "torino.env").write_text(f"AWS_ACCESS_KEY_ID=x\nAWS_SECRET_ACCESS_KEY=y\nVFARM_SCALE_ARGS=--metrics-port {port}\n")
    argv = exec_start("torino", etc)
    assert argv == [VFARM, "scale", str(etc / "torino.yaml"), "--metrics-port", str(port)]
    env = {**os.environ, "AWS_ACCESS_KEY_ID": "x", "AWS_SECRET_ACCESS_KEY": "y", "AWS_EC2_METADATA_DISABLED": "true"}
    loop = subprocess.Popen(argv, stderr=subprocess.PIPE, text=True, env=env)
    try:
        seen = stderr_until(loop, "cycle skipped, nothing changed: collector 127.0.0.1:9")
        assert loop.poll() is None, "".join(seen)
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=30) as reply:
            assert 'vfarm_scale_cycles_total{farm="torino",result="skipped"} 1.0' in reply.read().decode()
        reload = shlex.split(settings("Service")["ExecReload"].replace("$MAINPID", str(loop.pid)))
        assert subprocess.run(reload, timeout=60).returncode == 0  # what systemctl reload runs
        seen += stderr_until(loop, "cycle skipped, nothing changed: collector 127.0.0.1:9")
        assert any("reloaded the farm file: no setting of the scale section changed" in line for line in seen), "".join(seen)
    finally:
        rest = stop_and_read(loop)  # systemctl stop: SIGTERM (KillMode=mixed: to vfarm scale alone)
    assert loop.returncode == 0, "".join(seen) + rest  # Restart=on-failure: a clean stop stays stopped
    assert "SIGTERM: stopping after this cycle" in rest
