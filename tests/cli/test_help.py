"""Every command's --help: a description, help for every argument, examples that work as shown.

The examples are parsed against the real parser (all of them), and the ones that need no cloud,
VM, image build or pool are run, in the order --help lists them, from a folder holding a copy of
the project's examples/: each must exit 0 (a pipe: every command of it).
"""

from __future__ import annotations

import argparse
import os
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from vfarm.cli import main as cli

REPO = Path(__file__).resolve().parents[2]
# Commands whose examples run here as they are: they read and write files only.
OFFLINE = ("validate", "plan", "build", "inspect", "handlers")
# Options that make any command call nothing outside this machine.
OFFLINE_OPTIONS = ("--dry-run", "--snapshot")
# ... unless the command also needs something that is not here (a pool, a cloud, a VM).
NEEDS_MORE = ("--once", "--status", "--http", "launch local")


def leaf_commands(parser: argparse.ArgumentParser, path: tuple[str, ...] = ()) -> list[tuple[tuple[str, ...], argparse.ArgumentParser]]:
    """(the words that name it, its parser) of every command that runs something, in --help's order."""
    found = []
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                found += leaf_commands(sub, (*path, name))
    return found or [(path, parser)]


LEAVES = leaf_commands(cli.build_parser(["--help"]))


def examples_of(parser: argparse.ArgumentParser) -> list[str]:
    lines = (parser.epilog or "").splitlines()
    start = lines.index("examples:") + 1 if "examples:" in lines else len(lines)
    return [line.strip() for line in lines[start:] if line.startswith("  ")]


def runs_here(example: str) -> bool:
    words = shlex.split(example)
    offline = words[1] in OFFLINE or any(option in words for option in OFFLINE_OPTIONS)
    return offline and not any(more in example for more in NEEDS_MORE)


def ids(leaves: list[tuple[tuple[str, ...], argparse.ArgumentParser]]) -> list[str]:
    return [" ".join(path) for path, _ in leaves]


@pytest.mark.parametrize(("path", "parser"), LEAVES, ids=ids(LEAVES))
def test_help_describes_every_argument_and_shows_examples(path: tuple[str, ...], parser: argparse.ArgumentParser) -> None:
    assert parser.description and len(parser.description) > 40, f"vfarm {' '.join(path)}: no description"
    for action in parser._actions:
        assert action.help, f"vfarm {' '.join(path)}: {action.metavar or action.dest} has no help"
    assert examples_of(parser), f"vfarm {' '.join(path)}: no examples"
    assert "exit codes: 0 " in (parser.epilog or "")
    text = parser.format_help()
    assert "examples:\n  vfarm " in text


@pytest.mark.parametrize(("path", "parser"), LEAVES, ids=ids(LEAVES))
def test_every_example_parses_as_the_command_it_shows(path: tuple[str, ...], parser: argparse.ArgumentParser) -> None:
    for example in examples_of(parser):
        for command in example.split(" | "):
            words = shlex.split(command)
            assert words[0] == "vfarm", example
            args = cli.build_parser(words[1:]).parse_args(words[1:])  # argparse exits (SystemExit) on a bad one
            assert callable(args.func)
        shown = [tuple(shlex.split(command)[1 : 1 + len(path)]) for command in example.split(" | ")]
        assert path in shown, f"an example of vfarm {' '.join(path)} runs another command: {example}"


def test_some_examples_run_here_and_others_are_only_parsed() -> None:
    every = [e for _, p in LEAVES for e in examples_of(p)]
    assert 10 <= sum(map(runs_here, every)) < len(every)


@pytest.mark.integration
def test_the_examples_that_need_no_cloud_run_as_shown(tmp_path: Path) -> None:
    shutil.copytree(REPO / "examples", tmp_path / "examples")
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    ran = []
    for _path, parser in sorted(LEAVES, key=lambda leaf: OFFLINE.index(leaf[0][0]) if leaf[0][0] in OFFLINE else len(OFFLINE)):
        for example in filter(runs_here, examples_of(parser)):
            result = subprocess.run(["bash", "-o", "pipefail", "-c", example + " >/dev/null"], cwd=tmp_path, env=env, capture_output=True,
                                    text=True, timeout=120)
            assert result.returncode == 0, f"{example}\n{result.stderr}"
            assert "Traceback" not in result.stderr
            ran.append(example)
    assert any(e.startswith("vfarm inspect torino-pinned.mime") for e in ran)  # made by build's example before it
    assert (tmp_path / "site-handlers" / "SHA256SUMS").is_file()
