#!/usr/bin/env python3
"""The one entry point: run benchmarks by name, each writing its own section of BENCHMARKS.md.

    benchmarks/run.py                          # all, in the order below (the boots take ~10 min)
    benchmarks/run.py cold-start build-rate    # some
    benchmarks/run.py --smoke --output /tmp/B.md   # every script in its tiny mode (seconds, no VM)
    benchmarks/run.py --list

Each benchmark is a script of its own (benchmarks/<script>.py, see benchmarks/README.md) run as a
fresh process, so one's imports and caches never flatter another's figures. Options after `--`
go to every script (e.g. `-- --runs 5`); a script's own options are in its --help.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import _common as common  # noqa: E402

BENCHMARKS = {
    "boot-overhead": "boot_overhead.py",
    "import-cost": "import_cost.py",
    "cold-start": "cold_start.py",
    "userdata-size": "userdata_size.py",
    "build-rate": "build_rate.py",
    "scale-sim": "scale_sim.py",
}


def main(argv: list[str]) -> int:
    extra: list[str] = []
    if "--" in argv:
        extra = argv[argv.index("--") + 1 :]
        argv = argv[: argv.index("--")]
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("names", nargs="*", metavar="NAME", help=f"benchmarks to run (default all): {', '.join(BENCHMARKS)}")
    p.add_argument("--smoke", action="store_true", help="each script's tiny mode: proves they work, measures nothing")
    p.add_argument("--output", type=Path, help="markdown file to write (default BENCHMARKS.md; with --smoke a scratch file)")
    p.add_argument("--list", action="store_true", help="list the benchmarks and exit")
    args = p.parse_args(argv)
    if args.list:
        for name, script in BENCHMARKS.items():
            print(f"{name}\tbenchmarks/{script}")
        return 0
    unknown = [n for n in args.names if n not in BENCHMARKS]
    if unknown:
        print(f"run.py: unknown benchmark(s) {', '.join(unknown)}; known: {', '.join(BENCHMARKS)}", file=sys.stderr)
        return 1
    output = common.output_path(args.output, args.smoke)  # one scratch file for every smoke section
    failed = []
    for name in args.names or list(BENCHMARKS):
        argv_ = [sys.executable, str(HERE / BENCHMARKS[name]), "--output", str(output), *(["--smoke"] if args.smoke else []), *extra]
        print(f"run.py: {name}: {' '.join(argv_[1:])}", file=sys.stderr, flush=True)
        if subprocess.run(argv_).returncode != 0:
            failed.append(name)
    if failed:
        print(f"run.py: failed: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
