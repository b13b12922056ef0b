"""The status page's HTTP side, in-process: the JSON it serves (the farm as --status --json shows
it, the scaler's bounded history), read-only (405 for anything but GET and HEAD), loopback-only
Host names, secrets redacted, and its files all part of the package."""

from __future__ import annotations

import configparser
import dataclasses
import fnmatch
import http.client
import json
import logging
import re
import socket
import struct
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.fixtures.condor_pool import free_port
from tests.scaler.test_scale_apply import SPEC, World, instance, job, slot
from vfarm.cli import scale as scale_cli
from vfarm.cli.main import main
from vfarm.scaler import loop, page
from vfarm.scaler import plan as planner

ROOT = Path(__file__).resolve().parents[2]
SECRET = "hunter2-pass"


@pytest.fixture
def world(caplog: pytest.LogCaptureFixture) -> World:
    w = World(caplog)
    w.scaler.keep_status = True
    return w


@pytest.fixture
def served(world: World) -> Iterator[tuple[World, int]]:
    port = free_port()
    _, stop = page.serve(("127.0.0.1", port), world.scaler.history, world.spec.name, logging.getLogger("vfarm.test"))
    try:
        yield world, port
    finally:
        stop()


def request(port: int, method: str, path: str, host: str = "") -> tuple[int, dict[str, str], bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.putrequest(method, path, skip_host=True)
        conn.putheader("Host", host or f"127.0.0.1:{port}")
        conn.endheaders()
        response = conn.getresponse()
        return response.status, {k.lower(): v for k, v in response.getheaders()}, response.read()
    finally:
        conn.close()


def get_json(port: int, path: str) -> Any:
    status, headers, body = request(port, "GET", path)
    assert status == 200 and headers["content-type"] == "application/json", (status, body)
    return json.loads(body)


def test_status_json_is_what_status_shows_and_history_records_the_cycle(served: tuple[World, int]) -> None:
    w, port = served
    now = w.now[0]
    assert request(port, "GET", "/status.json")[0] == 503  # no cycle yet
    w.cloud.instances.update({"i-busy": instance("i-busy", now - 4000), "i-gone": instance("i-gone", now - 100, "terminated", end="lost")})
    w.slots = [slot("i-busy", "Claimed", name="slot1_1@w-i-busy@h")]
    w.jobs = [job(1, 2, remote="slot1_1@w-i-busy@h"), job(2), job(3), job(4)]
    saved: list[dict[str, Any]] = []
    w.scaler.cycle(save=saved.append)

    status = get_json(port, "/status.json")
    # What --status --json prints, from the snapshot the cycle planned from: the same function.
    expected = loop.status_document(planner.plan(saved[0], w.spec), saved[0], w.spec, w.scaler.applier.read_verdict)
    assert status == json.loads(json.dumps(expected))
    assert set(status) == {"farm", "now", "waiting", "demand", "supply", "instances", "scaler_here"}
    assert (status["farm"], status["now"], status["waiting"], status["demand"], status["supply"]) == ("farm", now, 3, 3, 0)
    assert [(r["instance"], r["state"], r["jobs"]) for r in status["instances"]] == [("i-busy", "busy", 1), ("i-gone", "terminated", 0)]
    assert status["instances"][1]["lost_reason"] == "console-unreadable"  # the fake cloud reads no console

    history = get_json(port, "/history.json")
    assert history["farm"] == "farm" and history["check_every"] == 15
    w.scaler.adopt(loop.Parts(dataclasses.replace(w.spec, check_every=60.0), w.cloud, w.drain, None))  # SIGHUP's reload
    assert get_json(port, "/history.json")["check_every"] == 60
    [cycle] = history["cycles"]
    assert (cycle["waiting"], cycle["demand"], cycle["launched"], cycle["states"]["busy"]) == (3, 3, 2, 1)
    [entry] = history["decisions"]
    assert [(d["action"], d["count"]) for d in entry["decisions"]] == [("launch", 2)]
    assert "3 waiting job(s)" in entry["decisions"][0]["reason"] and len(entry["launched"]) == 2


def test_only_get_and_head_every_other_method_is_refused(served: tuple[World, int]) -> None:
    w, port = served
    w.jobs = [job(1)]
    w.scaler.cycle()
    before = json.dumps(w.cloud.instances, sort_keys=True)
    for method in ("POST", "PUT", "DELETE", "PATCH", "OPTIONS", "TRACE", "LAUNCH"):
        status, headers, body = request(port, method, "/status.json")
        assert (status, headers["allow"]) == (405, "GET, HEAD"), method
        assert b"read-only" in body
    assert json.dumps(w.cloud.instances, sort_keys=True) == before
    status, headers, body = request(port, "HEAD", "/")
    assert status == 200 and body == b"" and int(headers["content-length"]) > 500
    status, headers, body = request(port, "GET", "/")
    assert status == 200 and headers["content-type"].startswith("text/html") and b'<script src="/page.js"' in body
    assert "default-src 'none'" in headers["content-security-policy"] and headers["x-content-type-options"] == "nosniff"
    status, headers, body = request(port, "GET", "/page.js")
    assert status == 200 and headers["content-type"].startswith("text/javascript") and b"setInterval(update" in body
    assert request(port, "GET", "/page.css")[0] == 200
    assert request(port, "GET", "/../setup.cfg")[0] == 404
    assert request(port, "GET", "/static/page.js")[0] == 404


def test_a_loopback_page_answers_only_to_loopback_names(served: tuple[World, int]) -> None:
    _, port = served
    assert request(port, "GET", "/history.json", host=f"localhost:{port}")[0] == 200
    status, _, body = request(port, "GET", "/history.json", host=f"evil.example:{port}")  # a DNS name rebound to 127.0.0.1
    assert status == 421 and b"farm" not in body


def test_secrets_in_skipped_cycles_and_reasons_never_reach_the_page(served: tuple[World, int]) -> None:
    w, port = served
    w.pool_down = f"collector unreachable via http://admin:{SECRET}@proxy.example:3128 (token=eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJ4In0.c2lnbmF0dXJl)"
    w.scaler.cycle()
    status, _, body = request(port, "GET", "/history.json")
    assert status == 200
    assert SECRET not in body.decode() and "eyJzdWIiOiJ4In0" not in body.decode()
    [entry] = json.loads(body)["decisions"]
    assert "collector unreachable" in entry["skipped"]
    assert json.loads(body)["cycles"] == [{"time": w.now[0], "skipped": True}]


def test_the_history_is_bounded() -> None:
    history = loop.History(cycles=5, decisions=3, per_cycle=2)
    for n in range(20):
        snapshot = {"now": 1000.0 + n, "jobs": [job(k) for k in range(8)], "slots": [], "instances": [], "collector": []}
        result = planner.plan(snapshot, SPEC)
        history.applied(1000.0 + n, result, loop.Outcome(launched=[f"i-{n}"]))
        history.skipped(1000.5 + n, "pool down")
    data = history.to_json()
    assert [c["time"] for c in data["cycles"]] == [1017.0, 1017.5, 1018.0, 1018.5, 1019.0, 1019.5][1:]
    assert [d["time"] for d in data["decisions"]] == [1019.5, 1019.0, 1018.5]  # newest first
    assert data["limits"] == {"cycles": 5, "decisions": 3, "per_cycle": 2}


def test_decisions_beyond_the_per_cycle_bound_are_counted_not_kept(caplog: pytest.LogCaptureFixture) -> None:
    w = World(caplog)
    now = w.now[0]
    for k in range(5):  # five idle workers past idle-time: five drains
        w.cloud.instances[f"i-{k}"] = instance(f"i-{k}", now - 5000)
        w.slots.append(slot(f"i-{k}", entered=now - 4000))
    w.scaler.history = loop.History(per_cycle=2)
    w.scaler.cycle()
    w.tick(150)  # seen idle past idle-time (100 s): all five drain
    w.scaler.cycle()
    newest, first = w.scaler.history.to_json()["decisions"]
    assert (first["decisions"], first["more"]) == ([], 0)
    assert [d["action"] for d in newest["decisions"]] == ["drain", "drain"] and newest["more"] == 3
    assert len(newest["drained"]) == 5  # what was done is kept whole


def test_the_page_reads_an_ended_workers_console_once_per_verdict_retry(caplog: pytest.LogCaptureFixture) -> None:
    w = World(caplog)
    w.scaler.keep_status = True
    reads: list[str] = []

    def no_verdict_yet(iid: str) -> None:
        reads.append(iid)
        return None

    w.cloud.verdict = no_verdict_yet  # type: ignore[attr-defined]
    w.cloud.instances["i-gone"] = instance("i-gone", w.now[0] - 100, "terminated", end="drained")
    for _ in range(3):
        w.scaler.cycle()
        w.tick(15)
    assert reads == ["i-gone"]
    assert w.scaler.history.status()["instances"][0]["lost_reason"] == "no-verdict"  # type: ignore[index]
    w.tick(loop.VERDICT_RETRY)
    w.scaler.cycle()
    assert reads == ["i-gone", "i-gone"]
    del w.cloud.instances["i-gone"]  # the cloud forgot it: so does the page
    w.scaler.cycle()
    assert w.scaler._verdicts == {}


def test_http_address_parsing() -> None:
    assert page.parse_address("8080") == ("127.0.0.1", 8080)
    assert page.parse_address("127.0.0.1:8080") == ("127.0.0.1", 8080)
    assert page.parse_address("0.0.0.0:80") == ("0.0.0.0", 80)  # another address only when asked
    assert page.parse_address("[::1]:9000") == ("::1", 9000)
    for bad in ("", "0", "65536", "host.example:80", "127.0.0.1:", "127.0.0.1:http", ":80x"):
        with pytest.raises(page.AddressError):
            page.parse_address(bad)


def test_http_goes_only_with_the_loop_and_bad_values_are_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    farm = tmp_path / "farm.yaml"
    farm.write_text("scale:\n  name: f\n  cloud: {type: ec2, image-id: ami-1, instance-type: m1.small}\n  max-vms: 1\n")
    assert main(["scale", str(farm), "--http", "80x"]) == 1
    assert main(["scale", str(farm), "--once", "--http", "8080"]) == 1
    assert main(["scale", str(farm), "--status", "--http", "8080"]) == 1
    err = capsys.readouterr().err
    assert "--http: not [ADDRESS:]PORT" in err and err.count("--http serves the status page of the loop") == 2
    assert "Traceback" not in err


# A farm whose pool and cloud are 127.0.0.1 (a closed port): a command that went past its options
# would contact nothing elsewhere.
LOCAL_FARM = """scale:
  name: f
  cloud: {type: ec2, image-id: ami-1, instance-type: m1.small, endpoint-url: http://127.0.0.1:9}
  pool: {collector: 127.0.0.1:9}
  max-vms: 1
"""


def test_http_port_is_ascii_digits_only() -> None:
    # str.isdigit() takes superscripts (int() then raises ValueError) and other scripts' digits.
    for bad in ("\u00b2", "127.0.0.1:\u0668\u0660\u0668\u0660", "\uff18\uff10\uff18\uff10", "[::1]:\u00b9"):
        with pytest.raises(page.AddressError):
            page.parse_address(bad)


def test_a_non_ascii_http_port_is_one_line_before_anything_is_contacted(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    farm = tmp_path / "farm.yaml"
    farm.write_text(LOCAL_FARM)

    def contacted(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("vfarm scale went past --http: it would contact the pool and the cloud")

    monkeypatch.setattr(scale_cli, "make_scaler", contacted)
    assert main(["scale", str(farm), "--http", "80x"]) == 1  # the other --http errors' exit code
    capsys.readouterr()
    for value in ("\u00b2", "127.0.0.1:\u0668\u0660\u0668\u0660"):
        assert main(["scale", str(farm), "--http", value]) == 1
        err = capsys.readouterr().err
        assert err.startswith("vfarm: --http: not [ADDRESS:]PORT") and err.count("\n") == 1, err
        assert "Traceback" not in err


def test_a_loopback_page_on_port_80_answers_to_the_bare_names(world: World) -> None:
    hosts = page._loopback_hosts("127.0.0.1", 80)
    assert hosts is not None and {"127.0.0.1", "localhost", "[::1]", "127.0.0.1:80", "localhost:80"} <= hosts
    assert not {"evil.example", "evil.example:80"} & hosts
    assert "[::1]" in (page._loopback_hosts("::1", 80) or set())
    assert "127.0.0.1" not in (page._loopback_hosts("127.0.0.1", 8080) or set())  # elsewhere the port is always sent
    assert page._loopback_hosts("0.0.0.0", 80) is None
    # Through the handler, without binding port 80: the Host header a browser sends for http://127.0.0.1/.
    server, stop = page.serve(("127.0.0.1", 0), world.scaler.history, "farm", logging.getLogger("vfarm.test"))
    server.loopback_hosts = hosts
    port = server.server_address[1]
    try:
        assert request(port, "GET", "/history.json", host="127.0.0.1")[0] == 200
        assert request(port, "GET", "/history.json", host="[::1]")[0] == 200
        assert request(port, "GET", "/history.json", host="evil.example")[0] == 421
    finally:
        stop()


def test_a_silent_connection_is_closed_after_the_timeout(world: World) -> None:
    assert page.CONNECTION_TIMEOUT == 10
    server, stop = page.serve(("127.0.0.1", 0), world.scaler.history, "farm", logging.getLogger("vfarm.test"), timeout=1.0)
    port = server.server_address[1]
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=8) as silent, \
                socket.create_connection(("127.0.0.1", port), timeout=8) as unfinished:
            unfinished.sendall(b"GET / HTTP/1.1\r\n")  # headers never finished
            started = time.monotonic()
            assert silent.recv(1) == b""  # EOF: the server closed it (no timeout: socket.timeout)
            assert unfinished.recv(1) == b""
            assert time.monotonic() - started >= 0.5
    finally:
        stop()


def test_connections_beyond_the_cap_are_closed_at_once(world: World, monkeypatch: pytest.MonkeyPatch) -> None:
    assert page.MAX_CONNECTIONS == 32
    server, stop = page.serve(("127.0.0.1", 0), world.scaler.history, "farm", logging.getLogger("vfarm.test"), max_connections=2)
    port = server.server_address[1]
    ended = threading.Semaphore(0)
    handle = server.process_request_thread

    def counted(request: Any, address: Any) -> None:
        handle(request, address)
        ended.release()  # after the connection gave its place back

    monkeypatch.setattr(server, "process_request_thread", counted)
    try:
        held = [socket.create_connection(("127.0.0.1", port), timeout=8) for _ in range(2)]
        # Accepted in order: the third finds both places taken and is closed without waiting for
        # the 10 s timeout (the client gives up after 5 s).
        with socket.create_connection(("127.0.0.1", port), timeout=5) as extra:
            assert extra.recv(1) == b""
        for sock in held:
            sock.close()
        for _ in held:
            assert ended.acquire(timeout=10)
        assert request(port, "GET", "/history.json")[0] == 200  # the places came back
    finally:
        stop()


def test_a_client_gone_mid_answer_is_one_debug_line_not_a_traceback(world: World, monkeypatch: pytest.MonkeyPatch,
                                                                     caplog: pytest.LogCaptureFixture,
                                                                     capsys: pytest.CaptureFixture[str]) -> None:
    caplog.set_level(logging.DEBUG, logger="vfarm.test")
    reading, gone = threading.Event(), threading.Event()
    read_asset = page.read_asset

    def after_the_client_left(name: str) -> bytes:
        reading.set()
        gone.wait(10)  # the answer is written only once the client has reset the connection
        return read_asset(name)

    monkeypatch.setattr(page, "read_asset", after_the_client_left)
    server, stop = page.serve(("127.0.0.1", 0), world.scaler.history, "farm", logging.getLogger("vfarm.test"))
    port = server.server_address[1]
    ended = threading.Event()
    handle = server.process_request_thread

    def watched(request: Any, address: Any) -> None:
        handle(request, address)
        ended.set()

    monkeypatch.setattr(server, "process_request_thread", watched)
    try:
        client = socket.create_connection(("127.0.0.1", port), timeout=10)
        client.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))  # close() sends RST
        client.sendall(f"GET /page.js HTTP/1.0\r\nHost: 127.0.0.1:{port}\r\n\r\n".encode())
        assert reading.wait(10)
        client.close()  # a tab closed before the answer
        gone.set()
        assert ended.wait(10)
    finally:
        stop()
    err = capsys.readouterr().err
    assert "Traceback" not in err and "Exception occurred" not in err, err
    lines = [r.getMessage() for r in caplog.records if "ended early" in r.getMessage()]
    assert len(lines) == 1 and "\n" not in lines[0] and lines[0].startswith("page: connection from 127.0.0.1:"), lines
    assert all("Traceback" not in r.getMessage() and r.exc_info is None for r in caplog.records)


def test_the_page_loads_nothing_from_elsewhere_and_its_files_are_package_data() -> None:
    static = ROOT / "scaler" / "static"
    files = sorted(p.name for p in static.iterdir())
    assert {"page.html", "page.js", "page.css"} <= set(files)
    for name in files:
        text = (static / name).read_text()
        urls = set(re.findall(r"\b(?:https?:)?//[\w.-]+", text))
        assert urls <= {"http://www.w3.org"}, (name, urls)  # the SVG namespace is a name, never fetched
        assert "@import" not in text and "@font-face" not in text
    cfg = configparser.ConfigParser()
    cfg.read(ROOT / "setup.cfg")
    patterns = [p.strip() for p in cfg["options.package_data"]["vfarm.scaler"].split(",")]
    assert all(any(fnmatch.fnmatch(f"static/{name}", p) for p in patterns) for name in files), (files, patterns)
    assert page.read_asset("page.js") == (static / "page.js").read_bytes()
