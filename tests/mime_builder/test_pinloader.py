"""The pin loader's `install` entries (the final check): written only when verified, never half."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from vfarm.mime_builder import pinloader

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
