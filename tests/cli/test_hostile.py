"""Hostile input through the real `vfarm` command line: the corpus in tests/hostile/ and the
generated inputs below, each run as an attacker would hand it to the tool.

Every case runs the venv's `vfarm` console script in a subprocess, under a 1 GiB address-space
limit and a timeout, and must keep the promises every command makes about its input:
- the expected exit code: 1 for a refused input (2 for a refused option value: argparse's usage
  error); 0 only where the input is legal, and such a case says why (`legal`);
- a refusal is ONE problem line on stderr (warnings aside), located: `FILE:LINE:COL: ...` at the
  hostile value's line for a config, a line naming the file for other inputs;
- no `Traceback`, no marker secret (`S3CR3T`, `MARKER`: planted in passwords, tokens and keys) in
  stdout or stderr (the user-data itself, written to stdout on purpose, aside), and no raw
  control character (C0 but newline, DEL, C1, U+2028/2029, bidi controls) in either;
- an answer within the timeout (generous: this is about not running away, not about speed).

Config files carry their expectation in their header comments:
    # expect: exit 1 at line N [matching REGEX]      the refusal, located at the hostile line
    # or: exit 0 with stdout matching REGEX          another acceptable result (YAML 1.2 reading)
    # legal: WHY                                     required when the expectation is exit 0
    # run: ARGS                                      when not `validate {file}` ({tmp}: a scratch folder)
Large, binary and path-shaped inputs (FIFOs, symlinks, devices) are generated into a temporary
folder. All cases selected in a session run in parallel (a thread pool, each case one
subprocess) the first time a test of this module asks for a result.
"""

from __future__ import annotations

import base64
import gzip
import json
import os
import re
import resource
import shlex
import subprocess
import sys
import time
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Optional, Union

import pytest

pytestmark = pytest.mark.integration  # starts processes (see tests/conftest.py)

HERE = Path(__file__).resolve().parents[1]  # tests/
CORPUS = HERE / "hostile"
TORINO = HERE.parent / "examples" / "torino.yaml"
VFARM = Path(sys.executable).parent / "vfarm"
MEMORY_LIMIT = 1 << 30  # bytes of address space for each vfarm process
TIMEOUT = 120.0  # seconds per case: a runaway guard; a case takes 0.3-3 s, but many run at once on a loaded host
WORKERS = max(4, 2 * (os.cpu_count() or 1))  # some cases wait (FIFOs): more workers than cores
SECRET_WORDS = ("S3CR3T", "MARKER")
# What a terminal may act on. Undecodable bytes come back as lone surrogates (\udc80-\udcff).
RAW_CONTROL = re.compile("[\x00-\x09\x0b-\x1f\x7f-\x9f\u061c\u200e\u200f\u2028\u2029\u202a-\u202e\u2066-\u2069\udc80-\udcff]")
WARNING = re.compile(r"(^|: )warning: ")
TOKEN = "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJ3b3JrZXIifQ.S3CR3T-MARKER-token"
NOW = 1_700_000_000


# --- cases and what they expect ---------------------------------------------------------------


@dataclass(frozen=True)
class Outcome:
    """One acceptable result. `refused`: exactly one problem line on stderr, located."""

    exit: int
    refused: bool
    line: Optional[int] = None  # the LINE of FILE:LINE:COL
    message: Optional[str] = None  # a regex the problem line must match
    stdout: Optional[str] = None  # a regex stdout must match


REFUSED = Outcome(1, refused=True)
ACCEPTED = Outcome(0, refused=False)


@dataclass(frozen=True)
class Invocation:
    args: list[str]
    names: str  # what a refusal names: the config file as given (FILE:LINE:COL), else any text it contains


@dataclass(frozen=True)
class Case:
    id: str
    kind: str  # the test that checks it: validate, build, plan, inspect, summary, scale, paths
    prepare: Callable[[Path], Invocation]  # writes the input into a fresh folder
    outcomes: tuple[Outcome, ...]
    positioned: bool = False  # a refusal reads FILE:LINE:COL (configs)
    legal: str = ""  # why exit 0 is right, when it is the only outcome
    userdata_on_stdout: bool = False  # stdout is the user-data (may carry the config's secrets)
    after: Optional[Callable[[Path], None]] = None  # checks on the folder after the run

    def __post_init__(self) -> None:
        if self.outcomes[0].exit == 0 and not self.legal:
            raise ValueError(f"{self.id}: expecting exit 0 needs a reason why the input is legal")


@dataclass(frozen=True)
class Ran:
    invocation: Invocation
    returncode: Optional[int]  # None: killed at the timeout
    stdout: str
    stderr: str
    seconds: float
    folder: Path


# --- config files from the corpus ---------------------------------------------------------------

HEADER = re.compile(r"# (expect|or|legal|run|why): (.*)")
OUTCOME = re.compile(r"exit (?P<exit>[01])(?: at line (?P<line>\d+))?(?: matching (?P<message>.+?))?(?: with stdout matching (?P<stdout>.+?))?")


def parse_outcome(spec: str) -> Outcome:
    found = OUTCOME.fullmatch(spec.strip())
    if not found:
        raise ValueError(f"not an outcome: {spec!r}")
    line = int(found["line"]) if found["line"] else None
    return Outcome(int(found["exit"]), found["exit"] == "1", line, found["message"], found["stdout"])


def corpus_case(path: Path) -> Case:
    header: dict[str, list[str]] = {}
    for text in path.read_text(encoding="utf-8").split("\n")[1:]:
        found = HEADER.fullmatch(text)
        if not found:
            break
        header.setdefault(found[1], []).append(found[2])
    if "expect" not in header:
        raise ValueError(f"{path}: no '# expect:' line in its header")
    run = header.get("run", ["validate {file}"])[0]

    def prepare(folder: Path) -> Invocation:
        return Invocation([arg.format(file=path, tmp=folder) for arg in shlex.split(run)], str(path))

    outcomes = tuple(parse_outcome(spec) for spec in header["expect"] + header.get("or", []))
    name = path.relative_to(CORPUS / "config").with_suffix("")
    return Case(f"{name}", run.split()[0], prepare, outcomes, positioned=True, legal=" ".join(header.get("legal", [])))


