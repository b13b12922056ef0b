"""The command line as a whole: every command known to the lazy loader, and what a run imports."""

from __future__ import annotations

import argparse
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
