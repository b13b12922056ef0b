"""One scaler per farm on a host.

Two `vfarm scale` processes of one farm (a service and an admin's terminal, say) would each count
the same queue and launch for it, up to twice max-vms, and drain what the other one just launched.
So a scaler that may change the farm holds flock(2) on RUN_DIR/scale-FARM.lock for as long as it
runs; the kernel drops the lock when the process ends, however it ends, so there is never a stale
lock to clear by hand. The file says which process holds it. Scalers on other hosts are not seen.

RUN_DIR: $VFARM_RUN_DIR if set; /run/vfarm for root; else $XDG_RUNTIME_DIR/vfarm, or the temporary
folder's vfarm-UID. The folder must be the user's own and writable by nobody else.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path


class RunLockError(Exception):
    """The farm's lock could not be taken: one line for the user."""


def run_dir() -> Path:
    explicit = os.environ.get("VFARM_RUN_DIR")
    if explicit:
        return Path(explicit)
    if os.geteuid() == 0:
        return Path("/run/vfarm")
    runtime = os.environ.get("XDG_RUNTIME_DIR")
    return Path(runtime) / "vfarm" if runtime else Path(tempfile.gettempdir()) / f"vfarm-{os.geteuid()}"


def lock_path(farm: str) -> Path:
    return run_dir() / f"scale-{farm}.lock"


def _own_folder(folder: Path) -> None:
    try:
        folder.mkdir(mode=0o755 if os.geteuid() == 0 else 0o700, parents=True, exist_ok=True)
        st = os.lstat(folder)
    except OSError as err:
        raise RunLockError(f"cannot make {folder} for the farm's lock: {err.strerror}") from err
    if not os.path.isdir(folder) or os.path.islink(folder) or st.st_uid != os.geteuid() or st.st_mode & 0o022:
        raise RunLockError(f"{folder} (for the farm's lock) is not a folder of this user's that only it may write to")


def holder(farm: str) -> str:
    """What the lock file of FARM says of its holder (a pid), or '' when there is none to read."""
    try:
        return lock_path(farm).read_text(encoding="ascii", errors="replace").strip()[:20]
    except OSError:
        return ""


@contextlib.contextmanager
def hold(farm: str) -> Iterator[Path]:
    """Hold FARM's lock until the block ends (or the process does); RunLockError if another holds it."""
    folder = run_dir()
    _own_folder(folder)
    path = lock_path(farm)
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644)
    except OSError as err:
        raise RunLockError(f"cannot open {path}: {err.strerror}") from err
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as err:
            if err.errno not in (errno.EWOULDBLOCK, errno.EAGAIN):
                raise RunLockError(f"cannot lock {path}: {err.strerror}") from err
            who = holder(farm)
            raise RunLockError(f"farm {farm}: another vfarm scale runs it on this host{f' (pid {who})' if who.isdigit() else ''}: "
                               "two would launch and drain the same workers; stop that one first "
                               f"(--dry-run, --status and --snapshot change nothing and may run beside it; lock: {path})") from None
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode("ascii"))
        yield path
    finally:
        os.close(fd)  # closing the only descriptor releases the lock


def running(farm: str) -> tuple[bool, str]:
    """Whether a scaler holds FARM's lock on this host now, and its pid ('' if unknown), without taking it."""
    try:
        fd = os.open(lock_path(farm), os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError:
        return False, ""  # no lock file: no scaler of this farm ever ran here (with this RUN_DIR)
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except OSError:
        who = holder(farm)
        return True, who if who.isdigit() else ""
    finally:
        os.close(fd)
    return False, ""
