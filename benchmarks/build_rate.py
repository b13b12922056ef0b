#!/usr/bin/env python3
"""Issue 8 point 5: user-data builds per second in one process, each for another instance.

Per-instance data: examples/torino.yaml with a different `cvmfs.local.quota-limit` per instance
(every build has its own input, so nothing per-config can be reused). The configs are loaded
before the clock starts (loading is `vfarm validate`'s work, not the builder's); the clock runs
over `mime.build(config, ...)` only, round-robin over the configs, for a fixed time per mode.
Modes as a launch would use them: `baked`, `include=URL` and `include --pin` with `vfarm build`'s
defaults (gzip auto, 16384-byte limit), `embed` with gzip always and a 1 MiB limit (EC2 refuses
it: over 16384 bytes even gzipped). "no cache" clears the builder's in-process caches before every
build (what every build cost before they existed), measured in the same run. Then a cProfile of
each mode says where the time goes. Target: 5,000 builds per second.

    benchmarks/build_rate.py [--seconds 3]
    benchmarks/build_rate.py --smoke
"""

from __future__ import annotations

import argparse
import cProfile
import io
import pstats
import sys
import time
from pathlib import Path
from typing import Any, Callable

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as common  # noqa: E402

NAME = "build-rate"
TITLE = "5. Builds per second in one process (per-instance user-data)"
TARGET = 5000.0
MODES: list[tuple[str, dict[str, Any]]] = [
    ("baked", {"handlers": "baked"}),
    ("include", {"handlers": "include=https://vfarm.example.org/handlers"}),
    ("include --pin", {"handlers": "include=https://vfarm.example.org/handlers", "pin": True}),
    ("embed (gzip always, 1 MiB limit)", {"handlers": "embed", "gzip": "always", "max_size": 1 << 20}),
]


def configs(count: int) -> list[Any]:
    from vfarm.config import loader as configuration

    text = (common.REPO / "examples/torino.yaml").read_text()
    assert "quota-limit: 18000" in text
    return [configuration.load_text(text.replace("quota-limit: 18000", f"quota-limit: {18000 + i}"), f"worker-{i}.yaml") for i in range(count)]


def clear_caches() -> None:
    from vfarm.mime_builder import bundle, checkpart

    for name in ("_LIBRARIES", "_HANDLER_NAMES"):
        getattr(bundle, name, {}).clear()
    for cached in (checkpart.cloud_config, bundle.minify):
        clear = getattr(cached, "cache_clear", None)
        if clear:
            clear()


def rate(build: Callable[[Any], Any], items: list[Any], seconds: float, before: Callable[[], None] = lambda: None,
         least: int = 3) -> tuple[float, int]:
    """Builds per second over at least SECONDS (and at least LEAST builds)."""
    build(items[0])  # warm: first-use imports are not the steady state
    n = 0
    start = time.perf_counter()
    while True:
        before()
        build(items[n % len(items)])
        n += 1
        elapsed = time.perf_counter() - start
        if elapsed >= seconds and n >= least:
            return n / elapsed, n


def profile(build: Callable[[Any], Any], items: list[Any], count: int) -> str:
    prof = cProfile.Profile()
    prof.enable()
    for i in range(count):
        build(items[i % len(items)])
    prof.disable()
    out = io.StringIO()
    stats = pstats.Stats(prof, stream=out)
    total = stats.total_tt  # type: ignore[attr-defined]
    rows = []
    entries: dict[Any, Any] = stats.stats  # type: ignore[attr-defined]
    for (filename, line, func), (_cc, _nc, tt, _ct, _callers) in sorted(entries.items(), key=lambda kv: -kv[1][2])[:6]:
        where = Path(filename).name if filename != "~" else "builtin"
        rows.append(f"{func} ({where}:{line}) {100 * tt / total:.0f}%")
    return "; ".join(rows)


def run(args: argparse.Namespace, section: common.Section) -> None:
    from vfarm.mime_builder import mime

    seconds = 0.01 if args.smoke else args.seconds
    items = configs(4 if args.smoke else 200)
    rows: list[list[object]] = []
    profiles: list[str] = []
    best = 0.0
    for label, options in (MODES[::2] if args.smoke else MODES):  # smoke: baked and include --pin
        def build(config: Any, options: dict[str, Any] = options) -> Any:
            return mime.build(config, **options)

        sample = build(items[0])
        cold, n_cold = rate(build, items, min(seconds, 1.0), clear_caches, 1 if args.smoke else 3)
        warm, n_warm = rate(build, items, seconds, least=1 if args.smoke else 3)
        best = max(best, warm)
        rows.append([label, len(sample.data), "gzip" if sample.compressed else "plain", f"{cold:,.1f}", f"{warm:,.0f}", f"{warm / cold:,.0f}x",
                     "met" if warm >= TARGET else "MISSED", n_warm])
        profiles.append(f"- {label}: {profile(build, items, 1 if args.smoke else max(20, int(warm)))}")
    section.add(f"{len(items)} distinct per-instance configs, round-robin; {seconds:g} s per figure (no-cache figures: up to 1 s).\n")
    section.add(common.table(["mode", "bytes", "", "builds/s, no cache (before)", "builds/s", "speed-up", "target 5,000/s", "builds timed"], rows))
    section.add("Where the time goes now (cProfile, share of own time, top 6 functions):\n")
    section.add("\n".join(profiles) + "\n")
    if best < TARGET:
        section.add(TARGET_NOTE)


TARGET_NOTE = """Target missed in every mode. Why, and what would reach it:
- Bundling was ~99 % of an `embed`/`include` build (AST walk and minify of every module on
  every build: the "no cache" column). The builder now keeps each bundle per process, checked
  against the stat of every file and folder it came from (mime_builder/bundle.py `_LIBRARIES`),
  lists the part-handlers again only when their folder changed, memoizes `minify`, and parses
  the final check's YAML guard once per script (mime_builder/checkpart.py);
  tests/test_build_cache.py fails without each of them.
- `baked` is now bound by PyYAML's pure-Python emitter dumping the two per-instance sections
  (about 0.4 ms each). Reaching 5,000/s (200 us a build) needs a hand-written emitter for the
  section parts (they are small maps of scalars and lists) or libyaml's CSafeDumper, once shown to
  give the same bytes as the pure emitter for every config the schemas allow.
- `include` and `embed` are bound by gzip -9 of the constant handler/check bytes (about 1.3 ms
  for include's 31 KB, 6 ms for embed's 104 KB on this CPU) and by hashing them for the boundary.
  Compressing the constant parts once needs them FIRST in the MIME and the boundary derived from
  them alone; then a per-instance build is `zlib.compressobj().copy()` of the prefix state plus
  the small config tail (deflate output is the same however the input is split): tens of
  microseconds. That is a change of the user-data layout (the config parts precede the check's
  part today), left for the builder's owner.
"""


def extra(p: argparse.ArgumentParser) -> None:
    p.add_argument("--seconds", type=float, default=3.0, help="seconds per figure (default 3)")


if __name__ == "__main__":
    sys.exit(common.main(NAME, TITLE, "build_rate.py", __doc__ or "", run, extra))
