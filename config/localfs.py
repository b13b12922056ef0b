"""The localfs section as data: short and long form read into one model, checked, and resolved
to whole extents.

This module is pure (no I/O): `vfarm plan` on the admin's side and `cc_localfs` on the instance
resolve the same config through `resolve()`, so the instance creates exactly what the plan shows.
"""

from __future__ import annotations

import difflib
import math
import re
from dataclasses import dataclass
from fractions import Fraction
from typing import Any, Optional

from ..errors import PlanError
from ..files import LINKS, normal_path, system_folder
from .findings import Finding
from .sizes import human, parse_bytes


@dataclass(frozen=True)
class PartDefaults:
    mount: Optional[str] = None
    fs: str = "ext4"
    mode: Optional[str] = None


# The parts every site has; any other name needs an explicit mount point.
DEFAULTS = {
    "cvmfs": PartDefaults(mount="/var/lib/cvmfs"),
    "home": PartDefaults(mount="/home"),
    "tmp": PartDefaults(mount="/tmp", mode="1777"),
    "swap": PartDefaults(fs="swap"),
}
# In the short form a bare number is a percent of the VG, except for swap: percent of what is FREE.
FREE_BY_DEFAULT = {"swap"}
LV_TAG = "vfarm"  # every LV we create carries it: a same-named LV without it is not ours
# LV names lvm2 keeps for itself (lib/misc/lvm-string.c, apply_lvname_restrictions, 2.03): lvcreate
# refuses them on the instance, after the parts before them were created.
RESERVED_LV_PREFIXES = ("pvmove", "snapshot")
RESERVED_LV_STRINGS = ("_cdata", "_cmeta", "_corig", "_cpool", "_cvol", "_wcorig", "_mimage", "_mlog", "_rimage", "_rmeta", "_tdata",
                       "_tmeta", "_vdata", "_imeta", "_iorig", "_pmspare", "_vorigin")
LABEL_MAX = {"ext4": 16, "xfs": 12}  # characters: e2label and xfs_admin -L
XFS_MIN_BYTES = 300 * 2**20  # mkfs.xfs (xfsprogs >= 5.19) refuses a smaller file system

_PERCENT = re.compile(r"^([0-9]+(?:\.[0-9]+)?)%(VG|FREE)$")


@dataclass(frozen=True)
class Size:
    kind: str  # "VG" or "FREE" (value: percent) or "BYTES" (value: bytes)
    value: float

    def __str__(self) -> str:
        if self.kind == "BYTES":
            return human(int(self.value))
        return f"{self.value:g}%{self.kind}"


@dataclass(frozen=True)
class PartSpec:
    name: str
    size: Size
    fs: str
    mount: Optional[str]
    options: str
    label: Optional[str]
    mode: Optional[str]


@dataclass(frozen=True)
class LocalfsSpec:
    parts: tuple[PartSpec, ...]
    vg: Optional[str]
    devices: tuple[str, ...]
    force: bool


@dataclass(frozen=True)
class VolumeGroup:
    """The facts about one volume group that resolution needs."""

    name: str
    extent_size: int  # bytes
    total_extents: int
    free_extents: int
    own_lvs: tuple[tuple[str, int], ...] = ()  # (name, extents) of LVs tagged as ours


@dataclass(frozen=True)
class ResolvedPart:
    spec: PartSpec
    extents: int
    bytes: int

    def as_dict(self) -> dict[str, Any]:
        return {
            "name": self.spec.name,
            "size": str(self.spec.size),
            "extents": self.extents,
            "bytes": self.bytes,
            "fs": self.spec.fs,
            "mount": self.spec.mount,
            "options": self.spec.options,
            "label": self.spec.label,
            "mode": self.spec.mode,
        }


def parse_size(value: Any, name: str) -> Size:
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return Size("FREE" if name in FREE_BY_DEFAULT else "VG", float(value))
    text = str(value)
    match = _PERCENT.match(text)
    if match:
        return Size(match.group(2), float(match.group(1)))
    return Size("BYTES", parse_bytes(text))


def lvm_reserved(name: str) -> Optional[str]:
    """How lvm2 reserves the LV name NAME ("starting with 'snapshot'"), or None."""
    prefix = next((p for p in RESERVED_LV_PREFIXES if name.startswith(p)), None)
    if prefix:
        return f"starting with '{prefix}'"
    inner = next((s for s in RESERVED_LV_STRINGS if s in name), None)
    return f"containing '{inner}'" if inner else None


