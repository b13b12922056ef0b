"""`vfarm scale`: the queue monitor's command line.

`vfarm scale FARM --snapshot SNAP.json [--json]` decides from a saved snapshot and changes nothing;
`vfarm scale FARM --once --dry-run [--save-snapshot FILE]` discovers live (pool and cloud), decides,
and changes nothing. Applying the decisions and the loop are not there yet.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
import tempfile
from pathlib import Path
from typing import Any, Optional

from ..mime_builder import table
from . import discover
from . import plan as planner
from . import spec as scale_spec

EXIT_OK, EXIT_PROBLEM = 0, 1


def _fail(message: str) -> int:
    print(f"vfarm: {message}", file=sys.stderr)
    return EXIT_PROBLEM


def load_spec(path: str) -> Optional[scale_spec.ScaleSpec]:
    """The farm file's `scale` section, or None after printing why not."""
    from ..mime_builder.cli import load_or_report

    config = load_or_report(path)
    if config is None:
        return None
    section = config.sections.get("scale")
    if section is None:
        _fail(f"{path}: has no scale section: nothing to scale")
        return None
    return scale_spec.parse(section)


def read_snapshot(path: str) -> dict[str, Any]:
    """A snapshot file ('-' for stdin), checked; SnapshotError with a one-line reason otherwise."""
    try:
        if path == "-":
            text = sys.stdin.read()
        else:
            with open(path, encoding="utf-8") as handle:
                text = handle.read()
    except OSError as err:
        raise planner.SnapshotError(f"{path}: cannot read: {err.strerror or err}") from None
    except UnicodeDecodeError:
        raise planner.SnapshotError(f"{path}: not UTF-8 text") from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as err:
        raise planner.SnapshotError(f"{path}: not JSON: {err.msg} at line {err.lineno} column {err.colno}") from None
    try:
        return planner.check_snapshot(data)
    except planner.SnapshotError as err:
        raise planner.SnapshotError(f"{path}: {err}") from None


def _age(seconds: Optional[float]) -> str:
    if seconds is None:
        return "-"
    seconds = max(0.0, seconds)
    if seconds < 120:
        return f"{seconds:.0f}s"
    if seconds < 7200:
        return f"{seconds / 60:.0f}m"
    return f"{seconds / 3600:.1f}h"


def render(result: dict[str, Any], spec: scale_spec.ScaleSpec) -> str:
    """The plan as an operator reads it: the figures, the decisions, then every farm instance."""
    lines = [
        f"farm {spec.name}: {result['waiting']} waiting job(s), demand {result['demand']} CPU(s), "
        f"supply {result['supply']} CPU(s), {result['active']} active worker(s) (min {spec.min_vms}, max {spec.max_vms})"
    ]
    rows = []
    for decision in result["decisions"]:
        target = decision.get("instance") or (str(decision["count"]) if decision["action"] != "hold" else "-")
        rows.append((decision["action"], target, decision["reason"]))
    if not rows:
        rows.append(("nothing", "-", "no instance to launch, drain or terminate"))
    out = "\n".join(lines) + "\n\n" + table.render(("ACTION", "WHAT", "REASON"), rows)
    if result["instances"]:
        inst_rows = [(i["id"], i["state"], _age(i["age"]), i["slots"], i["claimed"], i["reason"]) for i in result["instances"]]
        out += "\n" + table.render(("INSTANCE", "STATE", "AGE", "SLOTS", "CLAIMED", "WHY"), inst_rows, right=("AGE", "SLOTS", "CLAIMED"))
    return out


def _token_dir(spec: scale_spec.ScaleSpec, farm: str, stack: contextlib.ExitStack) -> Optional[str]:
    """pool.token-file as the private token directory HTCondor reads (None: HTCondor's own)."""
    name = spec.pool.get("token-file")
    if not name:
        return None
    path = Path(farm).parent / name
    directory = stack.enter_context(tempfile.TemporaryDirectory(prefix="vfarm-token-"))
    target = Path(directory) / "scaler"
    try:
        target.write_bytes(path.read_bytes())
    except OSError as err:
        raise discover.DiscoverError(f"pool.token-file {path}: cannot read: {err.strerror or err}") from None
    target.chmod(0o600)
    return directory


def cmd_scale(args: argparse.Namespace) -> int:
    spec = load_spec(args.farm)
    if spec is None:
        return EXIT_PROBLEM
    if args.snapshot and (args.once or args.save_snapshot):
        return _fail("--snapshot decides from a saved snapshot: it does not go with --once or --save-snapshot")
    if not args.snapshot and not args.once:
        return _fail("the loop is not available yet: use --once --dry-run, or --snapshot SNAP.json")
    if args.once and not args.dry_run:
        return _fail("applying decisions is not available yet: add --dry-run to see what one cycle would do")
    try:
        if args.snapshot:
            snapshot = read_snapshot(args.snapshot)
        else:
            with contextlib.ExitStack() as stack:
                snapshot = discover.snapshot(spec, _token_dir(spec, args.farm, stack))
            if args.save_snapshot:
                Path(args.save_snapshot).write_text(json.dumps(snapshot, indent=1, sort_keys=True) + "\n", encoding="utf-8")
        result = planner.plan(snapshot, spec)
    except (planner.SnapshotError, discover.DiscoverError) as err:
        return _fail(str(err))
    except OSError as err:
        return _fail(f"{args.save_snapshot}: cannot write: {err.strerror or err}")
    for warning in result["warnings"]:
        print(f"vfarm: warning: {warning}", file=sys.stderr)
    if args.json:
        print(json.dumps(result, indent=2, sort_keys=True))
    else:
        print(render(result, spec), end="")
    return EXIT_OK


def register(subparsers: Any) -> None:
    p = subparsers.add_parser("scale", help="the queue monitor: launch, drain and terminate workers from the HTCondor queue")
    p.add_argument("farm", metavar="FARM", help="the farm file (its scale section)")
    p.add_argument("--snapshot", metavar="SNAP.json", help="decide from a saved snapshot ('-' for stdin) and change nothing")
    p.add_argument("--once", action="store_true", help="run one live cycle (discover from the pool and the cloud, then plan)")
    p.add_argument("--dry-run", action="store_true", help="decide, print, change nothing")
    p.add_argument("--save-snapshot", metavar="FILE", help="write what the live cycle saw, for a later --snapshot")
    p.add_argument("--json", action="store_true", help="print the plan as JSON")
    p.set_defaults(func=cmd_scale)
