"""`hostcmd.locked`, the one lock of the admin side's caches and state folders: one holder at a
time, a waiter says so once through the progress lines, and the lock never outlives its block."""

from __future__ import annotations

import fcntl
import threading
from pathlib import Path

import pytest

from vfarm.clouds import hostcmd
from vfarm.clouds.hostcmd import locked


def test_a_second_holder_says_it_waits_once_then_waits(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "cache" / ".lock"
    said: list[tuple[str, str]] = []
    asked = threading.Event()  # the waiter found the lock busy
    steps: list[str] = []

    def progress(area: str, message: str) -> None:
        said.append((area, message))
        asked.set()

    monkeypatch.setattr(hostcmd, "progress", progress)

    def waiter() -> None:
        with locked(path, "another one builds: waiting for it", area="test"):
            steps.append("waiter in")

    with locked(path):
        steps.append("holder in")
        second = threading.Thread(target=waiter)
        second.start()
        # Without a lock the waiter is in already and has said nothing: this times out.
        assert asked.wait(timeout=5), "the waiter never found the lock busy"
        steps.append("holder out")
    second.join(timeout=5)
    assert not second.is_alive()
    assert steps == ["holder in", "holder out", "waiter in"]
    assert said == [("test", "another one builds: waiting for it")]


def test_a_free_lock_says_nothing_and_makes_its_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    said: list[str] = []
    monkeypatch.setattr(hostcmd, "progress", lambda area, message: said.append(message))
    path = tmp_path / "a" / "b" / ".lock"
    with locked(path, "waiting"):
        assert path.is_file()
    assert said == []


def test_the_lock_is_freed_when_the_block_fails(tmp_path: Path) -> None:
    path = tmp_path / ".lock"
    with pytest.raises(RuntimeError), locked(path):
        raise RuntimeError("the build broke")
    with open(path) as other:
        fcntl.flock(other, fcntl.LOCK_EX | fcntl.LOCK_NB)  # BlockingIOError if still held
