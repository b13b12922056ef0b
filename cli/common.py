"""What every verb shares: exit codes, the one way to report a failure, loading the config file,
and the user-data options (`vfarm build`, `vfarm launch ec2`, `vfarm launch local`, declared once)."""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import sys
import textwrap
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional

from ..display import escape_controls, shown_message
from ..files import atomic_write
from ..mime_builder.limits import EC2_LIMIT, GZIP_MODES

if TYPE_CHECKING:
    from ..config.loader import Config, Problem
    from ..mime_builder.mime import Built

EXIT_OK, EXIT_PROBLEM, EXIT_USAGE = 0, 1, 2
EXIT_CODES = "exit codes: 0 success, 1 bad input or a failed result, 2 usage error"


def add_command(sub: argparse._SubParsersAction, name: str, summary: str, *, description: str = "", examples: Sequence[str] = (),
                exit_codes: str = EXIT_CODES) -> argparse.ArgumentParser:
    """A sub-command, declared once: SUMMARY is its line in its parent's --help; its own --help
    opens with DESCRIPTION (default: SUMMARY) and closes with EXAMPLES, whole command lines that
    work as shown from the project's folder (tests/cli/test_help.py parses every one and runs
    each that needs no cloud, VM or pool), then EXIT_CODES. Its arguments may take type="seconds"
    (positive_seconds)."""
    text = description or summary[0].upper() + summary[1:] + "."
    epilog = [*(["examples:", *(f"  {line}" for line in examples), ""] if examples else []), *([exit_codes + "."] if exit_codes else [])]
    parser = sub.add_parser(name, help=summary, description=textwrap.fill(text, 79), epilog="\n".join(epilog),
                            formatter_class=argparse.RawDescriptionHelpFormatter)
    # type="seconds" in add_argument: a duration (positive_seconds), the same check in every command
    parser.register("type", "seconds", positive_seconds)
    return parser


def fail(message: str) -> int:
    """Report MESSAGE as one line on stderr (control characters shown escaped); EXIT_PROBLEM."""
    print(f"vfarm: {shown_message(message)}", file=sys.stderr)
    return EXIT_PROBLEM


def load_problems(path: str) -> tuple[Optional[Config], list[Problem]]:
    """A config and its warnings, or None and every problem that stopped it loading."""
    from ..config import loader

    try:
        config = loader.load_file(path)
    except loader.ConfigError as err:
        return None, err.problems
    return config, config.warnings


def load_or_report(path: str) -> Optional[Config]:
    """Load a config, printing every problem (and warning) as FILE:LINE:COL on stderr."""
    config, problems = load_problems(path)
    for problem in problems:
        print(shown_message(problem), file=sys.stderr)
    return config


def positive_seconds(text: str) -> float:
    """An argparse type for a duration (--wait-timeout, --wait-interval): a finite number above 0.
    `nan` would never time out (every comparison with it is false), `inf` neither, and a negative
    or zero one would make the wait poll without pause or fail at once."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number of seconds, got {text!r}") from None
    if not math.isfinite(value) or value <= 0:
        raise argparse.ArgumentTypeError(f"expected a finite number of seconds above 0, got {text!r}")
    return value


def whole_number(minimum: int, maximum: Optional[int] = None) -> Callable[[str], int]:
    """An argparse type for a count or a port (--reboot, --smp): a decimal integer from MINIMUM
    to MAXIMUM (no upper bound when None), in ASCII digits."""
    def parse(text: str) -> int:
        if not _WHOLE.fullmatch(text):
            raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}")
        value = int(text)
        if value < minimum or (maximum is not None and value > maximum):
            bounds = f"from {minimum} to {maximum}" if maximum is not None else f"of at least {minimum}"
            raise argparse.ArgumentTypeError(f"expected a whole number {bounds}, got {text!r}")
        return value

    return parse


# A sign and ASCII digits, no more than any bound here needs (not `1_000`, ` 2` or `٣`).
_WHOLE = re.compile(r"[-+]?[0-9]{1,20}")
# How many instances a launch starts (--count).
COUNT = whole_number(1)
# A TCP port to listen on (--metrics-port); 0 (any free port) is no use: nobody would know it.
PORT = whole_number(1, 65535)


HANDLERS_HELP = "how the handlers reach the instance: include=URL_BASE (fetched, see `vfarm handlers`), embed (default) or baked into the image"


def add_userdata_options(p: argparse._ActionsContainer, *, handlers_help: str = HANDLERS_HELP, max_size: int = EC2_LIMIT,
                         max_size_help: str = "", attach: bool = True) -> None:
    """--handlers, --pin, --gzip, --max-size (and --attach): how the user-data is built."""
    p.add_argument("--handlers", default="embed", metavar="MODE", help=handlers_help)
    p.add_argument("--pin", action="store_true", help="with include: a small loader checks each fetched handler's sha256 and records a failure")
    p.add_argument("--gzip", choices=GZIP_MODES, default="auto", help="compress the whole payload: auto (when over --max-size, default), always, never")
    p.add_argument("--max-size", type=whole_number(1), default=max_size, metavar="BYTES",
                   help=max_size_help or f"refuse larger user-data (default {max_size}: EC2)")
    if attach:
        p.add_argument("--attach", action="append", default=[], metavar="FILE[:TYPE]",
                       help="an extra part (a script, a #cloud-config...); TYPE as make-mime's")


def build_userdata(args: argparse.Namespace, verb: str) -> Optional[Built]:
    """The user-data for args.file with the user-data options, exactly as `vfarm build` makes it;
    None after reporting why not. Warnings go to stderr under VERB's name."""
    from ..mime_builder import mime

    if args.max_size <= 0:
        fail(f"--max-size must be a positive number of bytes, got {args.max_size}")
        return None
    try:
        attachments = [mime.attachment(a) for a in getattr(args, "attach", [])]
        mime.parse_handlers(args.handlers)
    except mime.BuildError as err:
        fail(str(err))
        return None
    config = load_or_report(args.file)
    if config is None:
        return None
    try:
        built = mime.build(config, handlers=args.handlers, gzip=args.gzip, max_size=args.max_size, attach=attachments, pin=args.pin)
    except mime.BuildError as err:
        fail(f"{args.file}: {err}")
        return None
    for warning in built.warnings:
        print(f"vfarm {verb}: warning: {shown_message(warning)}", file=sys.stderr)
    return built