def size_problem(value: Any) -> Optional[str]:
    """Why a schema-valid size cannot be used (too large for any volume group), or None."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return None  # the schema bounds percentages
    text = str(value)
    match = _PERCENT.match(text)
    if match:
        return None if float(match.group(1)) <= 100 else f"{text if len(text) <= 24 else text[:20] + '...'} is more than 100%"
    try:
        parse_bytes(text)
    except ValueError as err:
        return str(err)
    return None


def _part_entries(parts: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    sizes = {k: v for k, v in parts.items() if not k.endswith("-mount")}
    mounts = {k[: -len("-mount")]: v for k, v in parts.items() if k.endswith("-mount")}
    return sizes, mounts


def _normal_or_none(path: Optional[str]) -> Optional[str]:
    return None if path is None else normal_path(path)


def parse(section: dict[str, Any]) -> LocalfsSpec:
    """Read a schema-valid localfs section (short and long form) into the model; mount points and
    devices normalised (what the instance uses)."""
    sizes, mounts = _part_entries(section["parts"])
    parts = []
    for name, value in sizes.items():
        long = value if isinstance(value, dict) else {"size": value}
        default = DEFAULTS.get(name, PartDefaults())
        fs = long.get("fs", default.fs)
        parts.append(
            PartSpec(
                name=name,
                size=parse_size(long["size"], name),
                fs=fs,
                mount=None if fs == "swap" else _normal_or_none(long.get("mount", mounts.get(name, default.mount))),
                options=long.get("options", "sw" if fs == "swap" else "defaults"),
                label=long.get("label"),
                mode=long.get("mode", default.mode),
            )
        )
    return LocalfsSpec(
        parts=tuple(parts),
        vg=section.get("vg"),
        devices=tuple(normal_path(d) for d in section.get("devices", ())),
        force=bool(section.get("force", False)),
    )


def check(section: dict[str, Any]) -> list[Finding]:
    """Semantic checks beyond the schema, on a schema-valid section."""
    findings: list[Finding] = []
    sizes, mounts = _part_entries(section["parts"])
    for name in mounts:
        if name not in sizes:
            findings.append(Finding(("parts", f"{name}-mount"), f"mount point for a part '{name}' that is not defined", at_key=True))
        elif isinstance(sizes[name], dict) and "mount" in sizes[name]:
            findings.append(Finding(("parts", f"{name}-mount"), f"part '{name}' has a mount point already (its 'mount' key)", at_key=True))
    for i, device in enumerate(section.get("devices", ())):
        if ".." in device.split("/") or not normal_path(device).startswith("/dev/"):
            findings.append(Finding(("devices", i), f"device {device} is not under /dev"))
    unusable = []
    for name, value in sizes.items():
        problem = size_problem(value.get("size") if isinstance(value, dict) else value)
        if problem:
            unusable.append(Finding(("parts", name, "size") if isinstance(value, dict) else ("parts", name), f"part '{name}': {problem}"))
    if unusable:
        return findings + unusable  # the model cannot be built from such sizes
    spec = parse(section)
    percent = {"VG": Fraction(0), "FREE": Fraction(0)}
    seen_mounts: dict[str, str] = {}
    for part in spec.parts:
        where = ("parts", part.name)
        value = sizes[part.name]
        size_path = where + ("size",) if isinstance(value, dict) else where
        reserved = lvm_reserved(part.name)
        if reserved:
            findings.append(Finding(where, f"part '{part.name}': lvm2 reserves LV names {reserved}: choose another name", at_key=True))
        if part.size.value <= 0:
            findings.append(Finding(size_path, f"part '{part.name}' has size 0: give it a size or remove it"))
        # Only a size written in bytes is known here; a percentage that comes to less than
        # XFS_MIN_BYTES is known on the instance only (mkfs.xfs refuses it there).
        if part.fs == "xfs" and part.size.kind == "BYTES" and 0 < part.size.value < XFS_MIN_BYTES:
            written = value.get("size") if isinstance(value, dict) else value
            findings.append(Finding(size_path, f"part '{part.name}' is xfs of {written}: mkfs.xfs refuses a file system under 300 MiB"))
        limit = LABEL_MAX.get(part.fs, 16)
        if part.label and len(part.label) > limit:
            message = f"part '{part.name}': an {part.fs} label has at most {limit} characters, '{part.label}' has {len(part.label)}"
            findings.append(Finding(where + ("label",), message))
        if part.size.kind in percent:
            percent[part.size.kind] += exact(part.size.value)
        mount_given = isinstance(value, dict) and "mount" in value or part.name in mounts
        if part.fs == "swap":
            if mount_given:
                findings.append(Finding(where, f"part '{part.name}' is swap and cannot have a mount point"))
            continue
        if part.mount is None:
            close = difflib.get_close_matches(part.name, DEFAULTS, n=1)
            typo = f"did you mean '{close[0]}'? else " if close else ""
            hint = f"{typo}add '{part.name}-mount: PATH' or 'mount:' (only cvmfs, home, tmp and swap have defaults)"
            findings.append(Finding(where, f"part '{part.name}' has no mount point: {hint}", at_key=True))
        elif part.mount == "/":
            written = value.get("mount") if isinstance(value, dict) and "mount" in value else mounts.get(part.name, part.mount)
            as_written = f"({written}) " if written != part.mount else ""
            findings.append(Finding(where, f"part '{part.name}' would be mounted over / {as_written}: choose another mount point"))
        elif system_folder(part.mount):
            folder = system_folder(part.mount)
            written = value.get("mount") if isinstance(value, dict) and "mount" in value else mounts.get(part.name, part.mount)
            place = f"over the system folder {folder}" if folder == part.mount else f"on {part.mount}, inside the system folder {folder}"
            as_written = f" ({written})" if written != part.mount else ""
            link = f", a link to {LINKS[folder]}" if folder in LINKS else ""
            findings.append(Finding(where, f"part '{part.name}' would be mounted {place}{as_written}{link}: choose another mount point"))
        elif part.mount in seen_mounts:
            findings.append(Finding(where, f"parts '{seen_mounts[part.mount]}' and '{part.name}' are both mounted on {part.mount}", at_key=True))
        else:
            seen_mounts[part.mount] = part.name
    shares = {kind: " + ".join(f"{p.name} {p.size.value:g}" for p in spec.parts if p.size.kind == kind) for kind in percent}
    for kind, label in (("VG", "the volume group"), ("FREE", "the free space")):
        if percent[kind] > 100:
            findings.append(Finding(("parts",), f"parts take {float(percent[kind]):g}% of {label} ({shares[kind]}); at most 100% fit", at_key=True))
    if percent["VG"] == 100:
        # The VG's percentages are taken first: what else is there cannot fit, whatever the VG's size.
        for part in spec.parts:
            if part.size.kind != "VG" and part.size.value > 0:
                how = f"{part.size.value:g}% of the free space" if part.size.kind == "FREE" else "its size in bytes"
                message = (f"parts take 100% of the volume group ({shares['VG']}): nothing is left for part '{part.name}' ({how}) "
                           "on any volume group; give the others less")
                findings.append(Finding(("parts", part.name), message, at_key=True))
    return findings


def exact(percent: float) -> Fraction:
    """PERCENT as the decimal it was written as (0.57 is 57/100, not the float nearest it):
    sizes and sums of percentages are worked out exactly."""
    return Fraction(repr(percent))


def resolve(spec: LocalfsSpec, vg: VolumeGroup) -> list[ResolvedPart]:
    """Whole extents for every part: VG percentages and absolute sizes first, then FREE
    percentages of what is left, rounded down, never over.

    What is left is computed from the VG's free extents plus the extents our own LVs already
    hold, so a second run resolves the same numbers as the first (unlike `-l 100%FREE`). An LV
    of ours that exists is never resized: it holds its real extents (`own_lvs`), whatever the
    config now says, and the parts still to create must fit in the free extents (else PlanError).
    """
    own = dict(vg.own_lvs)
    fixed: dict[str, int] = {}
    for part in spec.parts:
        if part.size.kind == "VG":
            fixed[part.name] = math.floor(vg.total_extents * exact(part.size.value) / 100)
        elif part.size.kind == "BYTES":
            fixed[part.name] = math.ceil(part.size.value / vg.extent_size)  # lvcreate -L rounds up
    available = vg.free_extents + sum(own.values())
    held = sum(own.get(name, extents) for name, extents in fixed.items())
    left = available - held
    if left < 0:
        raise PlanError(
            f"the parts need {held} extents ({human(held * vg.extent_size)}) "
            f"but volume group {vg.name} has {available} ({human(available * vg.extent_size)}) for them"
        )
    resolved = []
    for part in spec.parts:
        extents = fixed.get(part.name)
        if extents is None:
            extents = math.floor(left * exact(part.size.value) / 100)
        if extents <= 0:
            raise PlanError(f"part '{part.name}' ({part.size}) comes to 0 extents on volume group {vg.name}")
        resolved.append(ResolvedPart(part, extents, extents * vg.extent_size))
    new = sum(p.extents for p in resolved if p.spec.name not in own)
    if new > vg.free_extents:
        existing = ", ".join(f"{name} {extents}" for name, extents in vg.own_lvs)
        raise PlanError(
            f"the parts to create need {new} extents ({human(new * vg.extent_size)}) but volume group {vg.name} "
            f"has {vg.free_extents} free ({human(vg.free_extents * vg.extent_size)}); the existing ones keep their extents ({existing})"
        )
    return resolved