CORPUS_CASES = [corpus_case(p) for p in sorted((CORPUS / "config").glob("*/*.yaml"))]


# --- generated configs: large, binary, or needing a FIFO beside them ------------------------------


def config(name: str, content: Union[bytes, str], line: Optional[int], message: Optional[str] = None,
           setup: Optional[Callable[[Path], None]] = None) -> Case:
    """A config refused at LINE (None: wherever the tool finds it)."""
    data = content.encode("utf-8") if isinstance(content, str) else content

    def prepare(folder: Path) -> Invocation:
        path = folder / "hostile.yaml"
        path.write_bytes(b"#multiple-config\n" + data)
        if setup:
            setup(folder)
        return Invocation(["validate", str(path)], str(path))

    return Case(f"generated/{name}", "validate", prepare, (Outcome(1, True, line, message),), positioned=True)


def mkfifo(name: str) -> Callable[[Path], None]:
    return lambda folder: os.mkfifo(folder / name)


def big_file(name: str, size: int) -> Callable[[Path], None]:
    def write(folder: Path) -> None:
        with open(folder / name, "wb") as handle:
            handle.truncate(size)  # sparse: a size, not a disk write

    return write


DIGITS_5000 = "9" * 5000
PROXY_AT_LINE_5 = "cvmfs:\n  local:\n    repositories: alice.cern.ch\n    http-proxy: "
NESTED = "(?i)nest|deep|depth"
GENERATED_CONFIGS = [
    config("nesting-flow-1000", "localfs:\n  parts:\n    home: " + "[" * 1000 + "]" * 1000 + "\n", 4, NESTED),
    config("nesting-block-1000", "cvmfs:\n  local:\n    repositories:\n      " + "- " * 1000 + "alice.cern.ch\n", 5, NESTED),
    config("nesting-flow-mappings-1000", "check: " + "{a: " * 1000 + "1" + "}" * 1000 + "\n", 2, NESTED),
    config("nesting-top-1000", "[" * 1000 + "]" * 1000 + "\n", 2),
    config("nesting-block-mappings-700", "".join(" " * i + "a:\n" for i in range(700)) + " " * 700 + "b: 1\n", None, NESTED),
    config("nul-in-value", b"check:\n  on-failure: none\n  message: bro\x00ken\n", 4),
    config("nul-in-comment", b"# a comment \x00 with a NUL\ncheck:\n  on-failure: none\n", 2),
    config("invalid-utf8-ff", b"check:\n  on-failure: none\n  message: caf\xff\n", 4, "UTF-8"),
    config("invalid-utf8-overlong", b"check:\n  on-failure: none\n  message: \xc0\xaf\n", 4, "UTF-8"),
    config("invalid-utf8-surrogate", b"check:\n  on-failure: none\n  message: \xed\xa0\x80\n", 4, "UTF-8"),
    config("raw-esc-in-plain-scalar", b"check:\n  on-failure: none\n  message: a\x1b[2Jb\n", 4),
    config("raw-del-in-plain-scalar", b"check:\n  on-failure: none\n  message: a\x7fb\n", 4),
    config("raw-csi-c1-in-plain-scalar", "check:\n  on-failure: none\n  message: a\u009b31mb\n", 4),
    config("int-5000-digits-quota", f"cvmfs:\n  local:\n    repositories: alice.cern.ch\n    http-proxy: DIRECT\n    quota-limit: {DIGITS_5000}\n", 6),
    config("int-5000-digits-percent", f"localfs:\n  parts:\n    home: {DIGITS_5000}\n", 4),
    config("int-5000-digits-max-vms", f"scale:\n  name: torino\n  cloud: {{type: ec2, image-id: ami-1, instance-type: m1}}\n  max-vms: {DIGITS_5000}\n", 5),
    config("int-5000-digits-attribute", f"condor:\n  central-manager: cm.example.org\n  token: {TOKEN}\n  attributes:\n    Cores: {DIGITS_5000}\n", 6),
    config("proxy-30k", f"{PROXY_AT_LINE_5}http://squid{'a' * 30000}.example.org\n", 5),
    config("proxy-30k-credentials", f"{PROXY_AT_LINE_5}http://user:S3CR3T-MARKER@squid{'a' * 30000}\n", 5),
    config("file-over-256k", "check:\n  message: " + "a" * 300_000 + "\n", 1, "(?i)KiB|large|size"),
    config("twenty-thousand-keys", "check:\n" + "".join(f"  k{i}: 1\n" for i in range(20_000)), None),
    config("token-file-fifo", "condor:\n  central-manager: cm.example.org\n  token-file: pool.token\n", 4, "(?i)token", setup=mkfifo("pool.token")),
    config("token-file-10m", "condor:\n  central-manager: cm.example.org\n  token-file: pool.token\n", 4, "(?i)token", setup=big_file("pool.token", 10 << 20)),
]


# --- command-line values --------------------------------------------------------------------------


def argv_case(kind: str, name: str, args: list[str], outcomes: tuple[Outcome, ...], legal: str = "") -> Case:
    """ARGS with {tmp} for the case's folder; a refusal is one line (an option has no file to name)."""

    def prepare(folder: Path) -> Invocation:
        return Invocation([arg.replace("{tmp}", str(folder)) for arg in args], "")

    return Case(f"{kind}-args/{name}", kind, prepare, outcomes, legal=legal)


