"""cc_cvmfs on a fake machine: repository, pinned install, config files, setup, probes."""

from __future__ import annotations

import base64
import http.server
import logging
import os
import shutil
import threading
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Optional

import pytest

from tests.fakesystem import FakeRunner
from vfarm.cc_modules import cc_cvmfs, handling

SECTION: dict[str, Any] = {
    "install": True,
    "version": "2.1.14",
    "local": {"repositories": "alice.cern.ch", "http-proxy": "http://t2-squid-01.example.org:3128", "cache-base": "/var/lib/cvmfs", "quota-limit": 18000},
}
DEFAULT_LOCAL = (
    f"# {cc_cvmfs.HEADER}\n"
    'CVMFS_REPOSITORIES="alice.cern.ch"\n'
    'CVMFS_HTTP_PROXY="http://t2-squid-01.example.org:3128"\n'
    'CVMFS_CACHE_BASE="/var/lib/cvmfs"\n'
    'CVMFS_QUOTA_LIMIT="18000"\n'
)
MADISON = " cvmfs | 2.11.5~1+debian12 | https://cvmrepo Packages\n cvmfs | 2.1.14~1+debian12 | https://cvmrepo Packages\n"


class FakeCvmfsHost:
    """dpkg, apt and cvmfs_config as a tiny state machine."""

    def __init__(self, installed: str | None = None, set_up: bool = False):
        self.installed = installed
        self.release = False
        self.set_up = set_up

    def answers(self) -> dict[tuple[str, ...], Any]:
        def dpkg_query(argv: list[str]) -> tuple[int, str, str]:
            version = self.installed if argv[-1] == "cvmfs" else ("1.0" if self.release else None)
            return (0, f"install ok installed\t{version}", "") if version else (1, "", f"dpkg-query: no packages found matching {argv[-1]}")

        def install(argv: list[str]) -> tuple[int, str, str]:
            self.installed = argv[-1].split("=", 1)[1]
            return 0, "", ""

        def dpkg_i(argv: list[str]) -> tuple[int, str, str]:
            self.release = True
            return 0, "", ""

        def chksetup(argv: list[str]) -> tuple[int, str, str]:
            return (0, "OK\n", "") if self.set_up else (1, "Warning: autofs map is not referenced\n", "")

        def setup(argv: list[str]) -> tuple[int, str, str]:
            self.set_up = True
            return 0, "", ""

        return {
            ("dpkg-query",): dpkg_query,
            ("dpkg", "-i"): dpkg_i,
            ("apt-cache", "madison", "cvmfs"): (0, MADISON, ""),
            ("apt-get", "install"): install,
            ("cvmfs_config", "chksetup"): chksetup,
            ("cvmfs_config", "setup"): setup,
            ("cvmfs_config", "probe"): (0, "Probing /cvmfs/alice.cern.ch... OK\n", ""),
        }


@pytest.fixture
def root(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    root = tmp_path / "root"
    (root / "etc").mkdir(parents=True)
    (root / "etc/os-release").write_text('ID=debian\nVERSION_CODENAME="bookworm"\n')
    monkeypatch.setattr(shutil, "which", lambda tool: "/usr/bin/apt-get" if tool == "apt-get" else None)
    downloads: list[str] = []

    def download(url: str, path: Path, ctx: handling.Context) -> None:
        downloads.append(url)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"deb")

    monkeypatch.setattr(cc_cvmfs, "_download", download)
    return root


def run(root: Path, runner: FakeRunner, section: Any = SECTION) -> dict[str, Any]:
    return handling.execute("cvmfs", lambda: section, cc_cvmfs.work, directory=root.parent / "log", root=root, runner=runner)


def test_install_pinned_configure_setup_probe(root: Path) -> None:
    host = FakeCvmfsHost()
    runner = FakeRunner(answers=host.answers())
    status = run(root, runner)
    assert status["status"] == "ok", status["reason"]
    assert runner.changing_calls() == [
        ["dpkg", "-i", "/run/vfarm/cvmfs/cvmfs-release-latest_all.deb"],
        ["apt-get", "update", "-q"],
        ["apt-get", "install", "-y", "-q", "--allow-downgrades", "cvmfs=2.1.14~1+debian12"],
        ["cvmfs_config", "setup"],
    ]
    assert ["cvmfs_config", "probe", "alice.cern.ch"] in runner.calls
    assert (root / "etc/cvmfs/default.local").read_text() == DEFAULT_LOCAL
    assert status["changed"] is True


