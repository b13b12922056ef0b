"""The condor part-handler and the cc_condor config module inside Debian's REAL cloud-init 22.4.2
and 25.1.4 (each release in its own process, tests/cloudinit_driver.py): the text/condor-config part
reaches the handler, the module loads as a config module, and the log holds no WARNING,
DEPRECATED or token. HTCondor's commands are PATH stubs here; the real ones run in
tests/test_condor_real.py."""

from __future__ import annotations

import json
import os
import re
from email.mime.multipart import MIMEMultipart
from email.mime.text import MIMEText
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.fixtures.cloudinit import Release

pytestmark = pytest.mark.integration  # starts processes (see tests/conftest.py)

HERE = Path(__file__).resolve().parents[1]  # tests/
IID = "iid-datasource-none"  # what cloud-init's DataSourceNone calls every instance
TOKEN = "s3cretHeader.s3cretClaims.s3cretSignature"  # not a JWT: redaction would not hide it
CONDOR = {"central-manager": "cm.example.org", "token": TOKEN, "execute": "/scratch/condor", "attributes": {"Site": "T2_IT_Torino"},
          "join-timeout": 30}
HANDLER_SHIM = "#part-handler\nfrom vfarm.part_handlers.condor_handler import frequency, handle_part, handler_version, list_types  # noqa: F401\n"
MODULE_SHIM = "from vfarm.cc_modules.cc_condor import distros, frequency, handle, meta  # noqa: F401\n"
# HTCondor and systemd as a state machine in $STATE: `systemctl start condor` makes the collector
# (condor_status) list a startd with the instance id that 50-vfarm.conf advertises; `nft -f` of the
# metadata guard's file puts its table in place (the real nft runs in test_metadata_guard.py).
STUB = r"""#!/bin/sh
name=$(basename "$0")
echo "$name $*" >> "$STUB_LOG"
case "$name $1" in
  "systemctl is-active") [ -f "$STATE/active" ] && exit 0; exit 3 ;;
  "systemctl start"|"systemctl restart") touch "$STATE/active" ;;
  "install -d") for last; do :; done; mkdir -p "$VFARM_ROOT$last" ;;
  "condor_config_val -summary") grep -q '^use ROLE: Execute$' "$VFARM_ROOT/etc/condor/config.d/50-vfarm.conf" || exit 1 ;;
  "nft list") [ -f "$STATE/guard" ] || exit 1 ;;
  "nft -f") grep -q '^table inet vfarm_metadata_guard {$' "$VFARM_ROOT$2" && touch "$STATE/guard" || exit 1 ;;
  "condor_status "*)
    [ -f "$STATE/active" ] || exit 0
    iid=$(sed -n 's/^VfarmInstanceId = "\(.*\)"$/\1/p' "$VFARM_ROOT/etc/condor/config.d/50-vfarm.conf")
    case "$*" in *"VfarmInstanceId == \"$iid\""*) echo "slot1@worker" ;; esac ;;
esac
exit 0
"""
STUBBED = ("systemctl", "install", "condor_config_val", "condor_status", "nft")


def user_data(parts: list[tuple[str, str, str]]) -> str:
    message = MIMEMultipart()
    for subtype, filename, text in parts:
        part = MIMEText(text, subtype, "utf-8")
        part.add_header("Content-Disposition", "attachment", filename=filename)
        message.attach(part)
    return message.as_string()


def boot(release: Release, tmp: Path, mime: str, extra_cfg: dict[str, Any], preinstalled: bool) -> tuple[dict[str, Any], str, str]:
    stubs, modules, root, logs, state = tmp / "stubs", tmp / "modules", tmp / "root", tmp / "log", tmp / "state"
    for d in (stubs, modules, root / "etc/condor/config.d", tmp / "cloud/handlers", state):
        d.mkdir(parents=True, exist_ok=True)
    (stubs / "fake-tool").write_text(STUB)
    (stubs / "fake-tool").chmod(0o755)
    for name in STUBBED:
        (stubs / name).symlink_to("fake-tool")
    (modules / "cc_condor.py").write_text(MODULE_SHIM)
    if preinstalled:
        (tmp / "cloud/handlers/vfarm_condor_handler.py").write_text(HANDLER_SHIM)
    cfg = {
        "system_info": {"distro": "debian", "paths": {"cloud_dir": str(tmp / "cloud"), "run_dir": str(tmp / "run"), "templates_dir": str(tmp / "templates")}},
        "def_log_file": "",
        "datasource_list": ["None"],
        "datasource": {"None": {"userdata_raw": mime}},
        "cloud_config_modules": ["condor"],
        **extra_cfg,
    }
    (tmp / "cloud.cfg").write_text(yaml.safe_dump(cfg))
    env = {"DRIVER_DIR": str(tmp), "VFARM_LOG_DIR": str(logs), "VFARM_ROOT": str(root), "STUB_LOG": str(tmp / "commands.log"),
           "STATE": str(state), "PATH": f"{stubs}{os.pathsep}{os.environ['PATH']}"}
    code = f"import runpy, sys; sys.path.insert(0, {str(modules)!r}); runpy.run_path({str(HERE / 'cloudinit_driver.py')!r}, run_name='__main__')"
    done = release.run(code, env=env, cwd=tmp)
    assert done.returncode == 0, done.stderr[-3000:]
    log = (tmp / "cloud-init.log").read_text()
    commands = (tmp / "commands.log").read_text() if (tmp / "commands.log").exists() else ""
    return json.loads(done.stdout), log, commands


