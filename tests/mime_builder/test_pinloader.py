"""The pin loader's `install` entries (the final check): written only when verified, never half;
and its fetches from a real loopback server that asks for basic authentication."""

from __future__ import annotations

import base64
import hashlib
import http.server
import json
import logging
import subprocess
import sys
from pathlib import Path
from typing import Any, Optional

import pytest

from tests.cc_modules.test_check import failing_root, fake_shutdown, finish_and_see_it_halt
from vfarm.clouds.loopback import LoopbackServer
from vfarm.config import loader as configuration
from vfarm.mime_builder import bundle, mime, pinloader

CHECK = "/var/lib/vfarm/vfarm-check.py"


def entry(content: bytes) -> dict[str, object]:
    return {"name": "final-check", "url": "https://h.example.org/vfarm/vfarm-check.py", "sha256": hashlib.sha256(content).hexdigest(),
            "types": [], "frequency": "once-per-instance", "install": CHECK}


@pytest.fixture
def served(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> dict[str, bytes]:
    files: dict[str, bytes] = {}
    monkeypatch.setattr(pinloader, "fetch", lambda url: files[url])
    monkeypatch.setenv("VFARM_ROOT", str(tmp_path / "root"))
    monkeypatch.setenv("VFARM_LOG_DIR", str(tmp_path / "log"))
    return files


def test_a_verified_file_is_written_to_its_place(served: dict[str, bytes], tmp_path: Path) -> None:
    served["https://h.example.org/vfarm/vfarm-check.py"] = b"#part-handler\nprint('check')\n"
    pinloader.install(entry(b"#part-handler\nprint('check')\n"))
    script = tmp_path / "root" / CHECK.lstrip("/")
    assert script.read_bytes() == b"#part-handler\nprint('check')\n" and script.stat().st_mode & 0o777 == 0o700
    assert not (tmp_path / "log").exists()  # no failure recorded


def test_a_changed_file_is_not_written_and_recorded(served: dict[str, bytes], tmp_path: Path) -> None:
    served["https://h.example.org/vfarm/vfarm-check.py"] = b"changed on the server\n"
    pinloader.install(entry(b"the one built\n"))
    assert not (tmp_path / "root" / CHECK.lstrip("/")).exists()
    record = json.loads((tmp_path / "log/final-check.status.json").read_text())
    assert record["status"] == "failed" and "has sha256" in record["reason"]


def test_an_unwritable_place_is_recorded_and_leaves_no_temporary_file(served: dict[str, bytes], tmp_path: Path) -> None:
    served["https://h.example.org/vfarm/vfarm-check.py"] = b"check\n"
    folder = tmp_path / "root" / Path(CHECK).parent.relative_to("/")
    folder.mkdir(parents=True)
    (folder / Path(CHECK).name).mkdir()  # a folder where the file goes: os.replace fails
    pinloader.install(entry(b"check\n"))
    record = json.loads((tmp_path / "log/final-check.status.json").read_text())
    assert record["status"] == "failed" and record["reason"].startswith(f"cannot write {folder / Path(CHECK).name}")
    assert [p.name for p in folder.iterdir()] == [Path(CHECK).name]


# --- fetching from a real loopback server that asks for basic authentication ---------------------


class _AuthHandler(http.server.SimpleHTTPRequestHandler):
    """Serves the server's folder to a request with its Authorization (when it asks for one);
    `/moved/NAME` answers with a redirect to the server's `redirect` base."""

    server: AuthServer

    def send_head(self) -> Any:
        self.server.seen.append((self.path, self.headers.get("Authorization")))
        if self.server.authorization is not None and self.headers.get("Authorization") != self.server.authorization:
            self.send_response(401)
            self.send_header("WWW-Authenticate", 'Basic realm="vfarm"')
            self.send_header("Content-Length", "0")
            self.end_headers()
            return None
        if self.path.startswith("/moved/"):
            self.send_response(302)
            self.send_header("Location", self.server.redirect + self.path[len("/moved") :])
            self.send_header("Content-Length", "0")
            self.end_headers()
            return None
        return super().send_head()

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the base class's name
        pass


class AuthServer(LoopbackServer):
    """A LoopbackServer of ROOT that asks for AUTHORIZATION (an Authorization header value; None:
    asks for none) and redirects `/moved/NAME` to REDIRECT/NAME; `seen` holds (path, Authorization)
    of every request."""

    def __init__(self, root: Path, authorization: Optional[str] = None, redirect: str = ""):
        self.authorization, self.redirect = authorization, redirect
        self.seen: list[tuple[str, Optional[str]]] = []
        super().__init__(root)

    def finish_request(self, request: Any, client_address: Any) -> None:
        _AuthHandler(request, client_address, self, directory=str(self.root))


def basic(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode("ascii")


@pytest.fixture(scope="module")
def torino() -> configuration.Config:
    return configuration.load_file(Path(__file__).resolve().parents[2] / "examples/torino.yaml")


@pytest.fixture
def hosted(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """`vfarm handlers` output in a folder (served at /vfarm), the loader's places under tmp_path."""
    folder = tmp_path / "www/vfarm"
    folder.mkdir(parents=True)
    for filename, source in bundle.hosted_files().items():
        (folder / filename).write_text(source)
    monkeypatch.setenv("VFARM_ROOT", str(tmp_path / "root"))
    monkeypatch.setenv("VFARM_LOG_DIR", str(tmp_path / "log"))
    monkeypatch.setenv("VFARM_PIN_RETRY_DELAY", "0")
    return folder


def run_loader(built: mime.Built) -> dict[str, Any]:
    """The loader part of BUILT, run as cloud-init registers it (`__begin__`): its namespace."""
    loader = next(p for p in built.parts if p.filename == "vfarm-pin-loader.py")
    namespace: dict[str, Any] = {"__name__": "vfarm_pin_loader_under_test"}
    exec(compile(loader.payload.decode("utf-8"), "vfarm-pin-loader.py", "exec"), namespace)  # noqa: S102 - our own loader
    namespace["handle_part"](None, "__begin__", None, None, "once-per-instance")
    return namespace


# As written in the URL, as sent: `#`, `?` and `@` as they are, a `/` escaped.
@pytest.mark.parametrize("written, password", [("s3cret", "s3cret"), ("Qx7#Zk9@Wm2", "Qx7#Zk9@Wm2"), ("a?b%2Fc", "a?b/c")])
def test_a_pinned_build_fetches_with_the_credentials_of_its_url(hosted: Path, tmp_path: Path, torino: configuration.Config,
                                                                 caplog: pytest.LogCaptureFixture, written: str, password: str) -> None:
    with AuthServer(hosted.parent, basic("admin", password)) as server:
        built = mime.build(torino, handlers=f"include=http://admin:{written}@127.0.0.1:{server.port}/vfarm", pin=True, max_size=1 << 20)
        caplog.set_level(logging.INFO, logger="vfarm.pin")
        loader = run_loader(built)
    assert not (tmp_path / "log").exists(), [p.read_text() for p in (tmp_path / "log").iterdir()]  # no failure recorded
    assert sorted(loader["_by_type"]) == sorted(t for name in ("localfs", "cvmfs") for t in bundle.handler_types(name))
    assert (tmp_path / "root" / CHECK.lstrip("/")).read_bytes() == (hosted / bundle.CHECK_FILENAME).read_bytes()
    assert {auth for _, auth in server.seen} == {basic("admin", password)}
    assert f"localfs from http://***@127.0.0.1:{server.port}/vfarm/localfs_handler.py verified" in caplog.text


def test_a_refused_password_is_recorded_and_shown_nowhere(hosted: Path, tmp_path: Path, torino: configuration.Config,
                                                          caplog: pytest.LogCaptureFixture) -> None:
    with AuthServer(hosted.parent, basic("admin", "right")) as server:
        built = mime.build(torino, handlers=f"include=http://admin:Wr0ngPw@127.0.0.1:{server.port}/vfarm", pin=True, max_size=1 << 20)
        caplog.set_level(logging.DEBUG, logger="vfarm.pin")
        run_loader(built)
    assert len(server.seen) == 3 and {auth for _, auth in server.seen} == {basic("admin", "Wr0ngPw")}  # a 401 is not retried
    for name, filename in (("localfs", "localfs_handler.py"), ("cvmfs", "cvmfs_handler.py"), ("final-check", bundle.CHECK_FILENAME)):
        text = (tmp_path / f"log/{name}.status.json").read_text()
        assert json.loads(text)["reason"] == f"pinned handler not fetched from http://***@127.0.0.1:{server.port}/vfarm/{filename}: HTTPError 401"
        assert "Wr0ngPw" not in text
    assert "Wr0ngPw" not in caplog.text and "HTTPError 401" in caplog.text
    assert not (tmp_path / "root" / CHECK.lstrip("/")).exists()


def test_the_credentials_never_go_to_a_redirects_host(hosted: Path) -> None:
    with AuthServer(hosted.parent) as elsewhere, AuthServer(hosted.parent, basic("admin", "s3cret"), redirect=f"{elsewhere.url}/vfarm") as server:
        content = pinloader.fetch(f"http://admin:s3cret@127.0.0.1:{server.port}/moved/{bundle.CHECK_FILENAME}")
    assert content == (hosted / bundle.CHECK_FILENAME).read_bytes()
    assert server.seen == [(f"/moved/{bundle.CHECK_FILENAME}", basic("admin", "s3cret"))]
    assert elsewhere.seen == [(f"/vfarm/{bundle.CHECK_FILENAME}", None)]


# --- later boots: the loader starts the check the first boot wrote ------------------------------

LATER_BOOT = """
import json, sys
from vfarm.mime_builder import pinloader
pinloader.PINNED[:] = [json.loads(sys.argv[1])]
pinloader.handle_part(None, "__begin__", None, None, "always", {})
"""


@pytest.mark.integration
def test_on_a_later_boot_the_loader_starts_the_check_it_wrote(tmp_path: Path) -> None:
    """cloud-init calls the loader with frequency always on later boots, where power_state's
    condition does not run: the written check (still the pinned one) is started detached and, once
    cloud-init has finished, judges the boot (here a failed one: it halts, as its settings say)."""
    check = bundle.bundle_check().encode()
    root = failing_root(tmp_path)
    script = root / CHECK.lstrip("/")
    script.parent.mkdir(parents=True)
    script.write_bytes(check)
    env, calls = fake_shutdown(tmp_path)
    pinned = dict(entry(check), frequency="always")
    done = subprocess.run([sys.executable, "-c", LATER_BOOT, json.dumps(pinned)], env=dict(env, VFARM_ROOT=str(root)),
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert not calls.exists() and not (root / "var/log/vfarm/summary.json").exists(), "the check waits for cloud-init's end"
    finish_and_see_it_halt(root, calls)
    assert script.read_bytes() == check, "nothing fetched or written at a later boot"


@pytest.mark.integration
def test_on_a_later_boot_a_changed_check_is_recorded_and_powers_off(tmp_path: Path) -> None:
    check = bundle.bundle_check().encode()
    script = tmp_path / "root" / CHECK.lstrip("/")
    script.parent.mkdir(parents=True)
    script.write_bytes(check + b"# changed\n")
    env, calls = fake_shutdown(tmp_path)
    done = subprocess.run([sys.executable, "-c", LATER_BOOT, json.dumps(dict(entry(check), frequency="always"))],
                          env=dict(env, VFARM_ROOT=str(tmp_path / "root"), VFARM_LOG_DIR=str(tmp_path / "log")),
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    record = json.loads((tmp_path / "log/final-check.status.json").read_text())
    assert record["status"] == "failed" and "is not the pinned check" in record["reason"], record
    assert [json.loads(line) for line in calls.read_text().splitlines()] == [pinloader.POWEROFF[1:]]


def test_on_a_later_boot_a_part_of_a_once_per_instance_handler_is_no_error(monkeypatch: pytest.MonkeyPatch,
                                                                           caplog: pytest.LogCaptureFixture) -> None:
    """cloud-init calls no once-per-instance handler on later boots: nor does the loader, silently."""
    handler = {"name": "localfs", "url": "https://h.example.org/vfarm/localfs_handler.py", "sha256": "0" * 64,
               "types": ["text/localfs-config"], "frequency": "once-per-instance"}
    monkeypatch.setattr(pinloader, "PINNED", [handler])
    with caplog.at_level(logging.WARNING, logger="vfarm.pin"):
        pinloader.handle_part(None, "text/localfs-config", "localfs-config.ccfg", "parts: {}", "always", {})
        assert caplog.records == []
        pinloader.handle_part(None, "text/localfs-config", "localfs-config.ccfg", "parts: {}", "once-per-instance", {})
    assert [r.levelname for r in caplog.records] == ["ERROR"]  # the first boot: its handler did not load
