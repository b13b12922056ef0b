"""One scaler per farm on a host.

Two `vfarm scale` processes of one farm (a service and an admin's terminal, say) would each count
the same queue and launch for it, up to twice max-vms, and drain what the other one just launched.
So a scaler that may change the farm holds flock(2) on RUN_DIR/scale-FARM.lock for as long as it
runs; the kernel drops the lock when the process ends, however it ends, so there is never a stale
lock to clear by hand. Whether a lock is held, and by which process, is read from /proc/locks:
looking never takes the lock, so it can never make a starting scaler fail. Scalers on other hosts
are not seen.

RUN_DIR: $VFARM_RUN_DIR if set; /run/vfarm for root; for other users a folder of their own that
outlives their session ($XDG_STATE_HOME/vfarm, ~/.local/state/vfarm), and root's is looked at
too: a user's scaler is refused while root's runs the farm. Root, in turn, finds a user's scaler of
the farm by the processes holding flocks (/proc/locks, then each holder's open files): a lock file
of that name anywhere counts. Not with $VFARM_RUN_DIR set: that names the only folder to look in
(tests running side by side use farms of the same names). The folder must be the user's own and
writable by nobody else; the lock file is the user's alone (0600), so no other user can lock it.
A lock file removed while its scaler runs is not seen by the next one: leave RUN_DIR alone.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Optional

SYSTEM_RUN_DIR = Path("/run/vfarm")
PROC_LOCKS = Path("/proc/locks")


class RunLockError(Exception):
    """The farm's lock could not be taken: one line for the user."""


def run_dir() -> Path:
    explicit = os.environ.get("VFARM_RUN_DIR")
    if explicit:
        return Path(explicit)
    if os.geteuid() == 0:
        return SYSTEM_RUN_DIR
    state = os.environ.get("XDG_STATE_HOME") or os.path.join(os.path.expanduser("~"), ".local", "state")
    return Path(state) / "vfarm"


def lock_path(farm: str, folder: Optional[Path] = None) -> Path:
    return (folder or run_dir()) / f"scale-{farm}.lock"


def _own_folder(folder: Path) -> None:
    try:
        folder.mkdir(mode=0o755 if os.geteuid() == 0 else 0o700, parents=True, exist_ok=True)
        st = os.lstat(folder)
    except OSError as err:
        raise RunLockError(f"cannot make {folder} for the farm's lock: {err.strerror}") from err
    if not os.path.isdir(folder) or os.path.islink(folder) or st.st_uid != os.geteuid() or st.st_mode & 0o022:
        raise RunLockError(f"{folder} (for the farm's lock) is not a folder of this user's that only it may write to")


def _flock_holders() -> Optional[dict[tuple[int, int, int], int]]:
    """Every flock(2) held on this host: (device major, minor, inode) -> the pid that took it; None
    when /proc/locks cannot be read."""
    try:
        text = PROC_LOCKS.read_text(encoding="ascii", errors="replace")
    except OSError:
        return None
    held: dict[tuple[int, int, int], int] = {}
    for line in text.splitlines():
        # "1: FLOCK  ADVISORY  WRITE 23184 00:2a:1234 0 EOF"; a waiter's line has "->" before FLOCK
        words = line.split()
        if len(words) < 6 or words[1] != "FLOCK":
            continue
        try:
            major, minor, inode = words[5].split(":")
            held[(int(major, 16), int(minor, 16), int(inode))] = int(words[4])
        except ValueError:
            continue
    return held


def _holder_of(path: Path) -> tuple[bool, Optional[int]]:
    """Whether a process holds a flock on PATH now, and which (None if that cannot be told)."""
    try:
        st = os.stat(path)
    except OSError:
        return False, None  # no lock file: no scaler of this farm ran here
    held = _flock_holders()
    if held is not None:
        pid = held.get((os.major(st.st_dev), os.minor(st.st_dev), st.st_ino))
        return pid is not None, pid
    try:  # no /proc/locks: ask the lock itself (for an instant)
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError:
        return False, None
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except OSError:
        return True, None
    finally:
        os.close(fd)
    return False, None


