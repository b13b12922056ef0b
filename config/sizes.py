"""Sizes as LVM understands them: binary units, whole extents."""

from __future__ import annotations

import math
import re

UNITS = {"": 1, "K": 1024, "M": 1024**2, "G": 1024**3, "T": 1024**4, "P": 1024**5}
MAX_BYTES = 8 * 1024**6  # LVM's largest logical volume (8 EiB)
# The longest duration anything takes (a year): longer ones overflow timers and time stamps.
MAX_SECONDS = 365 * 86400
# Blanks around are spaces only: a newline or tab in a size is a pasting accident, not a size.
# A bare `b` is bytes (as vgcreate -s 512b); no B or iB after a unit: a config's size refuses them
# (is 20GB 20*10**9 bytes or 20 GiB?), and so does every other size vfarm reads.
_SIZE = re.compile(r" *([0-9]+(?:\.[0-9]+)?) *([KMGTP]?|B) *", re.IGNORECASE)
_WITH_BYTES = re.compile(r" *([0-9]+(?:\.[0-9]+)?) *([KMGTP])i?B *", re.IGNORECASE)


def parse_bytes(text: str) -> int:
    """`20G` -> 21474836480 (binary units, as `lvcreate -L`). Raises ValueError."""
    match = _SIZE.fullmatch(text)
    with_bytes = None if match else _WITH_BYTES.fullmatch(text)
    if with_bytes:
        number, unit = with_bytes.group(1)[:20], with_bytes.group(2).upper()
        raise ValueError(f"not a size: {text!r} (write {number}{unit}: binary units, without B, as lvcreate -L)")
    if not match:
        raise ValueError(f"not a size: {text!r} (expected a number with K, M, G or T, like 20G)")
    number, unit = match.groups()
    whole, _, fraction = number.partition(".")
    if len(whole.lstrip("0")) > len(str(MAX_BYTES)):  # before any arithmetic on hundreds of digits
        raise ValueError(f"size {text.strip()[:20]}... is too large (at most 8 EiB)")
    scale = UNITS[unit.upper().rstrip("B")]
    fraction = fraction[:30]  # finer than a byte of the largest unit
    n_bytes = int(whole) * scale + (int(fraction) * scale // 10 ** len(fraction) if fraction else 0)
    if n_bytes > MAX_BYTES:
        raise ValueError(f"size {text.strip()} is too large (at most 8 EiB)")
    return n_bytes


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
    """A duration in seconds: a number, or "40s", "10m", "1h", "1d". Raises ValueError, also for
    one longer than MAX_SECONDS (or shorter than -MAX_SECONDS)."""
    if isinstance(value, bool):
        raise ValueError(f"not a duration: {value!r}")
    if isinstance(value, (int, float)):
        seconds = float(value) if abs(value) <= 10 * MAX_SECONDS else math.inf
    else:
        match = _DURATION.match(value)
        if not match:
            raise ValueError(f'not a duration: {value!r} (expected seconds, or like "40s", "10m", "1h")')
        number = match.group(1)
        seconds = float(number) * _SECONDS[match.group(2)] if len(number) <= 30 else math.inf
    if not abs(seconds) <= MAX_SECONDS:
        raise ValueError(f"a duration of more than {MAX_SECONDS // 86400} days is too long")
    return seconds
