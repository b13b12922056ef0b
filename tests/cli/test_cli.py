"""The command line as a whole: every command known to the lazy loader, and what a run imports."""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import pytest

from vfarm.cli import main as cli

pytestmark = pytest.mark.integration  # starts processes (see tests/conftest.py)

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "torino.yaml"


def commands(parser: argparse.ArgumentParser) -> set[str]:
    action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return set(action.choices)


def test_every_command_is_in_the_lazy_table() -> None:
    everything = commands(cli.build_parser(["--help"]))
    assert everything == set(cli.COMMANDS)
    for name, modules in cli.COMMANDS.items():
        assert name in commands(cli.build_parser([name])), name
        assert set(modules) <= set(cli.COMMAND_MODULES)


def test_build_imports_no_cloud_scaler_or_network_code(tmp_path: Path) -> None:
    code = (
        "import sys\n"
        "from vfarm.cli.main import main\n"
        f"assert main(['build', {str(EXAMPLE)!r}, '--handlers', 'baked', '-o', {str(tmp_path / 'ud')!r}]) == 0\n"
        "print(sorted(m for m in sys.modules if m.startswith(('vfarm.clouds', 'vfarm.scaler', 'boto3', 'htcondor', 'urllib.request'))))\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


def test_a_config_from_standard_input(tmp_path: Path) -> None:
    """`-` reads the config from stdin; files it names are found from the current folder."""
    text = EXAMPLE.read_text()
    done = subprocess.run([sys.executable, "-m", "vfarm", "validate", "-"], input=text, capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert (done.returncode, done.stdout) == (0, "-: valid (localfs, cvmfs)\n"), done
    out = tmp_path / "ud.mime"
    done = subprocess.run([sys.executable, "-m", "vfarm", "build", "-", "--handlers", "baked", "-o", str(out)], input=text,
                          capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert done.returncode == 0 and out.read_bytes().startswith(b"Content-Type: multipart/mixed"), done.stderr
    condor = "#multiple-config\ncondor:\n  central-manager: cm.example.org\n  token-file: pool.token\n"
    done = subprocess.run([sys.executable, "-m", "vfarm", "validate", "-"], input=condor, capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert done.returncode == 1 and f"-:4:15: condor: cannot read token file {tmp_path / 'pool.token'}" in done.stderr, done.stderr
    done = subprocess.run([sys.executable, "-m", "vfarm", "validate", "-", "-"], input=text, capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert (done.returncode, done.stdout, done.stderr) == (2, "", "vfarm validate: error: '-' (standard input) can be read once only\n")
    done = subprocess.run([sys.executable, "-m", "vfarm", "launch", "ec2", "-", "--image-id", "ami-1", "--instance-type", "m1.small",
                           "--handlers", "baked", "--dry-run"], input=text, capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert done.returncode == 0 and "user-data to stdin.userdata" in done.stderr, done.stderr
    assert (tmp_path / "stdin.userdata").read_bytes() == out.read_bytes()


def test_validate_shows_a_path_with_control_characters_escaped_and_json_gives_it_as_is(tmp_path: Path) -> None:
    odd = tmp_path / "evil\x1b[31m.yaml"
    odd.write_bytes(EXAMPLE.read_bytes())
    text = subprocess.run([sys.executable, "-m", "vfarm", "validate", str(odd)], capture_output=True, text=True, timeout=120)
    assert text.returncode == 0 and "\x1b" not in text.stdout and "valid (localfs, cvmfs)" in text.stdout, text
    report = subprocess.run([sys.executable, "-m", "vfarm", "validate", "--json", str(odd)], capture_output=True, text=True, timeout=120)
    assert "\x1b" not in report.stdout  # JSON escapes it
    assert json.loads(report.stdout)[0]["file"] == str(odd)


@pytest.mark.parametrize("argv", [["build", "examples/torino.yaml", "--handlers", "baked"], ["validate", "--json", "examples/torino.yaml"]],
                         ids=["build", "validate-json"])
def test_output_onto_a_full_disk_is_one_line_and_exit_1(argv: list[str]) -> None:
    root = Path(__file__).resolve().parents[2]
    with open("/dev/full", "w") as full:
        done = subprocess.run([sys.executable, "-m", "vfarm", *argv], stdout=full, stderr=subprocess.PIPE, text=True, timeout=120, cwd=root)
    assert done.returncode == 1, done.stderr
    assert done.stderr == f"vfarm: {argv[0]}: cannot write the output: No space left on device\n"
    # Started with stdout closed (Python has no sys.stdout then): a report is dropped as print()
    # drops it; user-data is refused, in one line.
    closed = subprocess.run(["sh", "-c", 'exec "$0" -m vfarm "$@" >&-', sys.executable, *argv], stderr=subprocess.PIPE, text=True, timeout=120, cwd=root)
    if argv[0] == "build":
        assert (closed.returncode, closed.stderr) == (1, "vfarm: stdout is closed: write the user-data with -o FILE\n")
    else:
        assert (closed.returncode, closed.stderr) == (0, ""), closed.stderr


def test_launch_local_json_keeps_stdout_json_alone(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    """`vfarm launch local --json | jq`: the summary's table goes to stderr (no VM: a stand-in instance)."""
    from vfarm.cli import local as local_cli

    summary: dict[str, object] = {"result": "ok", "instance_id": "i-local-1", "handlers": {}, "problems": []}

    class Booted:
        folder = Path("/nonexistent")
        removed = False

        def boot(self, timeout: float) -> argparse.Namespace:
            return argparse.Namespace(powered_off=True)

        def summary(self) -> dict[str, object]:
            return summary

        def remove(self) -> None:
            self.removed = True

    booted = Booted()
    monkeypatch.setattr(local_cli, "make_instance", lambda *a, **k: booted)
    assert cli.main(["launch", "local", str(EXAMPLE), "--json"]) == 0
    out, err = capsys.readouterr()
    assert json.loads(out) == summary
    assert "i-local-1" in err and booted.removed
    assert cli.main(["launch", "local", str(EXAMPLE)]) == 0
    out, err = capsys.readouterr()
    assert "i-local-1" in out and not out.lstrip().startswith("{")


def test_an_output_in_a_folder_that_does_not_exist_is_refused_not_made(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A typo in -o is said: no folder is made for it (a dangling symlink's target's included)."""
    assert cli.main(["build", str(EXAMPLE), "--handlers", "baked", "-o", str(tmp_path / "typo/torino.mime")]) == 1
    assert capsys.readouterr().err == f"vfarm: cannot write {tmp_path / 'typo/torino.mime'}: no folder {tmp_path / 'typo'}\n"
    (tmp_path / "link").symlink_to(tmp_path / "gone/x")
    assert cli.main(["build", str(EXAMPLE), "--handlers", "baked", "-o", str(tmp_path / "link")]) == 1
    assert capsys.readouterr().err.endswith(f": no folder {tmp_path / 'gone'}\n")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["link"]
    assert cli.main(["build", str(EXAMPLE), "--handlers", "baked", "-o", str(tmp_path / "torino.mime")]) == 0
