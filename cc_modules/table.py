"""Plain-text tables for the command line (one format for every command)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from ..display import display_width, shown


def render(headers: Sequence[str], rows: Sequence[Sequence[Any]], right: Sequence[str] = ()) -> str:
    """Columns padded to their widest cell; columns named in RIGHT are right-aligned (numbers).
    Widths are terminal columns (display_width: CJK two, combining marks none), not characters.
    Cells often come from user data: each is shown terminal-safe with its secrets hidden."""
    cells = [[str(h) for h in headers]] + [["-" if c is None else shown(c) for c in row] for row in rows]
    measured = [[(cell, display_width(cell)) for cell in row] for row in cells]  # once per cell: it walks every character
    widths = [max(row[i][1] for row in measured) for i in range(len(headers))]
    lines = []
    for row in measured:
        padded = []
        for header, (cell, used), width in zip(headers, row, widths):
            fill = " " * (width - used)
            padded.append(fill + cell if header in right else cell + fill)
        lines.append("  ".join(padded).rstrip())
    return "\n".join(lines) + "\n"
