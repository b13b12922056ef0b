"""Plain-text tables for the command line (one format for every command)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from ..display import shown


def render(headers: Sequence[str], rows: Sequence[Sequence[Any]], right: Sequence[str] = ()) -> str:
    """Columns padded to their widest cell; columns named in RIGHT are right-aligned (numbers).
    Cells often come from user data: each is shown terminal-safe with its secrets hidden."""
    cells = [[str(h) for h in headers]] + [["-" if c is None else shown(c) for c in row] for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    lines = []
    for row in cells:
        padded = [c.rjust(w) if headers[i] in right else c.ljust(w) for i, (c, w) in enumerate(zip(row, widths))]
        lines.append("  ".join(padded).rstrip())
    return "\n".join(lines) + "\n"
