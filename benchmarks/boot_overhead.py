#!/usr/bin/env python3
"""Issue 8 point 1: contextualization overhead on a real boot, vfarm's handler against a plain
shell script that runs the same commands on the same image and the same data disk.

- vfarm: the localfs section of examples/torino.yaml, `embed` user-data (the part-handler runs in
  cloud-init's init stage). Its time is the status record's "seconds" (/var/log/vfarm/
  localfs.status.json: from the record's start, before the section is validated, to its end: so
  validation, discover (lvm fullreport/blkid/findmnt/swapon), plan, apply and the records).
- shell: a `#cloud-boothook` (same stage as the part-handler) generated from the argv lists the
  FIRST vfarm boot recorded: the same lvcreate/mkfs/mkswap/mkdir/mount/swapon/chmod, each logged
  with its output (`set -x` into a log file, as vfarm's runner logs; bash's $EPOCHREALTIME times
  each command without a fork), the same /etc/fstab written
  atomically, and a status file. It timestamps itself (`date +%s.%N` at its first and last line).
- within each vfarm boot: its record's per-step seconds give the time spent in the applied
  commands; the rest is vfarm's own (validation, discover, plan, records). That ratio does not
  suffer from the boot-to-boot noise of a shared host.
Boots alternate vfarm, shell, vfarm, shell... so load drift hits both sides alike. Each boot is a
fresh copy of the cached bookworm test image and of the cached `vg_local` data disk (clouds/local.py).

    benchmarks/boot_overhead.py [--boots 3] [--image bookworm]    # ~1 minute per boot under TCG
    benchmarks/boot_overhead.py --smoke                          # no VM: builds both user-data
"""

from __future__ import annotations

import argparse
import json
import re
import shlex
import shutil
import sys
from pathlib import Path
from typing import Any, Optional

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as common  # noqa: E402

NAME = "boot-overhead"
TITLE = "1. Contextualization overhead on a real boot (vfarm localfs vs a shell script)"
TARGET = 1.05
RESULT_DIR = "/var/log/vfarm-bench"


def localfs_config() -> Any:
    """torino.yaml's localfs section alone (cvmfs would install packages: not what is compared)."""
    import yaml

    from vfarm.config import loader as configuration

    torino = yaml.safe_load((common.REPO / "examples/torino.yaml").read_text())
    text = "#multiple-config\n" + yaml.safe_dump({"localfs": torino["localfs"]}, sort_keys=False)
    return configuration.load_text(text, "torino-localfs.yaml")


def planned_steps(vg: dict[str, int]) -> list[dict[str, Any]]:
    """vfarm's plan for the fresh image (for --smoke: what the first real boot would record)."""
    from vfarm.cc_modules import cc_localfs
    from vfarm.cc_modules.steps import WriteFile
    from vfarm.config import localfs as localfs_spec

    section = localfs_config().sections["localfs"]
    facts = cc_localfs.Facts(vgs={"vg_local": dict(vg)}, existing_dirs=["/home", "/tmp"], fstab="LABEL=root / ext4 defaults 0 1\n")
    plan = cc_localfs.plan(localfs_spec.parse(section), facts)
    return [{**step.listing(), "content": step.content} if isinstance(step, WriteFile) else step.listing() for step in plan.steps]


def recorded_steps(status: dict[str, Any], fstab: str) -> list[dict[str, Any]]:
    """The applied steps of a vfarm status record (argv lists), with the fstab it wrote."""
    steps: list[dict[str, Any]] = []
    for step in status.get("steps", []):
        if step.get("argv"):
            steps.append({"action": step["action"], "argv": [str(a) for a in step["argv"]]})
        elif step.get("action") == "write-fstab":
            steps.append({"action": "write-fstab", "path": step.get("path", "/etc/fstab"), "content": fstab})
    return steps


