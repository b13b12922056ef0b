"""`hostcmd.locked`, the one lock of the admin side's caches and state folders: one holder at a
time, a waiter says so once through the progress lines, and the lock never outlives its block."""

from __future__ import annotations

import fcntl
import threading
import time
from collections.abc import Callable
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


def _in_thread(body: Callable[[], None], seconds: float = 10) -> None:
    """BODY run in a thread of its own: a block that would wait for ever fails the test instead
    of hanging it (the thread is left behind, a daemon)."""
    failed: list[BaseException] = []

    def run() -> None:
        try:
            body()
        except BaseException as err:  # reported below, not lost in the thread
            failed.append(err)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(timeout=seconds)
    assert not thread.is_alive(), "still waiting: the block waited for a lock its own thread holds"
    assert not failed, failed


def _held_by_someone(path: Path) -> bool:
    with open(path) as other:
        try:
            fcntl.flock(other, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        fcntl.flock(other, fcntl.LOCK_UN)
        return False


def test_a_nested_block_on_the_same_file_goes_through_and_the_outer_one_frees_it(tmp_path: Path) -> None:
    """A flock on a second open file waits for the first one, the thread's own: without
    re-entrance a builder that calls another under the same lock waits for ever."""
    path = tmp_path / "cache" / ".lock"
    steps: list[str] = []

    def nested() -> None:
        with locked(path):
            steps.append("outer")
            with locked(tmp_path / "cache" / ".." / "cache" / ".lock"):  # the same file, by another name
                steps.append("inner")
                with locked(path):
                    steps.append("innermost")
            assert _held_by_someone(path), "an inner block freed the outer block's lock"
            steps.append("outer again")
        assert not _held_by_someone(path)

    _in_thread(nested)
    assert steps == ["outer", "inner", "innermost", "outer again"]


def test_another_thread_still_waits_for_a_re_entered_lock(tmp_path: Path) -> None:
    path = tmp_path / ".lock"
    got = threading.Event()

    def other() -> None:
        with locked(path):
            got.set()

    second = threading.Thread(target=other, daemon=True)

    def holder() -> None:
        with locked(path), locked(path):
            second.start()
            assert not got.wait(timeout=0.5), "another thread took the lock while this one held it"

    _in_thread(holder)
    assert got.wait(timeout=5)
    second.join(timeout=5)


def test_a_wait_with_a_timeout_ends_with_lock_timeout(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / ".lock"
    said: list[str] = []
    monkeypatch.setattr(hostcmd, "progress", lambda area, message: said.append(f"{area}: {message}"))
    monkeypatch.setattr(hostcmd, "LOCK_POLL", 0.01)
    with open(path, "w") as holder:  # another process's lock, as flock sees it: another open file
        fcntl.flock(holder, fcntl.LOCK_EX)
        started = time.monotonic()
        with pytest.raises(hostcmd.LockTimeout, match=r"\.lock: another process or thread has held this lock for over 0 s"), \
                locked(path, "busy: waiting", area="test", timeout=0.3):
            pytest.fail("the block ran without the lock")
        assert 0.3 <= time.monotonic() - started < 5
        assert said == ["test: busy: waiting"]
        fcntl.flock(holder, fcntl.LOCK_UN)
    # Freed in time: the block runs.
    ran = []
    with locked(path, timeout=0.3):
        ran.append(True)
    assert ran == [True] and not _held_by_someone(path)


def test_a_wait_with_a_timeout_takes_the_lock_when_it_is_freed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / ".lock"
    monkeypatch.setattr(hostcmd, "LOCK_POLL", 0.01)
    holder = open(path, "w")  # noqa: SIM115 - freed by the timer below
    fcntl.flock(holder, fcntl.LOCK_EX)
    timer = threading.Timer(0.2, holder.close)
    timer.start()
    with locked(path, timeout=30):
        assert _held_by_someone(path)
    timer.join()
