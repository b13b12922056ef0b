"""`vfarm build` output through Debian's REAL cloud-init 22.4.2 and 25.1.4 (issue 4 point 6, 7):
the user-data processor must yield exactly the built parts, and in the init stage's real handler
walk (`Init.consume_data`) the handlers delivered by each mode must register and receive their
parts, with vfarm NOT importable in that process (an image has only cloud-init). The handlers
run for real against PATH stubs in a temp root (the stubs of tests/test_real_cloudinit.py).
Includes and `--pin` fetch from a real HTTP server on 127.0.0.1 serving `vfarm handlers` output."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests import system_stubs
from tests.fixtures.cloudinit import Release
from vfarm.cli.main import main as vfarm
from vfarm.clouds.loopback import LoopbackServer
from vfarm.config import loader as configuration
from vfarm.mime_builder import bundle, checkpart, mime

pytestmark = pytest.mark.integration  # starts processes (see tests/conftest.py)

CONFIG = """#multiple-config
localfs:
  parts:
    cvmfs: 17
    cvmfs-mount: /var/lib/cvmfs
    home: 58
    tmp: 8
    swap: 100
cvmfs:
  install: true
  version: 2.11.5
  local:
    repositories: alice.cern.ch
    http-proxy: http://t2-squid-01.example.org:3128
    cache-base: /var/lib/cvmfs
    quota-limit: 18000
check:
  on-failure: none
"""
BIG = 1 << 20  # embed of this config is over EC2's limit even gzipped; these tests are about cloud-init
# Runs in the release's process: vfarm blocked, the init stage as `cloud-init init` runs it.
DRIVER = r"""
import json, logging, os, sys
from pathlib import Path

class _NoVfarm:
    def find_spec(self, name, path=None, target=None):
        if name == "vfarm" or name.startswith("vfarm."):
            raise ModuleNotFoundError("vfarm is not on this image: " + name)
        return None

sys.meta_path.insert(0, _NoVfarm())
work = Path(os.environ["DRIVER_DIR"])
from cloudinit import handlers, settings, stages
try:
    from cloudinit.log import loggers
    loggers.define_extra_loggers()
except ImportError:
    pass
log = logging.FileHandler(work / "cloud-init.log")
log.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
logging.getLogger().addHandler(log)
logging.getLogger().setLevel(logging.DEBUG)
calls = []
real_run_part = handlers.run_part
def spy(mod, data, filename, payload, frequency, headers):
    calls.append([getattr(mod, "__name__", type(mod).__name__), headers["Content-Type"], filename])
    return real_run_part(mod, data, filename, payload, frequency, headers)
handlers.run_part = spy
stages.CLOUD_CONFIG = str(work / "cloud.cfg")
init = stages.Init(ds_deps=[])
init.read_cfg()
init.initialize()
init.fetch(existing="trust")
init.instancify()
init.update()
parts = []
for part in init.datasource.get_userdata().walk():
    if part.get_content_maintype() != "multipart":
        parts.append([part.get_content_type(), part.get_filename(), part.get_payload(decode=True).decode("utf-8")])
