"""The README's console examples run and print what they say (docs with examples that run)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration  # starts processes (see tests/conftest.py)

ROOT = Path(__file__).resolve().parents[2]
DOCS = [ROOT / "README.md"]


def console_examples(path: Path) -> list[tuple[str, str, int]]:
    """(command, expected output, expected exit code) for each `$ vfarm ...` in ```console blocks.
    A following `$ echo $?` line gives the exit code (default 0)."""
    examples: list[tuple[str, str, int]] = []
    for block in re.findall(r"```console\n(.*?)```", path.read_text(), re.S):
        steps = re.split(r"^\$ ", block, flags=re.M)[1:]
        for step in steps:
            command, _, output = step.partition("\n")
            if command == "echo $?":
                cmd, out, _ = examples[-1]
                examples[-1] = (cmd, out, int(output.strip()))
            else:
                examples.append((command, output, 0))
    return examples


EXAMPLES = [(path, *example) for path in DOCS for example in console_examples(path)]


@pytest.mark.parametrize(("doc", "command", "output", "code"), EXAMPLES, ids=[e[1][:60] for e in EXAMPLES])
def test_console_example(doc: Path, command: str, output: str, code: int) -> None:
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}:{os.environ['PATH']}")
    result = subprocess.run(command, shell=True, cwd=ROOT, capture_output=True, text=True, env=env)
    assert result.returncode == code, result.stderr
    assert result.stdout + result.stderr == output


def test_readme_has_examples() -> None:
    assert len(console_examples(ROOT / "README.md")) >= 2