# A bad option value is argparse's usage error: exit 2, its usage, then one line saying what is wrong.
SIZE = Outcome(2, True, message="(?i)error: argument --(vg|extent)-size: .*size")
BUILD_TORINO = ["build", str(TORINO), "-o", "{tmp}/user-data"]
ARGV_CASES = [
    argv_case("plan", "vg-size-400-digits", ["plan", str(TORINO), "--vg-size", "1" + "0" * 400 + "G"], (SIZE,)),
    argv_case("plan", "vg-size-5000-digits", ["plan", str(TORINO), "--vg-size", "1" + "0" * 5000 + "T"], (SIZE,)),
    argv_case("plan", "extent-size-400-digits", ["plan", str(TORINO), "--vg-size", "20G", "--extent-size", "1" + "0" * 400 + "M"], (SIZE,)),
    argv_case("plan", "extent-size-not-lvm", ["plan", str(TORINO), "--vg-size", "20G", "--extent-size", "3K"], (SIZE,)),
    argv_case("plan", "vg-size-esc", ["plan", str(TORINO), "--vg-size", "\x1b[2J20G"], (SIZE,)),
    argv_case("plan", "vg-size-trailing-newline", ["plan", str(TORINO), "--vg-size", "20G\n"], (SIZE,)),
    argv_case("build", "include-url-credentials-ftp", [*BUILD_TORINO, "--handlers", "include=ftp://user:S3CR3T-MARKER@h.example.org/x"],
              (REFUSED,)),
    argv_case("build", "include-url-credentials", [*BUILD_TORINO, "--handlers", "include=https://user:S3CR3T-MARKER@h.example.org/handlers"],
              (ACCEPTED,), legal="a valid https URL; its password must not reach the build's report or warnings"),
    argv_case("build", "include-url-esc", [*BUILD_TORINO, "--handlers", "include=https://h.example.org/\x1b]0;owned\x07"], (REFUSED,)),
    argv_case("build", "attach-missing-esc", [*BUILD_TORINO, "--handlers", "baked", "--attach", "no\x1b[2Jsuch.sh"], (REFUSED,)),
]


# --- user-data for `vfarm inspect` ----------------------------------------------------------------


def mime(parts: Iterable[tuple[list[str], str]], boundary: str = "==HOSTILE==") -> str:
    """A multipart/mixed message of (header lines, body) parts, written by hand: no library
    would write the malformed headers some cases need."""
    lines = [f'Content-Type: multipart/mixed; boundary="{boundary}"', "MIME-Version: 1.0", ""]
    for headers, body in parts:
        lines += [f"--{boundary}", *headers, "", body]
    lines.append(f"--{boundary}--")
    return "\n".join(lines) + "\n"


def nested_mime(depth: int, leaf: str = "#cloud-config\n{}") -> str:
    text = f"Content-Type: text/cloud-config\n\n{leaf}\n"
    for level in range(depth):
        boundary = f"b{level}"
        text = f'Content-Type: multipart/mixed; boundary="{boundary}"\n\n--{boundary}\n{text}--{boundary}--\n'
    return "MIME-Version: 1.0\n" + text


def gzip_bomb(members: int, member_size: int = 16 << 20) -> bytes:
    """MEMBERS gzip members of MEMBER_SIZE zero bytes each (gunzip reads them all): about 1 KB per MB."""
    return gzip.compress(bytes(member_size), 9, mtime=0) * members


def base64_lines(data: bytes) -> str:
    encoded = base64.b64encode(data).decode("ascii")
    return "\n".join(encoded[i : i + 76] for i in range(0, len(encoded), 76))


SCRIPT = ["Content-Type: text/x-shellscript"]
CONFIG_PART = ["Content-Type: text/cvmfs-config", 'Content-Disposition: attachment; filename="cvmfs-config.ccfg"']
HANDLER_PART = ["Content-Type: text/part-handler", 'Content-Disposition: attachment; filename="cvmfs_handler.py"']
BILLION_LAUGHS = "cvmfs:\n  local:\n    repositories: alice.cern.ch\n" + "".join(
    f"    l{i}: &l{i} [{', '.join([f'*l{i - 1}' if i else 'lol'] * 9)}]\n" for i in range(9)
) + "    http-proxy: *l8\n"


def userdata(name: str, content: Union[bytes, str, Callable[[], Union[bytes, str]]], outcomes: tuple[Outcome, ...], legal: str = "") -> Case:
    def prepare(folder: Path) -> Invocation:
        data = content() if callable(content) else content
        path = folder / "user-data"
        path.write_bytes(data.encode("utf-8") if isinstance(data, str) else data)
        return Invocation(["inspect", str(path)], str(path))

    return Case(f"inspect/{name}", "inspect", prepare, outcomes, legal=legal)


