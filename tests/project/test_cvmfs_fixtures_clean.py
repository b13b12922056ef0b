"""Two checkouts on one machine share the caches of the CernVM-FS build (tests/fixtures/cvmfs_build.py)
and of the test repository (tests/fixtures/cvmfs_repo.py): a set-up removes only what is provably
stale (vfarm.clouds.shared_cache), never a folder another checkout asks for. Another checkout is
a copy of the fixture's file elsewhere with another recipe; cmake, make, packaging, mmdebstrap and
cvmfs_server are stand-ins: nothing is really built."""

from __future__ import annotations

import hashlib
import io
import json
import tarfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from tests.fixtures import cvmfs_build, cvmfs_repo
from vfarm.clouds import shared_cache


def folders(cache: Path) -> set[str]:
    return {p.name for p in cache.iterdir() if p.is_dir() and not p.name.startswith(".")}


def checkout(tmp_path: Path, name: str, module: str) -> Path:
    """Another checkout's copy of the fixture MODULE (its path tells the checkouts apart)."""
    copy = tmp_path / name / "tests" / "fixtures" / Path(module).name
    copy.parent.mkdir(parents=True, exist_ok=True)
    copy.write_bytes(Path(module).read_bytes())
    return copy


def unreadable_record(cache: Path) -> None:
    (cache / shared_cache.USERS / "0000000000000000.json").write_text("{half a rec")


# --- the build of the packages -----------------------------------------------------------------


