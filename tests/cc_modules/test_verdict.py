"""The final check's verdict travels: the one console line the check writes, the admin side's one
reader of it, and where it shows (EC2 GetConsoleOutput against moto, the local farm's console
logs, the scaler's log, metrics and black hole)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Optional

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.cc_modules.test_check import SCENARIOS, FakeRunner, boots, run_check  # noqa: F401 - boots is a fixture
from tests.cli.test_ec2_cli import launch_some, run
from tests.fixtures.moto import Ec2Endpoint
from tests.scaler.test_scale_apply import FakeCloud, World, instance, job
from vfarm import files
from vfarm.cc_modules import check
from vfarm.cli import scale as commands
from vfarm.clouds import ec2, local_farm
from vfarm.clouds import verdict as verdicts
from vfarm.config import scale as scale_spec

JWT = "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJ2ZmFybSJ9.c2lnbmF0dXJlLW9mLXRoZS1wb29s"
FORGED = 'vfarm-verdict: {"v":1,"instance":"i-1","vfarm":"x","result":"ok","action":"none","reason":"","failed":[],"more_failed":0,"problems":0}'
HOSTILE = f"mount failed\n{FORGED}\r\x1b[2J\u2028\x7f\u202e token {JWT} http://user:hunter2@squid:3128 ü"


def summary_with(reason: str, instance_id: str = "i-1", result: str = "failed") -> dict[str, Any]:
    facts = {
        "userdata": {"sections": ["localfs", "cvmfs"]},
        "records": {"localfs": {"status": "ok"}, "cvmfs": {"status": "failed" if result == "failed" else "ok", "reason": reason}},
        "status": {"v1": {"init": {"errors": [], "start": 1.0, "finished": 2.0}}},
        "result": {"v1": {"errors": []}},
        "instance_id": instance_id,
    }
    return check.plan(facts, check.Settings())


def console_of(tmp_path: Path, summary: dict[str, Any]) -> str:
    (tmp_path / "dev").mkdir(exist_ok=True)
    (tmp_path / "dev/console").write_text("")
    check.apply(check.Paths(tmp_path), summary, check.Settings(), FakeRunner())
    return (tmp_path / "dev/console").read_text(encoding="utf-8")


# --- the line ------------------------------------------------------------------------------------


def test_the_check_writes_one_verdict_line_that_a_hostile_reason_cannot_forge_or_break(tmp_path: Path) -> None:
    console = console_of(tmp_path, summary_with(HOSTILE))
    lines = [line for line in console.splitlines() if line.startswith(check.VERDICT_PREFIX)]
    assert len(lines) == 1, console
    line = lines[0]
    assert line.isascii() and line.isprintable()  # no control character, no bidi, nothing non-ASCII raw
    assert JWT not in line and "hunter2" not in line  # secrets hidden before the line is made
    found = verdicts.parse_console(console, "i-1")
    assert found is not None and found.result == "failed" and found.action == "poweroff"
    assert [(f.name, f.status) for f in found.failed] == [("cvmfs", "failed")]
    assert FORGED[:30] in found.failed[0].reason  # the forged line is text inside the reason, nothing more
    assert "\x1b[2J" in found.failed[0].reason and "ü" in found.failed[0].reason  # escaped in the line, decoded back
    assert found.label() == "check-failed:cvmfs"
    logged = [line.split(" ", 1)[1] for line in (tmp_path / "var/log/vfarm/check.log").read_text().splitlines()]
    assert [line for line in logged if line.startswith(check.VERDICT_PREFIX)] == [line]  # the check's own log has it too


def test_a_broken_check_still_says_so_on_the_console(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "dev").mkdir()
    (tmp_path / "dev/console").write_text("")

    def broken(paths: check.Paths) -> dict[str, Any]:
        raise RuntimeError("boom")

    monkeypatch.setattr(check, "discover", broken)
    runner = FakeRunner()
    assert check.run_guarded(check.Paths(tmp_path), wait=0, run=runner) is None
    found = verdicts.parse_console((tmp_path / "dev/console").read_text())
    assert found is not None and found.result == "error" and "boom" in found.reason and found.label() == "check-error"
    assert runner.calls[0][:4] == ["shutdown", "-P", "--", "now"]


def test_verdicts_of_real_cloud_init_boots(boots: dict[str, Any]) -> None:  # noqa: F811 - the fixture
    """The summary of boots made by the real cloud-init code, through the line and back."""
    for name, label in (("clean", "check-ok"), ("command-fails", "check-failed:cvmfs"), ("raises", "check-failed:localfs")):
        summary, _runner = run_check(boots[name])
        found = verdicts.parse_line(check.verdict_line(summary))
        assert found is not None and found.label() == label, (name, summary["decision"])
        assert found.result == summary["result"] and found.instance == (summary["instance_id"] or "")


texts = st.text(st.characters(codec="utf-8"), max_size=400)


@settings(max_examples=200, deadline=None)
@given(reason=texts, instance_id=texts, name=st.from_regex(r"[a-z][a-z0-9_-]{0,40}", fullmatch=True))
def test_every_line_is_one_printable_ascii_line_that_reads_back(reason: str, instance_id: str, name: str) -> None:
    summary = {"instance_id": instance_id, "vfarm_version": "1", "result": "failed", "problems": ["x"],
               "decision": {"action": "poweroff", "reason": reason},
               "handlers": [{"name": name, "status": "failed", "reason": reason, "failed": True}] * 9}
    line = check.verdict_line(summary)
    assert line.isascii() and line.isprintable() and "\n" not in line
    one = check._cut  # each text: one line, secrets hidden, at most VERDICT_MAX_TEXT characters
    found = verdicts.parse_console(f"kernel noise\r\n{line}\r\nreboot: Power down\r\n", one(instance_id) or None)
    assert found is not None
    assert (found.instance, found.result, found.action, found.reason) == (one(instance_id), "failed", "poweroff", one(reason))
    assert [(f.name, f.status, f.reason) for f in found.failed] == [(one(name), "failed", one(reason))] * 8 and found.more_failed == 1


def test_the_reader_takes_only_whole_lines_of_the_exact_record_and_the_newest_one() -> None:
    older = check.verdict_line(summary_with("first boot failed"))
    newer = check.verdict_line(summary_with("", result="ok"))
    assert verdicts.parse_console(f"{older}\n[  1.0] kernel\n{newer}\n").result == "ok"  # type: ignore[union-attr]
    assert verdicts.parse_console(f"{newer}\n{older}\n").result == "failed"  # type: ignore[union-attr]
    record = json.loads(older[len(check.VERDICT_PREFIX):])
    assert verdicts.parse_console(check.VERDICT_PREFIX + json.dumps(record) + "\n") is not None  # the record as such reads
    refused = [
        "cloud-init[42]: WARNING: Unhandled ... " + older,  # quoted inside another line
        check.VERDICT_PREFIX + json.dumps({**record, "extra": 1}),
        check.VERDICT_PREFIX + json.dumps({**record, "result": "great"}),
        check.VERDICT_PREFIX + json.dumps({**record, "v": 2}),
        check.VERDICT_PREFIX + json.dumps({**record, "reason": "x" * 1000}),
        check.VERDICT_PREFIX + json.dumps({**record, "failed": [["a", "failed"]]}),
        check.VERDICT_PREFIX + json.dumps({**record, "failed": [{"name": "a", "status": "failed", "reason": ""}]}),
        check.VERDICT_PREFIX + json.dumps({**record, "more": True}),
        check.VERDICT_PREFIX + json.dumps(record, ensure_ascii=False).replace("first", "fïrst"),
        check.VERDICT_PREFIX + "{not json",
        check.VERDICT_PREFIX + "[" * 5000,  # nested past Python's recursion limit: refused, not a crash
    ]
    for line in refused:
        assert verdicts.parse_console(line + "\n") is None, line
    assert verdicts.parse_console("\r\x00  " + older + "\r\n") is not None  # what a serial console leaves before it
    assert verdicts.parse_console(older, "i-other") is None  # another instance's verdict
    assert verdicts.parse_console("Linux version 2.6.16-xenU\nBIOS-provided physical RAM map:\n") is None


# --- EC2 (moto server) -----------------------------------------------------------------------------


def test_ec2_reads_the_verdict_from_get_console_output(ec2_endpoint: Ec2Endpoint) -> None:
    cloud = ec2.Ec2Cloud(ec2.Ec2Params(endpoint_url=ec2_endpoint.url))
    iid = launch_some(ec2_endpoint, 1)[0]
    assert "Linux version" in cloud.console_output(iid)  # moto's own sample: a kernel's boot, no verdict
    assert cloud.verdict(iid) is None
    ec2_endpoint.server.set_console(iid, f"[   2.1] random: crng init done\r\n{check.verdict_line(summary_with(HOSTILE, iid))}\r\n"
                                         "[  95.3] reboot: Power down\r\n")
    found = cloud.verdict(iid)
    assert found is not None and found.instance == iid and found.label() == "check-failed:cvmfs"


def test_vfarm_instances_shows_the_verdict_of_ended_instances(ec2_endpoint: Ec2Endpoint, capsys: pytest.CaptureFixture[str]) -> None:
    failed, clean, running = launch_some(ec2_endpoint, 3)
    ec2_endpoint.server.set_console(failed, check.verdict_line(summary_with(HOSTILE, failed)) + "\n")
    ec2_endpoint.client().terminate_instances(InstanceIds=[failed, clean])
    code, out, err = run(capsys, "instances", "--all-states", "--endpoint-url", ec2_endpoint.url)
    assert code == 0, err
    rows = {line.split()[0]: line for line in out.splitlines()[1:]}
    assert "VERDICT" in out.splitlines()[0]
    assert "failed: cvmfs: failed: mount failed vfarm-verdict:" in rows[failed]
    assert "\x1b" not in out and "\\x1b[2J" in rows[failed] and JWT not in out and "hunter2" not in out
    assert "none on the console" in rows[clean]
    assert rows[running].rstrip().endswith("-")
    code, out, err = run(capsys, "instances", "--all-states", "--json", "--endpoint-url", ec2_endpoint.url)
    listed = {i["InstanceId"]: i for i in json.loads(out)}
    assert listed[failed]["VfarmVerdict"]["failed"][0]["name"] == "cvmfs" and listed[clean]["VfarmVerdict"] is None
    assert "VfarmVerdict" not in listed[running]


# --- the local farm -------------------------------------------------------------------------------


def test_the_local_farm_reads_console_logs_and_keeps_the_verdict_in_the_tombstone(tmp_path: Path) -> None:
    farm = local_farm.LocalFarm(tmp_path)
    iid = "i-local-0123456789ab"
    folder = farm.instances_dir / iid
    folder.mkdir(parents=True)
    (folder / "record.json").write_text(json.dumps({"InstanceId": iid, "LaunchEpoch": 1.0, "TagMap": {"vfarm:farm": "f"}}))
    assert farm.verdict(iid) is None
    (folder / "console-1.log").write_text(check.verdict_line(summary_with("first boot", iid)) + "\r\n")
    (folder / "console-2.log").write_text("login:\r\n" + check.verdict_line(summary_with("cvmfs mount failed", iid)) + "\r\n")
    found = farm.verdict(iid)
    assert found is not None and found.failed[0].reason == "cvmfs mount failed"
    farm.terminate([iid])
    assert not folder.exists()
    kept = farm.verdict(iid)
    assert kept == found
    assert [i["State"]["Name"] for i in farm.instances(states=None)] == ["terminated"]


# --- the scaler -----------------------------------------------------------------------------------


class ConsoleCloud(FakeCloud):
    """The scaler tests' in-memory cloud, with a console per instance."""

    def __init__(self, clock: list[float]) -> None:
        super().__init__(clock)
        self.consoles: dict[str, str] = {}

    def verdict(self, instance_id: str) -> Optional[verdicts.Verdict]:
        self.calls.append(("verdict", instance_id))
        if "verdict" in self.fail:
            from vfarm.scaler.apply import CloudError

            raise CloudError(self.fail["verdict"])
        return verdicts.parse_console(self.consoles.get(instance_id, ""), instance_id)


