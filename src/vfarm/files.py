"""Bounded reads and atomic writes of files that users name.

Reads: a size limit checked before reading, a deadline for pipes and devices, one clear error.
Writes: a reader (or a crash) sees the old file or the new one, never half of one; devices, FIFOs
and symlinks are written through, never replaced.
"""

from __future__ import annotations

import errno
import os
import posixpath
import re
import select
import stat
import sys
import tempfile
import time
from pathlib import Path, PurePosixPath
from typing import Optional, Union

PathLike = Union[str, "os.PathLike[str]"]

# Seconds a pipe, FIFO or device may take to deliver all of its data (or to take ours).
DEFAULT_IO_TIMEOUT = 10.0
IO_TIMEOUT_ENV = "VFARM_IO_TIMEOUT"
_CHUNK = 1 << 16
_MAX_LINKS = 40  # as the kernel's own limit on a chain of symlinks
# An open file of a process, reached through /proc (/dev/stdout, /dev/fd/N lead there).
_PROC_FD = re.compile(r"^/proc/([0-9]+)/fd/([0-9]+)$")


class InputError(OSError):
    """A file vfarm refuses to read (a directory, too large, no data in time). `strerror` is the
    one-line reason, so `except OSError as err: ... err.strerror` reports it like any read error."""

    def __init__(self, code: int, reason: str):
        super().__init__(code, reason)


def _io_timeout_setting() -> Optional[float]:
    """VFARM_IO_TIMEOUT as seconds if it is set to such a number (more than 0, less than a day), else None."""
    try:
        value = float(os.environ.get(IO_TIMEOUT_ENV, ""))
    except ValueError:
        return None
    return value if 0 < value < 86400 else None


def io_timeout() -> float:
    """The deadline for pipes, FIFOs and devices: VFARM_IO_TIMEOUT seconds, else 10."""
    value = _io_timeout_setting()
    return DEFAULT_IO_TIMEOUT if value is None else value


def io_timeout_problem() -> Optional[str]:
    """Why VFARM_IO_TIMEOUT, when set, is not used (then the default applies), or None."""
    text = os.environ.get(IO_TIMEOUT_ENV)
    if not text or _io_timeout_setting() is not None:  # unset, or set to nothing (as VAR= says "unset")
        return None
    return f"{IO_TIMEOUT_ENV}={text!r} is not a number of seconds above 0 and below 86400: {DEFAULT_IO_TIMEOUT:g} s applies"


def size_text(n_bytes: int) -> str:
    if n_bytes >= 1 << 20 and n_bytes % (1 << 20) == 0:
        return f"{n_bytes >> 20} MiB"
    if n_bytes >= 1 << 10 and n_bytes % (1 << 10) == 0:
        return f"{n_bytes >> 10} KiB"
    return f"{n_bytes} bytes"


def _too_large(limit: int) -> InputError:
    return InputError(errno.EFBIG, f"larger than {size_text(limit)}")


def read_bounded(path: PathLike, limit: int, timeout: Optional[float] = None) -> bytes:
    """The bytes of PATH, refusing a directory, a file over LIMIT bytes (a regular file by its
    size, before reading) and a pipe, FIFO or device that does not end within TIMEOUT seconds
    (default: io_timeout()). Raises OSError; InputError for the refusals."""
    # O_NONBLOCK: opening a FIFO that nobody writes would otherwise wait forever.
    flags = os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_NOCTTY", 0) | getattr(os, "O_CLOEXEC", 0)
    fd = os.open(os.fspath(path), flags)
    try:
        return read_fd_bounded(fd, limit, timeout)
    finally:
        os.close(fd)


def read_stdin_bounded(limit: int, timeout: Optional[float] = None) -> bytes:
    """Standard input, with read_bounded's limits."""
    return read_fd_bounded(0, limit, timeout)


def read_fd_bounded(fd: int, limit: int, timeout: Optional[float] = None) -> bytes:
    """The rest of the open file FD, with read_bounded's limits. FD's flags are left alone."""
    info = os.fstat(fd)
    if stat.S_ISDIR(info.st_mode):
        raise InputError(errno.EISDIR, "is a directory")
    if stat.S_ISREG(info.st_mode):
        if info.st_size > limit:
            raise _too_large(limit)
        # Regular files can still grow, or claim size 0 (/proc): read one byte past the limit.
        return _read_regular(fd, limit)
    return _read_stream(fd, limit, io_timeout() if timeout is None else timeout)