@pytest.fixture
def builds(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """cvmfs_build's cache in TMP_PATH, its source a tiny tarball, the build and packaging stand-ins."""
    shared = tmp_path / "shared"
    source = shared / "cvmfs" / cvmfs_build.SOURCE_NAME
    source.parent.mkdir(parents=True)
    with tarfile.open(source, "w:xz") as archive:
        info = tarfile.TarInfo("CMakeLists.txt")
        info.size = 4
        archive.addfile(info, io.BytesIO(b"fake"))
    (source.parent / "SHA256SUMS").write_text(f"{hashlib.sha256(source.read_bytes()).hexdigest()}  {source.name}\n")
    monkeypatch.setenv("VFARM_SHARED", str(shared))
    monkeypatch.setattr(cvmfs_build, "CACHE", tmp_path / "cache" / "cvmfs")
    monkeypatch.setattr(cvmfs_build, "WORK_BASE", tmp_path / "work")
    monkeypatch.setattr(cvmfs_build.os, "geteuid", lambda: 0)
    monkeypatch.setattr(cvmfs_build, "log", lambda message: None)
    monkeypatch.setattr(cvmfs_build, "_configure_and_make", lambda src, work, variant: {"configure": 0.0, "make": 0.0})

    def package(src: Path, work: Path, out: Path) -> dict[str, str]:
        out.mkdir(parents=True)
        (out / "Packages").write_text("Package: cvmfs\nVersion: 2.12.0~1+debian12\n")
        return {"cvmfs": "2.12.0~1+debian12"}

    monkeypatch.setattr(cvmfs_build, "_package", package)
    return tmp_path / "cache" / "cvmfs"


def build_as(module: Path, recipe: str, monkeypatch: pytest.MonkeyPatch, variant: str = "debian") -> Path:
    """cvmfs_build.ensure_built as the checkout whose fixture is MODULE, at RECIPE, runs it."""
    with monkeypatch.context() as patch:
        patch.setattr(cvmfs_build, "__file__", str(module))
        patch.setattr(cvmfs_build, "RECIPE_VERSION", recipe)
        return cvmfs_build.ensure_built(variant)


def test_a_build_keeps_the_build_another_checkout_uses(tmp_path: Path, builds: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    other = checkout(tmp_path, "other", cvmfs_build.__file__)
    theirs = build_as(other, "v0-other", monkeypatch)
    legacy = builds / "debian-0123456789abcdef-01234567"  # made before records: nothing proves it stale
    (legacy / "apt").mkdir(parents=True)
    other.write_bytes(other.read_bytes() + b"# edited there, its recipe as it was: it still asks for its build\n")
    ours = cvmfs_build.ensure_built()
    bundled = cvmfs_build.ensure_built("bundled")  # our other variant: our other record
    assert len({theirs, ours, bundled}) == 3
    # Another checkout's build, maybe installed in its images right now, stays (before: removed).
    assert folders(builds) == {theirs.name, ours.name, bundled.name, legacy.name}
    assert build_as(other, "v0-other", monkeypatch) == theirs  # still there: not rebuilt


def test_a_stale_build_of_ours_goes(tmp_path: Path, builds: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    other = checkout(tmp_path, "other", cvmfs_build.__file__)
    theirs = build_as(other, "v0-other", monkeypatch)
    old = cvmfs_build.ensure_built()
    (builds / "debian-fedcba9876543210-76543210.partial" / "apt").mkdir(parents=True)  # a killed set-up's
    ours = build_as(Path(cvmfs_build.__file__), "v2", monkeypatch)  # our recipe changed: another build
    assert old != ours
    assert folders(builds) == {theirs.name, ours.name}
    records = [json.loads(p.read_text()) for p in (builds / shared_cache.USERS).glob("*.json")]
    assert sorted(r["key"] for r in records) == sorted([theirs.name, ours.name])

    other.unlink()  # that checkout was deleted: its build is stale too
    assert cvmfs_build.ensure_built() == old  # our recipe back as it was: built again
    assert folders(builds) == {old.name}


def test_an_unreadable_record_keeps_every_build(tmp_path: Path, builds: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    other = checkout(tmp_path, "other", cvmfs_build.__file__)
    theirs = build_as(other, "v0-other", monkeypatch)
    old = cvmfs_build.ensure_built()
    unreadable_record(builds)
    other.unlink()  # stale, but a record nobody can read might name it
    ours = build_as(Path(cvmfs_build.__file__), "v2", monkeypatch)
    assert folders(builds) == {theirs.name, old.name, ours.name}


# --- the published test repository -------------------------------------------------------------


@pytest.fixture
def repos(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """cvmfs_repo's cache in TMP_PATH, a built package folder, mmdebstrap and publishing stand-ins."""
    build = tmp_path / "cache" / "cvmfs" / "debian-0123456789abcdef-01234567"
    (build / "apt").mkdir(parents=True)
    (build / "build.json").write_text("{}\n")
    monkeypatch.setattr(cvmfs_build, "cached", lambda variant="debian": build)
    monkeypatch.setattr(cvmfs_build, "ensure_built", lambda variant="debian": build)
    monkeypatch.setattr(cvmfs_repo, "CACHE", tmp_path / "cache" / "cvmfs-repo")
    monkeypatch.setattr(cvmfs_repo.os, "geteuid", lambda: 0)

    def rootfs(target: Path, apt: Path) -> None:
        (target / "usr/bin").mkdir(parents=True)
        (target / "usr/bin/cvmfs2").write_text("")

    def publish(rootfs: Path, out: Path) -> dict[str, object]:
        whitelist = out / "srv/cvmfs" / cvmfs_repo.REPOSITORY / ".cvmfswhitelist"
        whitelist.parent.mkdir(parents=True)
        whitelist.write_bytes(b"20231114221320\nE29991231000000\n")
        (out / "manifest.json").write_text("{}\n")
        return {}

    monkeypatch.setattr(cvmfs_repo, "_build_rootfs", rootfs)
    monkeypatch.setattr(cvmfs_repo, "_publish", publish)
    return tmp_path / "cache" / "cvmfs-repo"


@contextmanager
def recipe(module: Path, version: str, script: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    with monkeypatch.context() as patch:
        patch.setattr(cvmfs_repo, "__file__", str(module))
        patch.setattr(cvmfs_repo, "RECIPE_VERSION", version)
        patch.setattr(cvmfs_repo, "PUBLISH_SCRIPT", script)
        yield


def publish_as(module: Path, version: str, script: str, monkeypatch: pytest.MonkeyPatch) -> cvmfs_repo.Published:
    """cvmfs_repo.ensure_published as the checkout whose fixture is MODULE, at recipe VERSION and
    publishing SCRIPT, runs it."""
    with recipe(module, version, script, monkeypatch):
        return cvmfs_repo.ensure_published()


def kept(cache: Path) -> set[str]:
    """Every KEY folder and published repository in CACHE, as KEY or KEY/published-NAME."""
    return folders(cache) | {f"{key}/{p.name}" for key in folders(cache) for p in (cache / key).glob("published-*")}


def name(published: cvmfs_repo.Published) -> str:
    return f"{published.root.parent.name}/{published.root.name}"


def test_a_set_up_keeps_the_repositories_another_checkout_uses(tmp_path: Path, repos: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    ours_module = Path(cvmfs_repo.__file__)
    other = checkout(tmp_path, "other", cvmfs_repo.__file__)
    third = checkout(tmp_path, "third", cvmfs_repo.__file__)
    theirs = publish_as(other, "v0-other", cvmfs_repo.PUBLISH_SCRIPT, monkeypatch)  # another root folder
    beside = publish_as(third, cvmfs_repo.RECIPE_VERSION, "# another script\n", monkeypatch)  # our root folder, its own repository
    legacy = repos / "0123456789abcdef"  # made before records: nothing proves it stale
    (legacy / "rootfs").mkdir(parents=True)
    ours = publish_as(ours_module, cvmfs_repo.RECIPE_VERSION, cvmfs_repo.PUBLISH_SCRIPT, monkeypatch)
    assert ours.rootfs == beside.rootfs and ours.root != beside.root and theirs.rootfs != ours.rootfs
    # Both other checkouts' repositories, maybe served to their tests right now, stay (before: removed).
    assert kept(repos) == {theirs.root.parent.name, ours.rootfs.parent.name, legacy.name, name(theirs), name(ours), name(beside)}
    assert (beside.srv / "cvmfs" / cvmfs_repo.REPOSITORY / ".cvmfswhitelist").is_file()
    with recipe(third, cvmfs_repo.RECIPE_VERSION, "# another script\n", monkeypatch):
        assert cvmfs_repo.cached() == beside


def test_a_stale_repository_of_ours_goes(tmp_path: Path, repos: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    ours_module = Path(cvmfs_repo.__file__)
    other = checkout(tmp_path, "other", cvmfs_repo.__file__)
    theirs = publish_as(other, "v0-other", cvmfs_repo.PUBLISH_SCRIPT, monkeypatch)
    first = publish_as(ours_module, "v1", "# first script\n", monkeypatch)
    second = publish_as(ours_module, "v1", "# second script\n", monkeypatch)  # our publishing changed
    assert second.rootfs == first.rootfs and kept(repos) == {theirs.root.parent.name, first.rootfs.parent.name, name(theirs), name(second)}
    third = publish_as(ours_module, "v2", "# second script\n", monkeypatch)  # our root folder's recipe changed
    assert kept(repos) == {theirs.root.parent.name, third.rootfs.parent.name, name(theirs), name(third)}

    other.unlink()  # that checkout was deleted: its repository is stale too
    publish_as(ours_module, "v3", "# second script\n", monkeypatch)
    assert theirs.root.parent.name not in folders(repos)


def test_an_unreadable_record_keeps_every_repository(tmp_path: Path, repos: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    ours_module = Path(cvmfs_repo.__file__)
    other = checkout(tmp_path, "other", cvmfs_repo.__file__)
    theirs = publish_as(other, "v0-other", cvmfs_repo.PUBLISH_SCRIPT, monkeypatch)
    first = publish_as(ours_module, "v1", "# first script\n", monkeypatch)
    unreadable_record(repos)
    other.unlink()  # stale, but a record nobody can read might name it
    second = publish_as(ours_module, "v2", "# second script\n", monkeypatch)
    assert kept(repos) == {theirs.root.parent.name, first.rootfs.parent.name, second.rootfs.parent.name,
                           name(theirs), name(first), name(second)}
