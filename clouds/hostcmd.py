"""The host side's one command runner (argv lists, never a shell string) and its progress lines."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Optional, Union

Arg = Union[str, Path]


class CommandError(Exception):
    """A host command failed; the message is one line a user can act on."""


def progress(area: str, message: str) -> None:
    print(f"[vfarm {area}] {message}", file=sys.stderr, flush=True)


def run(argv: Sequence[Arg], *, check: bool = True, capture: bool = True, timeout: Optional[float] = None,
        input_text: Optional[str] = None, cwd: Optional[Arg] = None, env: Optional[Mapping[str, str]] = None) -> subprocess.CompletedProcess[str]:
    """Run ARGV; on failure raise CommandError naming the command and the last line of its stderr.
    ENV: variables set for the command on top of this process's environment."""
    args = [str(a) for a in argv]
    try:
        done = subprocess.run(args, check=False, text=True, timeout=timeout, input=input_text, cwd=cwd,
                              env={**os.environ, **env} if env else None,
                              stdout=subprocess.PIPE if capture else None,
                              stderr=subprocess.PIPE if capture else None,
                              stdin=None if input_text is not None else subprocess.DEVNULL)
    except FileNotFoundError as err:
        raise CommandError(f"{args[0]}: not installed (tools/run setup installs it)") from err
    except subprocess.TimeoutExpired as err:
        raise CommandError(f"{' '.join(args[:3])}: no result after {timeout:.0f} s") from err
    if check and done.returncode != 0:
        tail = (done.stderr or done.stdout or "").strip().splitlines()
        why = tail[-1] if tail else f"exit {done.returncode}"
        raise CommandError(f"{' '.join(args[:4])}{' ...' if len(args) > 4 else ''}: {why}")
    return done


class Stopwatch:
    def __init__(self) -> None:
        self.start = time.monotonic()

    def __call__(self) -> float:
        return time.monotonic() - self.start