SHOWN = "a legal user-data: inspect lists it"
EITHER = (ACCEPTED, REFUSED)
INSPECT_CASES = [
    userdata("multipart-1000-deep", nested_mime(1000), (REFUSED,)),
    userdata("multipart-200-deep-gzip", lambda: gzip.compress(nested_mime(200).encode(), mtime=0), EITHER, legal="a depth cap may refuse it"),
    userdata("parts-5000", mime((["Content-Type: text/x-shellscript"], f"#!/bin/sh\ntrue {i}") for i in range(5000)), (REFUSED,)),
    userdata("parts-20000-gzip", lambda: gzip.compress(mime((["Content-Type: text/x-shellscript"], "#!/bin/sh") for _ in range(20000)).encode(), mtime=0),
             (REFUSED,)),
    userdata("gzip-bomb-1g", lambda: gzip_bomb(64), (Outcome(1, True, message="(?i)gzip|decompress|unpack|large|limit"),)),
    userdata("gzip-bomb-in-part", lambda: mime([(["Content-Type: application/gzip", "Content-Transfer-Encoding: base64"], base64_lines(gzip_bomb(16)))]),
             (REFUSED,)),
    userdata("filename-osc", mime([(SCRIPT + ['Content-Disposition: attachment; filename="\x1b]0;owned\x07run.sh"'], "#!/bin/sh")]), (ACCEPTED,), legal=SHOWN),
    userdata("filename-rfc2231-newline-rlo", mime([(SCRIPT + ["Content-Disposition: attachment; filename*=utf-8''x%0A%1B%5B2J%E2%80%AEhs.txt"], "#!/bin/sh")]),
             (ACCEPTED,), legal=SHOWN),
    userdata("content-type-esc", mime([(["Content-Type: text/x-\x1b[31mevil"], "payload")]), (ACCEPTED,), legal=SHOWN),
    userdata("handler-types-esc", mime([(HANDLER_PART, "# vfarm-types: text/cvmfs-config\x1b]0;owned\x07\ndef list_types():\n    return []\n")]), (ACCEPTED,),
             legal=SHOWN),
    userdata("part-handler-inside-part-handler", mime([(HANDLER_PART, mime([(HANDLER_PART, "def list_types():\n    return ['text/x-evil']\n")], "inner"))]),
             EITHER, legal="a part-handler whose code is a MIME message: listed, or refused"),
    userdata("part-handler-deep-expression", mime([(HANDLER_PART, "def list_types():\n    return " + "-" * 100_000 + "1\n")]), EITHER,
             legal="its types cannot be read: listed with a warning, or refused"),
    userdata("part-handler-long-sum", mime([(HANDLER_PART, "def list_types():\n    return " + "1+" * 100_000 + "1\n")]), EITHER,
             legal="its types cannot be read: listed with a warning, or refused"),
    userdata("config-part-alias-bomb", mime([(CONFIG_PART, BILLION_LAUGHS)]), EITHER, legal="its content cannot be shown: listed without it, or refused"),
    userdata("config-part-proxy-20k", mime([(CONFIG_PART, f"cvmfs:\n  local:\n    http-proxy: http://u:S3CR3T-MARKER@squid{'a' * 20000}.example.org:3128\n")]),
             (ACCEPTED,), legal=SHOWN),
    userdata("config-part-proxy-password-slash", mime([(CONFIG_PART, "cvmfs:\n  local:\n    http-proxy: http://user:pa/S3CR3T-MARKER@squid.example.org:3128\n")]),
             (ACCEPTED,), legal=SHOWN),
    userdata("config-part-empty-user", mime([(CONFIG_PART, "cvmfs:\n  local:\n    http-proxy: 'http://:S3CR3T-MARKER@squid.example.org:3128'\n")]),
             (ACCEPTED,), legal=SHOWN),
    userdata("include-url-credentials", mime([(["Content-Type: text/x-include-url"], "https://user:S3CR3T-MARKER@h.example.org/cvmfs_handler.py")]),
             (ACCEPTED,), legal=SHOWN),
    userdata("include-url-password-slash", mime([(["Content-Type: text/x-include-url"], "http://user:pa/S3CR3T-MARKER@h.example.org/localfs_handler.py")]),
             (ACCEPTED,), legal=SHOWN),
    userdata("include-once-empty-user", "#include-once\nhttp://:S3CR3T-MARKER@h.example.org/x\n", (ACCEPTED,), legal=SHOWN),
    userdata("include-url-esc", "#include\nhttps://h.example.org/\x1b]0;owned\x07x\n", (ACCEPTED,), legal=SHOWN),
    userdata("pinned-url-credentials", mime([(HANDLER_PART, "# vfarm-types: text/cvmfs-config\n# vfarm-pin: 0123abcd http://user:S3CR3T-MARKER@h.example.org/x\n")]),
             (ACCEPTED,), legal=SHOWN),
]


# --- summaries for `vfarm summary` --------------------------------------------------------------


def handler(**changes: Any) -> dict[str, Any]:
    return {"name": "localfs", "expected": True, "status": "ok", "reason": "", "seconds": 2.9, "failed": False, **changes}


def summary_doc(**changes: Any) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "vfarm_version": "0.1.0",
        "instance_id": "i-0123456789abcdef0",
        "result": "ok",
        "handlers": [handler()],
        "cloud_init": {"state": "done", "datasource": None, "stages": [{"stage": "init", "started": True, "finished": True, "seconds": 4.2, "errors": []}],
                       "result_errors": []},
        "unhandled_parts": [],
        "userdata": {"sections": ["localfs"]},
        "problems": [],
        "warnings": [],
        "settings": {"on-failure": "poweroff", "delay": "now"},
        "decision": {"action": "none", "delay": None, "reason": "all 1 handler(s) ok"},
    }
    doc.update(changes)
    return doc


def deep_json(depth: int, inner: str = "0") -> str:
    return "[" * depth + inner + "]" * depth


def with_raw(doc: dict[str, Any], placeholder: str, raw: str) -> str:
    """DOC as JSON with the string PLACEHOLDER replaced by RAW JSON text (numbers and nestings
    json.dumps cannot write)."""
    return json.dumps(doc).replace(json.dumps(placeholder), raw)


def summary(name: str, content: Union[str, dict[str, Any]], outcomes: tuple[Outcome, ...], args: tuple[str, ...] = (), legal: str = "") -> Case:
    def prepare(folder: Path) -> Invocation:
        path = folder / "summary.json"
        path.write_text(content if isinstance(content, str) else json.dumps(content), encoding="utf-8")
        return Invocation(["summary", str(path), *args], str(path))

    return Case(f"summary/{name}", "summary", prepare, outcomes, legal=legal)


def failed_doc(**changes: Any) -> dict[str, Any]:
    """A summary of a failed boot (`vfarm summary` exits 1 on it), with CHANGES."""
    return summary_doc(**{"result": "failed", "decision": {"action": "poweroff", "delay": "now", "reason": "localfs: failed"}, **changes})


