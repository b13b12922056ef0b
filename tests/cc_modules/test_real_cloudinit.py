"""vfarm's part-handlers and config modules inside Debian's REAL cloud-init 22.4.2 and 25.1.4:
the init stage's user-data walk and the config module loader, each release in its own process
(tests/cloudinit_driver.py), with the system commands replaced by PATH stubs in a temp root."""

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

from tests import system_stubs
from tests.fixtures.cloudinit import Release

pytestmark = pytest.mark.integration  # starts processes (see tests/conftest.py)

HERE = Path(__file__).resolve().parents[1]  # tests/
IID = "iid-datasource-none"  # what cloud-init's DataSourceNone calls every instance
LOCALFS = {"parts": {"cvmfs": 17, "cvmfs-mount": "/var/lib/cvmfs", "home": 58, "tmp": 8, "swap": 100}}
CVMFS = {"install": True, "version": "2.11.5",
         "local": {"repositories": "alice.cern.ch", "http-proxy": "http://user:s3cret@squid.example.org:3128", "quota-limit": "auto",
                   "cache-base": "/var/lib/cvmfs"}}
# Thin top-level modules, as an image bakes them: cloud-init imports handlers and cc_* by top-level name.
HANDLER_SHIM = "#part-handler\nfrom vfarm.part_handlers.{name}_handler import frequency, handle_part, handler_version, list_types  # noqa: F401\n"
MODULE_SHIM = "from vfarm.cc_modules.cc_{name} import distros, frequency, handle, meta  # noqa: F401\n"


def user_data(parts: list[tuple[str, str, str]]) -> str:
    message = MIMEMultipart()
    for subtype, filename, text in parts:
        part = MIMEText(text, subtype, "utf-8")
        part.add_header("Content-Disposition", "attachment", filename=filename)
        message.attach(part)
    return message.as_string()


def config_parts() -> list[tuple[str, str, str]]:
    return [("localfs-config", "localfs.yaml", yaml.safe_dump({"localfs": LOCALFS}, sort_keys=False)),
            ("cvmfs-config", "cvmfs.yaml", yaml.safe_dump({"cvmfs": CVMFS}, sort_keys=False))]


def boot(release: Release, tmp: Path, mime: str, extra_cfg: dict[str, Any], preinstalled: bool,
         keep_modules: bool = False) -> tuple[dict[str, Any], str, str]:
    stubs, modules, root, logs = tmp / "stubs", tmp / "modules", tmp / "root", tmp / "log"
    for d in (stubs, modules, root / "etc", root / "home/debian", tmp / "cloud/handlers"):
        d.mkdir(parents=True, exist_ok=True)
    (root / "etc/fstab").write_text("LABEL=root / ext4 defaults 0 1\n")
    (root / "etc/os-release").write_text("ID=debian\nVERSION_CODENAME=bookworm\n")
    (root / "home/debian/.profile").write_text("# from the image\n")
    system_stubs.install(stubs)
    for name in ("localfs", "cvmfs"):
        if not keep_modules:
            (modules / f"cc_{name}.py").write_text(MODULE_SHIM.format(name=name))
        if preinstalled:
            (tmp / "cloud/handlers" / f"vfarm_{name}_handler.py").write_text(HANDLER_SHIM.format(name=name))
    cfg = {
        "system_info": {"distro": "debian", "paths": {"cloud_dir": str(tmp / "cloud"), "run_dir": str(tmp / "run"), "templates_dir": str(tmp / "templates")}},
        "def_log_file": "",
        "datasource_list": ["None"],
        "datasource": {"None": {"userdata_raw": mime}},
        "cloud_config_modules": ["localfs", "cvmfs"],
        **extra_cfg,
    }
    (tmp / "cloud.cfg").write_text(yaml.safe_dump(cfg))
    env = {"DRIVER_DIR": str(tmp), "VFARM_LOG_DIR": str(logs), "VFARM_ROOT": str(root), "STUB_LOG": str(tmp / "commands.log"),
           "PATH": f"{stubs}{os.pathsep}{os.environ['PATH']}"}
    code = f"import runpy, sys; sys.path.insert(0, {str(modules)!r}); runpy.run_path({str(HERE / 'cloudinit_driver.py')!r}, run_name='__main__')"
    done = release.run(code, env=env, cwd=tmp)
    assert done.returncode == 0, done.stderr[-3000:]
    log = (tmp / "cloud-init.log").read_text()
    commands = (tmp / "commands.log").read_text() if (tmp / "commands.log").exists() else ""
    return json.loads(done.stdout), log, commands


