"""Every benchmark script in its --smoke mode (seconds, no VM), so the scripts cannot rot.

Each writes its section into a scratch BENCHMARKS.md; a second script must keep the first's."""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration  # starts processes (see tests/conftest.py)

REPO = Path(__file__).resolve().parents[2]
# A hang guard, not a time target: the slowest smoke (scale_sim.py) takes 41-44 s on a quiet machine
# and over 120 s while a CI run and a simulation load both cores.
SMOKE_TIMEOUT = 600
# script -> (section name, text its smoke section must contain)
SCRIPTS = {
    "boot_overhead.py": ("boot-overhead", "\nrun lvcreate --yes --wipesignatures y -n cvmfs"),
    "import_cost.py": ("import-cost", "in cloud-init (yaml+jsonschema loaded)"),
    "cold_start.py": ("cold-start", "| baked | 2 |"),
    "userdata_size.py": ("userdata-size", "| embed | 6 |"),
    "build_rate.py": ("build-rate", "| include --pin |"),  # smoke: baked and include --pin only
    "scale_sim.py": ("scale-sim", "| elastiq's rule |"),
}


def smoke(script: str, output: Path) -> str:
    done = subprocess.run([sys.executable, str(REPO / "benchmarks" / script), "--smoke", "--output", str(output)],
                          capture_output=True, text=True, timeout=SMOKE_TIMEOUT, cwd=REPO)
    assert done.returncode == 0, done.stderr[-2000:]
    return output.read_text()


@pytest.mark.parametrize("script", sorted(SCRIPTS))
def test_script_writes_its_section(script: str, tmp_path: Path) -> None:
    name, expected = SCRIPTS[script]
    output = tmp_path / "BENCHMARKS.md"
    output.write_text("# kept header\n\n<!-- bench:other -->\nother section\n<!-- /bench:other -->\n")
    text = smoke(script, output)
    assert text.startswith("# kept header")
    assert "other section" in text
    block = text.split(f"<!-- bench:{name} -->", 1)[1].split(f"<!-- /bench:{name} -->", 1)[0]
    assert expected in block
    assert f"Command: `benchmarks/{script} --smoke --output {output}`" in block
    assert "nproc" in block and "load average" in block


def test_a_section_is_replaced_not_appended(tmp_path: Path) -> None:
    sys.path.insert(0, str(REPO / "benchmarks"))
    import _common as common

    output = tmp_path / "B.md"
    for text in ("first", "second"):
        section = common.Section("x", "X", "benchmarks/x.py")
        section.add(text)
        common.write_section(section, output)
    other = common.Section("y", "Y", "benchmarks/y.py")
    common.write_section(other, output)
    result = output.read_text()
    assert result.count("<!-- bench:x -->") == 1 and "second" in result and "first" not in result
    assert result.index("<!-- bench:x -->") < result.index("<!-- bench:y -->")


def test_run_py_lists_every_script() -> None:
    done = subprocess.run([sys.executable, str(REPO / "benchmarks/run.py"), "--list"], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0
    listed = {line.split("\t")[1].split("/")[-1] for line in done.stdout.splitlines()}
    assert listed == set(SCRIPTS)
    bad = subprocess.run([sys.executable, str(REPO / "benchmarks/run.py"), "nope"], capture_output=True, text=True, timeout=60)
    assert bad.returncode == 1 and "unknown benchmark" in bad.stderr


@pytest.mark.parametrize("smoke_flag", [["--smoke"], []])
def test_a_smoke_run_never_writes_the_default_file(smoke_flag: list[str], tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """A smoke run without --output goes to a scratch file; a real run goes to BENCHMARKS.md (here a
    stand-in, so a regression cannot overwrite the repository's measurements)."""
    sys.path.insert(0, str(REPO / "benchmarks"))
    import _common as common

    default = tmp_path / "BENCHMARKS.md"
    default.write_text("# measured\n")
    monkeypatch.setattr(common, "DEFAULT_OUTPUT", default)
    monkeypatch.setenv("TMPDIR", str(tmp_path / "scratch"))
    (tmp_path / "scratch").mkdir()
    monkeypatch.setattr(common.tempfile, "tempdir", None)  # re-read TMPDIR
    written: list[Path] = []

    def run(args: argparse.Namespace, section: object) -> None:
        written.append(args.output)

    assert common.main("x", "X", "x.py", "a test", run, argv=smoke_flag) == 0
    if smoke_flag:
        assert written[0].parent.parent == tmp_path / "scratch"
        assert default.read_text() == "# measured\n"
        assert "(smoke run: not a measurement)" in written[0].read_text()
    else:
        assert written == [default]
        assert "<!-- bench:x -->" in default.read_text()
