"""No secret and no raw control character in what vfarm prints or logs, whatever the shape of the
URL or the error: EC2 errors and `--dry-run` lines (a real EC2 API: moto on loopback, or a
refusing loopback port), `vfarm inspect` and `vfarm summary` on hostile input, `vfarm build`
messages, the pin loader (the very code the user-data carries) and the final check's console line."""

from __future__ import annotations

import json
import logging
import re
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.cli.test_ec2_cli import one_line_failure, run
from tests.clouds.test_ec2 import closed_port
from tests.fixtures.moto import Ec2Endpoint
from vfarm.cc_modules import check
from vfarm.cc_modules import record as record_format
from vfarm.config import loader as configuration
from vfarm.display import ShownFormatter
from vfarm.mime_builder import mime

pytestmark = pytest.mark.integration  # starts processes (see tests/conftest.py)

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "examples" / "torino.yaml"
# Passwords of the shapes that used to leak; their pieces are distinctive markers.
PASSWORDS = ["Qx7Zk9Wm2", "Qx7/Zk9Wm2", "Qx7#Zk9Wm2", "Qx7@Zk9:Wm2", "Qx7%2FZk9"]
# What a terminal acts on: C0 but newline, DEL, C1, line/paragraph separators, bidi controls.
RAW_CONTROL = re.compile("[\x00-\x09\x0b-\x1f\x7f-\x9f\u061c\u200e\u200f\u2028-\u202e\u2066-\u2069]")
TITLE = "\x1b]0;owned\x07"  # retitles an xterm
OVERRIDE = "\u202e"  # right-to-left override: shows `exe.txt` for `txt.exe`


def pieces(password: str) -> list[str]:
    """The password and every piece a parser might quote after cutting it at a delimiter."""
    return [password] + [p for p in re.split(r"[/#@:%]", password) if len(p) >= 3]


def assert_clean(text: str, *secrets: str) -> None:
    for secret in secrets:
        for piece in pieces(secret):
            assert piece not in text, (piece, text)
    assert not RAW_CONTROL.search(text), repr(text)


# --- EC2 --------------------------------------------------------------------------------------


@pytest.mark.parametrize("password", PASSWORDS)
def test_ec2_connection_errors_hide_endpoint_credentials(ec2_endpoint: Ec2Endpoint, capsys: pytest.CaptureFixture[str], password: str) -> None:
    """botocore's errors quote the endpoint URL, and urllib's a piece of a URL it cannot parse."""
    for url in (f"http://user:{password}@127.0.0.1:{closed_port()}", f"http://:{password}@127.0.0.1:{closed_port()}/ec2"):
        err = one_line_failure(*run(capsys, "instances", "--endpoint-url", url), password)
        assert_clean(err, password)
        assert "***@127.0.0.1" in err, err


def test_ec2_api_errors_hide_endpoint_credentials(ec2_endpoint: Ec2Endpoint, capsys: pytest.CaptureFixture[str]) -> None:
    """An answer of the API (unknown image) names the endpoint: without its userinfo."""
    password = "Qx7Zk9Wm2"
    url = ec2_endpoint.url.replace("://", f"://user:{password}@", 1)
    args = ["launch", "ec2", str(EXAMPLE), "--image-id", "ami-0000000000000dead", "--instance-type", "t3.micro", "--endpoint-url", url, "--handlers", "baked"]
    err = one_line_failure(*run(capsys, *args), password)
    assert "unknown image ami-0000000000000dead" in err and "user:***@" in err, err


