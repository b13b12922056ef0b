"""The builder's in-process caches (issue 8 point 5: builds per second for many instances).

Without them every build re-walked and re-minified every bundled module (2.4 embed builds/s);
these tests fail if a second build redoes that work, or if a changed file is not seen.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from vfarm.config import loader as configuration
from vfarm.mime_builder import bundle, checkpart, mime

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def fresh() -> Iterator[None]:
    bundle._LIBRARIES.clear()
    bundle._HANDLER_NAMES.clear()
    checkpart.cloud_config.cache_clear()
    yield
    bundle._LIBRARIES.clear()


@pytest.fixture
def walks(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, ...]]:
    calls: list[tuple[str, ...]] = []
    real = bundle.collect

    def counting(entries: Any, *args: Any, **kwargs: Any) -> Any:
        calls.append(tuple(entries))
        return real(entries, *args, **kwargs)

    monkeypatch.setattr(bundle, "collect", counting)
    return calls


def torino(quota: int) -> configuration.Config:
    text = (REPO / "examples/torino.yaml").read_text().replace("quota-limit: 18000", f"quota-limit: {quota}")
    return configuration.load_text(text, f"w{quota}.yaml")


def test_second_build_reuses_the_bundles(fresh: None, walks: list[tuple[str, ...]]) -> None:
    first = mime.build(torino(1000), handlers="embed", gzip="always", max_size=1 << 20)
    count = len(walks)
    assert count >= 1  # the handlers' library, which carries the check too
    second = mime.build(torino(2000), handlers="embed", gzip="always", max_size=1 << 20)
    assert len(walks) == count, "the second build walked the modules again"
    assert first.parts[0] == second.parts[0]  # the same library part
    assert first.data != second.data  # per-instance content still differs


def test_cached_equals_fresh(fresh: None) -> None:
    config = torino(18000)
    cached = [mime.build(config, handlers=h, gzip="always", max_size=1 << 20).data for h in ("embed", "include=https://h.example/x")]
    bundle._LIBRARIES.clear()
    checkpart.cloud_config.cache_clear()
    fresh_ = [mime.build(config, handlers=h, gzip="always", max_size=1 << 20).data for h in ("embed", "include=https://h.example/x")]
    assert cached == fresh_


def test_a_changed_file_is_bundled_again(fresh: None, walks: list[tuple[str, ...]]) -> None:
    bundle.bundle_library(["localfs"])
    assert len(walks) == 1
    # What a changed source file looks like to the cache: a fingerprint that no longer matches.
    key = next(iter(bundle._LIBRARIES))
    stamps, lib = bundle._LIBRARIES[key]
    path, *stat = stamps[0]
    bundle._LIBRARIES[key] = (((path, *[s - 1 for s in stat]), *stamps[1:]), lib)
    bundle.bundle_library(["localfs"])
    assert len(walks) == 2
    bundle.bundle_library(["localfs"])
    assert len(walks) == 2


def test_fingerprint_sees_edits_and_new_files(tmp_path: Path) -> None:
    source = tmp_path / "mod.py"
    source.write_text("x = 1\n")
    before = bundle._fingerprint([str(tmp_path), str(source)])
    source.write_text("x = 22\n")
    assert bundle._fingerprint([str(source)]) != before[1:]
    (tmp_path / "new.py").write_text("")
    assert bundle._fingerprint([str(tmp_path)])[0] != before[0]


def test_other_roots_are_never_cached(fresh: None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    package = tmp_path / "src" / "cachefake"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "entry.py").write_text("VALUE = 1\n")
    monkeypatch.syspath_prepend(str(tmp_path / "src"))
    one = bundle.library(["entry"], root="cachefake")
    (package / "entry.py").write_text("VALUE = 2\n")
    two = bundle.library(["entry"], root="cachefake")
    assert one.source != two.source
    assert not bundle._LIBRARIES


def test_check_guard_and_handler_listing_run_once(fresh: None, monkeypatch: pytest.MonkeyPatch) -> None:
    import pkgutil

    import yaml

    parses: list[int] = []
    real_load = yaml.safe_load
    def load(text: str) -> Any:
        parses.append(1)
        return real_load(text)

    monkeypatch.setattr(checkpart.yaml, "safe_load", load)
    listings: list[int] = []
    real_iter = pkgutil.iter_modules
    def iter_modules(*args: Any, **kwargs: Any) -> Any:
        listings.append(1)
        return real_iter(*args, **kwargs)

    monkeypatch.setattr(bundle.pkgutil, "iter_modules", iter_modules)
    for quota in (1, 2, 3):
        mime.build(torino(quota), handlers="include=https://h.example/x", gzip="always")
    assert len(parses) == 0  # include fetches the check: its part carries no script to guard
    for _ in range(3):
        checkpart.check_parts(None, "include=https://h.example/x")  # the part that carries the script
    assert len(parses) == 1
    assert len(listings) == 1


# --- the disk cache: what a fresh `vfarm build` process finds ------------------------------------


@pytest.fixture
def disk(fresh: None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    folder = tmp_path / "bundles"
    monkeypatch.setenv("VFARM_BUNDLE_CACHE", str(folder))
    return folder


def test_a_new_process_takes_the_bundle_from_disk(disk: Path, walks: list[tuple[str, ...]]) -> None:
    first = bundle.bundle_library(["localfs"])
    assert len(walks) == 1 and len(list(disk.glob("*.json"))) == 1
    assert disk.stat().st_mode & 0o777 == 0o700
    bundle._LIBRARIES.clear()  # what a new process starts with
    assert bundle.bundle_library(["localfs"]) == first
    assert len(walks) == 1, "the bundle was made again although the disk held it"


def test_a_changed_source_file_is_not_taken_from_disk(disk: Path, walks: list[tuple[str, ...]]) -> None:
    bundle.bundle_library(["localfs"])
    cached = next(disk.glob("*.json"))
    data = json.loads(cached.read_text())
    data["depends"][0][1] -= 1  # the first file's mtime: as if it had been edited since
    data["source"] = "tampered = True\n"
    cached.write_text(json.dumps(data))
    bundle._LIBRARIES.clear()
    made = bundle.bundle_library(["localfs"])
    assert len(walks) == 2 and "tampered" not in made.source
    assert "tampered" not in cached.read_text(), "the stale entry was rewritten"


@pytest.mark.parametrize("damage", ["not json", "mode"])
def test_an_unreadable_or_shared_cache_file_is_ignored(disk: Path, walks: list[tuple[str, ...]], damage: str) -> None:
    bundle.bundle_library(["localfs"])
    cached = next(disk.glob("*.json"))
    if damage == "not json":
        cached.write_text("{")
    else:
        cached.chmod(0o666)  # anyone could have written the code that would ship as user-data
    bundle._LIBRARIES.clear()
    bundle.bundle_library(["localfs"])
    assert len(walks) == 2


def test_disk_cache_off_when_empty(fresh: None, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("VFARM_BUNDLE_CACHE", "")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    bundle.bundle_library(["localfs"])
    assert bundle.disk_cache_dir() is None and not list(tmp_path.rglob("*.json"))
