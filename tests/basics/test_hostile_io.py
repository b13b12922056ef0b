"""Hostile files and output paths through the real `vfarm` command line: devices, FIFOs that
nobody writes or reads, directories, gzip bombs, deep JSON, huge numbers, wrong types, symlinks.

Every run has a 1 GiB address-space limit and a timeout: bad input is refused with exit 1 and one
located line on stderr, never a traceback, never a wait for a writer that will not come.
"""

from __future__ import annotations

import base64
import gzip
import json
import os
import re
import resource
import stat
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any, Optional, Union

import pytest

from vfarm import files, jsonbounds
from vfarm.cli import configfile
from vfarm.cli import main as cli
from vfarm.mime_builder import inspect as userdata
from vfarm.scaler import plan as planner

pytestmark = pytest.mark.integration  # starts processes (see tests/conftest.py)

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "examples/torino.yaml"
ADDRESS_SPACE = 1 << 30
# FIFOs are given up on after this (VFARM_IO_TIMEOUT); the default, 10 s, is tested apart.
IO_TIMEOUT_ENV, IO_TIMEOUT = "VFARM_IO_TIMEOUT", "0.2"
SCALE = """\
#multiple-config
scale:
  name: torino
  cloud: {type: ec2, image-id: ami-000070, instance-type: m1.large}
  pool: {collector: 127.0.0.1:9618}
  max-vms: 3
  cpus-per-vm: 4
"""
CONDOR = """\
#multiple-config
condor:
  central-manager: cm.example.org
  token-file: {token}
"""
GOOD_SNAPSHOT = {"now": 1700000000, "jobs": [], "slots": [], "instances": []}
GOOD_SUMMARY = {"result": "ok", "handlers": [], "decision": {"action": "none", "reason": "all ok"}}


def _limit_address_space() -> None:
    resource.setrlimit(resource.RLIMIT_AS, (ADDRESS_SPACE, ADDRESS_SPACE))


def vfarm(*args: Union[str, Path], stdin: Optional[Union[bytes, IO[Any]]] = None, cwd: Optional[Path] = None) -> subprocess.CompletedProcess[bytes]:
    """The real CLI in a child with 1 GiB of address space; a hang fails the test by timeout."""
    env = {**os.environ, IO_TIMEOUT_ENV: IO_TIMEOUT}
    data = stdin if isinstance(stdin, bytes) else None
    handle = stdin if stdin is not None and not isinstance(stdin, bytes) else (None if data is not None else subprocess.DEVNULL)
    return subprocess.run(
        [sys.executable, "-m", "vfarm", *map(str, args)],
        input=data, stdin=handle, capture_output=True, timeout=60, env=env, cwd=cwd, preexec_fn=_limit_address_space,
    )


def assert_refused(result: subprocess.CompletedProcess[bytes], *needles: str) -> str:
    err = result.stderr.decode("utf-8", "replace")
    assert result.returncode == 1, (result.returncode, err[-2000:])
    assert "Traceback" not in err and err.count("\n") == 1 and err.endswith("\n"), err[-2000:]
    for needle in needles:
        assert needle in err, err
    return err


@pytest.fixture(autouse=True)
def dev_stdout_stays() -> Iterator[None]:
    """The machine's /dev/stdout is still the link it was (writing `-o /dev/stdout` once replaced
    it with a plain file)."""
    before = os.readlink("/dev/stdout") if os.path.islink("/dev/stdout") else None
    yield
    assert (os.readlink("/dev/stdout") if os.path.islink("/dev/stdout") else None) == before, "/dev/stdout was replaced"


@pytest.fixture
def fifo(tmp_path: Path) -> Path:
    path = tmp_path / "fifo"
    os.mkfifo(path)
    return path


@pytest.fixture(scope="module")
def bomb_member() -> bytes:
    """One gzip member of 32 MiB of zeros (about 32 KiB): members concatenated are one gzip
    stream to Python and to cloud-init, so N of them unpack to N * 32 MiB."""
    return gzip.compress(bytes(32 << 20), 9)


def mime(*parts: tuple[str, str], extra_headers: str = "") -> bytes:
    out = ['Content-Type: multipart/mixed; boundary="XX"', "MIME-Version: 1.0", ""]
    for header, body in parts:
        out += ["--XX", header, "", body]
    return ("\n".join(out + ["--XX--", ""])).encode()


