"""cc_condor's whole run (discover -> plan -> apply -> record) on a fake host: the token file, the
config check and its roll-back, the wait for the collector, and a second run that does nothing."""

from __future__ import annotations

import stat
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import yaml

from tests.fakesystem import FakeRunner
from vfarm.cc_modules import cc_condor, handling
from vfarm.config import condor as condor_spec
from vfarm.config import loader

# Not an `eyJ...` JWT on purpose: the redaction would hide one; this proves the token is never emitted.
TOKEN = "s3cretHeader.s3cretClaims.s3cretSignature"
IID = "i-0123456789abcdef0"
# The metadata guard has tests of its own (test_metadata_guard.py).
SECTION: dict[str, Any] = {"central-manager": "cm.example.org:9620", "token": TOKEN, "execute": "/scratch/condor",
                           "attributes": {"Site": "T2_IT_Torino"}, "join-timeout": 1, "protect-metadata": False}


class Cloud:
    def get_instance_id(self) -> str:
        return IID


class FakeCondorHost:
    """systemctl, install, condor_config_val and condor_status as a tiny state machine."""

    def __init__(self, root: Path, *, joins: bool = True, config_ok: bool = True, active: bool = False):
        self.root = root
        self.joins = joins
        self.config_ok = config_ok
        self.active = active
        self.started = False

    def answers(self) -> dict[tuple[str, ...], Any]:
        def is_active(argv: list[str]) -> tuple[int, str, str]:
            return (0, "", "") if self.active else (3, "", "")

        def start(argv: list[str]) -> tuple[int, str, str]:
            self.active = self.started = True
            return 0, "", ""

        def install(argv: list[str]) -> tuple[int, str, str]:
            (self.root / argv[-1].lstrip("/")).mkdir(parents=True, exist_ok=True)
            return 0, "", ""

        def config_val(argv: list[str]) -> tuple[int, str, str]:
            return (0, "# summary\n", "") if self.config_ok else (1, "", "ERROR: Parse error in /etc/condor/config.d/50-vfarm.conf, line 9\n")

        def status(argv: list[str]) -> tuple[int, str, str]:
            wanted = f'VfarmInstanceId == "{IID}"'
            ok = self.joins and self.started and wanted in argv and argv[argv.index("-pool") + 1] == "cm.example.org:9620"
            return 0, ("slot1@worker.example.org\n" if ok else ""), ""

        return {
            ("systemctl", "is-active"): is_active,
            ("systemctl", "start"): start,
            ("systemctl", "restart"): start,
            ("install", "-d"): install,
            ("condor_config_val",): config_val,
            ("condor_status",): status,
        }