def _key(st: os.stat_result) -> tuple[int, int, int]:
    return os.major(st.st_dev), os.minor(st.st_dev), st.st_ino


def _held_elsewhere(farm: str, own: Path) -> Optional[tuple[int, str]]:
    """Root only, without $VFARM_RUN_DIR: a process holding a flock on a file named like FARM's
    lock that is not OWN (a user's scaler of the farm), as (pid, its lock file); None if there is
    none. Only a file of that name is looked at further (stat), so a hung mount elsewhere is no wait."""
    if os.geteuid() != 0 or os.environ.get("VFARM_RUN_DIR"):
        return None
    try:
        mine: Optional[tuple[int, int, int]] = _key(os.stat(own))
    except OSError:
        mine = None
    name = lock_path(farm, Path("/")).name
    for key, pid in (_flock_holders() or {}).items():
        if key == mine:
            continue
        fds = f"/proc/{pid}/fd"
        try:
            entries = os.listdir(fds)
        except OSError:
            continue  # ended meanwhile
        for entry in entries:
            try:
                target = os.readlink(f"{fds}/{entry}")
                if os.path.basename(target) == name and _key(os.stat(f"{fds}/{entry}")) == key:
                    return pid, target
            except OSError:
                continue
    return None


def running(farm: str) -> tuple[bool, Optional[int]]:
    """Whether a scaler holds FARM's lock on this host now (this user's, or root's; for root, a
    user's too), and its pid."""
    for folder in dict.fromkeys((run_dir(), SYSTEM_RUN_DIR)):
        held, pid = _holder_of(lock_path(farm, folder))
        if held:
            return True, pid
    elsewhere = _held_elsewhere(farm, lock_path(farm))
    return (True, elsewhere[0]) if elsewhere else (False, None)


def _busy(farm: str, pid: Optional[int], path: Path) -> RunLockError:
    return RunLockError(f"farm {farm}: another vfarm scale runs it on this host{f' (pid {pid})' if pid else ''}: "
                        "two would launch and drain the same workers; stop that one first "
                        f"(--dry-run, --status and --snapshot change nothing and may run beside it; lock: {path})")


@contextlib.contextmanager
def hold(farm: str) -> Iterator[Path]:
    """Hold FARM's lock until the block ends (or the process does); RunLockError if another holds it."""
    folder = run_dir()
    _own_folder(folder)
    path = lock_path(farm, folder)
    for _ in range(10):
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
        except OSError as err:
            raise RunLockError(f"cannot open {path}: {err.strerror}") from err
        try:
            os.fchmod(fd, 0o600)  # one an older vfarm made readable to all
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as err:
            os.close(fd)
            if err.errno not in (errno.EWOULDBLOCK, errno.EAGAIN):
                raise RunLockError(f"cannot lock {path}: {err.strerror}") from err
            raise _busy(farm, _holder_of(path)[1], path) from None
        try:
            same = os.fstat(fd).st_ino == os.stat(path).st_ino
        except OSError:
            same = False
        if same:
            break
        os.close(fd)  # the file was removed (or replaced) between open and lock: lock the one there now
    else:
        raise RunLockError(f"cannot lock {path}: it keeps being removed")
    try:
        # Others are looked for once this lock is held: of two starting at once, neither misses the other.
        if folder != SYSTEM_RUN_DIR:  # root's scaler of the farm counts for everyone
            held, pid = _holder_of(lock_path(farm, SYSTEM_RUN_DIR))
            if held:
                raise _busy(farm, pid, lock_path(farm, SYSTEM_RUN_DIR))
        elsewhere = _held_elsewhere(farm, path)
        if elsewhere:  # a user's scaler of the farm
            raise _busy(farm, elsewhere[0], Path(elsewhere[1]))
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode("ascii"))
        yield path
    finally:
        with contextlib.suppress(OSError):
            os.ftruncate(fd, 0)
        os.close(fd)  # closing the only descriptor releases the lock
