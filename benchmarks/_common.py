"""Shared pieces of the benchmarks: machine facts, timing statistics, BENCHMARKS.md sections.

Every benchmark writes one section of BENCHMARKS.md (repo root), delimited by HTML comments
`<!-- bench:NAME -->` ... `<!-- /bench:NAME -->`; writing a section replaces only that section
and keeps the others. Each section names the exact command that produced it and the machine
facts at the time (nproc, CPU model, load average before and after).
"""

from __future__ import annotations

import argparse
import os
import platform
import re
import shlex
import statistics
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional

REPO = Path(__file__).resolve().parent.parent
DEFAULT_OUTPUT = REPO / "BENCHMARKS.md"
CACHE = Path(os.environ.get("VFARM_CACHE", "/var/cache/vfarm")) / "benchmarks"
HEADER = """# vfarm benchmarks

Written by `benchmarks/run.py` (or one script of `benchmarks/`); each section says the command
that produced it and the machine it ran on. Ratios are measured within ONE run, with the two
sides interleaved, because these machines are noisy (2 shared cores, other engineers' VM boots).
Re-run a section with the command in it; `benchmarks/README.md` says what each one measures.
A command with `--output FILE` wrote its section into a scratch file, copied here unchanged
(so that benchmarks could run while other sections were being written); without `--output` a
script writes this file directly (a `--smoke` run, which measures nothing, writes a scratch
file instead). Targets not met say why and what would meet them.
"""


def load() -> str:
    try:
        return " ".join(f"{x:.2f}" for x in os.getloadavg())
    except OSError:
        return "?"


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "?"


def machine_facts() -> str:
    return f"nproc {os.cpu_count()}, CPU {cpu_model()}, Python {platform.python_version()}, load average {load()}"


def median(values: Sequence[float]) -> float:
    return statistics.median(values) if values else float("nan")


def percentile(values: Sequence[float], q: float) -> float:
    """The q-th percentile (0..100), nearest-rank: a value that occurred."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    rank = max(1, -(-len(ordered) * q // 100))
    return ordered[int(rank) - 1]


def fmt_ms(seconds: float) -> str:
    return f"{seconds * 1000:.1f} ms"


def table(header: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """A GitHub markdown table."""
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


@dataclass
class Section:
    name: str
    title: str
    command: str
    started: float = field(default_factory=time.time)
    facts_before: str = field(default_factory=machine_facts)
    body: list[str] = field(default_factory=list)

    def add(self, text: str) -> None:
        self.body.append(text.rstrip("\n") + "\n")

    def render(self) -> str:
        when = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(self.started))
        took = time.time() - self.started
        out = [f"<!-- bench:{self.name} -->", f"## {self.title}", "",
               f"Command: `{self.command}`  ", f"Run: {when}, {took:.0f} s  ",
               f"Machine before: {self.facts_before}  ", f"Load average after: {load()}", ""]
        out += self.body
        out.append(f"<!-- /bench:{self.name} -->")
        return "\n".join(out) + "\n"


def section_pattern(name: str) -> re.Pattern[str]:
    """Section NAME's block, markers included; group 1 is what lies between them."""
    return re.compile(rf"<!-- bench:{re.escape(name)} -->(.*?)<!-- /bench:{re.escape(name)} -->\n?", re.S)


def write_section(section: Section, output: Path) -> None:
    """Replace SECTION's block in OUTPUT (created with a header when missing), keep the others."""
    text = output.read_text(encoding="utf-8") if output.exists() else HEADER
    block = section.render()
    pattern = section_pattern(section.name)
    if pattern.search(text):
        text = pattern.sub(lambda _m: block, text, count=1)
    else:
        text = text.rstrip("\n") + "\n\n" + block
    tmp = output.with_name(f".{output.name}.tmp")
    tmp.write_text(text, encoding="utf-8")
    tmp.replace(output)


def command_line(script: str, argv: Sequence[str]) -> str:
    return " ".join(shlex.quote(a) for a in [f"benchmarks/{script}", *argv])


def parser(description: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--smoke", action="store_true", help="a tiny run (seconds, no VM) that only proves the script works")
    p.add_argument("--output", type=Path, help="the markdown file to write the section into (default BENCHMARKS.md; "
                                               "a --smoke run: a scratch file under the temporary folder)")
    return p


def output_path(output: Optional[Path], smoke: bool) -> Path:
    """Where a run writes: --output if given, else BENCHMARKS.md. A smoke run measures nothing, so
    without --output it writes a scratch file of its own and never touches BENCHMARKS.md."""
    if output is not None:
        return output
    if smoke:
        return Path(tempfile.mkdtemp(prefix="vfarm-bench-smoke-")) / "BENCHMARKS.md"
    return DEFAULT_OUTPUT


Runner = Callable[[argparse.Namespace, Section], None]


def main(name: str, title: str, script: str, description: str, run: Runner,
         extra: Optional[Callable[[argparse.ArgumentParser], None]] = None, argv: Optional[Sequence[str]] = None) -> int:
    """The common entry point of a benchmark script: parse, run, write its section."""
    p = parser(description)
    if extra:
        extra(p)
    args_list = list(sys.argv[1:] if argv is None else argv)
    args = p.parse_args(args_list)
    args.output = output_path(args.output, args.smoke)
    section = Section(name, title + (" (smoke run: not a measurement)" if args.smoke else ""), command_line(script, args_list))
    run(args, section)
    write_section(section, args.output)
    print(f"{script}: wrote section '{name}' of {args.output}", file=sys.stderr)
    return 0