@pytest.mark.parametrize("autofs_active", [False, True])
def test_under_systemd_autofs_starts_without_waiting_and_the_probe_mounts(root: Path, autofs_active: bool) -> None:
    """In cloud-init's init stage autofs cannot start yet (it is ordered after network-online):
    no `systemctl start` that waits; the repository is probed by a mount of its own until it runs."""
    (root / "run/systemd/system").mkdir(parents=True)
    host = FakeCvmfsHost()
    answers = {**host.answers(), ("systemctl", "is-active"): (0 if autofs_active else 3, "", "")}
    runner = FakeRunner(answers=answers)
    status = run(root, runner)
    assert status["status"] == "ok", status["reason"]
    assert ["cvmfs_config", "setup"] not in runner.calls
    setup = runner.calls.index(["cvmfs_config", "setup", "nostart"])
    assert runner.calls[setup + 1:setup + 3] == [["systemctl", "enable", "--quiet", "autofs.service"],
                                                 ["systemctl", "start", "--no-block", "autofs.service"]]
    mountpoint = f"{cc_cvmfs.PROBE_MOUNTS}/alice.cern.ch"
    if autofs_active:
        assert ["cvmfs_config", "probe", "alice.cern.ch"] in runner.calls
        assert not any(c[:1] == ["mount"] for c in runner.calls)
    else:
        assert ["cvmfs_config", "probe", "alice.cern.ch"] not in runner.calls
        at = runner.calls.index(["mount", "-t", "cvmfs", "alice.cern.ch", mountpoint])
        assert runner.calls[at + 1:at + 3] == [["ls", "-A", mountpoint], ["umount", mountpoint]]


def test_a_probe_mount_that_fails_fails_the_section(root: Path) -> None:
    (root / "run/systemd/system").mkdir(parents=True)
    answers = {**FakeCvmfsHost().answers(), ("systemctl", "is-active"): (3, "", "")}
    runner = FakeRunner(answers=answers, fail=("mount", "-t", "cvmfs"))
    status = run(root, runner)
    assert status["status"] == "failed" and "mount" in status["reason"], status
    assert not any(c[:1] == ["umount"] for c in runner.calls), "nothing was mounted"


def test_second_run_changes_nothing(root: Path) -> None:
    host = FakeCvmfsHost()
    run(root, FakeRunner(answers=host.answers()))
    again = FakeRunner(answers=host.answers())
    status = run(root, again)
    assert status["status"] == "ok" and status["changed"] is False
    assert again.changing_calls() == []
    assert ["cvmfs_config", "probe", "alice.cern.ch"] in again.calls


def test_a_version_pinned_as_the_repository_writes_it_installs_once(root: Path) -> None:
    """`version` may be the package's whole version, as the repository lists it: installed as
    that, and a second run finds it installed."""
    exact = {**SECTION, "version": "2.1.14~1+debian12"}
    host = FakeCvmfsHost()
    first = FakeRunner(answers=host.answers())
    assert run(root, first, exact)["status"] == "ok"
    assert ["apt-get", "install", "-y", "-q", "--allow-downgrades", "cvmfs=2.1.14~1+debian12"] in first.changing_calls()
    again = FakeRunner(answers=host.answers())
    status = run(root, again, exact)
    assert status["status"] == "ok" and status["changed"] is False and again.changing_calls() == []


def test_install_false_configures_an_existing_client(root: Path) -> None:
    host = FakeCvmfsHost(installed="2.11.5~1+debian12", set_up=True)
    runner = FakeRunner(answers=host.answers())
    status = run(root, runner, {**SECTION, "install": False})
    assert status["status"] == "ok", status["reason"]
    assert runner.changing_calls() == [["cvmfs_config", "reload"]]  # config written to a set-up client
    assert (root / "etc/cvmfs/default.local").read_text() == DEFAULT_LOCAL


def test_install_false_without_cvmfs_fails(root: Path) -> None:
    status = run(root, FakeRunner(answers=FakeCvmfsHost().answers()), {**SECTION, "install": False})
    assert status["status"] == "failed" and "not installed" in status["reason"]