def shell_script(steps: list[dict[str, Any]]) -> str:
    """A boothook doing STEPS as plainly as a site admin would, logging like vfarm's runner."""
    lines = [
        "#cloud-boothook",
        "#!/bin/bash",
        "# vfarm benchmark: the same commands as vfarm's localfs handler, as a plain shell script.",
        "start=$(date +%s.%N)",
        "set -e",
        f"out={RESULT_DIR}",
        'mkdir -p "$out"',
        # Every command and its output logged, as vfarm's runner does, without a fork per line.
        'exec >> "$out/shell.log" 2>&1',
        "set -x",
        # bash's clock variable: each command's start and end without a fork (what vfarm records).
        'run() { local t0=$EPOCHREALTIME; "$@"; echo "T $t0 $EPOCHREALTIME $1"; }',
        "export LVM_SUPPRESS_FD_WARNINGS=1",
    ]
    for step in steps:
        if "argv" in step:
            lines.append("run " + " ".join(shlex.quote(a) for a in step["argv"]))
        elif step["action"] == "write-fstab":
            path = step["path"]
            lines.append(f"cat > {shlex.quote(path)}.tmp <<'VFARM_FSTAB_EOF'")
            lines.append(step["content"].rstrip("\n"))
            lines.append("VFARM_FSTAB_EOF")
            lines.append(f"sync {shlex.quote(path)}.tmp; mv {shlex.quote(path)}.tmp {shlex.quote(path)}")
    lines += [
        "end=$(date +%s.%N)",
        'echo "{\\"start\\": $start, \\"end\\": $end}" > "$out/shell.json"',
        "",
    ]
    return "\n".join(lines)


EXIT_LINE = re.compile(r" exit -?\d+ after ([0-9.]+) s: (\S+)")


def discover_seconds(log: str, applied: int) -> float:
    """Seconds of the commands in a vfarm handler log that are not among its APPLIED steps: the
    discover queries (lvm fullreport, blkid, findmnt, swapon). The log has one `exit N after X s:
    CMD` line per command, in order; the applied ones are the last APPLIED of them."""
    spans = [float(m.group(1)) for m in EXIT_LINE.finditer(log)]
    return sum(spans[: max(0, len(spans) - applied)])


def boot_once(image: Any, userdata: bytes, folder: Path, tries: int = 3) -> tuple[Any, Any, int]:
    """Boot a fresh instance; a timer-calibration failure (seen within seconds on a loaded host,
    before the disks are touched) is retried with a fresh copy. Returns (instance, result, tries)."""
    from vfarm.clouds.local import LocalInstance

    shutil.rmtree(folder, ignore_errors=True)
    for attempt in range(1, tries + 1):
        instance = LocalInstance(image, userdata, folder=folder / f"try-{attempt}", quiet=True)
        instance.prepare()
        result = instance.boot(timeout=600)
        if result.outcome != "no-pit" or attempt == tries:
            return instance, result, attempt
        drop_disks(instance)
    raise AssertionError("unreachable")


def drop_disks(instance: Any) -> None:
    """The disks are large (sparse) copies: never kept; the console logs and records stay."""
    for path in (instance.disk, instance.data):
        path.unlink(missing_ok=True)


