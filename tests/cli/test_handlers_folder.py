"""`vfarm handlers --only` on a folder an earlier run filled: what it leaves is said, never silently unlisted."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from vfarm.cli.main import main


def test_only_names_the_handlers_it_left_unlisted(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    folder = tmp_path / "www"
    assert main(["handlers", str(folder)]) == 0
    stale = folder / "localfs_handler.py"
    stale.write_text("# an older vfarm's handler\n")
    capsys.readouterr()
    assert main(["handlers", "--only", "cvmfs", str(folder)]) == 0
    err = capsys.readouterr().err
    assert f"warning: {stale} was left as it was, now unlisted in SHA256SUMS" in err
    assert stale.read_text() == "# an older vfarm's handler\n"  # never removed: the admin decides
    assert "localfs_handler.py" not in (folder / "SHA256SUMS").read_text()
    assert main(["handlers", "--only", "cvmfs", "--json", str(folder)]) == 0
    report = json.loads(capsys.readouterr().out)
    assert str(stale) in report["unlisted"] and str(folder / "cvmfs_handler.py") not in report["unlisted"]


def test_a_fresh_folder_has_nothing_unlisted(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["handlers", "--only", "localfs", "--json", str(tmp_path / "www")]) == 0
    captured = capsys.readouterr()
    assert json.loads(captured.out)["unlisted"] == [] and "warning" not in captured.err


def test_a_file_where_the_folder_should_be_is_named_as_such(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "www").write_text("not a folder\n")
    assert main(["handlers", str(tmp_path / "www")]) == 1
    assert capsys.readouterr().err == f"vfarm: {tmp_path / 'www'} is not a folder: name a folder (made when missing) for the handlers\n"
    assert (tmp_path / "www").read_text() == "not a folder\n"


def test_build_with_an_empty_output_name_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    example = Path(__file__).resolve().parents[2] / "examples" / "torino.yaml"
    assert main(["build", str(example), "--handlers", "baked", "-o", ""]) == 2
    out, err = capsys.readouterr()
    assert out == "" and err == "vfarm build: error: -o names no file (leave -o out, or give -, for stdout)\n"