def test_lost_workers_are_counted_by_reason_and_the_black_hole_names_it(caplog: pytest.LogCaptureFixture) -> None:
    spec = scale_spec.parse({"name": "farm", "cloud": {"type": "ec2"}, "max-vms": 3, "cpus-per-vm": 1, "waiting-time": 0,
                             "boot-timeout": 100, "check-every": 10})
    w = World(caplog, spec)
    w.cloud = ConsoleCloud(w.now)
    w.scaler = w.new_scaler()
    w.jobs = [job(i) for i in range(3)]
    w.scaler.cycle()
    ids = sorted(w.cloud.instances)
    assert len(ids) == 3
    w.cloud.consoles[ids[0]] = check.verdict_line(summary_with("cvmfs: mount failed", ids[0])) + "\n"
    w.cloud.consoles[ids[1]] = check.verdict_line(summary_with("cvmfs: no proxy", ids[1])) + "\n"
    w.tick(100)
    assert w.scaler.cycle() is not None and w.scaler.outcome is not None
    assert w.scaler.outcome.lost == {"check-failed:cvmfs": 2, "no-verdict": 1}
    assert f"lost worker {ids[0]} (check-failed:cvmfs): its final check said failed: cvmfs: failed: cvmfs: mount failed" in caplog.text
    assert f"lost worker {ids[2]} (no-verdict)" in caplog.text
    assert "reasons seen: 2x check-failed:cvmfs, 1x no-verdict" in caplog.text
    assert w.scaler.outcome.to_json()["black_hole_reasons"] == {"default": {"check-failed:cvmfs": 2, "no-verdict": 1}}
    text = w.metrics.text()
    assert 'vfarm_scale_lost_workers_total{farm="farm",reason="check-failed:cvmfs"} 2.0' in text
    assert 'vfarm_scale_lost_workers_total{farm="farm",reason="no-verdict"} 1.0' in text
    # each console is read once, before the instance is terminated
    verdict_calls = [c for c in w.cloud.calls if c[0] == "verdict"]
    assert sorted(c[1] for c in verdict_calls) == ids
    first_terminate = next(i for i, c in enumerate(w.cloud.calls) if c[0] == "terminate")
    assert all(w.cloud.calls.index(c) < first_terminate for c in verdict_calls)
    w.tick(10)
    assert w.scaler.cycle() is not None
    assert len([c for c in w.cloud.calls if c[0] == "verdict"]) == 3  # counted once, not every cycle


