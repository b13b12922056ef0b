"""The final check (issue 5) against boots made by the real cloud-init 22.4 and 25.1 code."""

from __future__ import annotations

import gzip
import json
import os
import stat
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.fixtures.check import Boot, closed_port, fake_boot, fake_boots, mime
from tests.fixtures.cloudinit import Release
from vfarm.cc_modules import cc_vfarm_check, check
from vfarm.cli import main as cli
from vfarm.mime_builder import checkpart

LOCALFS = ("localfs-config", "localfs:\n  parts:\n    home: 50\n")
CVMFS = ("cvmfs-config", "cvmfs:\n  install: false\n")
CONDOR = ("condor-config", "condor:\n  host: pool.example.org\n")


INCLUDE_URL = f"http://127.0.0.1:{closed_port()}/localfs_handler.py"
# name -> (user-data, fake_boot options): every boot of a release made in one interpreter.
SCENARIOS: dict[str, tuple[bytes, dict[str, Any]]] = {
    "clean": (mime([("check-config", "on-failure: halt\n"), LOCALFS, CVMFS]), {"handled": {"check": "real", "localfs": "ok", "cvmfs": "ok"}}),
    "command-fails": (mime([LOCALFS, CVMFS]), {"handled": {"localfs": "ok", "cvmfs": "command-fails"}}),
    "raises": (mime([LOCALFS]), {"handled": {"localfs": "raises"}}),
    "include-fails": (mime([("x-include-url", INCLUDE_URL + "\n"), LOCALFS, CVMFS]), {"handled": {"localfs": "ok", "cvmfs": "ok"}}),
    "no-handler": (mime([LOCALFS, CONDOR]), {"handled": {"localfs": "ok"}}),
    "module-error": (mime([LOCALFS]), {"handled": {"localfs": "ok"}, "module_error": "vfarm_broken"}),
    "check-unhandled": (mime([("check-config", "on-failure: none\n"), LOCALFS]), {"handled": {"localfs": "ok"}}),
}


@pytest.fixture(scope="module")
def boots(cloudinit_release: Release, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Boot]:
    base = tmp_path_factory.mktemp(f"boots-{cloudinit_release.id}")
    made = fake_boots(cloudinit_release, [(base / name, userdata, options) for name, (userdata, options) in SCENARIOS.items()])
    return dict(zip(SCENARIOS, made))


class FakeRunner:
    def __init__(self) -> None:
        self.calls: list[list[str]] = []

    def __call__(self, argv: list[str]) -> None:
        self.calls.append(list(argv))


def run_check(boot: Boot, wait: float = 0) -> tuple[dict[str, Any], FakeRunner]:
    runner = FakeRunner()
    summary = check.run_check(check.Paths(boot.root), wait=wait, run=runner)
    return summary, runner


