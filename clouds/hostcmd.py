"""The host side's one command runner (argv lists, never a shell string) and its progress lines.

Every subprocess of the admin side starts here: `run` for a command that ends, `start` for one
that runs beside vfarm (a VM, a supervisor). A failure names the command and its cause: the first
line that looks like an error (mmdebstrap's "E: ..." lines), not only its last words.
`locked` holds a lock file while a cache is built or a state folder changes.
"""

from __future__ import annotations

import fcntl
import os
import re
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any, Optional, Union

Arg = Union[str, Path]


class CommandError(Exception):
    """A host command failed; the message is one line a user can act on, OUTPUT all it said,
    WHY the message without the command's words (for a caller that must not show them)."""

    def __init__(self, message: str, output: str = "", why: str = "") -> None:
        super().__init__(message)
        self.output = output
        self.why = why or message


# A line that states an error, in the words of apt, mmdebstrap, dpkg, qemu and most tools.
ERROR_LINE = re.compile(r"^\s*(E:|W: .*(fail|error)|error\b|fatal\b|\S+: error\b|\S+: cannot\b|.*\b(No such|Permission denied|Unable to|not found)\b)", re.I)


def cause(output: str, returncode: int) -> str:
    """The line of OUTPUT that says why a command failed: the first error line, with the last line
    too when it says something else (`E: Unable to locate package x; E: mmdebstrap failed to run`)."""
    lines = [line.strip() for line in output.strip().splitlines() if line.strip()]
    if not lines:
        return f"exit {returncode}"
    first = next((line for line in lines if ERROR_LINE.match(line)), None)
    last = lines[-1]
    if first is None or first == last:
        return last
    return f"{first}; {last}"


def progress(area: str, message: str) -> None:
    print(f"[vfarm {area}] {message}", file=sys.stderr, flush=True)


def cache_base() -> Path:
    """Where set-up's caches live (images, packages, releases): /var/cache/vfarm, or VFARM_CACHE."""
    return Path(os.environ.get("VFARM_CACHE", "/var/cache/vfarm"))


# Per thread, the lock files (device, inode) a `locked` block of this thread holds: a nested
# block on the same file goes through (a second flock would wait for the first for ever).
_held = threading.local()
LOCK_POLL = 0.2  # seconds between tries when a wait has a timeout


class LockTimeout(CommandError):
    """Another holder (a process, or another thread of this one) kept the lock longer than the caller's timeout."""


@contextmanager
def locked(path: Path, waiting: str = "", area: str = "lock", timeout: Optional[float] = None) -> Iterator[None]:
    """PATH flocked (made, and its folder, when missing) while the block runs: one holder at a
    time across processes and threads, and the kernel frees it with the file, however the holder
    ends. When another holds it, WAITING (unless empty) is said once through `progress` under
    AREA, then this one waits as long as that takes, or TIMEOUT seconds (then LockTimeout).
    Re-entrant within a thread: a nested block on the same file holds it already."""
    path.parent.mkdir(parents=True, exist_ok=True)
    held: set[tuple[int, int]] = _held.__dict__.setdefault("files", set())  # this thread's
    with open(path, "w") as lock:
        info = os.fstat(lock.fileno())
        ident = (info.st_dev, info.st_ino)
        if ident in held:  # this thread's outer block holds it (and frees it)
            yield
            return
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            if waiting:
                progress(area, waiting)
            _wait(lock, path, timeout)
        held.add(ident)
        try:
            yield
        finally:
            held.discard(ident)


def _wait(lock: IO[str], path: Path, timeout: Optional[float]) -> None:
    """Take LOCK's flock, waiting at most TIMEOUT seconds (None: as long as it takes)."""
    if timeout is None:
        fcntl.flock(lock, fcntl.LOCK_EX)
        return
    deadline = time.monotonic() + timeout
    while True:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return
        except BlockingIOError:
            left = deadline - time.monotonic()
            if left <= 0:
                raise LockTimeout(f"{path}: another process or thread has held this lock for over {timeout:.0f} s") from None
            time.sleep(min(LOCK_POLL, left))


def run(argv: Sequence[Arg], *, check: bool = True, capture: bool = True, timeout: Optional[float] = None,
        input_text: Optional[str] = None, cwd: Optional[Arg] = None, binary: bool = False,
        env: Optional[Mapping[str, str]] = None) -> subprocess.CompletedProcess[Any]:
    """Run ARGV (text, or bytes with BINARY); with CHECK, a non-zero exit raises CommandError
    naming the command and the cause (see `cause`). ENV: variables set for the command on top of
    this process's environment."""
    args = [str(a) for a in argv]
    try:
        done = subprocess.run(args, check=False, text=not binary, errors=None if binary else "replace", timeout=timeout, input=input_text, cwd=cwd,
                              env={**os.environ, **env} if env else None,
                              stdout=subprocess.PIPE if capture else None,
                              stderr=subprocess.PIPE if capture else None,
                              stdin=None if input_text is not None else subprocess.DEVNULL)
    except FileNotFoundError as err:
        raise CommandError(f"{args[0]}: not installed (tools/run setup installs it)", why=f"{os.path.basename(args[0])} not installed") from err
    except subprocess.TimeoutExpired as err:
        raise CommandError(f"{' '.join(args[:3])}: no result after {timeout:.0f} s", why=f"no result after {timeout:.0f} s") from err
    except OSError as err:  # not executable, a folder, ...
        raise CommandError(f"{args[0]}: cannot run: {err.strerror or err}", why=f"cannot run {os.path.basename(args[0])}: {err.strerror or err}") from err
    if check and done.returncode != 0:
        output = done.stderr or done.stdout or ""
        if isinstance(output, bytes):
            output = output.decode("utf-8", errors="replace")
        why = cause(output, done.returncode)
        raise CommandError(f"{' '.join(args[:4])}{' ...' if len(args) > 4 else ''}: {why}", output, why)
    return done


def start(argv: Sequence[Arg], **popen: Any) -> subprocess.Popen[Any]:
    """Start ARGV beside vfarm (stdin from /dev/null unless POPEN says otherwise); a missing
    program is a CommandError naming it."""
    args = [str(a) for a in argv]
    popen.setdefault("stdin", subprocess.DEVNULL)
    try:
        return subprocess.Popen(args, **popen)
    except FileNotFoundError as err:
        raise CommandError(f"{args[0]}: not installed (tools/run setup installs it)") from err


class Stopwatch:
    def __init__(self) -> None:
        self.start = time.monotonic()

    def __call__(self) -> float:
        return time.monotonic() - self.start
