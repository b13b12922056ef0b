"""The status page in a real browser (Debian's headless Chromium) beside a live `vfarm scale`
loop: a real HTCondor pool with idle jobs, EC2 on moto. The numbers Chromium renders (after the
page's own script fetched and drew the JSON) must be those `vfarm scale --status --json` prints
at the same moment. The farm is stable then: the workers were launched by a `--once` before the
loop started, and the loop's check-every is an hour, so its first cycle is the only one.

Chromium reaches loopback only: every other address goes to a dead proxy (127.0.0.1:9), and
the background services that call home are off. The screenshot stays in the test's tmp_path
(`page-artifacts/page.png`; the path is printed).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import urllib.error
import urllib.request
from html.parser import HTMLParser
from pathlib import Path
from typing import Any, Optional

import pytest

from tests.fixtures.condor_pool import CondorPool, free_port, stop_process, wait_for
from tests.fixtures.moto import Ec2Endpoint
from tests.scaler.test_scale_loop_pool import farm_file, farm_instances

pytestmark = pytest.mark.pool

CHROMIUM = shutil.which("chromium")
JOBS = 4


VOID = {"area", "base", "br", "col", "embed", "hr", "img", "input", "link", "meta", "source", "track", "wbr"}


class Dom(HTMLParser):
    """The rendered DOM as Chromium dumps it: every element's attributes in document order, the
    text of the elements with an id, and for each element the row (data-instance) it is in."""

    def __init__(self) -> None:
        super().__init__()
        self.elements: list[tuple[str, dict[str, Optional[str]]]] = []
        self.by_id: dict[str, dict[str, Optional[str]]] = {}
        self.text: dict[str, str] = {}
        self.row_of: dict[int, Optional[str]] = {}  # id() of a cell's attributes -> its row's data-instance
        self._open: list[tuple[str, dict[str, Optional[str]]]] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, Optional[str]]]) -> None:
        found = dict(attrs)
        self.elements.append((tag, found))
        self.row_of[id(found)] = next((a["data-instance"] for _, a in reversed(self._open) if "data-instance" in a), None)
        if found.get("id"):
            self.by_id[str(found["id"])] = found
            self.text[str(found["id"])] = ""
        if tag not in VOID:
            self._open.append((tag, found))

    def handle_endtag(self, tag: str) -> None:
        while self._open:
            if self._open.pop()[0] == tag:
                break

    def handle_data(self, data: str) -> None:
        for _, attrs in self._open:
            if attrs.get("id"):
                self.text[str(attrs["id"])] += data

    def rows(self, tag: str, attribute: str) -> list[dict[str, Optional[str]]]:
        return [attrs for t, attrs in self.elements if t == tag and attribute in attrs]


def chromium(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    assert CHROMIUM, "chromium is not installed (tools/run setup installs Debian's package)"
    argv = [CHROMIUM, "--headless", "--no-first-run", "--disable-background-networking", "--disable-component-update", "--disable-sync",
            "--disable-default-apps", "--no-default-browser-check", "--disable-gpu", "--proxy-server=127.0.0.1:9",
            "--proxy-bypass-list=127.0.0.1", f"--user-data-dir={tmp_path / 'chromium-profile'}"]
    if os.geteuid() == 0:
        argv.append("--no-sandbox")  # Chromium refuses to run as root with its sandbox
    return subprocess.run([*argv, *args], text=True, capture_output=True, timeout=120)


def vfarm(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "vfarm", *args], text=True, capture_output=True, timeout=120, env=dict(os.environ))


def http_json(url: str) -> Any:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return json.loads(response.read())
    except urllib.error.HTTPError as err:
        if err.code == 503:  # no cycle yet
            return None
        raise


def test_the_page_in_chromium_shows_what_status_json_says(condor_pool: CondorPool, ec2_endpoint: Ec2Endpoint, tmp_path: Path) -> None:
    farm = farm_file(tmp_path, condor_pool, ec2_endpoint)
    farm.write_text(farm.read_text().replace("check-every: 2", "check-every: 3600").replace("boot-timeout: 600", "boot-timeout: 3600"))
    cluster = condor_pool.submit(JOBS, 5, requirements="VfarmInstanceId =!= undefined")  # no worker ever joins: they wait
    port = free_port()
    log = tmp_path / "scale.log"
    scaler: Optional[subprocess.Popen[bytes]] = None
    artifacts = tmp_path / "page-artifacts"
    artifacts.mkdir()
    try:
        wait_for(lambda: len(condor_pool.jobs(cluster)) == JOBS, 60, "the jobs in the queue")
        once = vfarm("scale", str(farm), "--once")
        assert once.returncode == 0, once.stderr
        launched = set(farm_instances(ec2_endpoint))
        assert len(launched) == 2  # 4 one-CPU jobs, 2 CPUs per worker

        with open(log, "w") as err:
            scaler = subprocess.Popen([sys.executable, "-m", "vfarm", "scale", str(farm), "--http", f"127.0.0.1:{port}"],
                                      stdout=subprocess.DEVNULL, stderr=err, env=dict(os.environ))
        base = f"http://127.0.0.1:{port}"

        def first_cycle() -> Any:
            assert scaler is not None and scaler.poll() is None, "the scaler died:\n" + log.read_text()[-3000:]
            try:
                return http_json(f"{base}/status.json")
            except OSError:  # not listening yet
                return None

        served = wait_for(first_cycle, 120, "the loop's first cycle on the page")
        status_run = vfarm("scale", str(farm), "--status", "--json")
        assert status_run.returncode == 0, status_run.stderr
        status = json.loads(status_run.stdout)

        page = chromium(tmp_path, "--virtual-time-budget=15000", "--dump-dom", f"{base}/")
        assert page.returncode == 0, page.stderr[-3000:]
        shot = chromium(tmp_path, "--virtual-time-budget=15000", "--window-size=1280,1000", f"--screenshot={artifacts / 'page.png'}", f"{base}/")
        assert shot.returncode == 0, shot.stderr[-3000:]
        history = http_json(f"{base}/history.json")
    finally:
        stop_process(scaler)
        condor_pool.run(["condor_rm", str(cluster)], check=False)
    print(f"screenshot: {artifacts / 'page.png'}")
    assert (artifacts / "page.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert len(history["cycles"]) == 1, "a second cycle ran: the farm was not stable"
    assert scaler.returncode == 0, log.read_text()[-3000:]

    dom = Dom()
    dom.feed(page.stdout)
    body = next(attrs for tag, attrs in dom.elements if tag == "body")
    assert body.get("data-ready") == "status", page.stdout[:3000]  # the page's script ran and drew the status
    assert int(body.get("data-updates") or 0) >= 2  # it read the JSON again by itself (every 5 s; 15 s of virtual time)
    assert dom.text["farm"].strip() == status["farm"]
    for key in ("waiting", "demand", "supply"):
        assert int(dom.text[key]) == status[key], key
    assert int(dom.text["instance-count"]) == len(status["instances"]) == 2
    assert status["waiting"] >= JOBS

    shown = {r["data-instance"]: r for r in dom.rows("tr", "data-instance")}
    assert set(shown) == {r["instance"] for r in status["instances"]} == launched
    elapsed = float(status["now"]) - float(dom.by_id["asof"]["data-now"] or "nan")
    assert 0 <= elapsed < 120
    for row in status["instances"]:
        assert (shown[row["instance"]]["data-state"], shown[row["instance"]]["data-type"]) == (row["state"], row["type"]) == ("booting", "default")
        # The reason names the age too ("launched 4s ago"): the page's, as of its cycle.
        page_reason = next(c["data-value"] for c in dom.rows("td", "data-key") if c["data-key"] == "reason" and dom.row_of[id(c)] == row["instance"])
        assert page_reason == next(r["reason"] for r in served["instances"] if r["instance"] == row["instance"])
        assert _timeless_text(str(page_reason)) == _timeless_text(row["reason"])
        page_age = next(float(c["data-value"] or "nan") for c in dom.rows("td", "data-key")
                        if c["data-key"] == "age" and dom.row_of[id(c)] == row["instance"])
        assert abs(page_age + elapsed - row["age"]) < 2, (page_age, elapsed, row["age"])
    # The JSON the page drew from is --status --json's data, but for the moment it was taken.
    assert _timeless(served) == _timeless(status)
    counts = {c["data-state"]: c["data-count"] for c in dom.rows("td", "data-state")}
    assert counts == {"booting": "2"}
    waiting_line = next(a for t, a in dom.elements if t == "path" and a.get("data-series") == "waiting jobs")
    assert waiting_line["data-last"] == str(status["waiting"])
    assert dom.rows("li", "data-time"), "no cycle listed"
    # The loop's one cycle found the two workers booting for the four jobs: nothing to do.
    assert "0 launched, 0 drained, 0 terminated" in dom.text["cycles"] and "nothing to launch, drain or terminate" in dom.text["cycles"]


def _timeless_text(text: str) -> str:
    return re.sub(r"\d+", "N", text)


def _timeless(status: dict[str, Any]) -> dict[str, Any]:
    return {**status, "now": None, "instances": [{**r, "age": None, "reason": _timeless_text(r["reason"])} for r in status["instances"]]}
