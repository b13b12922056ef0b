"""THE command runner of the on-instance code: argv lists only (never a shell string); every
command, its exit code, duration and stderr logged, with secrets redacted."""

from __future__ import annotations

import logging
import os
import subprocess
import time
from dataclasses import dataclass, field
from typing import Optional

from ..errors import StepError
from ..redaction import is_secret_name, redact

MAX_LOGGED = 4000  # characters of stdout/stderr kept in the log per command


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
        return redact(" ".join(self.argv))

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


class Runner:
    """Runs commands and logs them. With `dry_run`, commands that change the system are logged
    and not run (they "succeed" with no output); read-only ones (`changes=False`) still run."""

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
        shown = redact(" ".join(argv))
        extra = ""
        if env:
            extra = " with " + " ".join(f"{k}={'***' if is_secret_name(k) else redact(v)}" for k, v in sorted(env.items()))
        if self.dry_run and changes:
            self.logger.info("dry-run, not running: %s%s", shown, extra)
            return Result(argv, 0, "", "", 0.0, dry_run=True)
        self.logger.info("running: %s%s", shown, extra)
        result = self._execute(argv, input, env, timeout)
        level = logging.INFO if result.returncode == 0 or not check else logging.ERROR
        self.logger.log(level, "exit %d after %.2f s: %s", result.returncode, result.seconds, shown)
        if result.stderr.strip():
            self.logger.log(level, "stderr of %s:\n%s", argv[0], redact(_tail(result.stderr)))
        if result.stdout.strip():
            self.logger.debug("stdout of %s:\n%s", argv[0], redact(_tail(result.stdout)))
        if check and result.returncode != 0:
            raise CommandFailed(result)
        return result

    def _execute(self, argv: list[str], input: Optional[str], env: Optional[dict[str, str]], timeout: Optional[float]) -> Result:
        """Run ARGV for real (tests replace this one method)."""
        full_env = None
        if env:
            full_env = dict(os.environ)
            full_env.update(env)
        started = time.monotonic()
        try:
            done = subprocess.run(
                argv,
                input=input,
                env=full_env,
                timeout=timeout,
                text=True,
                capture_output=True,
                stdin=None if input is not None else subprocess.DEVNULL,
                check=False,
            )
            return Result(argv, done.returncode, done.stdout or "", done.stderr or "", time.monotonic() - started)
        except FileNotFoundError:
            return Result(argv, 127, "", f"{argv[0]}: command not found", time.monotonic() - started)
        except PermissionError as err:
            return Result(argv, 126, "", f"{argv[0]}: {err.strerror}", time.monotonic() - started)
        except subprocess.TimeoutExpired as err:
            out = err.stdout.decode(errors="replace") if isinstance(err.stdout, bytes) else (err.stdout or "")
            return Result(argv, 124, out, f"timed out after {timeout} s", time.monotonic() - started)
