"""The `vfarm` command line.

Exit codes: 0 success; 1 bad input or a failed result (the message says which); 2 usage error.
Bad input never shows a traceback.
"""

from __future__ import annotations

import argparse
import importlib
import json
import sys
from collections.abc import Sequence
from typing import Optional

from .. import __version__
from ..cc_modules import localfs_spec, sizes
from ..cc_modules.display import shown_message
from . import config as configuration
from . import table

EXIT_OK, EXIT_PROBLEM, EXIT_USAGE = 0, 1, 2

# Modules that add sub-commands of their own: each has `register(subparsers)`.
COMMAND_MODULES: list[str] = [
    ".commands", "..scaler.commands", "..clouds.cli_image", "..clouds.commands", "..clouds.cli_openstack", "..clouds.cli_local", ".summary"
]
# Which of them a top-level command needs: a run imports only those (`vfarm build` never loads
# boto3, the scaler or qemu code); help, or a command not listed here, imports them all.
COMMANDS: dict[str, list[str]] = {
    "build": [".commands"],
    "inspect": [".commands"],
    "handlers": [".commands"],
    "summary": [".summary"],
    "scale": ["..scaler.commands"],
    "image": ["..clouds.cli_image"],
    "launch": ["..clouds.commands", "..clouds.cli_openstack", "..clouds.cli_local"],
    "instances": ["..clouds.commands"],
    "terminate": ["..clouds.commands"],
    "validate": [],
    "plan": [],
}


def _fail(message: str) -> int:
    print(f"vfarm: {shown_message(message)}", file=sys.stderr)
    return EXIT_PROBLEM


def load_or_report(path: str) -> Optional[configuration.Config]:
    """Load a config, printing every problem (and warning) as FILE:LINE:COL on stderr."""
    try:
        config = configuration.load_file(path)
    except configuration.ConfigError as err:
        for problem in err.problems:
            print(shown_message(problem), file=sys.stderr)
        return None
    for warning in config.warnings:
        print(shown_message(warning), file=sys.stderr)
    return config


def cmd_validate(args: argparse.Namespace) -> int:
    ok = True
    for path in args.files:
        config = load_or_report(path)
        ok = ok and config is not None
        if config is not None and not args.quiet:
            print(f"{path}: valid ({', '.join(config.sections)})")
    return EXIT_OK if ok else EXIT_PROBLEM


def cmd_plan(args: argparse.Namespace) -> int:
    try:
        vg_bytes = sizes.parse_bytes(args.vg_size)
        extent = sizes.parse_bytes(args.extent_size)
    except ValueError as err:
        return _fail(str(err))
    if extent <= 0 or vg_bytes < extent:
        return _fail(f"--vg-size {args.vg_size} must hold at least one extent of {args.extent_size}")
    config = load_or_report(args.file)
    if config is None:
        return EXIT_PROBLEM
    section = config.sections.get("localfs")
    if section is None:
        return _fail(f"{args.file}: has no localfs section: nothing to plan")
    spec = localfs_spec.parse(section)
    total = vg_bytes // extent
    vg = localfs_spec.VolumeGroup(spec.vg or "VG", extent, total, total)
    try:
        parts = localfs_spec.resolve(spec, vg)
    except localfs_spec.PlanError as err:
        return _fail(f"{args.file}: {err}")
    if args.json:
        doc = {"vg": {"name": vg.name, "extent_size": extent, "extents": total, "bytes": total * extent}, "parts": [p.as_dict() for p in parts]}
        print(json.dumps(doc, indent=2))
        return EXIT_OK
    rows = [(p.spec.name, str(p.spec.size), p.extents, sizes.human(p.bytes), p.spec.fs, p.spec.mount, p.spec.options) for p in parts]
    used = sum(p.extents for p in parts)
    print(f"volume group {vg.name}: {total} extents of {sizes.human(extent)} ({sizes.human(total * extent)})")
    print(table.render(("NAME", "ASKED", "EXTENTS", "SIZE", "FS", "MOUNT", "OPTIONS"), rows, right=("EXTENTS", "SIZE")), end="")
    print(f"left free: {total - used} extents ({sizes.human((total - used) * extent)})")
    return EXIT_OK


def build_parser(argv: Optional[Sequence[str]] = None) -> argparse.ArgumentParser:
    """The parser; with ARGV, only the sub-command modules its command needs are imported."""
    parser = argparse.ArgumentParser(
        prog="vfarm",
        description="Turn one #multiple-config file into cloud-init user-data for HEP batch workers, and run the farm.",
        epilog="Exit codes: 0 success, 1 bad input or a failed result, 2 usage error.",
    )
    parser.add_argument("--version", action="version", version=f"vfarm {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    p = sub.add_parser("validate", help="check config files; one FILE:LINE:COL: message per problem")
    p.add_argument("files", nargs="+", metavar="FILE")
    p.add_argument("-q", "--quiet", action="store_true", help="print nothing when valid")
    p.set_defaults(func=cmd_validate)

    p = sub.add_parser("plan", help="show what localfs would create on a volume group of a given size")
    p.add_argument("file", metavar="FILE")
    p.add_argument("--vg-size", required=True, metavar="SIZE", help="size of the volume group, e.g. 100G")
    p.add_argument("--extent-size", default="4M", metavar="SIZE", help="physical extent size (default 4M, as vgcreate)")
    p.add_argument("--json", action="store_true", help="print the plan as JSON")
    p.set_defaults(func=cmd_plan)

    command = next((a for a in (sys.argv[1:] if argv is None else argv) if not a.startswith("-")), None)
    for name in COMMANDS.get(command or "", COMMAND_MODULES):
        importlib.import_module(name, __package__).register(sub)
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser(argv).parse_args(argv)
    try:
        result: int = args.func(args)
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        return EXIT_OK
    except (RecursionError, MemoryError) as err:
        # A last guard: every reader bounds its input, but a bound missed must still be one line.
        return _fail(f"{args.command}: the input is too large or too deeply nested to handle ({type(err).__name__})")
    return result


if __name__ == "__main__":
    raise SystemExit(main())
