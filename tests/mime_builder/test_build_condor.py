"""The condor section through `vfarm build` and `vfarm inspect`: the token file is read in (relative
to the config's folder), the part comes after localfs and cvmfs, and nothing either command
PRINTS carries the token, while the user-data itself does."""

from __future__ import annotations

import gzip
import json
import shutil
from pathlib import Path

import pytest
import yaml

from tests.mime_builder.test_build import parts_of
from vfarm.cli.main import main as vfarm
from vfarm.config import loader as configuration
from vfarm.mime_builder import mime

ROOT = Path(__file__).resolve().parents[2]
TOKEN = (ROOT / "examples/pool.token").read_text().strip()
CONFIG = """\
#multiple-config
condor:
  central-manager: cm.example.org:9620
  token-file: secrets/pool.token
  execute: /scratch/condor
cvmfs:
  local: {repositories: alice.cern.ch, http-proxy: "http://user:pw@squid.example.org:3128"}
localfs:
  parts: {scratch: {size: 60%VG, mount: /scratch}}
"""


@pytest.fixture
def farm(tmp_path: Path) -> Path:
    """A config in its own folder, its token beside it in secrets/ (relative to the config)."""
    folder = tmp_path / "farm"
    (folder / "secrets").mkdir(parents=True)
    shutil.copy(ROOT / "examples/pool.token", folder / "secrets/pool.token")
    (folder / "farm.yaml").write_text(CONFIG)
    return folder / "farm.yaml"


def condor_part(data: bytes) -> dict[str, object]:
    found = [payload for ctype, _, payload in parts_of(data) if ctype == "text/condor-config"]
    assert len(found) == 1
    doc = yaml.safe_load(found[0])
    section: dict[str, object] = doc["condor"]
    return section


@pytest.mark.parametrize("handlers", ["embed", "baked", "include=https://h.example.org/vfarm"])
def test_build_reads_the_token_file_and_prints_no_token(farm: Path, tmp_path: Path, handlers: str, capsys: pytest.CaptureFixture[str],
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)  # not the config's folder: token-file is relative to the config
    out = tmp_path / "ud"
    assert vfarm(["build", str(farm), "-o", str(out), "--handlers", handlers, "--max-size", "200000"]) == 0
    printed = capsys.readouterr()
    assert "vfarm build:" in printed.err
    assert TOKEN not in printed.out + printed.err
    data = out.read_bytes()
    section = condor_part(data)
    assert section["token"] == TOKEN and "token-file" not in section
    sections = ("text/localfs-config", "text/cvmfs-config", "text/condor-config")
    types = [ctype for ctype, _, _ in parts_of(data) if ctype in sections]
    assert types == ["text/localfs-config", "text/cvmfs-config", "text/condor-config"]


def test_build_to_stdout_carries_the_token_only_in_the_user_data(farm: Path, capsysbinary: pytest.CaptureFixture[bytes]) -> None:
    assert vfarm(["build", str(farm), "--handlers", "baked"]) == 0
    printed = capsysbinary.readouterr()
    assert TOKEN.encode() not in printed.err
    assert condor_part(printed.out)["token"] == TOKEN


def test_size_errors_and_warnings_print_no_token(farm: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert vfarm(["build", str(farm), "--max-size", "300"]) == 1
    err = capsys.readouterr().err
    assert "over the limit" in err and TOKEN not in err


def test_inspect_shows_the_condor_part_without_its_token(farm: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "ud"
    assert vfarm(["build", str(farm), "-o", str(out), "--handlers", "include=https://h.example.org/vfarm", "--gzip", "always"]) == 0
    assert gzip.decompress(out.read_bytes()).count(TOKEN.encode()) == 1
    capsys.readouterr()
    assert vfarm(["inspect", str(out)]) == 0
    text = capsys.readouterr().out
    assert "text/condor-config" in text and "condor-config.ccfg" in text
    line = next(row for row in text.splitlines() if row.startswith("part ") and "condor-config.ccfg" in row)
    assert "central-manager: 'cm.example.org:9620'" in line and "token: '***'" in line
    assert "http-proxy: 'http://user:***@squid.example.org:3128'" in text  # the same hiding for other secrets
    assert vfarm(["inspect", str(out), "--json"]) == 0
    raw = capsys.readouterr().out
    doc = json.loads(raw)
    condor = next(p for p in doc["parts"] if p["type"] == "text/condor-config")
    assert "token: '***'" in condor["content"]
    for printed in (text, raw):
        assert TOKEN not in printed and TOKEN.split(".")[2] not in printed and ":pw@" not in printed


def test_an_unreadable_token_file_is_one_line(farm: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (farm.parent / "secrets/pool.token").unlink()
    assert vfarm(["build", str(farm)]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "farm.yaml:" in err and "cannot read token file" in err and "Traceback" not in err


def test_text_without_a_file_reads_the_token_relative_to_the_working_folder(farm: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(farm.parent)
    config = configuration.load_text(CONFIG, "<text>")
    built = mime.build(config, handlers="baked")
    assert condor_part(built.data)["token"] == TOKEN
    monkeypatch.chdir(farm.parent / "secrets")
    with pytest.raises(mime.BuildError, match="condor.token-file: cannot read token file"):
        mime.build(configuration.load_text(CONFIG, "<text>"), handlers="baked")


def test_an_inline_token_travels_as_it_is(capsys: pytest.CaptureFixture[str]) -> None:
    text = f"condor:\n  central-manager: 10.0.0.1\n  token: {TOKEN}\n"
    built = mime.build(configuration.load_text(text, "<text>"), handlers="baked")
    assert condor_part(built.data) == {"central-manager": "10.0.0.1", "token": TOKEN}