def _read_regular(fd: int, limit: int) -> bytes:
    chunks: list[bytes] = []
    total = 0
    while True:
        try:
            chunk = os.read(fd, min(_CHUNK, limit + 1 - total))
        except BlockingIOError:  # O_NONBLOCK on a file whose filesystem honours it (FUSE)
            select.select([fd], [], [], 1.0)
            continue
        if not chunk:
            return b"".join(chunks)
        chunks.append(chunk)
        total += len(chunk)
        if total > limit:
            raise _too_large(limit)


def _read_stream(fd: int, limit: int, timeout: float) -> bytes:
    """Pipes, FIFOs, sockets and devices: wait for data with poll() until the deadline; past it,
    only data that is there at once is read (a device that never ends, such as /dev/zero, runs
    into LIMIT however busy the machine is; one that pauses after the deadline is refused). (A
    FIFO opened with O_NONBLOCK reads as empty while nobody writes it: poll first, read after.)"""
    deadline = time.monotonic() + timeout
    poller = select.poll()
    poller.register(fd, select.POLLIN | select.POLLPRI)
    chunks: list[bytes] = []
    total = 0
    while True:
        left = deadline - time.monotonic()
        if not poller.poll(max(1, int(left * 1000)) if left > 0 else 0):
            if time.monotonic() < deadline:
                continue
            waited = "no data" if not total else f"no end of the data after {total} bytes"
            raise InputError(errno.ETIMEDOUT, f"{waited} within {timeout:g} s (a pipe or FIFO that nobody writes?; {IO_TIMEOUT_ENV}=SECONDS waits longer)")
        try:
            chunk = os.read(fd, min(_CHUNK, limit + 1 - total))
        except BlockingIOError:
            continue
        if not chunk:
            return b"".join(chunks)
        chunks.append(chunk)
        total += len(chunk)
        if total > limit:
            raise _too_large(limit)


def _resolve(path: str) -> tuple[str, Optional[int]]:
    """PATH with every symlink resolved, and the descriptor number when the chain ends at one of
    this process's open files (/dev/stdout -> /proc/self/fd/1): that file is written as it is."""
    # Not abspath: it collapses `link/..` in the text, where the OS goes up from the link's target.
    current = path if os.path.isabs(path) else os.path.join(os.getcwd(), path)
    for _ in range(_MAX_LINKS):
        folder = os.path.realpath(os.path.dirname(current))
        current = os.path.join(folder, os.path.basename(current))
        match = _PROC_FD.match(current)
        if match:
            return current, int(match.group(2)) if int(match.group(1)) == os.getpid() else -1
        if not os.path.islink(current):
            return current, None
        current = os.path.join(folder, os.readlink(current))
    raise OSError(errno.ELOOP, "too many levels of symbolic links", path)


# A volume mounted over these would hide the running system. Below them too, except /var, whose
# subfolders (/var/lib/cvmfs, /var/tmp) are where data goes.
# /var/run and /var/lock are symlinks into /run (Debian, EL): mount would follow them and the
# volume would hide /run, so they are refused by name here, where the image is not seen; the
# instance follows the symlinks of every mount point and refuses these places when one leads there.
LINKS = {"/var/run": "/run", "/var/lock": "/run/lock"}
SYSTEM_FOLDERS = ("/etc", "/proc", "/sys", "/dev", "/run", *LINKS, "/boot", "/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32")
SYSTEM_FOLDERS_ONLY_ITSELF = ("/var",)


def normal_path(path: str) -> str:
    """PATH with `.`, `..` and repeated slashes resolved (`/tmp/..` is `/`, `//x` is `/x`)."""
    return "/" + posixpath.normpath(path).lstrip("/")


def system_folder(mount: str) -> Optional[str]:
    """The system folder a (normalised) mount point would hide, or None."""
    if mount in SYSTEM_FOLDERS_ONLY_ITSELF:
        return mount
    return next((f for f in SYSTEM_FOLDERS if mount == f or mount.startswith(f + "/")), None)


def under(root: PathLike, absolute: str) -> Path:
    """ABSOLUTE inside ROOT: / on an instance, a temporary folder in tests and dry runs."""
    return Path(root) / absolute.lstrip("/")