# --- inputs every command reads ------------------------------------------------------------------


@pytest.mark.parametrize("source", ["/dev/zero", "fifo", "dir"])
def test_config_inputs_are_bounded(source: str, tmp_path: Path, fifo: Path) -> None:
    path = {"/dev/zero": Path("/dev/zero"), "fifo": fifo, "dir": tmp_path}[source]
    expected = {"/dev/zero": "file is larger than 256 KiB", "fifo": "cannot read: no data within 0.2 s", "dir": "cannot read: is a directory"}[source]
    assert_refused(vfarm("validate", path), f"{path}:1:1: {expected}")


@pytest.mark.parametrize("source", ["/dev/zero", "fifo", "dir"])
def test_token_file_is_bounded(source: str, tmp_path: Path) -> None:
    # `token-file: /dev/zero` once read 3 GB and died of MemoryError.
    name = {"/dev/zero": "/dev/zero", "fifo": "token.fifo", "dir": "tokens"}[source]
    if source == "fifo":
        os.mkfifo(tmp_path / name)
    elif source == "dir":
        (tmp_path / name).mkdir()
    farm = tmp_path / "farm.yaml"
    farm.write_text(CONDOR.format(token=name))
    reason = {"/dev/zero": "larger than 16 KiB", "fifo": "no data within 0.2 s", "dir": "is a directory"}[source]
    for command in ("validate", "build") if source == "/dev/zero" else ("validate",):
        err = assert_refused(vfarm(command, farm), f"{farm}:4:", "cannot read token file", reason)
        assert err.startswith(str(farm))


@pytest.mark.parametrize("source", ["/dev/zero", "fifo", "dir"])
def test_attach_is_bounded(source: str, tmp_path: Path, fifo: Path) -> None:
    path = {"/dev/zero": "/dev/zero", "fifo": str(fifo), "dir": str(tmp_path)}[source]
    reason = {"/dev/zero": "larger than 1024 KiB", "fifo": "no data within 0.2 s", "dir": "is a directory"}[source]
    assert_refused(vfarm("build", EXAMPLE, "--handlers", "baked", "--attach", f"{path}:x-shellscript"), f"--attach {path}", reason)


@pytest.mark.parametrize("command", ["inspect", "summary", "snapshot"])
@pytest.mark.parametrize("source", ["/dev/zero", "fifo", "dir"])
def test_inspect_summary_and_snapshot_inputs_are_bounded(command: str, source: str, tmp_path: Path, fifo: Path) -> None:
    path = {"/dev/zero": Path("/dev/zero"), "fifo": fifo, "dir": tmp_path}[source]
    reason = {"/dev/zero": "cannot read: larger than", "fifo": "cannot read: no data within 0.2 s", "dir": "cannot read: is a directory"}[source]
    if command == "snapshot":
        farm = tmp_path / "farm.yaml"
        farm.write_text(SCALE)
        result = vfarm("scale", farm, "--snapshot", path)
    else:
        result = vfarm(command, path)
    assert_refused(result, f"vfarm: {path}: {reason}")


@pytest.mark.parametrize("command", ["inspect", "snapshot"])
def test_stdin_is_bounded(command: str, tmp_path: Path) -> None:
    farm = tmp_path / "farm.yaml"
    farm.write_text(SCALE)
    args = ["inspect", "-"] if command == "inspect" else ["scale", farm, "--snapshot", "-"]
    with open("/dev/zero", "rb") as zeros:
        assert_refused(vfarm(*args, stdin=zeros), "vfarm: -: cannot read: larger than")
    # and a pipe that stays open without data is given up on
    reader, writer = os.pipe()
    try:
        with os.fdopen(reader, "rb") as handle:
            assert_refused(vfarm(*args, stdin=handle), "vfarm: -: cannot read: no data within 0.2 s")
    finally:
        os.close(writer)