def wait_reporter(started: float, state: Callable[[dict[str, Any]], str], ready: str) -> Callable[[list[dict[str, Any]]], None]:
    """A progress callback for a launch --wait: one stderr line whenever the instances' states
    change (STATE reads one instance's state; READY is the state waited for)."""
    last: list[str] = []

    def report(current: list[dict[str, Any]]) -> None:
        done = sum(1 for i in current if state(i) == ready)
        states = ", ".join(f"{i['InstanceId']} {state(i)}" for i in current)
        line = f"waiting: {done}/{len(current)} {ready} ({states})"
        if line != (last[0] if last else None):
            print(f"vfarm: [{time.monotonic() - started:4.0f}s] {shown_message(line)}", file=sys.stderr, flush=True)
            last[:] = [line]

    return report


def write_userdata(out: Path, built: Built) -> bool:
    """The user-data written to OUT, 0600 (it may carry proxy credentials or a pool token), never
    over a file it was made from (the config, its token file, an attachment); False after
    reporting why not."""
    for path, what in built.inputs if out.exists() else ():
        try:
            if os.path.samefile(out, path):
                fail(f"{out} is {what} the user-data is made from: write it to another file")
                return False
        except OSError:
            pass  # an input gone since, or unreadable: atomic_write says why it cannot write
    folder = (out.parent if not out.is_symlink() else Path(os.path.realpath(out)).parent)
    if not folder.is_dir():
        # A typo in a path is said, not made into folders (a dangling symlink's target's included).
        fail(f"cannot write {out}: no folder {folder}")
        return False
    try:
        atomic_write(out, built.data, 0o600)
    except OSError as err:
        fail(f"cannot write {out}: {err.strerror or err}")
        return False
    return True


def output_without_dry_run(args: argparse.Namespace, command: str) -> Optional[int]:
    """A launch's -o names --dry-run's user-data file: without --dry-run it would be ignored, so it
    is a usage error (EXIT_USAGE, said on stderr); None when fine."""
    if args.output is not None and not args.dry_run:
        print(f"vfarm {command}: error: -o/--output is where --dry-run writes the user-data: add --dry-run, or leave -o out", file=sys.stderr)
        return EXIT_USAGE
    return None


def print_dry_run(out: Path, commands: Sequence[str], as_json: bool) -> int:
    """What a launch's --dry-run prints: the commands that would launch the user-data written to
    OUT (control characters escaped), or both as JSON; EXIT_OK."""
    if as_json:
        print(json.dumps({"userdata": str(out), "commands": list(commands)}, indent=2))
    else:
        for line in commands:
            print(escape_controls(line))
    return EXIT_OK


def write_dry_run(args: argparse.Namespace, built: Built) -> Optional[Path]:
    """A launch's --dry-run: the user-data written to -o, else FILE's name + .userdata (from stdin:
    stdin.userdata); None after reporting why not."""
    out = Path(args.output or ("stdin" if args.file == "-" else Path(args.file).stem) + ".userdata")
    if not write_userdata(out, built):
        return None
    print(f"vfarm: wrote {len(built.data)} bytes of user-data to {shown_message(out)}; dry run, nothing launched", file=sys.stderr)
    return out
