"""THE command runner of the on-instance code: argv lists only (never a shell string); every
command, its exit code, duration and stderr logged, with secrets redacted."""

from __future__ import annotations

import logging
import os
import selectors
import signal
import subprocess
import time
from dataclasses import dataclass, field
from typing import Optional

from ..errors import StepError
from ..redaction import is_secret_name, redact, redact_argv

MAX_LOGGED = 4000  # characters of stdout/stderr kept in the log per command
# A command given no timeout gets this one: a hung mount or lvcreate must not hang cloud-init
# (the final check must still run). Generous: the modules' own tables use 60-1800 s.
DEFAULT_TIMEOUT = 600.0
KILL_GRACE = 3.0  # seconds between SIGTERM and SIGKILL of a timed-out command's process group
# Once the command has exited, seconds to keep reading output a background child still writes.
DRAIN_SECONDS = 1.0
POLL_SECONDS = 0.1  # how often a wait on the pipes looks whether the command has exited
MIB = 1024 * 1024
# Bytes kept of each stream: far above any output a caller parses (lvm fullreport, blkid...).
OUTPUT_LIMIT = 4 * MIB
OUTPUT_TAIL = 16 * 1024  # bytes kept of the end of a stream past OUTPUT_LIMIT (its last error)
TIMEOUT_EXIT = 124  # as timeout(1)
OVERFLOW_EXIT = 125  # a stream passed OUTPUT_LIMIT: its data is not whole, so the command failed
CHUNK = 65536
PIPE_BUF = 512  # a write this small to a pipe select() calls writable never blocks


def shown_command(argv: list[str]) -> str:
    """ARGV as the log and records show it: redacted as a command first (a password after its
    option is hidden whole, blanks and all), then as the one line it becomes."""
    return redact(" ".join(redact_argv(argv)))


@dataclass(frozen=True)
class Result:
    argv: list[str]
    returncode: int
    stdout: str = ""
    stderr: str = ""
    seconds: float = 0.0
    dry_run: bool = field(default=False, compare=False)

    @property
    def command(self) -> str:
        return shown_command(self.argv)

    def summary(self) -> str:
        """One line for a status record: the command, its exit code and the last stderr line."""
        last = next((line for line in reversed(self.stderr.strip().splitlines()) if line.strip()), "")
        detail = f": {redact(last.strip())}" if last else ""
        return f"`{self.command}` failed (exit {self.returncode}){detail}"


class CommandFailed(StepError):
    """A command exited non-zero (or could not start): the reason names it, its exit code and
    the last line of its stderr."""

    def __init__(self, result: Result):
        self.result = result
        super().__init__(result.summary())


def _tail(text: str) -> str:
    text = text.rstrip()
    return text if len(text) <= MAX_LOGGED else "..." + text[-MAX_LOGGED:]


class _Capture:
    """One output stream, bounded: its first OUTPUT_LIMIT bytes and its last OUTPUT_TAIL."""

    def __init__(self) -> None:
        self.head = bytearray()
        self.tail = bytearray()
        self.dropped = 0

    def add(self, data: bytes) -> None:
        room = OUTPUT_LIMIT - len(self.head)
        self.head += data[:room]
        self.tail += data[room:]  # room >= 0: head never passes OUTPUT_LIMIT
        if len(self.tail) > OUTPUT_TAIL:
            self.dropped += len(self.tail) - OUTPUT_TAIL
            del self.tail[:-OUTPUT_TAIL]

    def text(self) -> str:
        """Decoded leniently: output that is not UTF-8 must not crash a command that worked."""
        gap = f"\n[... {self.dropped} bytes dropped ...]\n" if self.dropped else ""
        return self.head.decode(errors="replace") + gap + self.tail.decode(errors="replace")


def _add_line(text: str, line: str) -> str:
    return f"{text.rstrip()}\n{line}" if text.strip() else line


def _communicate(proc: subprocess.Popen[bytes], feed: bytes, out: _Capture, err: _Capture, deadline: float) -> bool:
    """Feed FEED and read the output until the command exits (then at most DRAIN_SECONDS more:
    a background child may hold the pipes for ever) or DEADLINE passes: True when it timed out."""
    with selectors.DefaultSelector() as sel:
        for stream, capture in ((proc.stdout, out), (proc.stderr, err), (proc.stdin, None)):
            if stream is not None:
                sel.register(stream, selectors.EVENT_WRITE if capture is None else selectors.EVENT_READ, capture)
        drain_until: Optional[float] = None
        while True:
            now = time.monotonic()
            if drain_until is None and proc.poll() is not None:
                drain_until = now + DRAIN_SECONDS
            if drain_until is not None and (now >= drain_until or not sel.get_map()):
                return False
            if drain_until is None and now >= deadline:
                return True
            wait = (drain_until or deadline) - now
            if not sel.get_map():  # the pipes are closed, the command still runs
                try:
                    proc.wait(wait)
                except subprocess.TimeoutExpired:
                    pass
                continue
            for key, _ in sel.select(min(wait, POLL_SECONDS)):
                if key.data is None:  # stdin
                    try:
                        feed = feed[os.write(key.fd, feed[:PIPE_BUF]):]
                    except BrokenPipeError:
                        feed = b""
                    if not feed and proc.stdin is not None:
                        sel.unregister(proc.stdin)
                        proc.stdin.close()  # end of input
                elif data := os.read(key.fd, CHUNK):
                    key.data.add(data)
                else:
                    sel.unregister(key.fileobj)