def test_a_fifo_whose_writer_comes_is_read(tmp_path: Path, fifo: Path) -> None:
    # The bound is a deadline, not a refusal of FIFOs: data written in time is read.
    (tmp_path / "farm.yaml").write_text(SCALE)
    proc = subprocess.Popen(
        [sys.executable, "-m", "vfarm", "scale", str(tmp_path / "farm.yaml"), "--snapshot", str(fifo), "--json"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, env={**os.environ, IO_TIMEOUT_ENV: "30"},
    )
    with open(fifo, "w") as writer:  # blocks until vfarm has opened the FIFO
        writer.write(json.dumps(GOOD_SNAPSHOT))
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    assert json.loads(out)["launch"] == 0


# --- inspect: gzip bombs, nesting, part counts, part-handlers, alias bombs --------------------------


def test_inspect_refuses_a_gzip_bomb(tmp_path: Path, bomb_member: bytes) -> None:
    bomb = tmp_path / "bomb.gz"
    bomb.write_bytes(bomb_member * 24)  # about 770 KiB that unpack to 768 MiB
    assert bomb.stat().st_size < 1 << 20  # under the size inspect reads
    err = assert_refused(vfarm("inspect", bomb), f"vfarm: {bomb}: gzip data that unpacks to more than 1 MiB")
    assert "refused" in err and "limit" in err


def test_inspect_refuses_a_gzip_bomb_in_a_part(tmp_path: Path, bomb_member: bytes) -> None:
    body = base64.encodebytes(bomb_member * 16).decode()
    path = tmp_path / "ud"
    path.write_bytes(mime(("Content-Type: application/gzip\nContent-Transfer-Encoding: base64", body)))
    assert_refused(vfarm("inspect", path), "part 1", "unpacks to more than 1 MiB")


def test_inspect_bounds_multipart_nesting_and_parts(tmp_path: Path) -> None:
    inner = "Content-Type: text/x-shellscript\n\n#!/bin/sh\ntrue\n"
    for level in range(3000):
        inner = f'Content-Type: multipart/mixed; boundary="b{level}"\n\n--b{level}\n{inner}\n--b{level}--\n'
    nested = tmp_path / "nested"
    nested.write_text("MIME-Version: 1.0\n" + inner)
    assert_refused(vfarm("inspect", nested), f"more than {userdata.MAX_CONTAINERS} multipart")
    many = tmp_path / "many"
    many.write_bytes(mime(*[("Content-Type: text/x-shellscript", "#!/bin/sh\ntrue")] * (userdata.MAX_PARTS + 1)))
    assert_refused(vfarm("inspect", many), f"more than {userdata.MAX_PARTS} parts")
    enough = tmp_path / "enough"
    enough.write_bytes(mime(*[("Content-Type: text/x-shellscript", "#!/bin/sh\ntrue")] * userdata.MAX_PARTS))
    assert vfarm("inspect", enough).returncode == 0


@pytest.mark.parametrize(
    "returns",
    ["[" * 5000 + "]" * 5000, "-" * 100000 + "1", "not " * 100000 + "1", "1" + "+1" * 100000],
    ids=["deep-list", "unary-minus", "not-chain", "long-sum"],
)
def test_inspect_reads_nested_part_handlers_without_running_away(returns: str, tmp_path: Path) -> None:
    path = tmp_path / "ud"
    path.write_bytes(mime(("Content-Type: text/part-handler", f"#part-handler\ndef list_types():\n    return {returns}\n")))
    result = vfarm("inspect", path)
    out, err = result.stdout.decode(), result.stderr.decode()
    assert result.returncode == 0 and "Traceback" not in err, err[-2000:]
    assert "registers ?" in out and "whose types cannot be read without running it" in out


def test_inspect_does_not_expand_an_alias_bomb(tmp_path: Path) -> None:
    levels = ["  a: &a [x, x, x, x, x, x, x, x, x]"]
    for i in range(1, 9):
        name, prev = chr(ord("a") + i), chr(ord("a") + i - 1)
        levels.append(f"  {name}: &{name} [{', '.join(['*' + prev] * 9)}]")  # 9**9 values in all
    path = tmp_path / "ud"
    path.write_bytes(mime(("Content-Type: text/condor-config", "condor:\n" + "\n".join(levels))))
    result = vfarm("inspect", path)
    out = result.stdout.decode()
    assert result.returncode == 0, result.stderr.decode()[-2000:]
    assert "config part vfarm's loader refuses: more than 10000 values once aliases are expanded" in out
    assert "secrets hidden" not in out


# --- summary and scale --snapshot: deep JSON, huge numbers, wrong types ----------------------------

DEEP = "[" * 100000 + "]" * 100000
HUGE = "9" * 5000


def in_process(capsys: pytest.CaptureFixture[str], *args: Union[str, Path]) -> tuple[int, str, str]:
    """The command line in this process, for inputs that are only of the wrong shape."""
    code = cli.main([str(a) for a in args])
    out, err = capsys.readouterr()
    return code, out, err


@pytest.mark.parametrize(
    "text,reason",
    [
        (DEEP, "nested deeper than 64 levels at line 1 column 65"),
        ('{"result": "ok", "handlers": [' + HUGE + "]}", "handlers[0]: a number of 5000 digits: more than a 64-bit integer"),
        ('{"result": "ok", "handlers": [], "generated": 1e400}', "generated: the number 1e400 is out of range"),
    ],
    ids=["deep", "huge-int", "1e400"],
)
def test_summary_refuses_deep_json_and_huge_numbers(text: str, reason: str, tmp_path: Path) -> None:
    path = tmp_path / "summary.json"
    path.write_text(text)
    assert_refused(vfarm("summary", path), f"vfarm: {path}: {reason}")


SUMMARY_SHAPES = [
    ('{"result": "ok", "handlers": [], "x": NaN}', "x: NaN is not a JSON number"),
    ('{"result": "ok", "handlers": [1]}', "handlers[0]: expected an object, got a number"),
    ('{"result": "ok", "handlers": [], "decision": "halt"}', "decision: expected an object, got a string"),
    (
        '{"result": "ok", "handlers": [], "cloud_init": {"stages": [{"errors": [{"a": 1}]}]}}',
        "cloud_init.stages[0].errors[0]: expected a string, got an object",
    ),
    ('{"result": "ok", "handlers": [], "cloud_init": {"stages": {"a": 1}}}', "cloud_init.stages: expected a list, got an object"),
    ('{"result": "ok", "handlers": [], "unhandled_parts": ["x"]}', "unhandled_parts[0]: expected an object, got a string"),
    ('{"result": "ok", "handlers": {"a": 1}}', "handlers: expected a list, got an object"),
    ("[1, 2]", "not a vfarm summary.json (no 'result' and 'handlers')"),
    ('{"result": "ok", "handlers": [' + ",".join(["{}"] * 1001) + "]}", "handlers: more than 1000 items: not an instance's summary"),
    ('{"result": "ok", "handlers": [], "x": [' + ",".join(["0"] * 100_000) + "]}", "x[99996]: more than 100000 values in all"),
]


@pytest.mark.parametrize("text,reason", SUMMARY_SHAPES, ids=[f"summary-{i}" for i in range(len(SUMMARY_SHAPES))])
def test_summary_refuses_wrong_types_with_their_place(text: str, reason: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "summary.json"
    path.write_text(text)
    code, out, err = in_process(capsys, "summary", path)
    assert (code, out, err) == (1, "", f"vfarm: {path}: {reason}\n")


def test_summary_still_reads_a_good_one(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "summary.json"
    path.write_text(json.dumps(GOOD_SUMMARY))
    code, out, err = in_process(capsys, "summary", path)
    assert code == 0 and "decision: none" in out, err


@pytest.mark.parametrize(
    "text,reason",
    [
        (DEEP, "nested deeper than 64 levels at line 1 column 65"),
        ('{"now": 1e400, "jobs": [], "slots": [], "instances": []}', "now: the number 1e400 is out of range"),
        ('{"now": 1, "jobs": [{"RequestCpus": ' + HUGE + '}], "slots": [], "instances": []}', "jobs[0].RequestCpus: a number of 5000 digits"),
    ],
    ids=["deep", "1e400", "huge-int"],
)
def test_snapshot_refuses_deep_json_and_huge_numbers(text: str, reason: str, tmp_path: Path) -> None:
    farm = tmp_path / "farm.yaml"
    farm.write_text(SCALE)
    path = tmp_path / "snap.json"
    path.write_text(text)
    assert_refused(vfarm("scale", farm, "--snapshot", path), f"vfarm: {path}: {reason}")


SNAPSHOT_SHAPES = [
    ('{"now": 1, "jobs": [], "slots": [{"Cpus": -1e300}], "instances": []}', "slots[0].Cpus: the number -1e300 is out of range"),
    ('{"now": 1, "jobs": [], "slots": [], "instances": [{"InstanceId": "i-1", "Tags": 5}]}', "'instances[0].Tags' must be a list"),
    ('{"now": 1, "jobs": [], "slots": [], "instances": [{"InstanceId": 7}]}', "'instances[0]' has no InstanceId"),
    ('{"now": -Infinity, "jobs": [], "slots": [], "instances": []}', "now: -Infinity is not a JSON number"),
    ('{"now": 1, "jobs": [[]], "slots": [], "instances": []}', "'jobs[0]' must be an object, got list"),
]


@pytest.mark.parametrize("text,reason", SNAPSHOT_SHAPES, ids=[f"snapshot-{i}" for i in range(len(SNAPSHOT_SHAPES))])
def test_snapshot_refuses_wrong_types_with_their_place(text: str, reason: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    farm = tmp_path / "farm.yaml"
    farm.write_text(SCALE)
    path = tmp_path / "snap.json"
    path.write_text(text)
    code, out, err = in_process(capsys, "scale", farm, "--snapshot", path)
    assert code == 1 and out == "" and err.startswith(f"vfarm: {path}: ") and reason in err and err.count("\n") == 1, err


@pytest.mark.parametrize(
    "field,value",
    [
        # A slot's numbers out of range are read as absent (tests/scaler): any startd may send them.
        ("instances", {"InstanceId": "i-1", "LaunchTime": -1e20}),
    ],
)
def test_plan_refuses_numbers_out_of_range_in_live_data(field: str, value: dict[str, Any]) -> None:
    # Data that did not come through the JSON reader (a live cycle) is checked by plan() itself:
    # two slots of -1e300 CPUs once overflowed the launch arithmetic.
    snapshot: dict[str, Any] = {**GOOD_SNAPSHOT, field: [value, value]}
    key = next(k for k in value if k != "InstanceId")
    with pytest.raises(planner.SnapshotError, match=re.escape(f"'{field}[0].{key}' is out of range")):
        planner.check_snapshot(snapshot)


# --- -o: through symlinks, devices and FIFOs, never replacing them --------------------------------


@pytest.fixture(scope="module")
def built() -> bytes:
    result = vfarm("build", EXAMPLE, "--handlers", "baked")
    assert result.returncode == 0, result.stderr
    return result.stdout


@pytest.mark.parametrize("target", ["/dev/stdout", "/proc/self/fd/1"])
def test_output_through_a_symlink_to_stdout_keeps_the_link(target: str, tmp_path: Path, built: bytes) -> None:
    link = tmp_path / "out"
    link.symlink_to(target)
    result = vfarm("build", EXAMPLE, "--handlers", "baked", "-o", link)
    assert result.returncode == 0, result.stderr
    assert result.stdout == built
    assert link.is_symlink() and os.readlink(link) == target
    if target == "/dev/stdout":
        return  # see below: a broken atomic_write would replace the machine's /dev/stdout
    # stdout a regular file (`> out`): once the link was replaced by a 0600 file, out left empty
    out = tmp_path / "stdout"
    with open(out, "wb") as handle:
        done = subprocess.run([sys.executable, "-m", "vfarm", "build", str(EXAMPLE), "--handlers", "baked", "-o", str(link)],
                              stdout=handle, stderr=subprocess.PIPE, timeout=60, preexec_fn=_limit_address_space)
    assert done.returncode == 0, done.stderr
    assert link.is_symlink() and os.readlink(link) == target
    assert out.read_bytes() == built


def test_output_to_dev_stdout_prints_and_appends(tmp_path: Path, built: bytes) -> None:
    assert vfarm("build", EXAMPLE, "--handlers", "baked", "-o", "/dev/stdout").stdout == built
    log = tmp_path / "log"
    log.write_bytes(b"before\n")
    # With stdout a regular file, a broken atomic_write would rename over its path: through
    # /dev/stdout that replaces the machine's /dev/stdout (as root); /proc/self/fd/1 cannot be.
    with open(log, "ab") as handle:  # `>> log`: the data goes after what is there
        done = subprocess.run([sys.executable, "-m", "vfarm", "build", str(EXAMPLE), "--handlers", "baked", "-o", "/proc/self/fd/1"],
                              stdout=handle, stderr=subprocess.PIPE, timeout=60, preexec_fn=_limit_address_space)
    assert done.returncode == 0, done.stderr
    assert log.read_bytes() == b"before\n" + built


def test_output_through_a_symlink_to_a_file_replaces_the_target(tmp_path: Path, built: bytes) -> None:
    target = tmp_path / "real.userdata"
    target.write_bytes(b"old")
    link = tmp_path / "link"
    link.symlink_to("real.userdata")
    chain = tmp_path / "chain"
    chain.symlink_to(link)
    assert vfarm("build", EXAMPLE, "--handlers", "baked", "-o", chain).returncode == 0
    assert chain.is_symlink() and link.is_symlink() and target.read_bytes() == built
    assert stat.S_IMODE(target.stat().st_mode) == 0o600
    dangling = tmp_path / "dangling"
    dangling.symlink_to("created.userdata")
    assert vfarm("build", EXAMPLE, "--handlers", "baked", "-o", dangling).returncode == 0
    assert dangling.is_symlink() and (tmp_path / "created.userdata").read_bytes() == built


def test_output_to_a_fifo_nobody_reads_is_refused(fifo: Path, tmp_path: Path) -> None:
    err = assert_refused(vfarm("build", EXAMPLE, "--handlers", "baked", "-o", fifo), f"cannot write {fifo}: a FIFO that nobody reads")
    assert stat.S_ISFIFO(os.stat(fifo).st_mode)
    link = tmp_path / "to-fifo"
    link.symlink_to(fifo)
    assert_refused(vfarm("build", EXAMPLE, "--handlers", "baked", "-o", link), "a FIFO that nobody reads")
    argv: list[Union[str, Path]] = ["launch", "ec2", EXAMPLE, "--image-id", "ami-1", "--instance-type", "t3.micro", "--endpoint-url", "http://127.0.0.1:9"]
    assert_refused(vfarm(*argv, "--handlers", "baked", "--dry-run", "-o", fifo), "a FIFO that nobody reads")
    assert err.startswith("vfarm: ")


def test_output_to_a_directory_is_refused(tmp_path: Path) -> None:
    assert_refused(vfarm("build", EXAMPLE, "--handlers", "baked", "-o", tmp_path), f"cannot write {tmp_path}: Is a directory")


def test_handlers_replace_a_symlink_never_write_through_it(tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.write_text("precious\n")
    folder = tmp_path / "www"
    folder.mkdir()
    (folder / "SHA256SUMS").symlink_to(outside)
    (folder / "condor_handler.py").symlink_to("/dev/stdout")
    result = vfarm("handlers", folder)
    assert result.returncode == 0, result.stderr
    assert outside.read_text() == "precious\n"
    assert b"def handle_part" not in result.stdout  # nothing went to the link's target
    for name in ("SHA256SUMS", "condor_handler.py"):
        assert not (folder / name).is_symlink() and (folder / name).is_file()
    err = result.stderr.decode()
    assert f"{folder / 'SHA256SUMS'} was a symlink to {outside}: replaced by the file" in err
    check = subprocess.run(["sha256sum", "-c", "SHA256SUMS"], cwd=folder, capture_output=True, text=True, timeout=60)
    assert check.returncode == 0, check.stdout + check.stderr


# --- the pieces ----------------------------------------------------------------------------------


def test_read_bounded_checks_the_size_before_reading(tmp_path: Path) -> None:
    sparse = tmp_path / "sparse"
    with open(sparse, "wb") as handle:
        handle.truncate(1 << 40)  # a 1 TiB hole: reading it whole would never end
    with pytest.raises(files.InputError, match="larger than 1 MiB"):
        files.read_bounded(sparse, 1 << 20)
    small = tmp_path / "small"
    small.write_bytes(b"x" * 10)
    assert files.read_bounded(small, 10) == b"x" * 10
    with pytest.raises(files.InputError, match="larger than 9 bytes"):
        files.read_bounded(small, 9)


def test_io_timeout_setting(monkeypatch: pytest.MonkeyPatch) -> None:
    assert files.IO_TIMEOUT_ENV == IO_TIMEOUT_ENV
    monkeypatch.delenv(files.IO_TIMEOUT_ENV, raising=False)
    assert files.io_timeout() == files.DEFAULT_IO_TIMEOUT == 10.0
    for bad in ("soon", "-1", "0", "inf", "nan"):
        monkeypatch.setenv(files.IO_TIMEOUT_ENV, bad)
        assert files.io_timeout() == files.DEFAULT_IO_TIMEOUT
    monkeypatch.setenv(files.IO_TIMEOUT_ENV, "2.5")
    assert files.io_timeout() == 2.5


def test_an_io_timeout_setting_that_is_not_used_is_said_once(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    """A VFARM_IO_TIMEOUT the reader ignores (and waits its 10 s instead) is a warning on every
    command, escaped; a good one or none is no word at all."""
    for good in (None, "", "2.5"):
        if good is None:
            monkeypatch.delenv(files.IO_TIMEOUT_ENV, raising=False)
        else:
            monkeypatch.setenv(files.IO_TIMEOUT_ENV, good)
        assert cli.main(["validate", str(EXAMPLE)]) == 0
        assert capsys.readouterr().err == ""
    monkeypatch.setenv(files.IO_TIMEOUT_ENV, "30s\x1b[2J")
    assert cli.main(["validate", str(EXAMPLE)]) == 0
    err = capsys.readouterr().err
    assert err == ("vfarm: warning: VFARM_IO_TIMEOUT='30s\\x1b[2J' is not a number of seconds above 0 and below 86400: "
                   "10 s applies\n"), err


def test_loads_bounded_keeps_what_json_means() -> None:
    doc = {"a": [1, -2, 3.5, "[[[{", None, True], "n": 2**63, "m": -(2**63)}
    assert jsonbounds.loads_bounded(json.dumps(doc)) == doc
    nested: Any = []
    for _ in range(jsonbounds.MAX_JSON_DEPTH - 1):
        nested = [nested]
    assert jsonbounds.loads_bounded(json.dumps(nested)) == nested
    with pytest.raises(jsonbounds.JsonInputError, match="nested deeper than 64 levels"):
        jsonbounds.loads_bounded(json.dumps([nested]))
    with pytest.raises(jsonbounds.JsonInputError, match=r"^n: 9223372036854775809 is more than a 64-bit integer$"):
        jsonbounds.loads_bounded(json.dumps({"n": 2**63 + 1}))
    assert jsonbounds.loads_bounded("[[1], 2]", max_values=4) == [[1], 2]
    with pytest.raises(jsonbounds.JsonInputError, match=r"^\[1\]: more than 3 values in all$"):
        jsonbounds.loads_bounded("[[1], 2]", max_values=3)
    with pytest.raises(jsonbounds.JsonInputError, match=r"^not JSON: Unterminated string starting at \(line 2, column 7\)$"):
        jsonbounds.loads_bounded('{"a": 1,\n "b": "x}')


def test_atomic_write_without_following_replaces_the_link(tmp_path: Path) -> None:
    target = tmp_path / "target"
    target.write_text("keep")
    link = tmp_path / "link"
    link.symlink_to(target)
    files.atomic_write(link, "new", 0o644, follow_symlinks=False)
    assert not link.is_symlink() and link.read_text() == "new" and target.read_text() == "keep"


def test_atomic_write_goes_up_from_a_links_target_as_the_os_does(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """`link/../out` is the folder above the link's target (the kernel resolves the link first),
    not the link's own folder: a relative path lands where the shell would write it."""
    (tmp_path / "a").mkdir()
    (tmp_path / "b" / "c").mkdir(parents=True)
    (tmp_path / "a" / "link").symlink_to("../b/c")
    monkeypatch.chdir(tmp_path)
    files.atomic_write("a/link/../out.txt", "here")
    assert (tmp_path / "b" / "out.txt").read_text() == "here" and not (tmp_path / "a" / "out.txt").exists()


@pytest.mark.parametrize("error", [RecursionError, MemoryError])
def test_a_missed_bound_is_still_one_line(error: type, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    def runaway(args: Any) -> int:
        raise error()

    monkeypatch.setattr(configfile, "cmd_validate", runaway)
    code, out, err = in_process(capsys, "validate", EXAMPLE)
    assert (code, out) == (1, "")
    assert err == f"vfarm: validate: the input is too large or too deeply nested to handle ({error.__name__})\n"


def test_a_device_that_never_ends_is_refused_for_size_even_past_the_deadline() -> None:
    """Past the deadline only data that is there at once is read: /dev/zero always is, so it ends
    in the size limit (not a timeout) however late the reader runs; a pipe nobody writes times out."""
    with pytest.raises(files.InputError, match="larger than 256 KiB"):
        files.read_bounded("/dev/zero", 256 << 10, timeout=1e-9)
    read_end, write_end = os.pipe()
    try:
        with pytest.raises(files.InputError, match="no data within"):
            files.read_fd_bounded(read_end, 1024, timeout=0.05)
    finally:
        os.close(read_end)
        os.close(write_end)
