#!/usr/bin/env python3
"""Issue 8 point 2: import cost of each bundled handler under the IMAGE's Python.

The cached mmdebstrap rootfs of each test image (bookworm: Python 3.11, trixie: Python 3.13) is
unpacked once under /var/cache/vfarm/benchmarks/rootfs/ (rebuilt when the tar changes) and every
measurement runs `chroot ROOT python3 ...`, the image's own interpreter, PyYAML and jsonschema.
Each file is what an instance gets: the part-handlers as `vfarm handlers` writes them (include
mode), embed mode's library part plus a thin handler, and the final check's bundled script.

Two figures per file, each the median of N fresh interpreters, timed inside the interpreter with
perf_counter around the import (the way cloud-init imports a part-handler: a module from a file):
- "alone": a fresh interpreter (PyYAML and jsonschema imported by the handler itself);
- "in cloud-init": PyYAML and jsonschema imported first, as they are in cloud-init's process:
  cloudinit/cmd/main.py imports cloudinit.config.schema at its top, which imports jsonschema at
  its top (both in 22.4.2 and 25.1.4), so both are loaded before any part-handler runs.
Target: under 50 ms each.

    benchmarks/import_cost.py [--runs 7] [--suite bookworm --suite trixie]
    benchmarks/import_cost.py --smoke          # the host's Python, no chroot, 1 run
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Optional

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as common  # noqa: E402

NAME = "import-cost"
TITLE = "2. Import cost of each bundled handler under the image's Python"
TARGET = 0.050
WORK = "/tmp/vfarm-bench-import"  # inside the chroot
SCRIPT_ENTRIES = {"vfarm-check.py": "cc_modules.check"}

# Runs in the image's python3: import FILE as a module, print seconds.
# argv: FILE alone|preload ENTRY|- DEPENDENCY... (ENTRY: a module of a bundled script to import,
# since a script's modules load only under __main__).
PROBE = r"""
import sys, time, importlib, importlib.util
path, preload, entry = sys.argv[1], sys.argv[2] == "preload", sys.argv[3]
if preload:
    import yaml, jsonschema
    jsonschema.Draft7Validator({"type": "object"}).is_valid({})
name = "vfarm_bench_" + path.rsplit("/", 1)[-1].split(".")[0].replace("-", "_")
t = time.perf_counter()
for dep in sys.argv[4:]:
    spec = importlib.util.spec_from_file_location("dep_" + str(len(sys.modules)), dep)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
spec = importlib.util.spec_from_file_location(name, path)
mod = importlib.util.module_from_spec(spec)
spec.loader.exec_module(mod)
if hasattr(mod, "list_types"):
    mod.list_types()
if entry != "-":
    importlib.import_module(mod._P + "." + entry)
print(time.perf_counter() - t)
"""


def files(into: Path) -> dict[str, list[str]]:
    """label -> [file, its dependencies first...] written into INTO (names relative to it)."""
    from vfarm.mime_builder import bundle, checkpart

    into.mkdir(parents=True, exist_ok=True)
    out: dict[str, list[str]] = {}
    for filename, source in sorted(bundle.bundle_all().items()):
        (into / filename).write_text(source)
        out[f"{filename} (include)"] = [filename]
    names = [n for n in ("localfs", "cvmfs") if n in bundle.handler_names()]
    lib = bundle.bundle_library(names)
    (into / "embed-library.py").write_text(lib.source)
    for name in names:
        thin = f"embed-{name}.py"
        (into / thin).write_text(bundle.thin_handler(name, lib.package))
        out[f"embed: library ({', '.join(names)}) + thin {name} handler"] = [thin, "embed-library.py"]
    (into / "vfarm-check.py").write_text(bundle.bundle_module("cc_modules.check"))
    out[f"{checkpart.CHECK_PATH} (final check script)"] = ["vfarm-check.py"]
    return out


def unpacked_rootfs(suite: str) -> Path:
    """The image's rootfs, unpacked once per tar (the tar is keyed by the image recipe)."""
    from vfarm.clouds import images

    tar = images.rootfs_tar(suite)
    base = common.CACHE / "rootfs"
    root = base / tar.stem
    if (root / "usr/bin/python3").exists():
        return root
    base.mkdir(parents=True, exist_ok=True)
    for old in base.glob(f"{suite}-*"):
        shutil.rmtree(old, ignore_errors=True)
    partial = base / f".{tar.stem}.partial"
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir()
    subprocess.run(["tar", "--numeric-owner", "-xpf", str(tar), "-C", str(partial), "--exclude=./boot", "--exclude=./usr/lib/modules"],
                   check=True, timeout=900)
    partial.rename(root)
    return root


