"""`vfarm validate FILE...` and `vfarm plan FILE --vg-size SIZE`: the config file itself."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from ..cc_modules import table
from ..config import localfs as localfs_spec
from ..config import sizes
from ..display import shown_message
from ..errors import PlanError
from .common import EXIT_OK, EXIT_PROBLEM, EXIT_USAGE, add_command, fail, load_or_report, load_problems


def cmd_validate(args: argparse.Namespace) -> int:
    if args.files.count("-") > 1:
        print("vfarm validate: error: '-' (standard input) can be read once only", file=sys.stderr)
        return EXIT_USAGE
    if args.json:
        return _validate_json(args.files)
    ok = True
    for path in args.files:
        config = load_or_report(path)
        ok = ok and config is not None
        if config is not None and not args.quiet:
            print(f"{shown_message(path)}: valid ({', '.join(config.sections)})")
    return EXIT_OK if ok else EXIT_PROBLEM


def _validate_json(paths: list[str]) -> int:
    """Every file's verdict as one JSON list on stdout, each problem and warning with its line,
    column and the very message the text output shows (control characters escaped, credentials
    hidden); nothing on stderr. "file" is the path as given, for tools to open (JSON escapes it)."""
    report = []
    for path in paths:
        config, problems = load_problems(path)
        report.append({
            "file": path,
            "valid": config is not None,
            "sections": list(config.sections) if config is not None else [],
            "problems": [{"line": p.line, "column": p.col, "severity": "warning" if p.warning else "error", "message": shown_message(p.message)}
                         for p in problems],
        })
    print(json.dumps(report, indent=2))
    return EXIT_OK if all(entry["valid"] for entry in report) else EXIT_PROBLEM


# LVM counts extents in 512-byte sectors, in 32 bits (lvm2's vg_check_new_extent_size): a power
# of 2 sectors, or any multiple of 128 KiB (the lvm2 metadata format takes those too).
SECTOR = 512
EXTENT_MULTIPLE = 128 * 1024
MAX_EXTENT = (2**32 - 1) * SECTOR


def _size(text: str) -> int:
    try:
        return sizes.parse_bytes(text)
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from None


def volume_group_size(text: str) -> int:
    """An argparse type for --vg-size: a size above zero, like 100G."""
    n_bytes = _size(text)
    if n_bytes <= 0:
        raise argparse.ArgumentTypeError(f"expected a size above 0, like 100G, got {text!r}")
    return n_bytes


def extent_size(text: str) -> int:
    """An argparse type for --extent-size: a size `vgcreate -s` takes, in whole sectors: a power of
    2 (4M, its default), or a multiple of 128K (3M); below 2T."""
    n_bytes = _size(text)
    power_of_2 = n_bytes & (n_bytes - 1) == 0
    if n_bytes <= 0 or n_bytes % SECTOR or not (power_of_2 or n_bytes % EXTENT_MULTIPLE == 0) or n_bytes > MAX_EXTENT:
        raise argparse.ArgumentTypeError(f"expected an LVM extent size: a power of 2 from 512 bytes (like 4M) or a multiple of 128K "
                                         f"(like 3M), below 2T; got {text!r}")
    return n_bytes


def cmd_plan(args: argparse.Namespace) -> int:
    vg_bytes, extent = args.vg_size, args.extent_size
    if vg_bytes < extent:
        return fail(f"--vg-size {sizes.human(vg_bytes)} must hold at least one extent of {sizes.human(extent)}")
    config = load_or_report(args.file)
    if config is None:
        return EXIT_PROBLEM
    section = config.sections.get("localfs")
    if section is None:
        return fail(f"{args.file}: has no localfs section: nothing to plan")
    spec = localfs_spec.parse(section)
    total = vg_bytes // extent
    vg = localfs_spec.VolumeGroup(spec.vg or "VG", extent, total, total)
    try:
        parts = localfs_spec.resolve(spec, vg)
    except PlanError as err:
        return fail(f"{args.file}: {err}")
    used = sum(p.extents for p in parts)
    if args.json:
        doc = {"vg": {"name": vg.name, "extent_size": extent, "extents": total, "bytes": total * extent}, "parts": [p.as_dict() for p in parts],
               "free": {"extents": total - used, "bytes": (total - used) * extent}}
        print(json.dumps(doc, indent=2))
        return EXIT_OK
    rows = [(p.spec.name, str(p.spec.size), p.extents, sizes.human(p.bytes), p.spec.fs, p.spec.mount, p.spec.options) for p in parts]
    print(f"volume group {vg.name}: {total} extents of {sizes.human(extent)} ({sizes.human(total * extent)})")
    print(table.render(("NAME", "ASKED", "EXTENTS", "SIZE", "FS", "MOUNT", "OPTIONS"), rows, right=("EXTENTS", "SIZE")), end="")
    print(f"left free: {total - used} extents ({sizes.human((total - used) * extent)})")
    return EXIT_OK


def register(sub: Any) -> None:
    p = add_command(sub, "validate", "check config files; one FILE:LINE:COL: message per problem",
                    description="Check config files: syntax, every section against its schema and its rules, the files they name. "
                                "Every problem is one FILE:LINE:COL: message line on stderr, and so is every warning; with -q a file "
                                "without either prints nothing.",
                    examples=["vfarm validate examples/torino.yaml", "vfarm validate -q examples/condor.yaml examples/hybrid.yaml examples/longform.yaml",
                              "vfarm validate --json examples/torino.yaml examples/condor.yaml"],
                    exit_codes="exit codes: 0 every file valid, 1 a problem in any of them, 2 usage error")
    p.add_argument("files", nargs="+", metavar="FILE", help="a #multiple-config file ('-' for stdin)")
    p.add_argument("-q", "--quiet", action="store_true", help="no 'valid' line: print only the problems and warnings")
    p.add_argument("--json", action="store_true",
                   help="print one JSON list instead: per file its sections and each problem's line, column, severity and message")
    p.set_defaults(func=cmd_validate)

    p = add_command(sub, "plan", "show what localfs would create on a volume group of a given size",
                    description="Show what the config's localfs section would create on a volume group of --vg-size: each volume's "
                                "extents and size, its file system and mount point, and what is left free. Nothing is touched.",
                    examples=["vfarm plan examples/torino.yaml --vg-size 100G", "vfarm plan examples/torino.yaml --vg-size 1T --extent-size 32M --json"])
    p.add_argument("file", metavar="FILE", help="a #multiple-config file with a localfs section ('-' for stdin)")
    p.add_argument("--vg-size", required=True, type=volume_group_size, metavar="SIZE", help="size of the volume group, e.g. 100G")
    p.add_argument("--extent-size", default="4M", type=extent_size, metavar="SIZE",
                   help="physical extent size (default 4M, as vgcreate): a power of 2, or a multiple of 128K")
    p.add_argument("--json", action="store_true", help="print the plan as JSON")
    p.set_defaults(func=cmd_plan)
