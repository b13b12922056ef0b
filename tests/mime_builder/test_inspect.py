"""`vfarm inspect`: parts in cloud-init's order, who takes each, and the warnings."""

from __future__ import annotations

import gzip
import json
from email.mime.application import MIMEApplication
from email.mime.multipart import MIMEMultipart
from email.mime.text import MIMEText
from pathlib import Path

import pytest

from vfarm.cli.main import main as vfarm
from vfarm.config import loader as configuration
from vfarm.mime_builder import mime
from vfarm.mime_builder.inspect import inspect_bytes
from vfarm.mime_builder.limits import EC2_LIMIT

EXAMPLE = Path(__file__).resolve().parents[2] / "examples/torino.yaml"


@pytest.fixture(scope="module")
def torino() -> configuration.Config:
    return configuration.load_file(EXAMPLE)


def mime_of(*parts: tuple[str, str, str]) -> bytes:
    message = MIMEMultipart()
    for subtype, filename, text in parts:
        part = MIMEText(text, subtype, "utf-8")
        part.add_header("Content-Disposition", "attachment", filename=filename)
        message.attach(part)
    return message.as_bytes()


def test_embed_is_clean(torino: configuration.Config) -> None:
    report = inspect_bytes(mime.build_userdata(torino, gzip="always", max_size=1 << 20), limit=1 << 20)
    assert report.compressed and report.mime
    assert [(p.type, p.filename) for p in report.parts][:3] == [
        ("text/part-handler", "vfarm-library.py"),
        ("text/part-handler", "localfs_handler.py"),
        ("text/part-handler", "cvmfs_handler.py"),
    ]
    handled = {p.filename: p.handler for p in report.parts}
    assert handled["localfs-config.ccfg"] == "part 2 (localfs_handler.py)"
    assert handled["cvmfs-config.ccfg"] == "part 3 (cvmfs_handler.py)"
    assert handled["vfarm-check.cfg"] == "cloud-init cloud-config"
    assert report.warnings == []


def test_over_the_limit(torino: configuration.Config) -> None:
    data = mime.build_userdata(torino, max_size=1 << 20)
    assert any(w.endswith(f"over the limit of {EC2_LIMIT} bytes") for w in inspect_bytes(data).warnings) == (len(data) > EC2_LIMIT)
    assert inspect_bytes(data, limit=100).warnings[-1] == f"{len(data)} bytes: {len(data) - 100} over the limit of 100 bytes"


def test_include_urls_warn_unpinned_and_plain_http(torino: configuration.Config) -> None:
    report = inspect_bytes(mime.build_userdata(torino, handlers="include=http://h.example.org/v"))
    include = report.parts[0]
    assert include.urls == ["http://h.example.org/v/localfs_handler.py", "http://h.example.org/v/cvmfs_handler.py", "http://h.example.org/v/vfarm-check.py"]
    assert include.registers == ["text/localfs-config", "text/cvmfs-config"]  # the check takes no type
    assert report.parts[1].handler == "part 1 (vfarm-handlers.txt)"  # the handler named by the URL
    assert sum("is not https" in w for w in report.warnings) == 3
    assert sum("is not pinned" in w for w in report.warnings) == 3
    pinned = inspect_bytes(mime.build_userdata(torino, handlers="include=https://h.example.org/v", pin=True))
    assert pinned.parts[0].registers == ["text/cvmfs-config", "text/localfs-config"]
    assert len(pinned.parts[0].urls) == 3 and pinned.warnings == []


def test_baked_says_who_must_have_the_handler(torino: configuration.Config) -> None:
    report = inspect_bytes(mime.build_userdata(torino, handlers="baked"))
    assert [p.handler for p in report.parts] == ["none in this user-data"] * 2
    assert all("baked in" in w for w in report.warnings) and len(report.warnings) == 2