# A summary that says "failed" exits 1 whether it is refused or shown: both are right for malformed parts.
REFUSED_OR_SHOWN_FAILED = (REFUSED, Outcome(1, refused=False, stdout="vfarm final check"))
SHOWN_OK = (Outcome(0, refused=False, stdout="vfarm final check"),)
SHOWN_FAILED = (Outcome(1, refused=False, stdout="vfarm final check"),)
TERMINAL = "a summary may say anything: shown with control characters escaped"
BIG = "1" + "0" * 400
SUMMARY_CASES = [
    summary("deep-json", deep_json(100_000), (REFUSED,)),
    summary("deep-json-in-problems", with_raw(failed_doc(problems="@"), "@", deep_json(100_000, '"x"')), (REFUSED,)),
    summary("deep-json-in-reason", with_raw(failed_doc(handlers=[handler(reason="@")]), "@", deep_json(900, '"x"')), REFUSED_OR_SHOWN_FAILED),
    summary("seconds-400-digits", with_raw(failed_doc(handlers=[handler(seconds="@")]), "@", BIG), REFUSED_OR_SHOWN_FAILED),
    summary("seconds-5000-digits", with_raw(failed_doc(handlers=[handler(seconds="@")]), "@", DIGITS_5000), REFUSED_OR_SHOWN_FAILED),
    summary("stage-seconds-1e400", with_raw(failed_doc(cloud_init={"state": "done", "stages": [{"stage": "init", "seconds": "@"}]}), "@", "1e400"),
            REFUSED_OR_SHOWN_FAILED),
    summary("handler-not-object", failed_doc(handlers=[5]), REFUSED_OR_SHOWN_FAILED),
    summary("handler-fields-wrong-types", failed_doc(handlers=[{"name": {"x": 1}, "status": ["ok"], "seconds": "fast", "reason": 7}]),
            REFUSED_OR_SHOWN_FAILED),
    summary("stage-errors-number", failed_doc(cloud_init={"state": "error", "stages": [{"stage": "init", "errors": 5}]}), REFUSED_OR_SHOWN_FAILED),
    summary("decision-string", failed_doc(decision="poweroff"), REFUSED_OR_SHOWN_FAILED),
    summary("result-object", summary_doc(result={"failed": True}), (REFUSED,)),
    summary("esc-in-reason", summary_doc(handlers=[handler(reason="\x1b]0;owned\x07\x1b[2Jall good")]), SHOWN_OK, legal=TERMINAL),
    summary("bidi-in-names", summary_doc(instance_id="i-\u202e0fedcba", handlers=[handler(name="local\u2066fs\u2069")], vfarm_version="0.1\x9b2J"), SHOWN_OK,
            legal=TERMINAL),
    summary("esc-in-problems-and-stages", failed_doc(problems=["\x1b[31mred\x1b[0m"],
                                                      cloud_init={"state": "error", "stages": [{"stage": "init", "errors": ["\x1b[2J\rboom"]}]}), SHOWN_FAILED),
    summary("credentials-in-reasons", failed_doc(handlers=[handler(status="failed", failed=True,
                                                                              reason="curl: (22) https://user:S3CR3T-MARKER@repo.example.org/x: 403")],
                                                  problems=["proxy http://user:pa/S3CR3T-MARKER@squid.example.org:3128 refused"],
                                                  warnings=[f"token {TOKEN} rejected"],
                                                  decision={"action": "poweroff", "delay": "now", "reason": "http://:S3CR3T-MARKER@squid.example.org:3128"}),
            SHOWN_FAILED),
    summary("credentials-in-json-output", failed_doc(handlers=[handler(reason="https://user:S3CR3T-MARKER@repo.example.org/x")]),
            (Outcome(1, refused=False, stdout='"result"'),), args=("--json",)),
]


# --- snapshots for `vfarm scale FARM --snapshot` ----------------------------------------------------

FARM = "#multiple-config\nscale:\n  name: torino\n  cloud: {type: ec2, image-id: ami-000070, instance-type: m1.large}\n  max-vms: 3\n  cpus-per-vm: 4\n"


def instance(**changes: Any) -> dict[str, Any]:
    return {"InstanceId": "i-1", "LaunchTime": "2023-11-14T21:13:20.000Z", "State": {"Name": "running"},
            "Tags": [{"Key": "vfarm:farm", "Value": "torino"}], **changes}


def snapshot_doc(**changes: Any) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "now": NOW,
        "jobs": [{"ClusterId": 7, "ProcId": 0, "JobStatus": 1, "QDate": NOW - 120, "EnteredCurrentStatus": NOW - 120, "RequestCpus": 1}],
        "slots": [{"Name": "slot1@w", "State": "Unclaimed", "Activity": "Idle", "Cpus": 4, "EnteredCurrentState": NOW - 7200, "VfarmInstanceId": "i-1"}],
        "instances": [instance()],
    }
    doc.update(changes)
    return doc


def snapshot(name: str, content: Union[str, dict[str, Any]], outcomes: tuple[Outcome, ...], legal: str = "") -> Case:
    def prepare(folder: Path) -> Invocation:
        farm, path = folder / "farm.yaml", folder / "snapshot.json"
        farm.write_text(FARM, encoding="utf-8")
        path.write_text(content if isinstance(content, str) else json.dumps(content), encoding="utf-8")
        return Invocation(["scale", str(farm), "--snapshot", str(path)], str(path))

    return Case(f"snapshot/{name}", "scale", prepare, outcomes, legal=legal)


