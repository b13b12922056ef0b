"""The `vfarm` command line.

Exit codes: 0 success; 1 bad input or a failed result (the message says which); 2 usage error.
Bad input never shows a traceback.
"""

from __future__ import annotations

import argparse
import errno
import importlib
import os
import sys
from collections.abc import Sequence
from typing import Optional

from .. import __version__
from ..display import shown_message
from ..files import io_timeout_problem
from .common import EXIT_CODES, EXIT_OK, fail

# Modules that add sub-commands of their own: each has `register(subparsers)`.
COMMAND_MODULES: list[str] = [".configfile", ".userdata", ".scale", ".image", ".cloud", ".openstack", ".local", ".summary"]
# Which of them a top-level command needs: a run imports only those (`vfarm build` never loads
# boto3, the scaler or qemu code); help, or a command not listed here, imports them all.
COMMANDS: dict[str, list[str]] = {
    "build": [".userdata"],
    "inspect": [".userdata"],
    "handlers": [".userdata"],
    "summary": [".summary"],
    "scale": [".scale"],
    "image": [".image"],
    "launch": [".cloud", ".openstack", ".local"],
    "instances": [".cloud"],
    "terminate": [".cloud"],
    "validate": [".configfile"],
    "plan": [".configfile"],
}


def build_parser(argv: Optional[Sequence[str]] = None) -> argparse.ArgumentParser:
    """The parser; with ARGV, only the sub-command modules its command needs are imported."""
    parser = argparse.ArgumentParser(
        prog="vfarm",
        description="Turn one #multiple-config file into cloud-init user-data for HEP batch workers, and run the farm.",
        epilog=f"{EXIT_CODES[0].upper()}{EXIT_CODES[1:]}.",
    )
    parser.add_argument("--version", action="version", version=f"vfarm {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    command = next((a for a in (sys.argv[1:] if argv is None else argv) if not a.startswith("-")), None)
    for name in COMMANDS.get(command or "", COMMAND_MODULES):
        importlib.import_module(name, __package__).register(sub)
    return parser


# What writing stdout fails with besides a closed pipe: ENOSPC, EDQUOT, EFBIG, EIO.
OUTPUT_ERRORS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EIO})


def _stdout_closed() -> None:
    """Point stdout at /dev/null, so that the interpreter's last flush at exit has nothing left to
    fail on (Python's advice for SIGPIPE)."""
    if sys.stdout is None:
        return
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except (OSError, ValueError):
        pass


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser(argv).parse_args(argv)
    unused = io_timeout_problem()
    if unused:
        print(f"vfarm: warning: {shown_message(unused)}", file=sys.stderr)
    try:
        result: int = args.func(args)
        if sys.stdout is not None:  # None when started with stdout closed
            sys.stdout.flush()  # here, not at exit: a full disk is then one line too
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        _stdout_closed()
        return EXIT_OK
    except OSError as err:
        if err.filename is not None or err.errno not in OUTPUT_ERRORS:
            raise
        # Writing stdout failed (a file on a full disk): every other write names its file.
        _stdout_closed()
        return fail(f"{args.command}: cannot write the output: {err.strerror}")
    except (RecursionError, MemoryError) as err:
        # A last guard: every reader bounds its input, but a bound missed must still be one line.
        return fail(f"{args.command}: the input is too large or too deeply nested to handle ({type(err).__name__})")
    return result


if __name__ == "__main__":
    raise SystemExit(main())