def _kill_group(proc: subprocess.Popen[bytes]) -> None:
    """SIGTERM the command's process group (its children too: apt-get's dpkg), then SIGKILL
    whatever is left after KILL_GRACE."""
    try:
        os.killpg(proc.pid, signal.SIGTERM)
        give_up = time.monotonic() + KILL_GRACE
        while time.monotonic() < give_up:
            proc.poll()  # reaps the leader: its zombie would keep the group alive
            os.killpg(proc.pid, 0)  # raises once the group is gone
            time.sleep(POLL_SECONDS)
        os.killpg(proc.pid, signal.SIGKILL)
    except OSError:  # ProcessLookupError: nothing left to kill
        pass


class Runner:
    """Runs commands and logs them. With `dry_run`, commands that change the system are logged
    and not run (they "succeed" with no output); read-only ones (`changes=False`) still run.
    A command given no timeout gets DEFAULT_TIMEOUT."""

    def __init__(self, logger: logging.Logger, *, dry_run: bool = False):
        self.logger = logger
        self.dry_run = dry_run

    def run(
        self,
        argv: list[str],
        *,
        input: Optional[str] = None,
        check: bool = True,
        env: Optional[dict[str, str]] = None,
        timeout: Optional[float] = None,
        changes: bool = True,
    ) -> Result:
        if isinstance(argv, str) or not argv or not all(isinstance(a, str) for a in argv):
            raise TypeError(f"argv must be a non-empty list of strings, got {argv!r}")
        argv = list(argv)
        shown = shown_command(argv)
        extra = ""
        if env:
            extra = " with " + " ".join(f"{k}={'***' if is_secret_name(k) else redact(v)}" for k, v in sorted(env.items()))
        if self.dry_run and changes:
            self.logger.info("dry-run, not running: %s%s", shown, extra)
            return Result(argv, 0, "", "", 0.0, dry_run=True)
        self.logger.info("running: %s%s", shown, extra)
        result = self._execute(argv, input, env, DEFAULT_TIMEOUT if timeout is None else timeout)
        level = logging.INFO if result.returncode == 0 or not check else logging.ERROR
        self.logger.log(level, "exit %d after %.2f s: %s", result.returncode, result.seconds, shown)
        # Redact, then shorten: a cut could remove what redaction recognises a secret by.
        if result.stderr.strip():
            self.logger.log(level, "stderr of %s:\n%s", argv[0], _tail(redact(result.stderr)))
        if result.stdout.strip():
            self.logger.debug("stdout of %s:\n%s", argv[0], _tail(redact(result.stdout)))
        if check and result.returncode != 0:
            raise CommandFailed(result)
        return result

    def _execute(self, argv: list[str], input: Optional[str], env: Optional[dict[str, str]], timeout: float) -> Result:
        """Run ARGV for real (tests replace this one method). The command gets its own session,
        so a timeout kills it with its children; output is read as it comes and kept bounded
        (a stream past OUTPUT_LIMIT fails the command: a caller must not parse cut data)."""
        full_env = {**os.environ, **env} if env else None
        started = time.monotonic()
        try:
            proc = subprocess.Popen(argv, env=full_env, stdin=subprocess.DEVNULL if input is None else subprocess.PIPE,
                                    stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)
        except FileNotFoundError:
            return Result(argv, 127, "", f"{argv[0]}: command not found", time.monotonic() - started)
        except PermissionError as error:
            return Result(argv, 126, "", f"{argv[0]}: {error.strerror}", time.monotonic() - started)
        out, err = _Capture(), _Capture()
        try:
            timed_out = _communicate(proc, (input or "").encode(), out, err, started + timeout)
            if timed_out:
                _kill_group(proc)
            # Bounded even after SIGKILL: a process stuck in the kernel (a hung mount) lives on.
            returncode = proc.wait(KILL_GRACE) if timed_out else proc.wait()
        except subprocess.TimeoutExpired:
            returncode = TIMEOUT_EXIT
        finally:
            for stream in (proc.stdin, proc.stdout, proc.stderr):
                if stream is not None:
                    stream.close()
        stderr = err.text()
        for name, capture in (("stdout", out), ("stderr", err)):
            if capture.tail:
                stderr = _add_line(stderr, f"{name} larger than {OUTPUT_LIMIT // MIB} MiB: not kept whole (exit {returncode})")
        if out.tail or err.tail:
            returncode = OVERFLOW_EXIT
        if timed_out:
            stderr, returncode = _add_line(stderr, f"timed out after {timeout:g} s"), TIMEOUT_EXIT
        return Result(argv, returncode, out.text(), stderr, time.monotonic() - started)