def test_dry_run_lines_hide_endpoint_credentials(capsys: pytest.CaptureFixture[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    password = "Qx7/Zk9#Wm2"
    url = f"http://KEY:{password}@127.0.0.1:{closed_port()}/ec2"
    argv = ["launch", "ec2", str(EXAMPLE), "--image-id", "ami-0123abcd", "--instance-type", "m5.large", "--tag", f"note=x{TITLE}y"]
    code, out, err = run(capsys, *argv, "--endpoint-url", url, "--handlers", "baked", "--dry-run")
    assert code == 0, err
    assert_clean(out + err, password)
    euca, _, aws = out.splitlines()
    assert f"-U 'http://KEY:***@127.0.0.1:{url.rsplit(':', 1)[1]}'" in euca
    assert "--endpoint-url 'http://KEY:***@127.0.0.1:" in aws
    assert "note=x\\x1b]0;owned\\x07y" in out  # the tag is still shown, escaped


# --- inspect, build ---------------------------------------------------------------------------


def hostile_userdata(password: str) -> bytes:
    """A MIME user-data by hand: a part whose file name retitles the terminal, an include with
    credentials, a config part whose proxy has a password with a slash."""
    text = (
        "MIME-Version: 1.0\n"
        'Content-Type: multipart/mixed; boundary="BOUNDARY"\n\n'
        "--BOUNDARY\n"
        'Content-Type: text/x-shellscript; charset="utf-8"\n'
        f'Content-Disposition: attachment; filename="run{TITLE}{OVERRIDE}hs.sh"\n\n'
        "#!/bin/sh\necho hi\n"
        "--BOUNDARY\n"
        'Content-Type: text/x-include-url; charset="utf-8"\n'
        'Content-Disposition: attachment; filename="include.txt"\n\n'
        f"#include\nhttp://user:{password}@handlers.example.org/vfarm/localfs_handler.py\n"
        "--BOUNDARY\n"
        'Content-Type: text/cvmfs-config; charset="utf-8"\n'
        'Content-Disposition: attachment; filename="cvmfs-config.ccfg"\n\n'
        f"cvmfs:\n  local:\n    http-proxy: 'http://:{password}@squid.example.org:3128;DIRECT'\n"
        "--BOUNDARY--\n"
    )
    return text.encode("utf-8")


@pytest.mark.parametrize("password", PASSWORDS)
def test_inspect_hides_credentials_and_escapes_file_names(tmp_path: Path, capsys: pytest.CaptureFixture[str], password: str) -> None:
    userdata = tmp_path / "hostile.userdata"
    userdata.write_bytes(hostile_userdata(password))
    code, out, err = run(capsys, "inspect", str(userdata))
    assert code == 0, err
    assert_clean(out + err, password)
    assert "run\\x1b]0;owned\\x07\\u202ehs.sh" in out  # shown, escaped, in the table and the warnings
    assert "include URL http://user:***@handlers.example.org/vfarm/localfs_handler.py is not https" in out
    assert "http-proxy: 'http://:***@squid.example.org:3128;DIRECT'" in out
    code, out, err = run(capsys, "inspect", str(userdata), "--json")
    assert code == 0, err
    assert_clean(out + err, password)
    doc = json.loads(out)
    assert doc["parts"][0]["filename"] == f"run{TITLE}{OVERRIDE}hs.sh"  # JSON keeps the value, escaped by the encoder
    assert doc["parts"][1]["urls"] == ["http://user:***@handlers.example.org/vfarm/localfs_handler.py"]


def test_inspect_text_hides_a_token_in_an_include_url_as_json_does(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    userdata = tmp_path / "include.txt"
    userdata.write_text("#include\nhttps://h.example.org/a?token=TOK123SECRET\n")
    for extra in ([], ["--json"]):
        code, out, err = run(capsys, "inspect", str(userdata), *extra)
        assert code == 0, err
        assert_clean(out + err, "TOK123SECRET")
        assert "token=***" in out


def test_build_messages_hide_credentials(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    password = "Qx7/Zk9@Wm2"
    code, out, err = run(capsys, "build", str(EXAMPLE), "--handlers", f"include=ftp://user:{password}@h.example.org/vfarm")
    assert code == 1 and "is not an http(s) URL" in err and "user:***@h.example.org" in err, err
    assert_clean(out + err, password)
    # A bare / ends the URL's authority (a password carries it as %2F): no instance could fetch
    # from it, so it is refused, the password hidden all the same.
    include = f"include=http://user:{password}@h.example.org/vfarm"
    code, out, err = run(capsys, "build", str(EXAMPLE), "-o", str(tmp_path / "ud"), "--handlers", include, "--pin")
    assert code == 1 and "'http://user:***@h.example.org/vfarm': its port is not a number" in err, err
    assert_clean(out + err, password)
    include = f"include=http://user:{password.replace('/', '%2F')}@h.example.org/vfarm"
    code, out, err = run(capsys, "build", str(EXAMPLE), "-o", str(tmp_path / "ud"), "--handlers", include, "--pin")
    assert code == 0, err
    assert_clean(out + err, password)
    assert_clean(out + err, password.replace("/", "%2F"))


@pytest.mark.parametrize("password", [*PASSWORDS, "Qx7 Zk9Wm2"])  # a blank, not allowed in a URL, still hidden
def test_validate_messages_hide_proxy_passwords(tmp_path: Path, capsys: pytest.CaptureFixture[str], password: str) -> None:
    """urllib's error for a proxy it cannot parse quotes a piece of the password."""
    farm = tmp_path / "farm.yaml"
    proxy = f"http://u:{password}@squid.example.org:3128|http://:{password}@squid2.example.org:3128;DIRECT"
    farm.write_text(f'#multiple-config\ncvmfs:\n  local:\n    repositories: alice.cern.ch\n    http-proxy: "{proxy}"\n')
    code, out, err = run(capsys, "validate", str(farm))
    assert_clean(out + err, password)
    assert code == 0 or "proxy 'http://u:***@squid.example.org:3128' does not parse" in err, err
    farm.write_text(f'#multiple-config\ncvmfs:\n  local:\n    repositories: alice.cern.ch\n    http-proxy: "http://u:{password}@squid.example.org"\n')
    code, out, err = run(capsys, "validate", str(farm))  # no port: refused, the password hidden whatever it holds
    assert code == 1 and ("proxy 'http://u:***@squid.example.org' has no port" in err or "does not parse" in err), err
    assert_clean(out + err, password)


# --- the pin loader, as the user-data carries it -------------------------------------------------


@pytest.mark.parametrize("password", ["Qx7Zk9Wm2", "Qx7%2FZk9Wm2", "Qx7#Zk9Wm2"])
def test_pin_loader_logs_and_records_hide_credentials(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture, torino: configuration.Config, password: str
) -> None:
    """The loader runs on the instance: fetches from a refusing loopback port, as cloud-init calls it."""
    base = f"http://user:{password}@127.0.0.1:{closed_port()}/vfarm"
    built = mime.build(torino, handlers=f"include={base}", pin=True, max_size=1 << 20)
    loader = next(p for p in built.parts if p.filename == "vfarm-pin-loader.py")
    monkeypatch.setenv("VFARM_LOG_DIR", str(tmp_path / "log"))
    monkeypatch.setenv("VFARM_PIN_RETRY_DELAY", "0")
    namespace: dict[str, Any] = {"__name__": "vfarm_pin_loader_under_test"}
    exec(compile(loader.payload.decode("utf-8"), "vfarm-pin-loader.py", "exec"), namespace)  # noqa: S102 - our own loader
    caplog.set_level(logging.DEBUG, logger="vfarm.pin")
    namespace["handle_part"](None, "__begin__", None, None, "once-per-instance")
    namespace["handle_part"](None, f"text/x-{TITLE}", f"name{TITLE}", "", "once-per-instance")
    records = sorted((tmp_path / "log").glob("*.status.json"))
    assert records, "every pinned handler failed to fetch: each left a failed record"
    for record in records:
        data = json.loads(record.read_text())
        assert data["status"] == "failed" and data["reason"].startswith("pinned handler not fetched from http://***@127.0.0.1:"), data
        assert list(data) == list(record_format.document("x", "failed", "", 0.0, None, "")), "the record's own format"
        assert_clean(data["reason"], password)
    logged = "\n".join(r.getMessage() for r in caplog.records)
    assert "fetching http://***@127.0.0.1:" in logged or "InvalidURL" in logged
    assert_clean(logged.replace("\n", " "), password)


@pytest.fixture(scope="module")
def torino() -> configuration.Config:
    return configuration.load_file(EXAMPLE)


# --- summaries and the final check's console line -----------------------------------------------


def hostile_summary(password: str) -> dict[str, Any]:
    reason = f"fetch of http://user:{password}@h.example.org/x failed{TITLE}\x1b[2J{OVERRIDE}\nforged line"
    return {
        "result": "failed",
        "instance_id": f"i-1{TITLE}",
        "vfarm_version": "1",
        "handlers": [{"name": f"local{TITLE}fs", "status": "failed", "expected": True, "seconds": 1.0, "reason": reason}],
        "cloud_init": {"state": "error", "stages": [{"stage": "init", "errors": [reason], "started": True, "finished": True, "seconds": 1}]},
        "unhandled_parts": [{"content_type": f"text/x{TITLE}", "start": reason}],
        "problems": [reason],
        "warnings": [reason],
        "decision": {"action": "poweroff", "delay": "now", "reason": reason},
    }


@pytest.mark.parametrize("password", PASSWORDS)
def test_summary_is_terminal_safe_and_hides_credentials(tmp_path: Path, capsys: pytest.CaptureFixture[str], password: str) -> None:
    path = tmp_path / "summary.json"
    path.write_text(json.dumps(hostile_summary(password)))
    code, out, err = run(capsys, "summary", str(path))
    assert code == 1, err  # the summary says failed
    assert_clean(out + err, password)
    assert "local\\x1b]0;owned\\x07fs" in out and "\\x1b[2J\\u202e\\x0aforged line" in out
    assert "forged line" not in [line.strip() for line in out.splitlines()]  # never a line of its own
    code, out, err = run(capsys, "summary", str(path), "--json")
    assert_clean(out + err, password)
    assert json.loads(out)["handlers"][0]["name"] == f"local{TITLE}fs"


def test_console_line_and_check_log_are_terminal_safe(tmp_path: Path) -> None:
    password = "Qx7/Zk9Wm2"
    summary = hostile_summary(password)
    line = check.console_line(summary, message=f"bye{TITLE}")
    assert_clean(line, password)
    assert line.startswith("bye\\x1b]0;owned\\x07: vfarm check: FAILED: fetch of http://user:***@h.example.org/x failed")
    paths = check.Paths(tmp_path)
    check.tell(paths, f"raw {TITLE} http://u:{password}@h")
    assert_clean((paths.log_dir / "check.log").read_text().rstrip("\n"), password)


def test_cloud_init_errors_in_the_summary_hide_credentials() -> None:
    """cloud-init's own error for a failed include quotes the URL it could not fetch."""
    password = "Qx7#Zk9Wm2"
    error = f"Failed fetching 'http://user:{password}@h.example.org/vfarm/localfs_handler.py' (404)"
    status = {"v1": {"init": {"errors": [error], "start": 1.0, "finished": 2.0, "recoverable_errors": {}}}}
    facts = {"records": {}, "status": status, "result": {"v1": {"errors": [error]}}, "userdata": {"sections": ["localfs"], "includes": ["x"]}}
    summary = check.plan(facts, check.Settings())
    assert summary["result"] == "failed"
    assert_clean(json.dumps(summary) + check.render(summary), password)
    assert "user:***@h.example.org" in check.render(summary)


def test_scaler_log_lines_are_one_line_and_hide_credentials() -> None:
    formatter = ShownFormatter("%(levelname)s %(message)s")
    record = logging.LogRecord("vfarm.scale", logging.WARNING, __file__, 1, "cloud error (%s): %s", ("launch", f"http://u:Qx7/Zk9@h{TITLE}\nx"), None)
    try:
        raise ValueError("boom\x1b[2J")
    except ValueError:
        record.exc_info = sys.exc_info()
    line = formatter.format(record)
    assert "\n" not in line and "Traceback" in line
    assert_clean(line, "Qx7/Zk9")
