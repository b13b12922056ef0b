"""The shared caches' records and prune: a prune never comes between a checkout's record and its look."""

from __future__ import annotations

import threading
from pathlib import Path

from vfarm.clouds.shared_cache import MADE, asking, prune


def _made(folder: Path) -> Path:
    folder.mkdir(parents=True)
    (folder / MADE).write_text("", encoding="utf-8")
    return folder


def test_a_prune_waits_while_a_checkout_records_and_looks_then_keeps_its_folder(tmp_path: Path) -> None:
    cache, inputs = tmp_path / "cache", tmp_path / "inputs"
    inputs.write_text("packages\n", encoding="utf-8")
    theirs, stale = _made(cache / ("a" * 16)), _made(cache / ("b" * 16))
    pruned: list[Path] = []
    other = threading.Thread(target=lambda: pruned.extend(prune(cache, [theirs, stale], "c" * 16)))
    with asking(cache, theirs.name, ("checkout A",), {"packages": inputs}):
        other.start()
        other.join(0.5)
        assert other.is_alive(), "the prune ran between the record and the look"
        found = theirs.is_dir()
    other.join(30)
    assert not other.is_alive()
    assert found and theirs.is_dir()
    assert pruned == [stale] and not stale.exists()


def test_a_record_that_no_longer_stands_lets_its_folder_go(tmp_path: Path) -> None:
    cache, inputs = tmp_path / "cache", tmp_path / "inputs"
    inputs.write_text("packages\n", encoding="utf-8")
    old = _made(cache / ("a" * 16))
    with asking(cache, old.name, ("checkout A",), {"packages": inputs}):
        pass
    assert prune(cache, [old], "c" * 16) == []
    inputs.write_text("other packages\n", encoding="utf-8")  # checkout A asks for another folder now
    assert prune(cache, [old], "c" * 16) == [old]
    assert not list((cache / ".users").glob("*.json"))