def by_name(summary: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {h["name"]: h for h in summary["handlers"]}


# --- each failure kind, against real status files ----------------------------------------------


def test_clean_boot_is_all_ok_and_stays_up(boots: dict[str, Boot]) -> None:
    boot = boots["clean"]
    summary, runner = run_check(boot)
    assert summary["result"] == "ok", summary["problems"] + summary["warnings"]
    assert summary["decision"]["action"] == "none"
    assert runner.calls == []
    assert [(h["name"], h["status"], h["expected"]) for h in summary["handlers"]] == [("localfs", "ok", True), ("cvmfs", "ok", True)]
    assert summary["cloud_init"]["state"] == "done"
    assert summary["settings"]["on-failure"] == "halt"  # read from the raw user-data
    written = json.loads((boot.root / "var/log/vfarm/summary.json").read_text())
    assert written["result"] == "ok" and written["generated"]
    log = (boot.root / "var/log/vfarm/summary.log").read_text()
    assert "vfarm final check: OK" in log and "localfs  ok" in log


def test_handler_command_failing(boots: dict[str, Boot]) -> None:
    boot = boots["command-fails"]
    summary, runner = run_check(boot)
    handlers = by_name(summary)
    assert handlers["localfs"]["status"] == "ok"
    assert handlers["cvmfs"]["status"] == "failed"
    assert "`false` failed (exit 1)" in handlers["cvmfs"]["reason"]
    assert summary["result"] == "failed"
    assert summary["decision"]["action"] == "poweroff"
    assert summary["decision"]["reason"].startswith("cvmfs: failed: `false` failed")
    # cloud-init itself saw nothing wrong (22.4) or only a WARNING (25.1): our records decide.
    assert summary["cloud_init"]["state"] in ("done", "degraded")
    assert runner.calls and runner.calls[0][:4] == ["shutdown", "-P", "--", "now"]


def test_handler_raising(boots: dict[str, Boot]) -> None:
    boot = boots["raises"]
    summary, runner = run_check(boot)
    assert by_name(summary)["localfs"]["status"] == "failed"
    assert "RuntimeError: boom in localfs" in by_name(summary)["localfs"]["reason"]
    assert summary["decision"]["action"] == "poweroff" and runner.calls


@pytest.mark.integration
def test_handler_killed_leaves_running_record(cloudinit_release: Release, tmp_path: Path) -> None:
    """The process dies inside the handler: its record still says "running" (a crash)."""
    root = tmp_path / "killed"
    userdata = mime([LOCALFS, CVMFS])
    first = fake_boot(cloudinit_release, root, userdata, handled={"localfs": "killed", "cvmfs": "ok"}, stages=["init-local", "init"], finish=False)
    if cloudinit_release.id == "22.4":
        # 22.4 runs each stage in its own process: systemd goes on with config and final.
        fake_boot(cloudinit_release, root, userdata, stages=["modules-config", "modules-final"])
    summary, runner = run_check(first)
    handlers = by_name(summary)
    assert handlers["localfs"]["status"] == "failed"
    assert handlers["localfs"]["reason"].startswith("crashed: its record still says running")
    assert handlers["cvmfs"]["status"] == "never-ran"  # the walk never reached it
    assert any("cloud-init init: started but never finished" in p for p in summary["problems"])
    if cloudinit_release.id == "25.1":  # one process for all stages: nothing after the kill
        assert any("cloud-init did not finish" in p for p in summary["problems"])
    assert runner.calls


def test_include_url_that_does_not_answer(boots: dict[str, Boot]) -> None:
    url = INCLUDE_URL
    boot = boots["include-fails"]
    status = boot.json("run/cloud-init/status.json")
    assert status["v1"]["init"]["errors"], "the real include failure must land in init.errors"
    summary, runner = run_check(boot)
    handlers = by_name(summary)
    for name in ("localfs", "cvmfs"):
        assert handlers[name]["status"] == "never-ran"
        assert "cloud-init's init stage failed" in handlers[name]["reason"]
    assert any(p.startswith("cloud-init init:") and "127.0.0.1" in p for p in summary["problems"])
    assert summary["userdata"]["includes"] == [url]
    assert summary["decision"]["action"] == "poweroff" and runner.calls


def test_part_with_no_handler(boots: dict[str, Boot]) -> None:
    boot = boots["no-handler"]
    summary, runner = run_check(boot)
    assert summary["unhandled_parts"][0]["content_type"] == "text/condor-config"
    condor = by_name(summary)["condor"]
    assert condor["status"] == "never-ran" and "no handler for its text/condor-config part" in condor["reason"]
    assert any("taken by no handler" in p for p in summary["problems"])
    assert summary["decision"]["action"] == "poweroff" and runner.calls


def test_cloud_init_module_error(boots: dict[str, Boot]) -> None:
    boot = boots["module-error"]
    summary, runner = run_check(boot)
    assert by_name(summary)["localfs"]["status"] == "ok"
    assert summary["cloud_init"]["state"] == "error"
    assert any(p.startswith("cloud-init modules-config: ('vfarm_broken', ProcessExecutionError(") for p in summary["problems"])
    assert "\n" not in summary["decision"]["reason"]
    assert summary["decision"]["action"] == "poweroff" and runner.calls


def test_check_part_unhandled_is_only_a_warning(boots: dict[str, Boot]) -> None:
    """Without the check-config handler the part is unhandled; the check read it anyway."""
    boot = boots["check-unhandled"]
    summary, runner = run_check(boot)
    assert summary["result"] == "degraded"
    assert summary["decision"]["action"] == "none" and runner.calls == []


# --- settings, decision, apply ------------------------------------------------------------------


def facts(**extra: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "records": {"localfs": {"status": "ok", "seconds": 1.5, "instance_id": "i-1"}},
        "status": {"v1": {"init": {"errors": [], "start": 1.0, "finished": 2.0, "recoverable_errors": {}}}},
        "result": {"v1": {"errors": []}},
        "userdata": {"sections": ["localfs"], "includes": []},
        "unhandled": [],
        "instance_id": "i-1",
    }
    base.update(extra)
    return base


def test_plan_is_pure_and_ok() -> None:
    summary = check.plan(facts(), check.Settings())
    assert summary["result"] == "ok" and summary["decision"] == {"action": "none", "delay": None, "reason": "all 1 handler(s) ok"}


def test_no_record_is_a_failure_and_stale_records_do_not_count() -> None:
    summary = check.plan(facts(records={}), check.Settings())
    assert summary["result"] == "failed" and by_name(summary)["localfs"]["status"] == "never-ran"
    stale = check.plan(facts(records={"localfs": {"status": "ok", "instance_id": "i-old"}}), check.Settings())
    assert by_name(stale)["localfs"]["status"] == "never-ran" and "another instance" in by_name(stale)["localfs"]["reason"]


def test_degraded_counts_only_when_configured() -> None:
    warned = {"v1": {"init": {"errors": [], "start": 1.0, "finished": 2.0, "recoverable_errors": {"DEPRECATED": ["old key"]}}}}
    assert check.plan(facts(status=warned), check.Settings())["result"] == "degraded"
    strict = check.plan(facts(status=warned), check.settings_from_section({"degraded-is-failure": True}))
    assert strict["result"] == "failed" and strict["decision"]["action"] == "poweroff"


def test_unfinished_cloud_init_is_a_failure() -> None:
    summary = check.plan(facts(result=None), check.Settings(), waited_out=True)
    assert summary["result"] == "failed" and "did not finish" in summary["decision"]["reason"]
    assert check.plan(facts(status=None, result=None), check.Settings())["result"] == "failed"


def test_whole_minutes_written_as_floats_are_minutes() -> None:
    """The schema (jsonschema: 10.0 is an integer) accepts `delay: 10.0`: the instance reads it as 10."""
    settings = check.settings_from_section({"on-failure": "halt", "delay": 10.0, "timeout": 30.0})
    assert (settings.on_failure, settings.delay, settings.timeout, settings.problem) == ("halt", 10, 30, None)
    assert check.settings_from_section({"delay": 10.5}).problem  # not whole: still refused


@pytest.mark.parametrize(
    ("section", "argv_head"),
    [
        ({}, ["shutdown", "-P", "--", "now"]),
        ({"on-failure": "halt", "delay": 5}, ["shutdown", "-H", "--", "+5"]),
        ({"on-failure": "none"}, None),
        ({"on-failure": "reboot"}, ["shutdown", "-P", "--", "now"]),  # invalid: the safe default
        ("not a mapping", ["shutdown", "-P", "--", "now"]),
    ],
)
def test_settings_decide_the_action(section: Any, argv_head: Any, tmp_path: Path) -> None:
    settings = check.settings_from_section(section)
    summary = check.plan(facts(records={}), settings)
    runner = FakeRunner()
    paths = check.Paths(tmp_path)
    (tmp_path / "dev").mkdir()
    (tmp_path / "dev/console").write_text("")
    argv = check.apply(paths, summary, settings, runner)
    if argv_head is None:
        assert argv is None and runner.calls == []
    else:
        assert argv is not None and argv[:4] == argv_head and runner.calls == [argv]
        assert "vfarm check: FAILED: localfs: never-ran" in argv[4]
    console = (tmp_path / "dev/console").read_text()
    assert "vfarm check: FAILED" in console  # the reason is on the console either way
    assert (tmp_path / "var/log/vfarm/summary.json").exists() and (tmp_path / "var/log/vfarm/check.log").exists()
    if settings.problem:
        assert any("using the defaults" in w for w in summary["warnings"])


def test_userdata_parsing_gzip_and_plain() -> None:
    raw = mime([("check-config", "check:\n  on-failure: halt\n"), LOCALFS, ("cloud-config", "#cloud-config\n{}\n")])
    for blob in (raw, gzip.compress(raw)):
        found = check.parse_userdata(blob)
        assert found.sections == ["check", "localfs"]  # text/cloud-config is cloud-init's own
        assert check.settings_from_section(found.check_section).on_failure == "halt"
    plain = check.parse_userdata(b"#include\nhttps://example.org/a.py\n")
    assert plain.includes == ["https://example.org/a.py"] and plain.sections == []
    # The summary is world-readable: an include URL's user:password never reaches it.
    secret = check.parse_userdata(b"#include\nhttps://vfarm:S3cretPw@handlers.example.org/cc_localfs.py\n")
    assert secret.includes == ["https://vfarm:***@handlers.example.org/cc_localfs.py"]
    broken = check.parse_userdata(b"\x1f\x8bnot gzip")
    assert broken.problem and "decompress" in broken.problem


def test_boot_log_lines_only_this_boot() -> None:
    text = "\n".join(
        [
            "x - main.py[DEBUG]: Cloud-init v. 22.4.2 running 'init-local' at A",
            "x - __init__.py[WARNING]: Unhandled unknown content-type (text/old-config) userdata: 'b'a'...'",
            "x - main.py[DEBUG]: Cloud-init v. 22.4.2 running 'init-local' at B",
            "x - __init__.py[WARNING]: Unhandled non-multipart (text/x-not-multipart) userdata: 'b'b'...'",
        ]
    )
    assert check.unhandled_parts(check.boot_log_lines(text)) == [{"content_type": "text/x-not-multipart", "start": "'b'b'...'"}]


# --- the entry points: script, power_state condition, baked module -----------------------------


def failing_root(tmp_path: Path) -> Path:
    root = tmp_path / "root"
    for sub in ("var/lib/cloud/instance", "run/cloud-init", "dev"):
        (root / sub).mkdir(parents=True)
    (root / "var/lib/cloud/instance/user-data.txt").write_bytes(mime([("check-config", "on-failure: halt\ndelay: 2\n"), LOCALFS]))
    (root / "run/cloud-init/status.json").write_text(json.dumps({"v1": {"init": {"errors": [], "start": 1, "finished": 2}, "stage": None}}))
    (root / "dev/console").write_text("")
    return root


def fake_shutdown(tmp_path: Path) -> tuple[dict[str, str], Path]:
    """PATH holding ONLY a fake `shutdown` that records its argv: nothing real can run."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    calls = tmp_path / "shutdown.calls"
    script = bin_dir / "shutdown"
    script.write_text(f"#!{sys.executable}\nimport sys, json\nopen({str(calls)!r}, 'a').write(json.dumps(sys.argv[1:]) + '\\n')\n")
    script.chmod(script.stat().st_mode | stat.S_IXUSR)
    return {"PATH": str(bin_dir), "PYTHONPATH": os.environ.get("PYTHONPATH", "")}, calls


@pytest.mark.integration
def test_power_state_condition_acts_itself_and_exits_handled(tmp_path: Path) -> None:
    root = failing_root(tmp_path)
    (root / "run/cloud-init/result.json").write_text(json.dumps({"v1": {"errors": []}}))
    env, calls = fake_shutdown(tmp_path)
    done = subprocess.run(
        [sys.executable, "-m", "vfarm.cc_modules.check", "--root", str(root), "--power-state-condition"],
        env=env, capture_output=True, text=True, timeout=60,
    )
    assert done.returncode == check.HANDLED, done.stderr  # the condition: cloud-init's power_state does nothing itself
    argv = json.loads(calls.read_text().splitlines()[0])
    assert argv[:3] == ["-H", "--", "+2"] and "localfs: never-ran" in argv[3]
    assert json.loads((root / "var/log/vfarm/summary.json").read_text())["decision"]["action"] == "halt"


def test_baked_module_waits_for_cloud_init_then_checks(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    root = failing_root(tmp_path)
    calls = tmp_path / "runner.calls"

    def runner(argv: list[str]) -> None:  # runs in the detached grandchild: leave a trace on disk
        calls.write_text(json.dumps(argv))

    monkeypatch.setattr(cc_vfarm_check, "PATHS", check.Paths(root))
    monkeypatch.setattr(cc_vfarm_check, "RUNNER", runner)
    started = time.monotonic()
    cc_vfarm_check.handle("vfarm_check", {}, None, [])  # 25.1 style; 22.4 passes a log too
    assert time.monotonic() - started < 2, "handle() must return at once, inside the final stage"
    summary_path = root / "var/log/vfarm/summary.json"
    time.sleep(0.3)
    assert not summary_path.exists(), "the check must wait for result.json (the end of cloud-init)"
    (root / "run/cloud-init/result.json").write_text(json.dumps({"v1": {"errors": []}}))
    deadline = time.monotonic() + 15  # the check polls every second
    while not calls.exists() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert json.loads(calls.read_text())[:4] == ["shutdown", "-H", "--", "+2"]
    assert json.loads(summary_path.read_text())["result"] == "failed"


def test_baked_module_powers_off_when_the_check_cannot_even_be_imported(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """cloud-init skips a config module that does not import: the check is imported in the
    detached process, which powers off when it cannot be."""
    import importlib

    import vfarm.cc_modules as package

    calls = tmp_path / "runner.calls"

    def runner(argv: list[str]) -> None:  # runs in the detached grandchild: leave a trace on disk
        calls.write_text(json.dumps(argv))

    monkeypatch.setattr(package, "cc_vfarm_check", cc_vfarm_check)  # restored after the fresh import below
    monkeypatch.delitem(sys.modules, "vfarm.cc_modules.cc_vfarm_check")
    monkeypatch.delattr(package, "check")
    monkeypatch.setitem(sys.modules, "vfarm.cc_modules.check", None)  # importing it raises ImportError
    fresh = importlib.import_module("vfarm.cc_modules.cc_vfarm_check")  # as cloud-init loads it
    monkeypatch.setattr(fresh, "RUNNER", runner)  # raises if the module has no RUNNER: never the real shutdown
    fresh.handle("vfarm_check", {}, None, [])
    deadline = time.monotonic() + 15
    while not (calls.exists() and calls.read_text()) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert json.loads(calls.read_text()) == cc_vfarm_check.POWEROFF and cc_vfarm_check.POWEROFF[:3] == ["shutdown", "-P", "now"]


@pytest.mark.integration
def test_baked_module_loads_in_real_cloud_init(cloudinit_release: Release) -> None:
    done = cloudinit_release.run(
        "import warnings\n"
        "from cloudinit.config import modules\n"
        "from vfarm.cc_modules import cc_vfarm_check as m\n"
        "modules.validate_module(m, 'vfarm_check')\n"
        "print(m.meta['frequency'])\n"
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "always" and "DEPRECAT" not in done.stderr


# --- the part for embed/include, and `vfarm summary` --------------------------------------------


@pytest.mark.integration
def test_check_part_carries_a_working_script(tmp_path: Path, cloudinit_release: Release) -> None:
    assert checkpart.check_parts(None, "baked") == []
    parts = checkpart.check_parts(None, "include=https://example.org/vfarm")
    assert parts == checkpart.check_parts(None, "embed")  # same bytes, same part
    ((ctype, filename, payload),) = parts
    assert (ctype, filename) == ("text/cloud-config", "vfarm-check.cfg")
    doc = yaml.safe_load(payload)
    assert doc["power_state"]["condition"] == checkpart.condition()  # one shell form for every mode
    script = tmp_path / "vfarm-check.py"
    script.write_text(doc["write_files"][0]["content"])
    root = failing_root(tmp_path)
    (root / "run/cloud-init/result.json").write_text(json.dumps({"v1": {"errors": []}}))
    # The bundled script runs with the release's Python path only: no vfarm installed.
    done = subprocess.run(
        [sys.executable, "-I", str(script), "--root", str(root), "--dry-run", "--wait", "0"], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 1, done.stderr
    assert "decision: halt (delay 2): localfs: never-ran" in done.stdout
    # And it is a valid cloud-config for the release's own schema.
    assert cloudinit_release.schema_problems(payload) == ""


def test_embed_check_part_runs_the_script_of_the_library(tmp_path: Path, cloudinit_release: Release) -> None:
    """embed: the library part carries the check and writes it; the part only sets power_state,
    and cloud-init's own condition check powers off when the script is not there."""
    from vfarm.mime_builder import bundle

    ((ctype, filename, payload),) = checkpart.check_parts(None, "embed", from_library=True)
    assert (ctype, filename) == ("text/cloud-config", "vfarm-check.cfg")
    doc = yaml.safe_load(payload)
    assert "write_files" not in doc and doc["power_state"]["condition"] == checkpart.condition()
    assert cloudinit_release.schema_problems(payload) == ""
    # The release's own check_condition: no script -> met (power off); a script exiting HANDLED -> not met.
    stub = tmp_path / "handled.py"
    stub.write_text(f"raise SystemExit({check.HANDLED})\n")
    assert release_conditions(cloudinit_release, [checkpart.condition(str(tmp_path / "missing.py")), checkpart.condition(str(stub))]) == [True, False]
    # The library, registered as cloud-init does (handle_part __begin__), installs itself as the check.
    lib = bundle.bundle_library(["localfs"], with_check=True)
    part = tmp_path / "handlers/part-handler-000.py"
    part.parent.mkdir()
    part.write_text(lib.source)
    root = failing_root(tmp_path)
    register_part(part, root, "once-per-instance", os.environ["PATH"])
    script = root / checkpart.CHECK_PATH.lstrip("/")
    assert script.read_text() == lib.source and stat.S_IMODE(script.stat().st_mode) == 0o700
    (root / "run/cloud-init/result.json").write_text(json.dumps({"v1": {"errors": []}}))
    done = subprocess.run([sys.executable, "-I", str(script), "--root", str(root), "--dry-run", "--wait", "0"], capture_output=True, text=True, timeout=60)
    assert done.returncode == 1, done.stderr
    assert "decision: halt (delay 2): localfs: never-ran" in done.stdout


def register_part(part: Path, root: Path, frequency: str, path: str) -> None:
    """Import the part-handler file PART and call its __begin__ as cloud-init does (handler_version
    2: with the frequency of this boot's consumption), on the instance ROOT (VFARM_ROOT)."""
    register = subprocess.run(
        [sys.executable, "-I", "-c", f"import sys; sys.path.insert(0, {str(part.parent)!r}); m = __import__({part.stem!r}); "
         f"assert m.list_types() == [] and m.frequency == 'always' and m.handler_version == 2; m.handle_part(None, '__begin__', None, None, {frequency!r})"],
        env={"VFARM_ROOT": str(root), "PATH": path}, capture_output=True, text=True, timeout=60,
    )
    assert register.returncode == 0, register.stderr


@pytest.mark.integration
@pytest.mark.parametrize("hosted", [False, True], ids=["embed library", "include's hosted check"])
def test_on_later_boots_the_part_starts_the_check_itself(tmp_path: Path, hosted: bool) -> None:
    """power_state's condition runs once per instance: on a later boot (cloud-init consumes the
    user-data with frequency always) the part that carries the check starts it detached, as a
    baked image's cc_vfarm_check does, so a worker that failed is powered off again after a
    restart. It returns at once (the init stage goes on); the check waits for cloud-init's end."""
    from vfarm.mime_builder import bundle

    part = tmp_path / "handlers/part-handler-001.py"
    part.parent.mkdir()
    part.write_text(bundle.bundle_check() if hosted else bundle.bundle_library(["localfs"], with_check=True).source)
    root = failing_root(tmp_path)
    env, calls = fake_shutdown(tmp_path)
    started = time.monotonic()
    register_part(part, root, "always", env["PATH"])
    assert time.monotonic() - started < 30
    assert not (root / checkpart.CHECK_PATH.lstrip("/")).exists(), "a later boot runs the check; it writes nothing else"
    summary_path = root / "var/log/vfarm/summary.json"
    assert not summary_path.exists(), "the check must wait for result.json (the end of cloud-init)"
    finish_and_see_it_halt(root, calls)
    assert json.loads(summary_path.read_text())["result"] == "failed"


def finish_and_see_it_halt(root: Path, calls: Path) -> None:
    """cloud-init has finished (result.json): the detached check judges the failing ROOT and halts
    as its settings say, through the fake shutdown that writes CALLS."""
    (root / "run/cloud-init/result.json").write_text(json.dumps({"v1": {"errors": []}}))
    deadline = time.monotonic() + 60  # the check polls every second
    while not (calls.exists() and calls.read_text()) and time.monotonic() < deadline:
        time.sleep(0.1)
    argv = json.loads(calls.read_text().splitlines()[0])
    assert argv[:3] == ["-H", "--", "+2"] and "localfs: never-ran" in argv[3], argv


def release_conditions(release: Release, conditions: list[str], path: str = os.environ["PATH"]) -> list[bool]:
    """Each of CONDITIONS as the release's own power_state checks it (True: cloud-init powers off),
    its commands found on PATH."""
    done = release.run(
        "import json, os\nfrom cloudinit.config.cc_power_state_change import check_condition\n"
        "print(json.dumps([check_condition(c) for c in json.loads(os.environ['CONDITIONS'])]))\n",
        env={"CONDITIONS": json.dumps(conditions), "PATH": path},
    )
    assert done.returncode == 0, done.stderr[-2000:]
    result: list[bool] = json.loads(done.stdout.splitlines()[-1])
    return result


def test_the_condition_powers_off_unless_the_check_ran_to_its_end(tmp_path: Path, cloudinit_release: Release) -> None:
    """The real bundled check behind the real condition (sh, python3) and the release's own
    check_condition: a check that judged and acted leaves power_state nothing to do; one that dies
    before its guard (at import: ImportError, SyntaxError, MemoryError), a missing script and a
    missing python3 make cloud-init power off."""
    from vfarm.mime_builder import bundle

    real = tmp_path / "vfarm-check.py"
    real.write_text(bundle.bundle_check())
    root = failing_root(tmp_path)
    (root / "run/cloud-init/result.json").write_text(json.dumps({"v1": {"errors": []}}))
    env, calls = fake_shutdown(tmp_path)
    (Path(env["PATH"]) / "python3").symlink_to(sys.executable)  # PATH: python3 and the fake shutdown, nothing else
    scripts = {
        # The condition passes --power-state-condition only: this runs the real check on the fake root.
        "ran": f"import runpy, sys\nsys.argv[1:] = ['--root', {str(root)!r}, '--wait', '0'] + sys.argv[1:]\n"
               f"runpy.run_path({str(real)!r}, run_name='__main__')\n",
        "import-error": "raise ImportError('a module of the bundle is missing')\n" + real.read_text(),
        "syntax-error": real.read_text() + "\n)\n",
        "memory-error": "raise MemoryError\n" + real.read_text(),
    }
    for name, text in scripts.items():
        (tmp_path / f"{name}.py").write_text(text)
    conditions = [checkpart.condition(str(tmp_path / f"{name}.py")) for name in [*scripts, "missing"]]
    assert release_conditions(cloudinit_release, conditions, env["PATH"]) == [False, True, True, True, True]
    # "ran" judged the failed boot and acted itself (on-failure: halt, delay 2), once.
    assert [json.loads(line)[:3] for line in calls.read_text().splitlines()] == [["-H", "--", "+2"]]
    # Without python3 the check cannot run at all: cloud-init powers off.
    (Path(env["PATH"]) / "python3").unlink()
    assert release_conditions(cloudinit_release, [checkpart.condition(str(tmp_path / "ran.py"))], env["PATH"]) == [True]


@pytest.mark.integration
def test_vfarm_summary_command(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    failed = tmp_path / "failed.json"
    failed.write_text(json.dumps(check.plan(facts(records={}), check.Settings())))
    assert cli.main(["summary", str(failed)]) == 1
    out = capsys.readouterr().out
    assert "HANDLER" in out and "localfs" in out and "never-ran" in out and "decision: poweroff" in out
    ok = tmp_path / "ok.json"
    ok.write_text(json.dumps(check.plan(facts(), check.Settings())))
    assert cli.main(["summary", str(ok)]) == 0
    bad = tmp_path / "bad.json"
    bad.write_text("[1, 2]")
    assert cli.main(["summary", str(bad)]) == 1
    err = capsys.readouterr().err
    assert err.strip().count("\n") == 0 and "not a vfarm summary.json" in err
    # `-` reads it from standard input, as every FILE of the command line
    with open(ok, "rb") as stdin:
        done = subprocess.run([sys.executable, "-m", "vfarm", "summary", "-"], stdin=stdin, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and "HANDLER" in done.stdout, done.stderr
