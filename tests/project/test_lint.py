"""ruff and mypy over the whole project, as the brief asks: clean or the suite is red."""

from __future__ import annotations

import configparser
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration  # starts processes (see tests/conftest.py)

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent


def package_view(dest: Path) -> Path:
    """The installed layout (`vfarm/cc_modules/...`) as symlinks, so mypy sees the real package
    names that setup.cfg's package_dir gives the top-level folders."""
    cfg = configparser.ConfigParser()
    cfg.read(ROOT / "setup.cfg")
    mapping = dict(line.split("=") for line in cfg["options"]["package_dir"].split("\n") if "=" in line)
    mapping = {k.strip(): v.strip() for k, v in mapping.items()}
    root = dest / "vfarm"
    root.mkdir(parents=True)
    for entry in (ROOT / mapping["vfarm"]).iterdir():
        if entry.suffix == ".py":
            (root / entry.name).symlink_to(entry)
    for package, folder in mapping.items():
        if package != "vfarm" and (ROOT / folder).is_dir():
            (root / package.split(".", 1)[1]).symlink_to(ROOT / folder)
    return dest


def test_ruff_clean() -> None:
    result = subprocess.run([str(BIN / "ruff"), "check", "--no-cache", str(ROOT)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def mypy(tmp_path: Path, *targets: str) -> subprocess.CompletedProcess[str]:
    view = package_view(tmp_path / "view")
    env = dict(os.environ, MYPYPATH=str(view))
    cmd = [str(BIN / "mypy"), "--config-file", str(ROOT / "pyproject.toml"), "--cache-dir", str(tmp_path / "cache"), *targets]
    return subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=tmp_path)


def test_mypy_clean(tmp_path: Path) -> None:
    result = mypy(tmp_path, "-p", "vfarm")
    assert result.returncode == 0, result.stdout + result.stderr


def test_mypy_clean_benchmarks(tmp_path: Path) -> None:
    """mypy takes a package or files, not both in one run."""
    result = mypy(tmp_path, str(ROOT / "benchmarks"))
    assert result.returncode == 0, result.stdout + result.stderr


def test_mypy_clean_tests(tmp_path: Path) -> None:
    """The tests too: a fixture called with the wrong arguments, or a monkeypatch of an attribute
    that is not there, makes a test that proves nothing."""
    result = mypy(tmp_path, str(ROOT / "tests"))
    assert result.returncode == 0, result.stdout + result.stderr