PLANNED = Outcome(0, refused=False, stdout="farm torino")
REFUSED_OR_PLANNED = (REFUSED, PLANNED)
IGNORED = "a value the planner can ignore: planned, or the snapshot refused"
SNAPSHOT_CASES = [
    snapshot("deep-json", deep_json(100_000), (REFUSED,)),
    snapshot("deep-json-in-tags", with_raw(snapshot_doc(instances=[instance(Tags="@")]), "@", deep_json(100_000)), (REFUSED,)),
    snapshot("deep-json-in-job", with_raw(snapshot_doc(jobs=[{"JobStatus": 1, "Args": "@"}]), "@", deep_json(900)), REFUSED_OR_PLANNED, legal=IGNORED),
    snapshot("now-400-digits", with_raw(snapshot_doc(now="@"), "@", BIG), (REFUSED,)),
    snapshot("now-5000-digits", with_raw(snapshot_doc(now="@"), "@", DIGITS_5000), (REFUSED,)),
    snapshot("job-entered-400-digits", with_raw(snapshot_doc(jobs=[{"JobStatus": 1, "EnteredCurrentStatus": "@", "RequestCpus": 1}]), "@", BIG),
             REFUSED_OR_PLANNED, legal=IGNORED),
    snapshot("job-cpus-400-digits", with_raw(snapshot_doc(jobs=[{"JobStatus": 1, "QDate": NOW - 999, "RequestCpus": "@"}]), "@", BIG), REFUSED_OR_PLANNED,
             legal=IGNORED),
    snapshot("launch-time-400-digits", with_raw(snapshot_doc(instances=[instance(LaunchTime="@")]), "@", BIG), REFUSED_OR_PLANNED, legal=IGNORED),
    snapshot("slot-cpus-400-digits", with_raw(snapshot_doc(slots=[{"State": "Unclaimed", "Cpus": "@", "VfarmInstanceId": "i-1"}]), "@", BIG),
             REFUSED_OR_PLANNED, legal=IGNORED),
    snapshot("collector-start-400-digits", with_raw(snapshot_doc(collector={"DaemonStartTime": "@"}), "@", BIG), REFUSED_OR_PLANNED, legal=IGNORED),
    snapshot("job-fields-wrong-types", snapshot_doc(jobs=[{"JobStatus": [1], "QDate": {"t": 1}, "EnteredCurrentStatus": "x", "RequestCpus": -1e308}]),
             REFUSED_OR_PLANNED, legal=IGNORED),
    snapshot("tags-not-list", snapshot_doc(instances=[instance(Tags=5)]), REFUSED_OR_PLANNED, legal=IGNORED),
    snapshot("launch-time-year-1", snapshot_doc(instances=[instance(LaunchTime="0001-01-01T00:00:00+14:00")]), REFUSED_OR_PLANNED, legal=IGNORED),
    snapshot("instance-id-esc", snapshot_doc(instances=[instance(InstanceId="i-\x1b]0;owned\x07\x1b[2J")], slots=[]), (PLANNED,),
             legal="any id is planned; the table shows it escaped"),
]


# --- output and input paths ---------------------------------------------------------------------


def is_link_to(path: Path, target: str) -> None:
    assert path.is_symlink() and os.readlink(path) == target, f"{path} is no longer a symlink to {target}"


def is_fifo(path: Path) -> None:
    assert path.is_fifo(), f"{path} was replaced: no longer a FIFO"


def untouched(path: Path) -> None:
    assert path.read_text() == "untouched\n", f"{path} was written through a symlink"


def path_case(name: str, setup: Callable[[Path], list[str]], outcomes: tuple[Outcome, ...], names: str, positioned: bool = False, legal: str = "",
              userdata_on_stdout: bool = False, after: Optional[Callable[[Path], None]] = None) -> Case:
    """SETUP makes the paths in the folder and returns vfarm's arguments; NAMES is in them ({tmp})."""

    def prepare(folder: Path) -> Invocation:
        return Invocation(setup(folder), names.replace("{tmp}", str(folder)))

    return Case(f"paths/{name}", "paths", prepare, outcomes, positioned=positioned, legal=legal, userdata_on_stdout=userdata_on_stdout, after=after)


def link(name: str, target: str) -> Callable[[Path], Path]:
    def make(folder: Path) -> Path:
        (folder / name).symlink_to(target)
        return folder / name

    return make


def fifo(folder: Path, name: str = "fifo") -> Path:
    os.mkfifo(folder / name)
    return folder / name


def victim(folder: Path) -> Path:
    (folder / "elsewhere").mkdir(exist_ok=True)
    path = folder / "elsewhere" / "victim"
    path.write_text("untouched\n")
    return path


def subfolder(folder: Path) -> Path:
    (folder / "out").mkdir()
    return folder / "out"


def is_empty_folder(path: Path) -> None:
    assert path.is_dir() and not any(path.iterdir()), f"{path} was replaced or written into"


def written_through(folder: Path) -> None:
    target = folder / "elsewhere" / "victim"
    is_link_to(folder / "out", str(target))
    assert "MIME-Version" in target.read_text(), "the link's target was not written"


def handlers_with_link(name: str) -> Callable[[Path], list[str]]:
    def setup(folder: Path) -> list[str]:
        (folder / "out").mkdir()
        (folder / "out" / name).symlink_to(victim(folder))
        return ["handlers", str(folder / "out")]

    return setup


def build_into(setup: Callable[[Path], Path]) -> Callable[[Path], list[str]]:
    return lambda folder: ["build", str(TORINO), "--handlers", "baked", "-o", str(setup(folder))]


def farm(folder: Path) -> str:
    (folder / "farm.yaml").write_text(FARM)
    return str(folder / "farm.yaml")


