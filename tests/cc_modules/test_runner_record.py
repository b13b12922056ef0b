"""The one command runner, the status record and the entry points cloud-init calls."""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

import pytest

from tests.fakesystem import FakeMachine, FakeRunner
from vfarm.cc_modules import cc_cvmfs, cc_localfs, handling, record
from vfarm.cc_modules.runner import CommandFailed, Runner
from vfarm.errors import StepError
from vfarm.part_handlers import cvmfs_handler, localfs_handler


@pytest.mark.integration
def test_runner_logs_command_exit_duration_stderr(logger: logging.Logger, tmp_path: Path) -> None:
    runner = Runner(logger)
    ok = runner.run(["sh", "-c", "echo out; echo problem >&2"])
    assert (ok.returncode, ok.stdout, ok.stderr.strip()) == (0, "out\n", "problem") and ok.seconds >= 0
    with pytest.raises(CommandFailed) as failed:
        runner.run(["sh", "-c", "echo 'no space left' >&2; exit 3"])
    assert str(failed.value) == "`sh -c echo 'no space left' >&2; exit 3` failed (exit 3): no space left"
    assert runner.run(["sh", "-c", "exit 4"], check=False).returncode == 4
    log = (tmp_path / "run.log").read_text()
    assert "running: sh -c echo out; echo problem >&2" in log and "exit 0 after" in log and "problem" in log
    assert "ERROR exit 3 after" in log


@pytest.mark.integration
def test_runner_redacts_credentials(logger: logging.Logger, tmp_path: Path) -> None:
    runner = Runner(logger)
    with pytest.raises(CommandFailed) as failed:
        runner.run(["sh", "-c", "echo http://u:hunter2@proxy:3128 >&2; exit 1", "--token", "tok3n"], env={"CONDOR_PASSWORD": "pw1", "HOME": "/root"})
    assert "hunter2" not in str(failed.value)
    log = (tmp_path / "run.log").read_text()
    for secret in ("hunter2", "tok3n", "pw1"):
        assert secret not in log
    assert "CONDOR_PASSWORD=***" in log and "HOME=/root" in log


@pytest.mark.integration
def test_a_password_with_blanks_after_its_option_is_hidden_whole(logger: logging.Logger, tmp_path: Path) -> None:
    # Joined first, `--password 'a b'` would lose its quotes and show its second word.
    runner = Runner(logger)
    result = runner.run(["sh", "-c", "exit 1", "--password", "hunter2 swordfish"], check=False)
    log = (tmp_path / "run.log").read_text()
    assert "hunter2" not in log + result.command and "swordfish" not in log + result.command, log


@pytest.mark.integration
def test_runner_missing_command_timeout_and_argv_only(logger: logging.Logger) -> None:
    runner = Runner(logger)
    missing = runner.run(["vfarm-no-such-tool"], check=False)
    assert missing.returncode == 127 and "command not found" in missing.stderr
    slow = runner.run(["sleep", "5"], check=False, timeout=0.2)
    assert slow.returncode == 124
    with pytest.raises(TypeError):
        runner.run("rm -rf /")  # type: ignore[arg-type]  # deliberately a string: the runner takes an argv only


@pytest.mark.integration
def test_runner_dry_run_runs_only_read_only_commands(logger: logging.Logger, tmp_path: Path) -> None:
    runner = Runner(logger, dry_run=True)
    assert runner.run(["sh", "-c", f"touch {tmp_path}/x"]).dry_run
    assert not (tmp_path / "x").exists()
    assert runner.run(["echo", "facts"], changes=False).stdout == "facts\n"


