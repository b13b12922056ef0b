"""Sizes as LVM understands them: binary units, whole extents."""

from __future__ import annotations

import re

UNITS = {"": 1, "K": 1024, "M": 1024**2, "G": 1024**3, "T": 1024**4, "P": 1024**5}
_SIZE = re.compile(r"^\s*([0-9]+(?:\.[0-9]+)?)\s*([KMGTP]?)(?:i?B)?\s*$", re.IGNORECASE)


def parse_bytes(text: str) -> int:
    """`20G` -> 21474836480 (binary units, as `lvcreate -L`). Raises ValueError."""
    match = _SIZE.match(text)
    if not match:
        raise ValueError(f"not a size: {text!r} (expected a number with K, M, G or T, like 20G)")
    number, unit = match.groups()
    return int(float(number) * UNITS[unit.upper()])


def human(n_bytes: int) -> str:
    """21474836480 -> '20.00 GiB'."""
    for unit in ("TiB", "GiB", "MiB", "KiB"):
        scale = UNITS[unit[0]]
        if n_bytes >= scale:
            return f"{n_bytes / scale:.2f} {unit}"
    return f"{n_bytes} B"


_DURATION = re.compile(r"^\s*(-?[0-9]+(?:\.[0-9]+)?)\s*([smhd]?)\s*$")
_SECONDS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_seconds(value: int | float | str) -> float:
    """A duration in seconds: a number, or "40s", "10m", "1h", "1d". Raises ValueError."""
    if isinstance(value, bool):
        raise ValueError(f"not a duration: {value!r}")
    if isinstance(value, (int, float)):
        return float(value)
    match = _DURATION.match(value)
    if not match:
        raise ValueError(f'not a duration: {value!r} (expected seconds, or like "40s", "10m", "1h")')
    return float(match.group(1)) * _SECONDS[match.group(2)]