SAFE = "replacing the link, or refusing, are both safe"
PRINTED = Outcome(0, refused=False, stdout="(?i)mime-version")
READ_FROM = "{tmp}/fifo"
WRITTEN = "-o writes through a symlink to where it points"
PATH_CASES = [
    path_case("output-link-to-dev-stdout", build_into(link("out", "/dev/stdout")), (PRINTED,), "", legal=WRITTEN, userdata_on_stdout=True,
              after=lambda folder: is_link_to(folder / "out", "/dev/stdout")),
    path_case("output-link-to-proc-fd-1", build_into(link("out", "/proc/self/fd/1")), (PRINTED,), "", legal=WRITTEN, userdata_on_stdout=True,
              after=lambda folder: is_link_to(folder / "out", "/proc/self/fd/1")),
    path_case("output-link-to-file", lambda folder: build_into(link("out", str(victim(folder))))(folder), (ACCEPTED,), "", legal=WRITTEN,
              after=written_through),
    path_case("output-fifo-no-reader", build_into(fifo), (REFUSED,), READ_FROM, after=lambda folder: is_fifo(folder / "fifo")),
    path_case("output-directory", build_into(subfolder), (REFUSED,), "{tmp}/out", after=lambda folder: is_empty_folder(folder / "out")),
    path_case("validate-fifo", lambda folder: ["validate", str(fifo(folder))], (Outcome(1, True, line=1),), READ_FROM, positioned=True),
    path_case("build-fifo", lambda folder: ["build", str(fifo(folder)), "-o", str(folder / "out")], (Outcome(1, True, line=1),), READ_FROM, positioned=True),
    path_case("plan-fifo", lambda folder: ["plan", str(fifo(folder)), "--vg-size", "20G"], (Outcome(1, True, line=1),), READ_FROM, positioned=True),
    path_case("inspect-fifo", lambda folder: ["inspect", str(fifo(folder))], (REFUSED,), READ_FROM),
    path_case("summary-fifo", lambda folder: ["summary", str(fifo(folder))], (REFUSED,), READ_FROM),
    path_case("snapshot-fifo", lambda folder: ["scale", farm(folder), "--snapshot", str(fifo(folder))], (REFUSED,), READ_FROM),
    path_case("attach-fifo", lambda folder: ["build", str(TORINO), "--handlers", "baked", "-o", str(folder / "ud"), "--attach", str(fifo(folder))], (REFUSED,),
              READ_FROM),
    path_case("validate-dev-zero", lambda folder: ["validate", "/dev/zero"], (Outcome(1, True, line=1),), "/dev/zero", positioned=True),
    path_case("inspect-dev-zero", lambda folder: ["inspect", "/dev/zero"], (REFUSED,), "/dev/zero"),
    path_case("inspect-dev-urandom", lambda folder: ["inspect", "/dev/urandom"], (REFUSED,), "/dev/urandom"),
    path_case("summary-dev-zero", lambda folder: ["summary", "/dev/zero"], (REFUSED,), "/dev/zero"),
    path_case("snapshot-dev-zero", lambda folder: ["scale", farm(folder), "--snapshot", "/dev/zero"], (REFUSED,), "/dev/zero"),
    path_case("attach-dev-zero", lambda folder: ["build", str(TORINO), "--handlers", "baked", "-o", str(folder / "ud"), "--attach", "/dev/zero"], (REFUSED,),
              "/dev/zero"),
    path_case("handlers-sums-link", handlers_with_link("SHA256SUMS"), (ACCEPTED, REFUSED), "{tmp}/out", legal=SAFE,
              after=lambda folder: untouched(folder / "elsewhere" / "victim")),
    path_case("handlers-file-link", handlers_with_link("localfs_handler.py"), (ACCEPTED, REFUSED), "{tmp}/out", legal=SAFE,
              after=lambda folder: untouched(folder / "elsewhere" / "victim")),
]


ALL_CASES = CORPUS_CASES + GENERATED_CONFIGS + ARGV_CASES + INSPECT_CASES + SUMMARY_CASES + SNAPSHOT_CASES + PATH_CASES


# --- running -----------------------------------------------------------------------------------


def limit_address_space() -> None:
    resource.setrlimit(resource.RLIMIT_AS, (MEMORY_LIMIT, MEMORY_LIMIT))


def run(case: Case, folder: Path) -> Ran:
    invocation = case.prepare(folder)
    start = time.monotonic()
    try:
        done = subprocess.run([str(VFARM), *invocation.args], cwd=folder, stdin=subprocess.DEVNULL, capture_output=True, timeout=TIMEOUT,
                              preexec_fn=limit_address_space)
        code, out, err = done.returncode, done.stdout, done.stderr
    except subprocess.TimeoutExpired as expired:  # killed: the output so far
        code, out, err = None, expired.stdout or b"", expired.stderr or b""
    seconds = time.monotonic() - start
    return Ran(invocation, code, out.decode("utf-8", "surrogateescape"), err.decode("utf-8", "surrogateescape"), seconds, folder)


@pytest.fixture(scope="module")
def results(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Ran]:
    """Every case of this module selected in the session, run once, in parallel."""
    chosen: dict[str, Case] = {}
    for item in request.session.items:
        callspec = getattr(item, "callspec", None)
        if getattr(item, "module", None) is request.module and callspec is not None and isinstance(callspec.params.get("case"), Case):
            chosen[callspec.params["case"].id] = callspec.params["case"]
    return run_all(chosen.values(), tmp_path_factory.mktemp("hostile"))


def run_all(chosen: Iterable[Case], base: Path) -> dict[str, Ran]:
    """Each case run in a folder of its own under BASE, in parallel; by case id."""

    def one(case: Case) -> tuple[str, Ran]:
        folder = base / case.id.replace("/", "--")
        folder.mkdir()
        return case.id, run(case, folder)

    with ThreadPoolExecutor(WORKERS) as pool:
        return dict(pool.map(one, chosen))


def mismatch(case: Case, outcome: Outcome, ran: Ran) -> Optional[str]:
    """Why RAN is not OUTCOME, or None."""
    if ran.returncode != outcome.exit:
        return f"exit {ran.returncode}, expected {outcome.exit}"
    if outcome.refused:
        problems = [line for line in ran.stderr.splitlines() if line.strip() and not WARNING.search(line)]
        if outcome.exit == 2:  # argparse's usage (its first line, then indented ones) comes before the problem
            problems = [line for line in problems if not line.startswith(("usage: ", " "))]
        if len(problems) != 1:
            return f"{len(problems)} problem lines on stderr, expected exactly one"
        line = problems[0]
        if case.positioned:
            located = re.match(re.escape(ran.invocation.names) + r":(\d+):(\d+): \S", line)
            if not located:
                return f"the problem is not located as {ran.invocation.names}:LINE:COL: ..."
            if outcome.line is not None and int(located[1]) != outcome.line:
                return f"located at line {located[1]}, expected line {outcome.line}"
        elif ran.invocation.names not in line:
            return f"the problem line does not name {ran.invocation.names}"
        if outcome.message and not re.search(outcome.message, line):
            return f"the problem line does not match {outcome.message!r}"
    if outcome.stdout and not re.search(outcome.stdout, ran.stdout):
        return f"stdout does not match {outcome.stdout!r}"
    return None


