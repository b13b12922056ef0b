"""The config loader and `vfarm validate`: positions, every problem at once, exact messages."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from vfarm.mime_builder import cli
from vfarm.mime_builder.config import MAX_BYTES, ConfigError, load_file, load_text

HERE = Path(__file__).parent
BAD = sorted((HERE / "bad").glob("*.yaml"))
EXAMPLES = sorted((HERE.parent / "examples").glob("*.yaml"))


def errors_of(text: str) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        load_text(text, "f.yaml")
    return [str(p) for p in caught.value.problems]


def test_there_are_at_least_30_bad_files() -> None:
    assert len(BAD) >= 30


@pytest.mark.parametrize("path", BAD, ids=lambda p: p.stem)
def test_bad_file_gives_its_exact_message(path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(HERE.parent)
    rel = path.relative_to(HERE.parent)
    assert cli.main(["validate", "-q", str(rel)]) == 1
    out = capsys.readouterr()
    assert out.out == ""
    assert out.err == path.with_suffix(".err").read_text()
    for line in out.err.splitlines():
        assert line.startswith(f"{rel}:"), line


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.stem)
def test_examples_are_valid(path: Path) -> None:
    config = load_file(path)
    assert config.sections
    assert not config.warnings


def test_validate_command_as_a_process(tmp_path: Path) -> None:
    good, bad = HERE.parent / "examples" / "torino.yaml", tmp_path / "bad.yaml"
    bad.write_text("localfs:\n  parts:\n    home: 101\n")
    vfarm = [sys.executable, "-m", "vfarm"]
    ok = subprocess.run([*vfarm, "validate", str(good)], capture_output=True, text=True)
    assert ok.returncode == 0 and ok.stderr == ""
    failed = subprocess.run([*vfarm, "validate", str(good), str(bad)], capture_output=True, text=True)
    assert failed.returncode == 1
    assert failed.stderr == f"{bad}:3:11: localfs.parts.home: must be <= 100, got 101\n"
    assert "Traceback" not in failed.stderr


def test_all_problems_at_once_sorted_by_position() -> None:
    problems = errors_of("localfs:\n  parts:\n    data: 10\n  vg: 'a b'\ncvmfs:\n  instal: true\n")
    assert [p.split(": ")[0] for p in problems] == ["f.yaml:3:5", "f.yaml:4:7", "f.yaml:6:3"]
    assert "did you mean 'install'?" in problems[2]


def test_short_and_long_forms_read_alike() -> None:
    short = load_text("localfs:\n  parts:\n    home: 50\n    home-mount: /srv/home\n    swap: 100\n")
    long = load_text("localfs:\n  parts:\n    home: {size: 50%VG, mount: /srv/home}\n    swap: {size: 100%FREE, fs: swap}\n")
    from vfarm.cc_modules.localfs_spec import parse

    assert parse(short.sections["localfs"]) == parse(long.sections["localfs"])


def test_positions_of_keys_and_values() -> None:
    config = load_text("#multiple-config\nlocalfs:\n  parts:\n    home:   50\n")
    assert config.where(("localfs", "parts", "home")) == (4, 13)
    assert config.where(("localfs", "parts", "home"), at_key=True) == (4, 5)
    assert config.where(("localfs", "parts", "nothing", "deeper")) == (4, 5)


def test_first_line_is_optional_and_keys_stay_as_written() -> None:
    config = load_text("cvmfs:\n  local:\n    CVMFS_USE_GEOAPI: yes\n")
    assert config.sections == {"cvmfs": {"local": {"CVMFS_USE_GEOAPI": True}}}


def test_file_too_large(tmp_path: Path) -> None:
    big = tmp_path / "big.yaml"
    big.write_text("#multiple-config\n" + "#" * MAX_BYTES)
    with pytest.raises(ConfigError) as caught:
        load_file(big)
    assert str(caught.value) == f"{big}:1:1: file is larger than 256 KiB: not a vfarm config"


def test_unreadable_and_binary_files(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"missing.yaml:1:1: cannot read: No such file or directory"):
        load_file(tmp_path / "missing.yaml")
    binary = tmp_path / "bin.yaml"
    binary.write_bytes(b"localfs:\n\xff\xfe\n")
    with pytest.raises(ConfigError, match=r"bin.yaml:2:1: not UTF-8 text"):
        load_file(binary)


def test_small_aliases_are_fine_but_recursion_is_not() -> None:
    text = "cvmfs:\n  local:\n    repositories: &r [a.cern.ch]\n  repository:\n    a.cern.ch: {CVMFS_REPOSITORIES: *r}\n"
    assert load_text(text).sections["cvmfs"]["repository"]["a.cern.ch"] == {"CVMFS_REPOSITORIES": ["a.cern.ch"]}
    assert errors_of("a: &a [x, *a]\n") == ["f.yaml:1:4: an alias refers to the collection that contains it"]


def test_warning_does_not_fail(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    path = tmp_path / "warn.yaml"
    path.write_text("localfs:\n  parts:\n    cvmfs: 20\ncvmfs:\n  local:\n    http-proxy: DIRECT\n    cache-base: /srv/cvmfs\n")
    assert cli.main(["validate", str(path)]) == 0
    err = capsys.readouterr().err
    assert err == f"{path}:7:17: warning: cvmfs: cache-base /srv/cvmfs is on none of the localfs parts (/var/lib/cvmfs): the cvmfs part would go unused\n"


def test_sections_limit_what_a_handler_accepts() -> None:
    text = "cvmfs:\n  install: true\n"
    with pytest.raises(ConfigError, match="unknown section 'cvmfs'.*expected one of: localfs"):
        load_text(text, "part.ccfg", sections={"localfs"})