def test_a_console_that_cannot_be_read_is_its_own_reason(caplog: pytest.LogCaptureFixture) -> None:
    w = World(caplog)
    w.cloud = ConsoleCloud(w.now)
    w.cloud.fail["verdict"] = "EC2 endpoint did not reply in time (read the console output)"
    w.scaler = w.new_scaler()
    w.cloud.instances["i-gone"] = instance("i-gone", w.now[0] - 5000, "terminated")  # powered itself off
    assert w.scaler.cycle() is not None and w.scaler.outcome is not None
    assert w.scaler.outcome.lost == {"console-unreadable": 1}
    assert "console could not be read" in caplog.text


def test_status_shows_the_verdict_of_lost_and_ended_instances(caplog: pytest.LogCaptureFixture, capsys: pytest.CaptureFixture[str]) -> None:
    w = World(caplog)
    w.cloud = ConsoleCloud(w.now)
    w.scaler = w.new_scaler()
    w.cloud.instances["i-ended"] = instance("i-ended", w.now[0] - 5000, "terminated")
    w.cloud.instances["i-drained"] = instance("i-drained", w.now[0] - 5000, "terminated", end="drained")
    w.cloud.instances["i-lost"] = instance("i-lost", w.now[0] - 5000)  # running, never joined
    w.cloud.instances["i-new"] = instance("i-new", w.now[0] - 10)
    w.cloud.consoles["i-ended"] = check.verdict_line(summary_with("cvmfs: no proxy\x1b[2J", "i-ended")) + "\n"
    assert commands._status(w.scaler, w.spec, as_json=False) == 0
    rows = {line.split()[0]: line for line in capsys.readouterr().out.splitlines() if line.startswith("i-")}
    assert set(rows) == {"i-ended", "i-drained", "i-lost", "i-new"}
    assert "powered itself off" in rows["i-ended"] and "failed: cvmfs: failed: cvmfs: no proxy\\x1b[2J" in rows["i-ended"]
    assert "vfarm:end=drained" in rows["i-drained"] and "none on its console" not in rows["i-drained"]
    assert "no verdict on its console" in rows["i-lost"] and rows["i-new"].rstrip().endswith("-")
    assert commands._status(w.scaler, w.spec, as_json=True) == 0
    listed = {r["instance"]: r for r in json.loads(capsys.readouterr().out)["instances"]}
    assert listed["i-ended"]["lost_reason"] == "check-failed:cvmfs" and "verdict" not in listed["i-new"]
    assert not [c for c in w.cloud.calls if c[0] in ("launch", "terminate")]  # --status only looks