def test_domain_repository_files_and_auto_quota(root: Path) -> None:
    (root / "var/lib/cvmfs").mkdir(parents=True)
    section = {
        "local": {"repositories": ["atlas.cern.ch", "alice.cern.ch"], "http-proxy": [["http://a:3128", "http://b:3128"], "DIRECT"],
                  "cache-base": "/var/lib/cvmfs", "quota-limit": "auto"},
        "domain": {"cern.ch": {"server-url": ["http://s1/cvmfs/@fqrn@", "http://s2/cvmfs/@fqrn@"]}},
        "repository": {"alice.cern.ch": {"CVMFS_HTTP_PROXY": "DIRECT"}},
    }
    host = FakeCvmfsHost(installed="2.11.5~1+debian12", set_up=True)
    runner = FakeRunner(answers=host.answers())
    status = run(root, runner, section)
    assert status["status"] == "ok", status["reason"]
    stat = os.statvfs(root / "var/lib/cvmfs")
    quota = int(stat.f_blocks * stat.f_frsize * 0.85) // 2**20
    text = (root / "etc/cvmfs/default.local").read_text()
    assert f'CVMFS_QUOTA_LIMIT="{quota}"' in text
    assert 'CVMFS_HTTP_PROXY="http://a:3128|http://b:3128;DIRECT"' in text
    assert 'CVMFS_SERVER_URL="http://s1/cvmfs/@fqrn@;http://s2/cvmfs/@fqrn@"' in (root / "etc/cvmfs/domain.d/cern.ch.local").read_text()
    assert 'CVMFS_HTTP_PROXY="DIRECT"' in (root / "etc/cvmfs/config.d/alice.cern.ch.local").read_text()
    assert [c[-1] for c in runner.calls if c[:2] == ["cvmfs_config", "probe"]] == ["atlas.cern.ch", "alice.cern.ch"]


def test_custom_apt_repository(root: Path) -> None:
    section = {**SECTION, "package-repository": {"apt": "http://127.0.0.1:8080/cvmfs", "trusted": True}}
    runner = FakeRunner(answers=FakeCvmfsHost().answers())
    assert run(root, runner, section)["status"] == "ok"
    assert (root / "etc/apt/sources.list.d/vfarm-cvmfs.list").read_text() == "deb [trusted=yes] http://127.0.0.1:8080/cvmfs bookworm-prod main\n"
    assert not any(c[:2] == ["dpkg", "-i"] for c in runner.calls)