def run(args: argparse.Namespace, section: common.Section) -> None:
    from vfarm.mime_builder import mime

    config = localfs_config()
    vfarm_data = mime.build_userdata(config, handlers="embed", gzip="auto", max_size=1 << 20)
    if args.smoke:
        steps = planned_steps({"extent_size": 4 << 20, "extents": 2047, "free": 2047})
        section.add(f"Smoke run: no VM booted. vfarm user-data {len(vfarm_data)} bytes (embed); the shell script "
                    f"has {sum(1 for s in steps if 'argv' in s)} commands:\n\n```sh\n{shell_script(steps)}```")
        return
    from vfarm.clouds import images

    image = images.find(args.image)
    base = common.CACHE / "boot"
    base.mkdir(parents=True, exist_ok=True)
    rows: list[list[object]] = []
    vfarm_s: list[float] = []
    shell_s: list[float] = []
    script: Optional[str] = None
    walls: dict[str, list[float]] = {"vfarm": [], "shell": []}
    own: list[float] = []  # vfarm's time outside the commands it applies (validation, discover, plan, records)
    same_boot: list[float] = []  # vfarm's total / its commands' time, within one boot
    shell_commands: list[float] = []  # the shell's time in the same commands
    shell_outside: list[float] = []  # the shell's time outside them (fstab write, sync, clock reads)
    queries: list[float] = []  # of `own`: the discover commands (lvm reports, findmnt, swapon)
    problems: list[str] = []
    for number in range(1, args.boots + 1):
        for kind in ("vfarm", "shell"):
            if kind == "shell" and script is None:
                problems.append(f"boot {number}: no shell script (the first vfarm boot recorded nothing)")
                continue
            data = vfarm_data if kind == "vfarm" else (script or "").encode()
            instance, result, tries = boot_once(image, data, base / f"{kind}-{number}")
            try:
                outcome = result.outcome + (f" (try {tries})" if tries > 1 else "")
                line: list[object] = [number, kind, outcome, f"{result.seconds:.1f}"]
                if not result.powered_off:
                    problems.append(f"{kind} boot {number}: {result.outcome} after {result.seconds:.0f} s (console {result.console})")
                    rows.append(line + ["-", "-", "-"])
                    continue
                walls[kind].append(result.seconds)
                if kind == "vfarm":
                    raw = instance.read("/var/log/vfarm/localfs.status.json")
                    status = json.loads(raw) if raw else {}
                    if status.get("status") != "ok":
                        problems.append(f"vfarm boot {number}: localfs status {status.get('status')!r}: {status.get('reason', 'no record')}")
                        rows.append(line + ["-", "-", status.get("status", "no record")])
                        continue
                    seconds = float(status["seconds"])
                    vfarm_s.append(seconds)
                    (instance.folder / "localfs.status.json").write_bytes(raw or b"")
                    (instance.folder / "localfs.log").write_bytes(instance.read("/var/log/vfarm/localfs.log") or b"")
                    commands = sum(float(step.get("seconds") or 0) for step in status.get("steps", []) if step.get("argv"))
                    applied = sum(1 for step in status.get("steps", []) if step.get("argv"))
                    log = (instance.folder / "localfs.log").read_text(errors="replace")
                    queries.append(discover_seconds(log, applied))
                    own.append(seconds - commands)
                    same_boot.append(seconds / commands if commands else float("nan"))
                    if script is None:
                        fstab = (instance.read("/etc/fstab") or b"").decode()
                        script = shell_script(recorded_steps(status, fstab))
                    rows.append(line + [f"{seconds:.3f}", f"{commands:.3f}", f"{seconds - commands:.3f}"])
                else:
                    raw = instance.read(f"{RESULT_DIR}/shell.json")
                    if not raw:
                        problems.append(f"shell boot {number}: no {RESULT_DIR}/shell.json (the script failed: see its log)")
                        rows.append(line + ["-", "-", "failed"])
                        continue
                    times = json.loads(raw)
                    seconds = float(times["end"]) - float(times["start"])
                    shell_s.append(seconds)
                    shell_log = (instance.read(f"{RESULT_DIR}/shell.log") or b"").decode(errors="replace")
                    (instance.folder / "shell.log").write_text(shell_log)
                    spans = [ln.split() for ln in shell_log.splitlines() if ln.startswith("T ")]
                    commands = sum(float(w[2]) - float(w[1]) for w in spans if len(w) >= 4)
                    shell_commands.append(commands)
                    shell_outside.append(seconds - commands)
                    rows.append(line + [f"{seconds:.3f}", f"{commands:.3f}", f"{seconds - commands:.3f}"])
            finally:
                drop_disks(instance)
    section.add(f"Image: {image.name} (cloud-init {image.info.get('cloud_init')}), data disk: the cached `vg_local` 8G disk, "
                "config: the localfs section of examples/torino.yaml (4 LVs: 3 ext4 + swap), vfarm in `embed` mode. "
                "Boots alternate vfarm/shell.\n")
    section.add(common.table(["boot", "kind", "outcome", "wall s (qemu start to power-off)", "in-guest s", "in the applied commands s",
                              "outside them s"], rows))
    if vfarm_s and shell_s:
        ratio = common.median(vfarm_s) / common.median(shell_s)
        verdict = "met" if ratio <= TARGET else "MISSED"
        section.add(f"Median in-guest time: vfarm {common.median(vfarm_s):.3f} s, shell {common.median(shell_s):.3f} s "
                    f"(n = {len(vfarm_s)} + {len(shell_s)}); **ratio {ratio:.2f}** (target <= {TARGET}: {verdict}). "
                    f"Median wall time per boot: vfarm {common.median(walls['vfarm']):.1f} s, shell {common.median(walls['shell']):.1f} s.\n")
        section.add(f"Within each vfarm boot (immune to the boot-to-boot noise of a shared host): vfarm's time outside the commands "
                    f"it applies (validation, discover's lvm fullreport/blkid/findmnt/swapon, plan, records) has median {common.median(own):.3f} s, "
                    f"of which the discover commands {common.median(queries):.3f} s and Python {common.median([o - q for o, q in zip(own, queries)]):.3f} s; "
                    f"total / commands = median **{common.median(same_boot):.2f}**, the ratio against a script that runs only those "
                    "commands and nothing else.\n")
        estimate = common.median(same_boot)
        if shell_commands:
            commands_vfarm = common.median([v - o for v, o in zip(vfarm_s, own)])
            section.add(f"The same commands took a median {commands_vfarm:.3f} s in the vfarm boots and "
                        f"{common.median(shell_commands):.3f} s in the shell boots; the shell spent a median "
                        f"{common.median(shell_outside):.3f} s outside them (its fstab write and sync, clock reads).\n")
            estimate = (commands_vfarm + common.median(own)) / (commands_vfarm + common.median(shell_outside))
            section.add(f"**Overhead on equal commands: {estimate:.2f}** = (commands + vfarm's own time) / (commands + the shell's own "
                        f"time), medians; target <= {TARGET}: {'met' if estimate <= TARGET else 'MISSED'}. This is the figure to "
                        "trust; the ratio of boot medians above moves by tens of percent between runs on this host.\n")
            gap = common.median(own) - TARGET * common.median(shell_outside)
            if gap > 0:
                # The ratio falls as the commands get slower (TCG speed varies by day on this host): say where it crosses.
                section.add(f"What the ratio depends on: vfarm's own time is {common.median(own) - common.median(shell_outside):.3f} s more "
                            f"than the shell's; that is within the target whenever the commands take at least {gap / (TARGET - 1):.1f} s, "
                            f"and these took {commands_vfarm:.1f} s: on a day when this host's TCG guests run the commands faster the "
                            "same own times miss it.\n")
        if estimate > TARGET:
            section.add(BOOT_NOTE)
        if script:
            section.add(f"The shell script (generated from the first vfarm boot's record):\n\n```sh\n{script}```")
    for problem in problems:
        section.add(f"- problem: {problem}")


