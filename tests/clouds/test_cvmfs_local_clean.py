"""Two checkouts on one machine share the cache of the CERN-shaped CernVM-FS repository, each
with its own KEY folder (their cvmfs_local.py differ, or their packages): a build removes only
its own work folder and what is provably stale, never the folder another checkout asks for. The
packages and dpkg-scanpackages are stand-ins: nothing is really built."""

from __future__ import annotations

import json
import os
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from vfarm.clouds import cvmfs_local

MODULE = Path(cvmfs_local.__file__)


@pytest.fixture
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("VFARM_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(cvmfs_local, "progress", lambda area, message: None)

    def scan(argv: list[str], **kwargs: Any) -> SimpleNamespace:
        return SimpleNamespace(stdout=f"Package: cvmfs\nFilename: {sorted(Path(kwargs['cwd']).rglob('*.deb'))[0].name}\n")

    monkeypatch.setattr(cvmfs_local, "run", scan)
    return tmp_path / "cache" / "cvmfs-local"


def packages(folder: Path, version: str) -> Path:
    folder.mkdir(parents=True)
    (folder / "Packages").write_text(f"Package: cvmfs\nVersion: {version}\n")
    (folder / f"cvmfs_{version}_amd64.deb").write_bytes(b"not really a package " + version.encode())
    return folder


def checkout(tmp_path: Path, name: str) -> Path:
    """Another checkout's cvmfs_local.py (another version of it: another KEY)."""
    module = tmp_path / name / "clouds" / "cvmfs_local.py"
    module.parent.mkdir(parents=True)
    module.write_bytes(MODULE.read_bytes() + f"# {name}\n".encode())
    return module


def build_as(module: Path, apt: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """cvmfs_local.build(APT) as the checkout whose module is MODULE runs it."""
    with monkeypatch.context() as patch:
        patch.setattr(cvmfs_local, "__file__", str(module))
        return cvmfs_local.build(apt)


def folders(cache: Path) -> set[str]:
    return {p.name for p in cache.iterdir() if p.is_dir() and not p.name.startswith(".")}


def test_a_build_keeps_the_folder_another_checkout_uses(tmp_path: Path, cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    other, apt_other = checkout(tmp_path, "other"), packages(tmp_path / "apt-other", "2.12.0~1+debian12")
    theirs = build_as(other, apt_other, monkeypatch)
    legacy = cache / "0123456789abcdef"  # made before records existed: nothing proves it stale
    (legacy / "dists").mkdir(parents=True)

    apt = packages(tmp_path / "apt-1", "2.12.0~1+debian12")
    ours = cvmfs_local.build(apt)
    assert ours != theirs and ours.name == cvmfs_local.key(apt)
    # Another checkout's repository, maybe served to its guests right now, stays (before: removed).
    assert folders(cache) == {ours.name, theirs.name, legacy.name}
    assert (theirs / "dists/bookworm-prod/Release").is_file()
    assert build_as(other, apt_other, monkeypatch) == theirs  # still there: not rebuilt

    # That checkout moves on (a pull changed its module): it now asks for another KEY, and its
    # old folder is stale. Our packages are rebuilt (a new folder); the old ones are gone.
    other.write_bytes(other.read_bytes() + b"# pulled\n")
    old_ours = ours
    for file in apt.iterdir():
        file.unlink()
    apt.rmdir()
    ours = cvmfs_local.build(packages(tmp_path / "apt-2", "2.13.0~1+debian12"))
    assert folders(cache) == {ours.name, legacy.name}, f"kept: {folders(cache)} (ours was {old_ours.name}, theirs {theirs.name})"
    records = [json.loads(p.read_text()) for p in (cache / cvmfs_local.USERS).glob("*.json")]
    assert [r["key"] for r in records] == [ours.name]  # the stale records went with their folders


def test_a_checkout_that_went_gives_its_folder_up(tmp_path: Path, cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    other = checkout(tmp_path, "other")
    theirs = build_as(other, packages(tmp_path / "apt-other", "2.12.0~1+debian12"), monkeypatch)
    other.unlink()  # that checkout was deleted
    ours = cvmfs_local.build(packages(tmp_path / "apt", "2.12.0~1+debian12"))
    assert folders(cache) == {ours.name} and theirs != ours


def test_an_unreadable_record_keeps_every_folder(tmp_path: Path, cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    other = checkout(tmp_path, "other")
    theirs = build_as(other, packages(tmp_path / "apt-other", "2.12.0~1+debian12"), monkeypatch)
    (cache / cvmfs_local.USERS / "0000000000000000.json").write_text("{half a rec")
    other.unlink()  # stale, but a record nobody can read might name it
    ours = cvmfs_local.build(packages(tmp_path / "apt", "2.12.0~1+debian12"))
    assert folders(cache) == {ours.name, theirs.name}


def test_only_the_work_folders_of_gone_builds_are_removed(tmp_path: Path, cache: Path) -> None:
    gone = int(Path("/proc/sys/kernel/pid_max").read_text())  # pids stay below it: no such process
    live = os.getppid()
    for pid in (gone, live):
        (cache / f".build-{pid}" / "repo").mkdir(parents=True)
    ours = cvmfs_local.build(packages(tmp_path / "apt", "2.12.0~1+debian12"))
    # A killed build's leftovers go; a live process's folder is not this build's to judge.
    assert sorted(p.name for p in cache.iterdir()) == [f".build-{live}", ".lock", ".users", ours.name]
