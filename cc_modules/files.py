"""Atomic file writes: a reader (or a crash) sees the old file or the new one, never half of one."""

from __future__ import annotations

import os
import stat
import tempfile
from typing import Optional, Union

PathLike = Union[str, "os.PathLike[str]"]


def atomic_write(path: PathLike, content: Union[str, bytes], mode: Optional[int] = None) -> None:
    """Write CONTENT to PATH through a temp file in the same directory, fsync, rename, fsync the
    directory. MODE defaults to the existing file's mode, else 0644.

    A PATH that is not a regular file (/dev/null, /dev/stdout, a FIFO) is written into as it is:
    renaming over it would replace a device with a plain file."""
    path = os.fspath(path)
    data = content.encode("utf-8") if isinstance(content, str) else content
    try:
        special = not stat.S_ISREG(os.stat(path).st_mode)
    except FileNotFoundError:
        special = False
    if special:
        with open(path, "wb") as handle:
            handle.write(data)
        return
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


def read_text(path: PathLike) -> Optional[str]:
    """The file's text, or None when it does not exist."""
    try:
        with open(path, encoding="utf-8") as handle:
            return handle.read()
    except FileNotFoundError:
        return None