def assert_clean(log: str) -> None:
    bad = [line for line in log.splitlines() if re.match(r"(WARNING|ERROR|CRITICAL|DEPRECATED)\b", line) or "deprecat" in line.lower()]
    assert not bad, "\n".join(bad[:20])
    assert "s3cret" not in log


def assert_records_ok(records: dict[str, Any]) -> None:
    for name in ("localfs", "cvmfs"):
        record = records[f"{name}.status.json"]
        assert record["status"] == "ok", record
        assert record["instance_id"] == IID
        assert record["changed"] is True


def test_handlers_as_user_data_parts(cloudinit_release: Release, tmp_path: Path) -> None:
    handlers = [("part-handler", f"{n}_handler.py", HANDLER_SHIM.format(name=n)) for n in ("localfs", "cvmfs")]
    out, log, commands = boot(cloudinit_release, tmp_path, user_data(handlers + config_parts()), {}, preinstalled=False)
    # the parts reached our handlers: their records, written during the walk
    assert_records_ok(out["after_parts"])
    assert "lvcreate --yes --wipesignatures y -n home -l 2900 --addtag vfarm vg_local" in commands
    assert "cvmfs_config probe alice.cern.ch" in commands
    # the modules were found and ran; with no key in cloud-config they keep the handlers' records
    assert out["ran"] == ["localfs", "cvmfs"] and out["failures"] == []
    assert out["after_modules"] == out["after_parts"]
    assert out["cc_localfs"] == str(tmp_path / "modules/cc_localfs.py")
    assert "no localfs section here; keeping the record of the earlier run (ok)" in log
    assert "/dev/vg_local/home\t/home\text4" in (tmp_path / "root/etc/fstab").read_text()
    assert (tmp_path / "root/run/vfarm/localfs/home/debian/.profile").exists()  # carried (cp ran for real, mount is a stub)
    assert_clean(log)


def test_preinstalled_handlers_and_config_modules(cloudinit_release: Release, tmp_path: Path) -> None:
    extra = {"localfs": LOCALFS, "cvmfs": CVMFS}  # a baked image's system config, read by the modules
    out, log, commands = boot(cloudinit_release, tmp_path, user_data(config_parts()), extra, preinstalled=True)
    assert_records_ok(out["after_parts"])
    assert out["ran"] == ["localfs", "cvmfs"] and out["failures"] == []
    for name in ("localfs", "cvmfs"):
        record = out["after_modules"][f"{name}.status.json"]
        assert record["status"] == "ok" and record["instance_id"] == IID
        assert record["started"] > out["after_parts"][f"{name}.status.json"]["started"]  # the module ran it again
    assert re.search(r"Added custom handler for \{'text/localfs-config'\} .* from .*/cloud/handlers/vfarm_localfs_handler.py", log)
    assert commands.count("cvmfs_config probe alice.cern.ch") == 2
    assert_clean(log)


def test_a_bad_part_is_recorded_as_failed(cloudinit_release: Release, tmp_path: Path) -> None:
    handlers = [("part-handler", "localfs_handler.py", HANDLER_SHIM.format(name="localfs"))]
    bad = [("localfs-config", "localfs.yaml", "localfs:\n  parts:\n    home: 158\n")]
    out, log, _ = boot(cloudinit_release, tmp_path, user_data(handlers + bad), {"cloud_config_modules": []}, preinstalled=False)
    record = out["after_parts"]["localfs.status.json"]
    assert record["status"] == "failed"
    assert record["reason"].startswith("invalid config: localfs.yaml:3:")
    assert "vfarm localfs failed: invalid config" in log  # cloud-init's WARNING carries the reason


def test_the_log_check_catches_an_old_style_handle(cloudinit_release: Release, tmp_path: Path) -> None:
    """Control: a 5-parameter `handle` (what 22.4 called) is DEPRECATED on 25.1, and assert_clean sees it."""
    old_style = ("from vfarm.cc_modules.cc_localfs import distros, frequency, meta, handle as _h\n\n"
                 "def handle(name, cfg, cloud, log, args):\n    _h(name, cfg, cloud, log, args)\n")
    (tmp_path / "modules").mkdir()
    (tmp_path / "modules/cc_localfs.py").write_text(old_style)
    shim = (tmp_path / "modules/cc_localfs.py").read_text()
    out, log, _ = boot(cloudinit_release, tmp_path, user_data([]), {"cloud_config_modules": ["localfs"]}, preinstalled=False, keep_modules=True)
    assert (tmp_path / "modules/cc_localfs.py").read_text() == shim
    assert out["ran"] == ["localfs"] and out["failures"] == []
    if cloudinit_release.version.startswith("25."):
        with pytest.raises(AssertionError, match="DEPRECATED"):
            assert_clean(log)
    else:
        assert_clean(log)