def check(case: Case, ran: Ran) -> None:
    command = shlex.join(ran.invocation.args)[:300]
    shown = f"\n$ vfarm {command}\nexit {ran.returncode} after {ran.seconds:.1f} s\nstderr: {ran.stderr[-2000:]!r}\nstdout: {ran.stdout[:500]!r}"
    assert ran.returncode is not None, f"still running after {TIMEOUT:.0f} s: killed" + shown
    assert "Traceback" not in ran.stderr + ran.stdout, "a traceback" + shown
    outputs = {"stderr": ran.stderr} if case.userdata_on_stdout else {"stderr": ran.stderr, "stdout": ran.stdout}
    for name, text in outputs.items():
        for word in SECRET_WORDS:
            assert word not in text, f"the marker secret {word} is in {name}" + shown
        raw = RAW_CONTROL.search(text)
        assert raw is None, f"a raw control character {raw.group()!r} in {name}" + shown
    reasons = [mismatch(case, outcome, ran) for outcome in case.outcomes]
    assert None in reasons, "; or ".join(str(r) for r in reasons) + shown
    if case.after is not None:
        case.after(ran.folder)


def cases(kind: str) -> list[Case]:
    return [case for case in ALL_CASES if case.kind == kind]


def result(case: Case, results: dict[str, Ran], tmp_path: Path) -> Ran:
    return results[case.id] if case.id in results else run(case, tmp_path)


# --- the tests: one per command kind -------------------------------------------------------------


def test_the_corpus_is_large_and_covers_every_class() -> None:
    assert len(ALL_CASES) >= 150
    assert len({case.id for case in ALL_CASES}) == len(ALL_CASES)
    classes = {case.id.split("/")[0] for case in ALL_CASES}
    assert classes >= {"control", "newline", "condor-injection", "mount", "device", "host", "repository", "structure", "yaml11", "secret", "token-file",
                       "build", "plan", "generated", "plan-args", "build-args", "inspect", "summary", "snapshot", "paths"}
    assert {case.kind for case in ALL_CASES} == {"validate", "build", "plan", "inspect", "summary", "scale", "paths"}


@pytest.mark.parametrize("case", cases("validate"), ids=lambda case: case.id)
def test_validate(case: Case, results: dict[str, Ran], tmp_path: Path) -> None:
    check(case, result(case, results, tmp_path))


@pytest.mark.parametrize("case", cases("build"), ids=lambda case: case.id)
def test_build(case: Case, results: dict[str, Ran], tmp_path: Path) -> None:
    check(case, result(case, results, tmp_path))


@pytest.mark.parametrize("case", cases("plan"), ids=lambda case: case.id)
def test_plan(case: Case, results: dict[str, Ran], tmp_path: Path) -> None:
    check(case, result(case, results, tmp_path))


@pytest.mark.parametrize("case", cases("inspect"), ids=lambda case: case.id)
def test_inspect(case: Case, results: dict[str, Ran], tmp_path: Path) -> None:
    check(case, result(case, results, tmp_path))


@pytest.mark.parametrize("case", cases("summary"), ids=lambda case: case.id)
def test_summary(case: Case, results: dict[str, Ran], tmp_path: Path) -> None:
    check(case, result(case, results, tmp_path))


@pytest.mark.parametrize("case", cases("scale"), ids=lambda case: case.id)
def test_scale_snapshot(case: Case, results: dict[str, Ran], tmp_path: Path) -> None:
    check(case, result(case, results, tmp_path))


@pytest.mark.parametrize("case", cases("paths"), ids=lambda case: case.id)
def test_paths(case: Case, results: dict[str, Ran], tmp_path: Path) -> None:
    check(case, result(case, results, tmp_path))


# --- validate --json: the same verdicts, as data --------------------------------------------------


@pytest.fixture(scope="module")
def json_results(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Ran]:
    """Every validate case again with --json, run once, in parallel."""
    return run_all([json_case(case) for case in cases("validate")], tmp_path_factory.mktemp("hostile-json"))


def json_case(case: Case) -> Case:
    """CASE with --json on its command line, all else the same."""
    prepare = case.prepare
    return replace(case, prepare=lambda folder: with_json(prepare(folder)))


def with_json(invocation: Invocation) -> Invocation:
    assert invocation.args[0] == "validate", invocation.args
    return Invocation(["validate", "--json", *invocation.args[1:]], invocation.names)


@pytest.mark.parametrize("case", cases("validate"), ids=lambda case: case.id)
def test_validate_json_says_what_the_text_says(case: Case, results: dict[str, Ran], json_results: dict[str, Ran], tmp_path: Path) -> None:
    """The same exit code; stdout one JSON list whose problems are the text's FILE:LINE:COL lines,
    message for message; nothing on stderr; no secret and no raw control character."""
    text, ran = result(case, results, tmp_path), json_results[case.id]
    shown = f"\n$ vfarm {shlex.join(ran.invocation.args)[:300]}\nstderr: {ran.stderr[-1000:]!r}\nstdout: {ran.stdout[:1000]!r}"
    assert ran.returncode == text.returncode, shown
    assert ran.stderr == "", shown
    for word in SECRET_WORDS:
        assert word not in ran.stdout, shown
    assert not RAW_CONTROL.search(ran.stdout), shown
    report = json.loads(ran.stdout)
    assert [entry["valid"] for entry in report] == [text.returncode == 0]
    lines = [f"{entry['file']}:{p['line']}:{p['column']}: {'warning: ' if p['severity'] == 'warning' else ''}{p['message']}"
             for entry in report for p in entry["problems"]]
    lines = [line.replace(str(ran.folder), str(text.folder)) for line in lines]  # each run had a folder of its own
    assert lines == [line for line in text.stderr.splitlines() if line.strip()], shown