def test_record_writes_running_first_then_the_outcome(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VFARM_LOG_DIR", str(tmp_path / "env-dir"))
    with record.Record("demo", instance_id="i-1") as rec:
        rec.start()
        running = json.loads((tmp_path / "env-dir/demo.status.json").read_text())
        assert running["status"] == "running" and running["finished"] is None and running["seconds"] is None
        rec.step("mkfs", True, argv=["mkfs.ext4", "/dev/x"])
        rec.finish("failed", "`mount` failed (exit 32): http://a:b@c")
    data = json.loads((tmp_path / "env-dir/demo.status.json").read_text())
    assert set(data) == {"handler", "status", "reason", "started", "finished", "seconds", "instance_id", "changed", "steps", "vfarm_version"}
    assert data["status"] == "failed" and data["reason"] == "`mount` failed (exit 32): http://a:***@c"
    assert data["instance_id"] == "i-1" and data["changed"] is True and data["steps"][0]["ok"] is True
    assert isinstance(data["finished"], float) and data["seconds"] >= 0 and data["vfarm_version"]
    assert "demo: failed" in (tmp_path / "env-dir/demo.log").read_text()


def test_absent_section_is_skipped_and_logged(tmp_path: Path) -> None:
    data = handling.execute("localfs", lambda: None, cc_localfs.work, directory=tmp_path)
    assert data["status"] == "skipped" and "no localfs section" in data["reason"]
    assert "skipped: no localfs section" in (tmp_path / "localfs.log").read_text()


class FakeCloud:
    def get_instance_id(self) -> str:
        return "i-0123"


@pytest.fixture
def fake_machine(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> FakeMachine:
    machine = FakeMachine().add_vg("vg_local", 1000)
    monkeypatch.setattr(handling, "Runner", lambda logger, dry_run=False: FakeRunner(logger, machine=machine))
    monkeypatch.setenv("VFARM_LOG_DIR", str(tmp_path / "log"))
    monkeypatch.setenv("VFARM_ROOT", str(tmp_path / "root"))
    (tmp_path / "root/etc").mkdir(parents=True)
    return machine


@pytest.mark.parametrize("style", ["22.4 positional", "25.1 keywords"])
def test_config_module_handle_is_portable(fake_machine: FakeMachine, tmp_path: Path, style: str) -> None:
    cfg = {"localfs": {"parts": {"home": 50, "swap": 100}}}
    if style == "22.4 positional":
        cc_localfs.handle("localfs", cfg, FakeCloud(), logging.getLogger("x"), [])
    else:
        cc_localfs.handle(name="localfs", cfg=cfg, cloud=FakeCloud(), args=[])
    data = record.read_status("localfs", tmp_path / "log")
    assert data is not None and data["status"] == "ok" and data["instance_id"] == "i-0123"
    assert sorted(fake_machine.lvs) == ["vg_local/home", "vg_local/swap"]


def test_config_module_raises_after_recording_a_failure(fake_machine: FakeMachine, tmp_path: Path) -> None:
    with pytest.raises(handling.HandlerFailed, match="invalid config: .*must be <= 100"):
        cc_localfs.handle(name="localfs", cfg={"localfs": {"parts": {"home": 150}}}, cloud=None, args=[])
    data = record.read_status("localfs", tmp_path / "log")
    assert data is not None and data["status"] == "failed"


def test_cc_modules_meta() -> None:
    for module in (cc_localfs, cc_cvmfs):
        assert module.meta["distros"] == ["all"] and module.meta["frequency"] == module.frequency == "once-per-instance"
        assert not hasattr(module, "schema")  # 25.1 refuses a module with its own schema attribute


def test_part_handler_ignores_begin_end_and_survives_a_bare_cloud(fake_machine: FakeMachine, tmp_path: Path) -> None:
    assert localfs_handler.list_types() == ["text/localfs-config"] and cvmfs_handler.list_types() == ["text/cvmfs-config"]
    assert localfs_handler.handler_version == 3
    localfs_handler.handle_part(object(), "__begin__", None, None, "once-per-instance", {})
    assert not (tmp_path / "log/localfs.status.json").exists()
    payload: Any = b"localfs:\n  parts:\n    home: 50\n"
    localfs_handler.handle_part(object(), "text/localfs-config", "part-001", payload, "once-per-instance", {"Content-Type": "text/localfs-config"})
    localfs_handler.handle_part(object(), "__end__", None, None, "once-per-instance", {})
    data = record.read_status("localfs", tmp_path / "log")
    assert data is not None and data["status"] == "ok" and data["instance_id"] is None


def test_part_handler_records_a_bad_part(fake_machine: FakeMachine, tmp_path: Path) -> None:
    with pytest.raises(handling.HandlerFailed):
        localfs_handler.handle_part(None, "text/localfs-config", "localfs.yaml", "localfs:\n  parts:\n    home: many\n", None, None)
    data = record.read_status("localfs", tmp_path / "log")
    assert data is not None and data["status"] == "failed" and data["reason"].startswith("invalid config: localfs.yaml:3:11:")
    with pytest.raises(handling.HandlerFailed, match="holds no 'localfs:' section"):
        localfs_handler.handle_part(None, "text/localfs-config", "empty.yaml", "# nothing\n{}\n", None, None)


def test_idtokens_are_redacted_anywhere() -> None:
    from vfarm.redaction import redact

    token = "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJ3In0.c2ln-_x"
    assert redact(f"condor_token_fetch said {token} ok") == "condor_token_fetch said *** ok"


def test_atomic_write_into_a_device_leaves_the_device(tmp_path: Path) -> None:
    # `vfarm build -o /dev/null` once replaced the machine's /dev/null with a plain 0600 file.
    import stat

    from vfarm.files import atomic_write

    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    reader = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK)
    try:
        atomic_write(fifo, b"user-data", 0o600)
        assert os.read(reader, 100) == b"user-data"
    finally:
        os.close(reader)
    assert stat.S_ISFIFO(os.stat(fifo).st_mode)
    before = os.stat("/dev/null")
    atomic_write("/dev/null", b"x", 0o600)
    after = os.stat("/dev/null")
    assert stat.S_ISCHR(after.st_mode) and after.st_mode == before.st_mode and after.st_ino == before.st_ino


SECRET = "s3cretPass"
JWT = "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJhIn0.c2lnbmF0dXJl"


def test_record_hides_secrets_an_argv_or_a_key_shows(tmp_path: Path) -> None:
    """Each string alone looks harmless; the option before it or the key above it is the secret's sign."""
    with record.Record("demo", directory=tmp_path) as rec:
        rec.step("fetch-token", True, argv=["condor_token_fetch", "--token", SECRET, "-lifetime", "3600"])
        rec.step("login", True, argv=["curl", "-u", f"alice:{SECRET}", "https://example.org/"])
        rec.step("custom", True, password=SECRET, env={"CONDOR_TOKEN": SECRET, "HOME": "/root"})
        rec.finish("ok")
    text = (tmp_path / "demo.status.json").read_text()
    assert SECRET not in text
    steps = json.loads(text)["steps"]
    assert steps[0]["argv"] == ["condor_token_fetch", "--token", "***", "-lifetime", "3600"]
    assert steps[1]["argv"] == ["curl", "-u", "alice:***", "https://example.org/"]
    assert steps[2]["password"] == "***" and steps[2]["env"] == {"CONDOR_TOKEN": "***", "HOME": "/root"}


def test_the_log_redacts_every_line_tracebacks_too(tmp_path: Path) -> None:
    with record.Record("demo", directory=tmp_path) as rec:
        rec.logger.info("unredacted argument: %s", f"password={SECRET}")
        try:
            raise RuntimeError(f"cannot open https://alice:{SECRET}@repo.example/ with token={JWT}")
        except RuntimeError:
            rec.logger.exception("failed")
    log = (tmp_path / "demo.log").read_text()
    assert SECRET not in log and JWT not in log
    assert "password=***" in log and "Traceback" in log and "https://alice:***@repo.example/" in log


def test_an_unexpected_error_is_redacted_in_the_log_and_beyond(tmp_path: Path) -> None:
    """The traceback goes to the handler's log and, propagated, to cloud-init's own handlers."""
    lines: list[str] = []

    class Seen(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            lines.append(logging.Formatter().format(record))

    seen = Seen()
    logging.getLogger().addHandler(seen)

    def work(section: dict[str, Any], ctx: handling.Context) -> bool:
        raise RuntimeError(f"cannot open https://alice:{SECRET}@repo.example/ with token={JWT}")

    try:
        data = handling.execute("demo", lambda: {"x": 1}, work, directory=tmp_path, root=tmp_path)
    finally:
        logging.getLogger().removeHandler(seen)
    assert data["status"] == "failed" and SECRET not in data["reason"]
    everything = "\n".join(lines) + (tmp_path / "demo.log").read_text()
    assert "unexpected error" in everything and "Traceback" in everything
    assert SECRET not in everything and JWT not in everything


def _failing(section: dict[str, Any], ctx: handling.Context) -> bool:
    """A handler whose command fails; a dry run does not run it, and so succeeds."""
    if not ctx.dry_run:
        raise StepError("`mkfs` failed (exit 1)")
    return False


def test_a_dry_run_never_replaces_the_real_record(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from vfarm.cc_modules import check

    log = tmp_path / "var/log/vfarm"
    monkeypatch.delenv("VFARM_LOG_DIR", raising=False)
    real = handling.execute("localfs", lambda: {"x": 1}, _failing, cloud=FakeCloud(), directory=log, root=tmp_path)
    assert real["status"] == "failed"
    monkeypatch.setenv("VFARM_DRY_RUN", "1")
    dry = handling.execute("localfs", lambda: {"x": 1}, _failing, cloud=FakeCloud(), directory=log, root=tmp_path)
    assert dry["status"] == "ok" and dry["reason"] == "dry run: nothing changed"
    assert record.read_status("localfs", log) == real
    assert json.loads((log / "localfs.dry-run.json").read_text())["status"] == "ok"
    # the final check reads the real record alone
    assert check.discover(check.Paths(tmp_path))["records"] == {"localfs": real}


@pytest.mark.parametrize("content", ["", "[1]", '{"status": "ok"', '"ok"', "\udcff"])
def test_an_unreadable_earlier_record_counts_as_absent(tmp_path: Path, content: str) -> None:
    (tmp_path / "cvmfs.status.json").write_bytes(content.encode("utf-8", "surrogateescape"))
    assert record.read_status("cvmfs", tmp_path) is None
    data = handling.execute("cvmfs", lambda: None, _failing, cloud=FakeCloud(), directory=tmp_path)
    assert data["status"] == "skipped"
    assert record.read_status("cvmfs", tmp_path) == data