@pytest.fixture
def root(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    root = tmp_path / "root"
    (root / "etc/condor/config.d").mkdir(parents=True)
    monkeypatch.setattr(cc_condor.shutil, "which", lambda tool: f"/usr/bin/{tool}" if tool in ("apt-get", "condor_config_val") else None)
    monkeypatch.setattr(cc_condor, "POLL_SECONDS", 0.05)
    return root


def run(root: Path, runner: FakeRunner, section: dict[str, Any] = SECTION) -> dict[str, Any]:
    return handling.execute("condor", lambda: dict(section), cc_condor.work, cloud=Cloud(), directory=root.parent / "log", root=root, runner=runner)


def everything_written(root: Path) -> str:
    """The handler's log, status record and every file under the log folder."""
    return "".join(p.read_text(errors="replace") for p in sorted((root.parent / "log").iterdir()))


def test_first_run_writes_token_and_config_checks_starts_and_joins(root: Path) -> None:
    host = FakeCondorHost(root)
    runner = FakeRunner(answers=host.answers())
    status = run(root, runner)
    assert status["status"] == "ok", status["reason"]
    assert status["changed"] is True and status["instance_id"] == IID
    token = root / condor_spec.TOKEN_FILE.lstrip("/")
    assert token.read_text() == TOKEN + "\n"
    assert stat.S_IMODE(token.stat().st_mode) == 0o600
    config = (root / condor_spec.CONFIG_FILE.lstrip("/")).read_text()
    assert config == condor_spec.render(condor_spec.parse(SECTION), IID)
    assert f'VfarmInstanceId = "{IID}"' in config and "COLLECTOR_HOST = cm.example.org:9620" in config
    assert runner.calls.index(["condor_config_val", "-summary"]) < runner.calls.index(["systemctl", "start", "--job-mode=ignore-dependencies", "condor"])
    assert ["install", "-d", "-o", "condor", "-g", "condor", "-m", "0755", "/scratch/condor"] in runner.calls
    assert [s["action"] for s in status["steps"]][-1] == "wait-join" and status["steps"][-1]["ok"]


def test_the_token_is_never_in_log_record_or_plan(root: Path) -> None:
    run(root, FakeRunner(answers=FakeCondorHost(root, joins=False).answers()))  # a failed run too
    run(root, FakeRunner(answers=FakeCondorHost(root).answers()))
    written = everything_written(root)
    assert "write-token" in written  # the step is recorded, its content is not
    for piece in TOKEN.split("."):
        assert piece not in written


def test_second_run_writes_nothing_and_restarts_nothing(root: Path) -> None:
    host = FakeCondorHost(root)
    run(root, FakeRunner(answers=host.answers()))
    config = root / condor_spec.CONFIG_FILE.lstrip("/")
    before = config.stat().st_mtime_ns, (root / condor_spec.TOKEN_FILE.lstrip("/")).stat().st_mtime_ns
    again = FakeRunner(answers=host.answers())
    status = run(root, again)
    assert status["status"] == "ok", status["reason"]
    assert status["changed"] is False
    assert [c for c in again.calls if c[:2] != ["systemctl", "is-active"] and c[0] != "condor_status"] == []
    assert (config.stat().st_mtime_ns, (root / condor_spec.TOKEN_FILE.lstrip("/")).stat().st_mtime_ns) == before


def test_an_execute_folder_holding_someone_elses_files_is_refused_before_anything(root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """HTCondor's startd removes everything in EXECUTE when it starts: a folder that holds files and
    is not the condor user's is refused before anything is written or started (a new file
    system's lost+found is nobody's data); condor's own folder, or the one our config already
    names (a second run, with job sandboxes in it), is no refusal."""
    execute = root / "scratch/condor"
    (execute / "lost+found").mkdir(parents=True)
    assert run(root, FakeRunner(answers=FakeCondorHost(root).answers()))["status"] == "ok"
    (root / condor_spec.CONFIG_FILE.lstrip("/")).unlink()
    for name in ("authorized_keys", "b", "c", "d"):
        (execute / name).write_text("x")
    runner = FakeRunner(answers=FakeCondorHost(root).answers())
    status = run(root, runner)
    assert status["status"] == "failed" and status["reason"] == (
        "execute /scratch/condor holds files (authorized_keys, b, c, 1 more) and is not condor's: HTCondor's startd removes everything "
        "in it when it starts; name a new or empty folder"), status["reason"]
    assert [c for c in runner.calls if c[:2] != ["systemctl", "is-active"]] == [] and not (root / condor_spec.CONFIG_FILE.lstrip("/")).exists()
    monkeypatch.setattr(cc_condor.pwd, "getpwnam", lambda name: SimpleNamespace(pw_uid=execute.stat().st_uid))  # condor's own folder
    host = FakeCondorHost(root)
    assert run(root, FakeRunner(answers=host.answers()))["status"] == "ok"
    monkeypatch.setattr(cc_condor.pwd, "getpwnam", lambda name: SimpleNamespace(pw_uid=execute.stat().st_uid + 1))
    assert run(root, FakeRunner(answers=host.answers()))["status"] == "ok"  # not condor's, but the config names it: ours


def test_a_changed_config_restarts_a_running_condor(root: Path) -> None:
    host = FakeCondorHost(root)
    run(root, FakeRunner(answers=host.answers()))
    runner = FakeRunner(answers=host.answers())
    status = run(root, runner, {**SECTION, "retirement-time": 7200})
    assert status["status"] == "ok" and status["changed"] is True
    assert ["systemctl", "restart", "--job-mode=ignore-dependencies", "condor"] in runner.calls
    assert "MAXJOBRETIREMENTTIME = 7200" in (root / condor_spec.CONFIG_FILE.lstrip("/")).read_text()


@pytest.mark.parametrize("previous", [None, "# the image's own, working config\n"])
def test_a_rejected_config_is_rolled_back_and_condor_not_restarted(root: Path, previous: str | None) -> None:
    config = root / condor_spec.CONFIG_FILE.lstrip("/")
    if previous is not None:
        config.write_text(previous)
    runner = FakeRunner(answers=FakeCondorHost(root, config_ok=False, active=True).answers())
    status = run(root, runner)
    assert status["status"] == "failed"
    assert "`condor_config_val -summary` failed (exit 1): ERROR: Parse error" in status["reason"]
    assert not any(c[:2] in (["systemctl", "start"], ["systemctl", "restart"]) for c in runner.calls)
    if previous is None:
        assert not config.exists()
    else:
        assert config.read_text() == previous
    log = (root.parent / "log/condor.log").read_text()
    assert "condor_config_val rejected the new /etc/condor/config.d/50-vfarm.conf" in log


def test_not_joined_in_time_is_a_failure_naming_the_collector(root: Path) -> None:
    runner = FakeRunner(answers=FakeCondorHost(root, joins=False).answers())
    status = run(root, runner)
    assert status["status"] == "failed"
    assert status["reason"] == "not joined: the collector cm.example.org:9620 did not list this worker's startd within 1 s"
    wait = status["steps"][-1]
    assert wait["action"] == "wait-join" and wait["ok"] is False and wait["collector"] == "cm.example.org:9620"
    assert 1 <= wait["seconds"] < 5
    assert sum(1 for c in runner.calls if c[0] == "condor_status") >= 2  # it polled, it did not give up at once


def test_a_failing_collector_query_is_not_yet_joined(root: Path) -> None:
    host = FakeCondorHost(root)
    answers = host.answers()
    answers[("condor_status",)] = (1, "", "Failed to connect to <cm.example.org:9620>")
    status = run(root, FakeRunner(answers=answers))
    assert status["status"] == "failed" and "not joined" in status["reason"]


def test_not_installed_without_install_is_a_clear_failure(root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(cc_condor.shutil, "which", lambda tool: None)
    status = run(root, FakeRunner(answers=FakeCondorHost(root).answers()))
    assert status["status"] == "failed" and "HTCondor is not installed" in status["reason"]


def test_install_true_installs_first(root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(cc_condor.shutil, "which", lambda tool: "/usr/bin/apt-get" if tool == "apt-get" else None)
    runner = FakeRunner(answers=FakeCondorHost(root).answers())
    status = run(root, runner, {**SECTION, "install": True})
    assert status["status"] == "ok", status["reason"]
    assert runner.calls.index(["apt-get", "install", "-y", "--no-install-recommends", "condor"]) < runner.calls.index(["condor_config_val", "-summary"])

    hold, release = ["systemctl", "mask", "--runtime", "condor"], ["systemctl", "unmask", "--runtime", "condor"]
    install = runner.calls.index(["apt-get", "install", "-y", "--no-install-recommends", "condor"])
    start = runner.calls.index(["systemctl", "start", "--job-mode=ignore-dependencies", "condor"])
    assert runner.calls.index(hold) < install < runner.calls.index(release) < start


def test_a_failed_install_releases_the_held_start(root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The service masked for the install is unmasked again when the install fails, so a later
    install or start by hand is not refused as masked."""
    monkeypatch.setattr(cc_condor.shutil, "which", lambda tool: "/usr/bin/apt-get" if tool == "apt-get" else None)
    answers = FakeCondorHost(root).answers()
    answers[("apt-get", "install")] = (100, "", "E: Unable to locate package condor")
    runner = FakeRunner(answers=answers)
    status = run(root, runner, {**SECTION, "install": True})
    assert status["status"] == "failed" and "install" in status["reason"]
    assert runner.calls[-1] == ["systemctl", "unmask", "--runtime", "condor"]


def test_no_instance_id_fails(root: Path) -> None:
    status = handling.execute("condor", lambda: dict(SECTION), cc_condor.work, cloud=None, directory=root.parent / "log", root=root,
                              runner=FakeRunner(answers=FakeCondorHost(root).answers()))
    assert status["status"] == "failed" and "no instance id" in status["reason"]


def test_dry_run_writes_nothing(root: Path) -> None:
    runner = FakeRunner(dry_run=True, answers=FakeCondorHost(root).answers())
    status = run(root, runner)
    assert status["status"] == "ok"
    assert not (root / condor_spec.TOKEN_FILE.lstrip("/")).exists() and not (root / condor_spec.CONFIG_FILE.lstrip("/")).exists()


def test_a_cloud_config_section_is_accepted_as_vfarm_validate_accepts_the_file() -> None:
    """As a config module the section comes parsed (cloud-init's YAML); its strings that YAML 1.2
    reads as numbers, quoted by the admin, are still strings when checked again."""
    text = 'condor:\n  central-manager: cm.example.org\n  token: a.b.c\n  config: {NEGOTIATOR_X: "1e3", STARTER_Y: "0o17"}\n'
    assert loader.load_text(text).sections["condor"]["config"] == {"NEGOTIATOR_X": "1e3", "STARTER_Y": "0o17"}
    section = handling.validate("condor", yaml.safe_load(text)["condor"], "cloud-config (condor)")
    assert section["config"] == {"NEGOTIATOR_X": "1e3", "STARTER_Y": "0o17"}