init.consume_data(settings.PER_INSTANCE)
logs = Path(os.environ["VFARM_LOG_DIR"])
records = {p.name.split(".")[0]: json.loads(p.read_text()) for p in sorted(logs.glob("*.status.json"))}
json.dump({"parts": parts, "calls": calls, "records": records, "vfarm": sorted(m for m in sys.modules if m.split(".")[0] == "vfarm")}, sys.stdout)
"""


@pytest.fixture()
def served(tmp_path: Path) -> Iterator[tuple[Path, str]]:
    """`vfarm handlers` output on a real HTTP server on 127.0.0.1: (folder, URL base)."""
    folder = tmp_path / "www/vfarm"
    assert vfarm(["handlers", str(folder)]) == 0
    with LoopbackServer(folder.parent) as server:
        yield folder, f"{server.url}/vfarm"


@pytest.fixture(scope="module")
def config() -> configuration.Config:
    return configuration.load_text(CONFIG, "farm.yaml")


def boot(release: Release, tmp: Path, data: bytes, baked: dict[str, str] | None = None) -> tuple[dict[str, Any], str]:
    stubs, root, logs = tmp / "stubs", tmp / "root", tmp / "log"
    for d in (stubs, root / "etc", tmp / "cloud/handlers"):
        d.mkdir(parents=True, exist_ok=True)
    (root / "etc/fstab").write_text("LABEL=root / ext4 defaults 0 1\n")
    (root / "etc/os-release").write_text("ID=debian\nVERSION_CODENAME=bookworm\n")
    system_stubs.install(stubs, extra=("cp", "rsync"))
    for filename, source in (baked or {}).items():
        (tmp / "cloud/handlers" / filename).write_text(source)
    cfg = {
        "system_info": {"distro": "debian", "paths": {"cloud_dir": str(tmp / "cloud"), "run_dir": str(tmp / "run"), "templates_dir": str(tmp / "t")}},
        "def_log_file": "",
        "datasource_list": ["None"],
        "datasource": {"None": {"userdata_raw": data}},  # bytes: a !!binary node, gzip included
    }
    (tmp / "cloud.cfg").write_text(yaml.safe_dump(cfg))
    env = {"DRIVER_DIR": str(tmp), "VFARM_LOG_DIR": str(logs), "VFARM_ROOT": str(root), "STUB_LOG": str(tmp / "commands.log"),
           "PATH": f"{stubs}{os.pathsep}{os.environ['PATH']}", "VFARM_PIN_RETRY_DELAY": "0.1", "NO_PROXY": "*", "no_proxy": "*"}
    for proxy in ("http_proxy", "https_proxy", "HTTP_PROXY", "HTTPS_PROXY", "all_proxy", "ALL_PROXY"):
        env[proxy] = ""
    done = release.run(DRIVER, env=env, cwd=tmp)
    assert done.returncode == 0, done.stderr[-3000:]
    out: dict[str, Any] = json.loads(done.stdout)
    assert out["vfarm"] == []  # everything came from the user-data (or the handlers dir)
    return out, (tmp / "cloud-init.log").read_text()


def expected(built: mime.Built) -> list[list[str]]:
    return [[p.content_type, p.filename, p.payload.decode()] for p in built.parts]


def problems(log: str) -> list[str]:
    return [line for line in log.splitlines() if re.match(r"(WARNING|ERROR|CRITICAL)\b", line) and "Unhandled" in line or "Failed" in line]


def delivered(out: dict[str, Any]) -> dict[str, str]:
    """config part filename -> the module that got it."""
    return {filename: module for module, ctype, filename in out["calls"] if ctype.endswith("-config") and ctype != "text/cloud-config"}


def assert_ran(out: dict[str, Any], names: tuple[str, ...] = ("localfs", "cvmfs")) -> None:
    for name in names:
        assert out["records"][name]["status"] == "ok", out["records"][name]


def test_embed_gzip(cloudinit_release: Release, tmp_path: Path, config: configuration.Config) -> None:
    built = mime.build(config, handlers="embed", gzip="always", max_size=BIG)
    out, log = boot(cloudinit_release, tmp_path, built.data)
    assert out["parts"] == expected(built)
    # part-handler-000 is the library (no type), then one handler per section, in order
    assert delivered(out) == {"localfs-config.ccfg": "part-handler-001", "cvmfs-config.ccfg": "part-handler-002", "check-config.ccfg": "part-handler-003"}
    assert ["part-handler-001", "__begin__", None] in out["calls"] and ["part-handler-003", "__end__", None] in out["calls"]
    assert_ran(out)
    assert not problems(log), problems(log)
    # Registering the library part wrote it as the final check, which the check's part runs.
    (library,) = [p for p in built.parts if p.filename == "vfarm-library.py"]
    script = tmp_path / "root" / checkpart.CHECK_PATH.lstrip("/")
    assert script.read_bytes() == library.payload and script.stat().st_mode & 0o777 == 0o700
    assert yaml.safe_load(built.parts[-1].payload)["power_state"]["condition"] == checkpart.condition()
    root = tmp_path / "root"
    for folder in ("run/cloud-init", "var/log/vfarm", "var/lib/cloud/instance"):
        (root / folder).mkdir(parents=True, exist_ok=True)
    (root / "run/cloud-init/result.json").write_text(json.dumps({"v1": {"errors": []}}))
    (root / "run/cloud-init/status.json").write_text(json.dumps({"v1": {"init": {"errors": [], "start": 1, "finished": 2}, "stage": None}}))
    (root / "var/lib/cloud/instance/user-data.txt").write_bytes(built.data)
    for record in (tmp_path / "log").glob("*.status.json"):
        # Without the volumes the fake run only listed: they are not on this host (test_check_mounts).
        (root / "var/log/vfarm" / record.name).write_text(json.dumps({k: v for k, v in json.loads(record.read_text()).items() if k != "mounts"}))
    done = subprocess.run([sys.executable, "-I", str(script), "--root", str(root), "--dry-run", "--wait", "0"], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0 and "decision: none: all 2 handler(s) ok" in done.stdout, done.stdout + done.stderr


def test_an_attached_power_state_gives_way_to_the_final_checks(cloudinit_release: Release, tmp_path: Path, config: configuration.Config) -> None:
    """cloud-init keeps the last part's power_state: the check's, after every attachment (the build says so)."""
    attached = tmp_path / "reboot.cfg"
    attached.write_text("#cloud-config\npower_state: {mode: reboot}\n")
    built = mime.build(config, handlers="embed", gzip="always", max_size=BIG, attach=[mime.attachment(str(attached))])
    assert [w for w in built.warnings if "power_state" in w] == [
        f"--attach {attached}: its power_state is not used: the final check's part sets power_state too and comes after it "
        "(cloud-init keeps the last part's)"]
    boot(cloudinit_release, tmp_path, built.data)
    (merged,) = (tmp_path / "cloud").glob("instances/*/cloud-config.txt")
    assert yaml.safe_load(merged.read_text())["power_state"]["condition"] == checkpart.condition()


def test_include(cloudinit_release: Release, tmp_path: Path, config: configuration.Config, served: tuple[Path, str]) -> None:
    folder, base = served
    built = mime.build(config, handlers=f"include={base}/", max_size=BIG)
    assert built.parts[0].content_type == "text/x-include-url"
    out, log = boot(cloudinit_release, tmp_path, built.data)
    # cloud-init puts each fetched file where the include stood
    files = [f"{n}_handler.py" for n in ("localfs", "cvmfs", "check")] + [bundle.CHECK_FILENAME]
    fetched = [["text/part-handler", f"part-{i:03d}", (folder / name).read_text()] for i, name in enumerate(files, 1)]
    assert out["parts"] == fetched + expected(built)[1:]
    assert delivered(out) == {"localfs-config.ccfg": "part-handler-000", "cvmfs-config.ccfg": "part-handler-001", "check-config.ccfg": "part-handler-002"}
    assert_ran(out)
    assert not problems(log), problems(log)
    # The fetched check registered and wrote itself where the check's power_state part runs it.
    script = tmp_path / "root" / checkpart.CHECK_PATH.lstrip("/")
    assert script.read_text() == (folder / bundle.CHECK_FILENAME).read_text() and script.stat().st_mode & 0o777 == 0o700
    assert yaml.safe_load(built.parts[-1].payload)["power_state"]["condition"] == checkpart.condition()


def test_pin(cloudinit_release: Release, tmp_path: Path, config: configuration.Config, served: tuple[Path, str]) -> None:
    """One boot, the three outcomes: localfs changed on the server (sha256 mismatch), the check
    handler gone (failed fetch), cvmfs intact (verified, runs)."""
    folder, base = served
    built = mime.build(config, handlers=f"include={base}", pin=True, max_size=BIG)
    assert built.parts[0].filename == "vfarm-pin-loader.py" and built.parts[0].content_type == "text/part-handler"
    with (folder / "localfs_handler.py").open("a") as tampered:
        tampered.write("import os  # changed on the server\n")
    (folder / "check_handler.py").unlink()
    out, log = boot(cloudinit_release, tmp_path, built.data)
    assert out["parts"] == expected(built)
    assert set(delivered(out).values()) == {"part-handler-000"}  # the loader takes every type
    localfs, check = out["records"]["localfs"], out["records"]["check"]
    assert localfs["status"] == "failed" and "has sha256" in localfs["reason"] and "expected" in localfs["reason"], localfs
    assert check["status"] == "failed" and "not fetched" in check["reason"] and "404" in check["reason"], check
    assert_ran(out, ("cvmfs",))
    assert "cvmfs_config probe alice.cern.ch" in (tmp_path / "commands.log").read_text()
    assert "lvcreate" not in (tmp_path / "commands.log").read_text()  # nothing unverified ran
    assert f"cvmfs from {base}/cvmfs_handler.py verified (sha256" in log
    # The check, verified, is written where its power_state part runs it.
    script = tmp_path / "root" / checkpart.CHECK_PATH.lstrip("/")
    assert script.read_text() == (folder / bundle.CHECK_FILENAME).read_text() and script.stat().st_mode & 0o777 == 0o700


def test_pin_writes_no_check_that_changed_on_the_server(cloudinit_release: Release, tmp_path: Path, config: configuration.Config,
                                                         served: tuple[Path, str]) -> None:
    """A check file that does not match its sha256 is not written: the power_state condition then
    finds no script and powers off (checkpart.condition)."""
    folder, base = served
    built = mime.build(config, handlers=f"include={base}", pin=True, max_size=BIG)
    with (folder / bundle.CHECK_FILENAME).open("a") as tampered:
        tampered.write("import os  # changed on the server\n")
    out, log = boot(cloudinit_release, tmp_path, built.data)
    assert_ran(out)
    record = out["records"][mime.CHECK_RECORD]
    assert record["status"] == "failed" and "has sha256" in record["reason"], record
    assert not (tmp_path / "root" / checkpart.CHECK_PATH.lstrip("/")).exists()


def test_baked(cloudinit_release: Release, tmp_path: Path, config: configuration.Config) -> None:
    """baked: only config parts; the image's /var/lib/cloud/handlers holds `vfarm handlers` files."""
    built = mime.build(config, handlers="baked")
    assert [p.role for p in built.parts] == ["config"] * 3
    out, log = boot(cloudinit_release, tmp_path, built.data, baked=bundle.bundle_all())
    assert out["parts"] == expected(built)
    assert delivered(out) == {"localfs-config.ccfg": "localfs_handler", "cvmfs-config.ccfg": "cvmfs_handler", "check-config.ccfg": "check_handler"}
    assert_ran(out)
    assert not problems(log), problems(log)


def test_the_mounts_part_of_localfs_devices_is_valid_cloud_config(cloudinit_release: Release) -> None:
    """The #cloud-config localfs's devices bring (cloud-init's `mounts` leaves them alone) is valid
    for the release's own schema: a problem there makes every stage "degraded"."""
    config = configuration.load_text("localfs:\n  devices: [/dev/xvdb, /dev/nvme1n1]\n  force: true\n  parts:\n    home: 50\n", "ec2.yaml")
    part = next(p for p in mime.build(config, handlers="baked").parts if p.filename == "localfs-mounts.cfg")
    assert yaml.safe_load(part.payload)["mounts"] == [["/dev/xvdb"], ["/dev/nvme1n1"]]
    assert cloudinit_release.schema_problems(part.payload.decode()) == ""
    assert cloudinit_release.schema_problems("#cloud-config\nmounts:\n  - [/dev/xvdb, null]\n") != ""  # what 25.1 refused on a real boot