def measure(python: list[str], workdir: str, entry: list[str], preload: bool, runs: int) -> list[float]:
    """Seconds to import ENTRY[0] (after its dependencies ENTRY[1:]) in RUNS fresh interpreters."""
    argv = [*python, "-c", PROBE, f"{workdir}/{entry[0]}", "preload" if preload else "alone", SCRIPT_ENTRIES.get(entry[0], "-"),
            *[f"{workdir}/{d}" for d in entry[1:]]]
    times = []
    for _ in range(runs):
        done = subprocess.run(argv, capture_output=True, text=True, timeout=120, env={"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8"})
        if done.returncode != 0:
            lines = done.stderr.strip().splitlines()
            raise RuntimeError(f"{entry[0]}: {lines[-1] if lines else done.returncode}")
        times.append(float(done.stdout.strip().splitlines()[-1]))
    return times


def python_version(python: list[str]) -> str:
    done = subprocess.run([*python, "-c", "import sys, yaml, jsonschema; print(sys.version.split()[0], 'PyYAML', yaml.__version__, "
                           "'jsonschema', getattr(jsonschema, '__version__', '?'))"],
                          capture_output=True, text=True, timeout=60, env={"PATH": "/usr/bin:/bin"})
    return done.stdout.strip() or done.stderr.strip()


def run(args: argparse.Namespace, section: common.Section) -> None:
    rows: list[list[object]] = []
    worst: Optional[tuple[float, str]] = None
    targets: list[tuple[str, list[str], Path, str]] = []  # (label, python argv, workdir on the host, workdir for it)
    if args.smoke:
        host = Path(common.CACHE if os.access(common.CACHE.parent, os.W_OK) else "/tmp") / "import-smoke"
        shutil.rmtree(host, ignore_errors=True)
        targets.append(("host (smoke)", [sys.executable], host, str(host)))
        entries = dict(list(files(host).items())[-1:])  # the check script (a bundled script's entry too)
        runs = 1
    else:
        runs = args.runs
        entries = {}
        for suite in args.suite or ["bookworm", "trixie"]:
            root = unpacked_rootfs(suite)
            work = root / WORK.lstrip("/")
            shutil.rmtree(work, ignore_errors=True)
            entries = files(work)
            targets.append((suite, [shutil.which("chroot") or "/usr/sbin/chroot", str(root), "python3"], work, WORK))
    for label, python, hostdir, workdir in targets:
        section.body.append(f"- {label}: Python {python_version(python)}\n")
        for what, entry in entries.items():
            alone = measure(python, workdir, entry, False, runs)
            warm = measure(python, workdir, entry, True, runs)
            size = sum((hostdir / f).stat().st_size for f in entry)
            med_alone, med_warm = common.median(alone), common.median(warm)
            rows.append([label, what, size, common.fmt_ms(med_alone), common.fmt_ms(med_warm),
                         "met" if med_warm < TARGET else "MISSED"])
            if worst is None or med_warm > worst[0]:
                worst = (med_warm, f"{what} on {label}")
    section.add(f"\nMedian of {runs} fresh interpreter(s) each; times include compiling the bundled sources (a bundle "
                "carries source, not bytecode) and running the handler modules' top level. The target applies to the "
                "\"in cloud-init\" column: cloud-init's own command line imports PyYAML and jsonschema (cloudinit/cmd/main.py -> "
                "cloudinit.config.schema, in 22.4.2 and 25.1.4) before any part-handler runs. The \"alone\" column is over "
                "50 ms mostly because of those two imports, which a handler never pays inside cloud-init.\n")
    header = ["image", "file", "bytes", "alone (imports yaml+jsonschema too)", "in cloud-init (yaml+jsonschema loaded)", "target < 50 ms (in cloud-init)"]
    section.add(common.table(header, rows))
    if worst:
        section.add(f"Slowest in cloud-init's process: {worst[1]}, {common.fmt_ms(worst[0])}.")


def extra(p: argparse.ArgumentParser) -> None:
    p.add_argument("--runs", type=int, default=7, help="fresh interpreters per figure (default 7)")
    p.add_argument("--suite", action="append", choices=("bookworm", "trixie"), help="image(s) to measure (default both)")


if __name__ == "__main__":
    sys.exit(common.main(NAME, TITLE, "import_cost.py", __doc__ or "", run, extra))