def assert_clean(log: str, tmp: Path) -> None:
    bad = [line for line in log.splitlines() if re.match(r"(WARNING|ERROR|CRITICAL|DEPRECATED)\b", line) or "deprecat" in line.lower()]
    assert not bad, "\n".join(bad[:20])
    for path in [*(tmp / "log").iterdir()]:
        assert TOKEN.split(".")[1] not in path.read_text(), path


def assert_joined(root: Path, record: dict[str, Any]) -> None:
    assert record["status"] == "ok", record
    assert record["instance_id"] == IID
    # the metadata guard (on by default) is in place before the token is written and condor starts
    assert [s["action"] for s in record["steps"]][-11:] == ["guard-folders", "write-guard-rules", "write-guard-unit", "enable-guard",
                                                            "protect-metadata", "write-token", "write-config", "mkdir", "check-config",
                                                            "start", "wait-join"]
    assert (root / "etc/vfarm/metadata-guard.nft").is_file() and (root / "etc/systemd/system/vfarm-metadata-guard.service").is_file()
    assert (root / "etc/condor/tokens.d/vfarm-pool.token").read_text() == TOKEN + "\n"
    assert (root / "etc/condor/tokens.d/vfarm-pool.token").stat().st_mode & 0o777 == 0o600
    assert f'VfarmInstanceId = "{IID}"' in (root / "etc/condor/config.d/50-vfarm.conf").read_text()
    assert (root / "scratch/condor").is_dir()


def test_condor_part_reaches_its_handler(cloudinit_release: Release, tmp_path: Path) -> None:
    parts = [("part-handler", "condor_handler.py", HANDLER_SHIM), ("condor-config", "condor.yaml", yaml.safe_dump({"condor": CONDOR}))]
    out, log, commands = boot(cloudinit_release, tmp_path, user_data(parts), {}, preinstalled=False)
    assert_joined(tmp_path / "root", out["after_parts"]["condor.status.json"])
    assert "systemctl start --job-mode=ignore-dependencies condor" in commands and "condor_config_val -summary" in commands
    assert commands.index("nft -f /etc/vfarm/metadata-guard.nft") < commands.index("systemctl start --job-mode=ignore-dependencies condor")
    assert "systemctl enable vfarm-metadata-guard.service" in commands
    # the module was found and ran; with no condor key in cloud-config it keeps the handler's record
    assert out["ran"] == ["condor"] and out["failures"] == []
    assert out["after_modules"] == out["after_parts"]
    assert_clean(log, tmp_path)


def test_condor_config_module_runs_from_cloud_config(cloudinit_release: Release, tmp_path: Path) -> None:
    out, log, commands = boot(cloudinit_release, tmp_path, user_data([]), {"condor": CONDOR}, preinstalled=True)
    assert "condor.status.json" not in out["after_parts"]
    assert out["ran"] == ["condor"] and out["failures"] == []
    assert_joined(tmp_path / "root", out["after_modules"]["condor.status.json"])
    assert commands.count("systemctl start --job-mode=ignore-dependencies condor") == 1
    assert_clean(log, tmp_path)


def test_a_baked_handler_takes_the_part_and_a_failure_is_recorded(cloudinit_release: Release, tmp_path: Path) -> None:
    bad = {**CONDOR, "central-manager": "cm.example.org:70000"}
    parts = [("condor-config", "condor.yaml", yaml.safe_dump({"condor": bad}))]
    out, log, _ = boot(cloudinit_release, tmp_path, user_data(parts), {"cloud_config_modules": []}, preinstalled=True)
    record = out["after_parts"]["condor.status.json"]
    assert record["status"] == "failed"
    assert record["reason"].startswith("invalid config: condor.yaml:") and "port 70000 is out of range" in record["reason"]
    assert "vfarm condor failed: invalid config" in log
    assert TOKEN.split(".")[1] not in log