DEFAULT_LOG_DIR = "/var/log/vfarm"
# Where the final check lives on the instance (cloud-init's power_state condition runs it), and
# the verdict it writes for HTCondor (config/condor.py's 50-vfarm.conf includes that file). Here,
# where the check, the builder and the condor section all reach them without importing each other.
CHECK_SCRIPT = "/var/lib/vfarm/vfarm-check.py"
CONDOR_VERDICT_FILE = "/run/vfarm/condor-verdict.conf"
# What the check's `--power-state-condition` exits when it judged the boot and acted on it: no code
# Python or the shell gives a crash (1, 2, 120, 126, 127, 128+N), so the condition (the builder's
# checkpart.condition) reads any other as "the check did not run" and has cloud-init power off.
CHECK_HANDLED = 3


def system_root(explicit: Union[str, Path, None] = None) -> Path:
    """The root of the system the instance side works on: EXPLICIT, else $VFARM_ROOT (tests), else /."""
    return Path(explicit or os.environ.get("VFARM_ROOT") or "/")


def log_dir(explicit: Union[str, Path, None] = None, root: PathLike = "/") -> Path:
    """Where the handlers' records and logs go: EXPLICIT, else $VFARM_LOG_DIR, else /var/log/vfarm
    in ROOT. Here, not in cc_modules/record.py, so that the final check's bundle (in the
    user-data, where EC2 allows 16 KiB) does not carry the record module for it."""
    return Path(explicit or os.environ.get("VFARM_LOG_DIR") or under(root, DEFAULT_LOG_DIR))


def atomic_write(path: PathLike, content: Union[str, bytes], mode: Optional[int] = None, follow_symlinks: bool = True) -> None:
    """Write CONTENT to PATH through a temp file in the same directory, fsync, rename, fsync the
    directory. MODE defaults to the existing file's mode, else 0644.

    PATH is written through, never replaced, when it is (or a symlink leads to) a device, a FIFO,
    a socket or one of this process's open files (/dev/stdout, /proc/self/fd/1): renaming over
    /dev/stdout would replace a device with a plain file. A FIFO nobody reads is an error
    (ENXIO), never a wait. A symlink to a regular file (or to nothing yet) stays, and its target is
    replaced atomically. FOLLOW_SYMLINKS=False: a symlink, device or FIFO at PATH is itself
    replaced by the regular file (a folder that must hold exactly the files written)."""
    path = os.fspath(path)
    data = content.encode("utf-8") if isinstance(content, str) else content
    target = path
    if follow_symlinks:
        target, own_fd = _resolve(path)
        if own_fd is not None and own_fd >= 0:
            _write_fd(own_fd, data)
            return
        try:
            info: Optional[os.stat_result] = os.stat(target)
        except FileNotFoundError:
            info = None
        if info is not None and stat.S_ISDIR(info.st_mode):
            raise IsADirectoryError(errno.EISDIR, os.strerror(errno.EISDIR), path)
        if info is not None and (not stat.S_ISREG(info.st_mode) or own_fd is not None):
            _write_special(target, data)
            return
    elif os.path.isdir(path) and not os.path.islink(path):
        raise IsADirectoryError(errno.EISDIR, os.strerror(errno.EISDIR), path)
    _replace(target, data, mode)


def _write_fd(fd: int, data: bytes) -> None:
    if fd in (1, 2):  # what Python buffered for the same descriptor goes first
        (sys.stdout if fd == 1 else sys.stderr).flush()
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


def _write_special(path: str, data: bytes) -> None:
    """Write into a device, FIFO or another process's open file without replacing it."""
    flags = os.O_WRONLY | os.O_TRUNC | os.O_NONBLOCK | getattr(os, "O_NOCTTY", 0) | getattr(os, "O_CLOEXEC", 0)
    try:
        fd = os.open(path, flags)
    except OSError as err:
        if err.errno == errno.ENXIO:
            raise OSError(errno.ENXIO, "a FIFO that nobody reads (start its reader first)", path) from None
        raise
    try:
        if hasattr(os, "set_blocking"):
            os.set_blocking(fd, True)  # there is a reader now: it gets the data at its own pace
        _write_fd(fd, data)
    finally:
        os.close(fd)