@pytest.mark.parametrize("manager", ["apt-get", "dnf"])
def test_a_custom_repository_without_a_key_is_refused_before_anything_is_written(root: Path, manager: str,
                                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """apt would be told `signed-by=` a key never written (yum: gpgcheck=1 without gpgkey): the
    broken source would stay for every later apt run. The plan refuses it (validate does too)."""
    monkeypatch.setattr(shutil, "which", lambda tool: f"/usr/bin/{manager}" if tool == manager else None)
    kind = "apt" if manager == "apt-get" else "yum"
    section = {**SECTION, "package-repository": {kind: "http://mirror.example.org/cvmfs"}}
    runner = FakeRunner(answers={**FakeCvmfsHost().answers(), ("rpm", "-q"): (1, "", "package cvmfs is not installed")})
    status = run(root, runner, section)
    assert status["status"] == "failed" and "no gpg-key" in status["reason"] and "trusted: true" in status["reason"], status
    assert runner.changing_calls() == []
    assert not (root / "etc/apt").exists() and not (root / "etc/yum.repos.d").exists()


ADMIN_LOCAL = 'CVMFS_HTTP_PROXY="http://site-squid:3128"\nCVMFS_KEYS_DIR=/etc/cvmfs/keys/site\n'
ADMIN_REPO = "CVMFS_PUBLIC_KEY=/etc/cvmfs/keys/alice.pub\n"


def test_config_files_vfarm_did_not_write_are_kept_once(root: Path) -> None:
    """An image's own default.local or config.d/*.local (its keys, its proxies) is copied to
    NAME.vfarm-orig, with its mode, before vfarm writes its own: said in the log and the record;
    a second run changes nothing, and a copy that exists is never overwritten."""
    section = {**SECTION, "install": False, "repository": {"alice.cern.ch": {"server-url": "http://s/cvmfs/@fqrn@"}}}
    cvmfs = root / "etc/cvmfs"
    (cvmfs / "config.d").mkdir(parents=True)
    (cvmfs / "default.local").write_text(ADMIN_LOCAL)
    (cvmfs / "default.local").chmod(0o600)
    (cvmfs / "config.d/alice.cern.ch.local").write_text(ADMIN_REPO)
    host = FakeCvmfsHost(installed="2.11.5~1+debian12", set_up=True)
    status = run(root, FakeRunner(answers=host.answers()), section)
    assert status["status"] == "ok", status["reason"]
    assert (cvmfs / "default.local.vfarm-orig").read_text() == ADMIN_LOCAL
    assert (cvmfs / "default.local.vfarm-orig").stat().st_mode & 0o777 == 0o600
    assert (cvmfs / "config.d/alice.cern.ch.local.vfarm-orig").read_text() == ADMIN_REPO
    assert (cvmfs / "default.local").read_text() == DEFAULT_LOCAL
    kept = [s for s in status["steps"] if s["action"] == "keep-original"]
    assert [s["copy"] for s in kept] == ["/etc/cvmfs/default.local.vfarm-orig", "/etc/cvmfs/config.d/alice.cern.ch.local.vfarm-orig"]
    assert all(s["ok"] and s["changed"] for s in kept)
    steps = [s["action"] for s in status["steps"]]
    assert steps.index("keep-original") < steps.index("write-file")
    assert "kept as /etc/cvmfs/default.local.vfarm-orig" in (root.parent / "log/cvmfs.log").read_text()

    again = FakeRunner(answers=host.answers())
    status = run(root, again, section)
    assert status["status"] == "ok" and status["changed"] is False and again.changing_calls() == []
    assert not any(s["action"] in ("keep-original", "write-file") for s in status["steps"])

    (cvmfs / "default.local").write_text("CVMFS_HTTP_PROXY=DIRECT\n")  # the admin's again: the first copy stays
    status = run(root, FakeRunner(answers=host.answers()), section)
    assert status["status"] == "ok", status["reason"]
    assert (cvmfs / "default.local.vfarm-orig").read_text() == ADMIN_LOCAL
    assert (cvmfs / "default.local").read_text() == DEFAULT_LOCAL
    assert not any(s["action"] == "keep-original" for s in status["steps"])
    plan = next(s for s in status["steps"] if s["action"] == "plan")
    assert plan["notes"] == ["/etc/cvmfs/default.local was not written by vfarm: replaced, its first version is kept in "
                             "/etc/cvmfs/default.local.vfarm-orig already"]


def test_dnf_family(root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(shutil, "which", lambda tool: "/usr/bin/dnf" if tool == "dnf" else None)
    runner = FakeRunner(answers={("rpm", "-q"): (1, "", "package cvmfs is not installed"), ("cvmfs_config", "chksetup"): (0, "OK\n", "")})
    status = run(root, runner)
    assert status["status"] == "ok", status["reason"]
    assert runner.changing_calls()[:2] == [["dnf", "install", "-y", cc_cvmfs.RELEASE_RPM], ["dnf", "install", "-y", "cvmfs-2.1.14"]]


def test_missing_pinned_version_is_a_clear_failure(root: Path) -> None:
    status = run(root, FakeRunner(answers=FakeCvmfsHost().answers()), {**SECTION, "version": "9.9.9"})
    assert status["status"] == "failed"
    assert "cvmfs 9.9.9 is not in the package repository" in status["reason"]


@pytest.mark.parametrize("failing", [("dpkg", "-i"), ("apt-get", "update"), ("apt-get", "install"), ("cvmfs_config", "setup"), ("cvmfs_config", "probe")])
def test_a_failing_command_stops_the_handler(root: Path, failing: tuple[str, ...]) -> None:
    runner = FakeRunner(answers=FakeCvmfsHost().answers(), fail=failing)
    status = run(root, runner)
    assert status["status"] == "failed"
    assert f"`{' '.join(failing)}" in status["reason"] and "exit 5" in status["reason"]
    assert runner.calls[-1][: len(failing)] == list(failing)
    written = (root / "etc/cvmfs/default.local").exists()
    assert written == (failing[0] == "cvmfs_config")  # config is written after the install only


def test_default_local_is_never_half_written(root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (root / "etc/cvmfs").mkdir(parents=True)
    (root / "etc/cvmfs/default.local").write_text("CVMFS_REPOSITORIES=old\n")

    real_replace = os.replace

    def full_disk(src: str, dst: str) -> None:
        if str(dst).endswith("default.local"):
            raise OSError(28, "No space left on device")
        real_replace(src, dst)

    monkeypatch.setattr(os, "replace", full_disk)
    status = run(root, FakeRunner(answers=FakeCvmfsHost(installed="2.1.14~1", set_up=True).answers()))
    assert status["status"] == "failed" and "No space left" in status["reason"]
    assert (root / "etc/cvmfs/default.local").read_text() == "CVMFS_REPOSITORIES=old\n"
    assert sorted(os.listdir(root / "etc/cvmfs")) == ["default.local", "default.local.vfarm-orig"]  # no temp file left
    assert (root / "etc/cvmfs/default.local.vfarm-orig").read_text() == "CVMFS_REPOSITORIES=old\n"


def test_proxy_credentials_never_reach_the_log(root: Path) -> None:
    section = {**SECTION, "local": {**SECTION["local"], "http-proxy": "http://user:s3cret@squid.example.org:3128"}}
    run(root, FakeRunner(answers=FakeCvmfsHost().answers(), fail=("cvmfs_config", "probe")), section)
    for name in ("cvmfs.log", "cvmfs.status.json"):
        assert "s3cret" not in (root.parent / "log" / name).read_text()


class _KeyServer(http.server.ThreadingHTTPServer):
    """A loopback web server: /key.asc for basic authentication as site:p@ss (else 401), /moved
    redirects to ELSEWHERE; every request's path and Authorization header kept."""

    elsewhere = ""
    seen: list[tuple[str, Optional[str]]]


class _KeyHandler(http.server.BaseHTTPRequestHandler):
    server: _KeyServer

    def do_GET(self) -> None:  # noqa: N802 - http.server's name
        auth = self.headers.get("Authorization")
        self.server.seen.append((self.path, auth))
        body = b"key" if auth == "Basic " + base64.b64encode(b"site:p@ss").decode() and self.path != "/moved" else b""
        self.send_response(302 if self.path == "/moved" else 200 if body else 401)
        if self.path == "/moved":
            self.send_header("Location", self.server.elsewhere)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def key_servers() -> Iterator[tuple[_KeyServer, _KeyServer]]:
    servers = [_KeyServer(("127.0.0.1", 0), _KeyHandler) for _ in range(2)]
    for server in servers:
        server.seen = []
        threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield servers[0], servers[1]
    finally:
        for server in servers:
            server.shutdown()
            server.server_close()


def test_download_sends_a_urls_credentials_as_basic_authentication(key_servers: tuple[_KeyServer, _KeyServer], tmp_path: Path,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """A gpg-key URL may carry user:password (urllib would take them for a host and port): they go
    as basic authentication, never to a redirect's host, and never into a message or the log."""
    server, other = key_servers
    monkeypatch.setattr(cc_cvmfs.time, "sleep", lambda seconds: None)
    ctx = SimpleNamespace(logger=logging.getLogger("test-download"))
    port = server.server_address[1]
    cc_cvmfs._download(f"http://site:p%40ss@127.0.0.1:{port}/key.asc", tmp_path / "key.asc", ctx)  # type: ignore[arg-type]
    assert (tmp_path / "key.asc").read_bytes() == b"key"
    assert server.seen[-1][0] == "/key.asc"

    with pytest.raises(cc_cvmfs.StepError) as refused:
        cc_cvmfs._download(f"http://site:wr0ngpass@127.0.0.1:{port}/key.asc", tmp_path / "refused.asc", ctx)  # type: ignore[arg-type]
    assert "401" in str(refused.value) and "wr0ngpass" not in str(refused.value), refused.value
    assert f"http://site:***@127.0.0.1:{port}/key.asc" in str(refused.value)

    server.elsewhere = f"http://127.0.0.1:{other.server_address[1]}/key.asc"
    with pytest.raises(cc_cvmfs.StepError):
        cc_cvmfs._download(f"http://site:p%40ss@127.0.0.1:{port}/moved", tmp_path / "moved.asc", ctx)  # type: ignore[arg-type]
    assert other.seen and all(auth is None for _path, auth in other.seen), other.seen  # followed, without the credentials