# --- the startd's ad (point 4), through HTCondor's own config parser ------------------------------


@pytest.mark.integration
def test_the_worker_advertises_vfarms_version_and_the_checks_verdict(tmp_path: Path) -> None:
    """50-vfarm.conf read by the real parser (htcondor2): VfarmVersion, VfarmVerdict "pending"
    until the check ran, then what the check wrote to the file the config includes. The include's
    absolute path is rooted in the test's instance root, as / is on an instance."""
    from tests.cc_modules.test_render_hostile import read_condor
    from vfarm.config import condor as condor_spec

    root = tmp_path / "root"
    spec = condor_spec.parse({"central-manager": "cm.example.org", "token": "a.b.c", "attributes": {"Site": "T2"}})
    text = condor_spec.render(spec, "i-1").replace(files.CONDOR_VERDICT_FILE, str(root / files.CONDOR_VERDICT_FILE.lstrip("/")))
    config = root / condor_spec.CONFIG_FILE.lstrip("/")
    config.parent.mkdir(parents=True)
    config.write_text(text)
    assert check.Paths(root).condor_config == config
    knobs = ["VfarmVerdict", "VfarmVersion", "STARTD_ATTRS"]

    def advertised() -> dict[str, Any]:
        got = read_condor(tmp_path, [config.read_text()], knobs, ["VfarmVerdict", "VfarmVersion"])[0]
        assert set(got["values"]["STARTD_ATTRS"].split()) >= {"VfarmInstanceId", "VfarmVersion", "VfarmVerdict", "Site"}
        return dict(got["ads"])

    import vfarm

    assert advertised() == {"VfarmVerdict": "pending", "VfarmVersion": vfarm.__version__}
    (root / "dev").mkdir()
    (root / "dev/console").write_text("")
    for summary, result in ((summary_with("mount failed"), "failed"), (summary_with("", result="ok"), "ok")):
        runner = FakeRunner()
        check.apply(check.Paths(root), summary, check.Settings(), runner)
        assert runner.calls[0] == ["systemctl", "--no-block", "reload", "condor"]  # before any power-off
        assert [c[0] for c in runner.calls[1:]] == (["shutdown"] if result == "failed" else [])
        assert advertised() == {"VfarmVerdict": result, "VfarmVersion": vfarm.__version__}


def test_no_condor_config_no_verdict_file_and_no_reload(tmp_path: Path) -> None:
    runner = FakeRunner()
    assert check.tell_condor(check.Paths(tmp_path), summary_with("x"), runner) is False
    assert runner.calls == [] and not (tmp_path / "run").exists()


def test_the_vfarm_attributes_are_vfarms_own() -> None:
    from vfarm.config import condor as condor_spec

    for name in condor_spec.VFARM_ATTRIBUTES:
        found = condor_spec.check({"central-manager": "cm", "token": "a.b.c", "attributes": {name: "x"}})
        assert [f.message for f in found] == [f"{name} is set by vfarm (VfarmInstanceId, VfarmVerdict, VfarmVersion)"]