def test_part_before_its_handler_and_unknown_type() -> None:
    handler = "#part-handler\ndef list_types():\n    return ['text/localfs-config']\ndef handle_part(*args):\n    pass\n"
    data = mime_of(("localfs-config", "l.ccfg", "localfs: {}\n"), ("part-handler", "h.py", handler), ("x-nothing", "n.txt", "hi\n"))
    report = inspect_bytes(data)
    assert report.parts[0].handler == "none: its handler comes later"
    assert report.parts[1].registers == ["text/localfs-config"]
    assert "part 1 (l.ccfg, text/localfs-config) comes before its handler (part 2): cloud-init drops it" in report.warnings
    assert "part 3 (n.txt): nobody handles text/x-nothing: cloud-init drops it" in report.warnings


@pytest.mark.parametrize("body", ["localfs: 2001-02-30\n", "localfs: !!int 0x_\n", "localfs: 2001-13-01 10:00:00\n"])
def test_a_config_part_pyyaml_cannot_build_is_listed_without_its_content(body: str) -> None:
    """PyYAML raises ValueError (not a YAMLError) building an impossible date or a bad !!int."""
    report = inspect_bytes(mime_of(("localfs-config", "l.ccfg", body)))
    assert [p.filename for p in report.parts] == ["l.ccfg"] and report.parts[0].content is None


@pytest.mark.parametrize("body,why", [
    ("condor: {central-manager: cm, token: s3cret\n", "not YAML (expected ',' or '}', but got '<stream end>' at line 2)"),
    ("localfs:\n  parts: {home: 50}\n", "it does not hold one 'condor:' section, as its type text/condor-config says"),
    ("\tcondor: {}\n", "not YAML (found character '\\t' that cannot start any token at line 1)"),
])
def test_a_vfarm_config_part_its_handler_cannot_read_is_warned_about(body: str, why: str) -> None:
    report = inspect_bytes(mime_of(("condor-config", "c.ccfg", body)))
    assert report.parts[0].content is None
    assert f"part 1 (c.ccfg) is a config part vfarm's loader refuses: {why}" in report.warnings, report.warnings
    assert not any("s3cret" in w for w in report.warnings)


def test_another_handlers_config_type_may_hold_anything() -> None:
    report = inspect_bytes(mime_of(("site-config", "s.ccfg", "not: [yaml\n")))
    assert report.parts[0].content is None and not any("loader refuses" in w for w in report.warnings), report.warnings


def test_compressed_custom_part() -> None:
    message = MIMEMultipart()
    part = MIMEApplication(gzip.compress(b"localfs:\n  parts: {home: 50}\n"), "gzip")
    part.add_header("Content-Disposition", "attachment", filename="localfs.gz")
    message.attach(part)
    report = inspect_bytes(message.as_bytes())
    assert report.parts[0].type == "text/plain"
    assert any("gzip-compressed part" in w and "compress the whole user-data" in w for w in report.warnings)


def test_not_mime() -> None:
    report = inspect_bytes(b"#cloud-config\nruncmd: [true]\n")
    assert not report.mime and report.parts[0].type == "text/cloud-config" and report.warnings == []
    assert "does not recognise" in inspect_bytes(b"hello\n").warnings[0]


def test_a_config_file_given_for_user_data_says_what_to_run() -> None:
    config = (Path(__file__).resolve().parents[2] / "examples" / "torino.yaml").read_bytes()
    warnings = inspect_bytes(config).warnings
    assert warnings[0] == "this is a vfarm config file (#multiple-config), not user-data: `vfarm build FILE` makes its user-data"
    assert "does not recognise" in warnings[1]
    assert not any("vfarm config" in w for w in inspect_bytes(b"hello\n#multiple-config\n").warnings)


def test_cli_table_and_json(torino: configuration.Config, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "ud"
    path.write_bytes(mime.build_userdata(torino, handlers="include=http://h.example.org/v"))
    assert vfarm(["inspect", str(path)]) == 0
    out = capsys.readouterr().out
    assert "text/x-include-url" in out and "HANDLED BY" in out and "warning: part 1: include URL" in out
    assert vfarm(["inspect", str(path), "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["parts"][0]["type"] == "text/x-include-url" and doc["size"] == path.stat().st_size and doc["warnings"]