BOOT_NOTE = """Why the target is missed: most of vfarm's own time is its discover step's commands (the
figures above): one `lvm fullreport` (VGs, PVs and LVs in one LVM process that scans the block
devices: 0.1-0.3 s in these TCG guests, see the `exit 0 after` lines of the handler logs kept
under /var/cache/vfarm/benchmarks/boot/), blkid on the parts and devices, findmnt and swapon.
The Python work (validating the section, planning, writing the log and the status record) is the
small remainder. The discovery is what makes a second run change nothing and refuses to touch a
foreign volume, so it stays; a `--devices` list limited to the VG's physical volumes would
shorten the LVM scan further.
The boot-to-boot comparison (medians of vfarm and shell boots) is shown too, but with this
host's noise (one boot's commands take 2.2 s, the next 4.5 s) a few boots per side cannot resolve
a 5 % difference (earlier runs of this script gave 1.21, 1.67 and 1.00 for it); the within-boot
figures can.
"""


def extra(p: argparse.ArgumentParser) -> None:
    p.add_argument("--boots", type=int, default=3, help="boots of each kind (default 3)")
    p.add_argument("--image", default="bookworm", help="test image (default bookworm)")


if __name__ == "__main__":
    sys.exit(common.main(NAME, TITLE, "boot_overhead.py", __doc__ or "", run, extra))