def _replace(path: str, data: bytes, mode: Optional[int]) -> None:
    directory = os.path.dirname(path) or "."
    os.makedirs(directory, exist_ok=True)
    if mode is None:
        try:
            mode = os.stat(path).st_mode & 0o7777
        except FileNotFoundError:
            mode = 0o644
    fd, tmp = tempfile.mkstemp(prefix=f".{os.path.basename(path)}.", suffix=".tmp", dir=directory)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    try:
        dir_fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return  # some filesystems (and fakes) cannot open a directory: the rename is done anyway
    try:
        os.fsync(dir_fd)
    except OSError:
        pass
    finally:
        os.close(dir_fd)


_OCTAL_ESCAPE = re.compile(rb"\\([0-7]{3})")


def unescape_octal(field: str) -> str:
    """FIELD of /etc/fstab or /proc/self/mountinfo as libmount and the kernel read it: any `\\ooo`
    (three octal digits) is that byte, whichever character a tool escaped; the bytes are UTF-8."""
    raw = field.encode(errors="surrogateescape")
    return _OCTAL_ESCAPE.sub(lambda octal: bytes([int(octal[1], 8) & 255]), raw).decode(errors="surrogateescape")


def _folders_between(outer: str, inner: str) -> Optional[list[str]]:
    """The folders strictly between OUTER and INNER, INNER's parents, or None when INNER is not in OUTER."""
    folders: list[str] = []
    for folder in map(str, PurePosixPath(inner).parents):
        if folder == outer:
            return folders
        folders.append(folder)
    return None


def _hidden(mounts: list[tuple[str, str, str, str]]) -> set[str]:
    """The ids of the MOUNTS (id, parent id, mount point, source) that no path reaches. A path is
    walked as the kernel walks it: from the reader's root (a mount stacked on / is never entered:
    the walk starts below it), folder by folder, taking the mount made at that folder in the one
    reached so far, then any mount stacked on that. Mounts whose parent is not listed (a chroot's)
    form one tree from /. A `mount --move` keeps its place in the listing: the order says nothing."""
    parent = {mount: up for mount, up, _, _ in mounts}
    point = {mount: target for mount, _, target, _ in mounts}
    child = {(up, point[mount]): mount for mount, up, _, _ in mounts if up != mount}
    start = {mount for mount, up in parent.items() if up not in parent or up == mount}
    arrives: dict[str, bool] = {}  # the walk to its point ends in it (maybe to go on into one stacked on it)
    reached: dict[str, bool] = {}  # ... and stays there

    def entered(mount: str) -> bool:  # a walk at its point goes on into the mount stacked on it
        return (mount, point[mount]) in child and not (mount in start and point[mount] == "/")

    for first in parent:
        chain = [first]  # up to a mount known or a tree's start (each computed once: linear)
        while chain[-1] not in arrives and chain[-1] not in start and parent[chain[-1]] not in chain:
            chain.append(parent[chain[-1]])
        for mount in reversed(chain):
            if mount in arrives:
                continue
            up = parent[mount]
            if mount in start or up not in arrives:
                between = _folders_between("/", point[mount])
                arrives[mount] = point[mount] == "/" or between is not None and not any((up, f) in child for f in between)
            elif point[mount] == point[up]:
                arrives[mount] = arrives[up] and entered(up)
            else:
                between = _folders_between(point[up], point[mount])
                arrives[mount] = reached[up] and between is not None and not any((up, f) in child for f in between)
            reached[mount] = arrives[mount] and not entered(mount)
    return {mount for mount in parent if not reached[mount]}


def split_mounts(mounts: list[tuple[str, str, str, str]]) -> tuple[dict[str, str], list[tuple[str, str]]]:
    """Of MOUNTS (id, parent id, mount point, source) as mountinfo and findmnt list them: mount
    point -> the source of the mount a path there reaches (none where every mount is hidden), and
    (mount point, source) of the others, which no path reaches (`umount` at such a point takes the
    mount on top, or finds none)."""
    hidden = _hidden(mounts)
    return ({target: source for mount, _, target, source in mounts if mount not in hidden},
            [(target, source) for mount, _, target, source in mounts if mount in hidden])


def on_top(mounts: list[tuple[str, str, str, str]]) -> dict[str, str]:
    """Mount point -> the source of the mount a path there reaches (split_mounts)."""
    return split_mounts(mounts)[0]


def read_text(path: PathLike) -> Optional[str]:
    """The file's text, or None when it does not exist."""
    try:
        with open(path, encoding="utf-8") as handle:
            return handle.read()
    except FileNotFoundError:
        return None
