"""The command line's text tables (cc_modules/table.py): columns line up on a terminal whatever the
cells hold: zero-width characters are shown escaped, never raw and invisible, and cells are padded
by the columns a terminal gives them (CJK and full-width forms two, combining marks none), not by
their count of characters."""

from __future__ import annotations

import pytest

from vfarm.cc_modules.table import render
from vfarm.display import display_width, escape_controls

ZERO_WIDTH = ["\u200b", "\u200c", "\u200d", "\u2060", "\ufeff"]


@pytest.mark.parametrize("char", ZERO_WIDTH)
def test_zero_width_characters_are_shown_escaped(char: str) -> None:
    escape = f"\\u{ord(char):04x}"
    assert escape_controls(f"Owner{char}{char}") == f"Owner{escape}{escape}"
    table = render(["STATE", "N"], [[f"Owner{char}", 1], ["Backfill", 2]])
    assert char not in table and f"Owner{escape}" in table


def test_wide_and_combining_cells_line_up_with_the_others() -> None:
    rows = [
        ["i-1", "Owner\u200b\u200b", 1, "x"],  # zero-width: escaped, 17 columns
        ["i-2", "ＢａｃｋＢ", 22, "x"],  # full-width: 5 characters, 10 columns
        ["i-3", "漢字e\u0301", 333, "x"],  # CJK 2+2, e + combining acute 1: 5 columns
        ["i-4", "Backfill", 4, "x"],
    ]
    table = render(["ID", "STATE", "N", "LAST"], rows, right=["N"])
    # Padded by hand: STATE is 17 columns (the escaped cell) + 2 between columns, N 3 right-aligned.
    assert table.splitlines() == [
        "ID   STATE" + " " * 12 + "  " + "  N" + "  LAST",
        "i-1  Owner\\u200b\\u200b" + "  " + "  1" + "  x",
        "i-2  ＢａｃｋＢ" + " " * 7 + "  " + " 22" + "  x",
        "i-3  漢字e\u0301" + " " * 12 + "  " + "333" + "  x",
        "i-4  Backfill" + " " * 9 + "  " + "  4" + "  x",
    ]
    # Every column starts at the same terminal column on every line: LAST's "x" is the last one.
    assert {display_width(line[:-1]) for line in table.splitlines()[1:]} == {len("ID   STATE" + " " * 12 + "  " + "  N  ")}


def test_display_width_counts_terminal_columns() -> None:
    assert display_width("Backfill") == 8
    assert display_width("漢字") == 4 and display_width("ＢＢ") == 4  # East Asian Wide, Fullwidth
    assert display_width("e\u0301") == 1 and display_width("a\u20dd") == 1  # combining, enclosing marks
    assert display_width("x\u00ady") == 3  # a terminal draws the soft hyphen


def test_each_cell_is_measured_once(monkeypatch: pytest.MonkeyPatch) -> None:
    """display_width walks every character of a cell (a category and a width look-up each): the
    table measures each cell once, for its column's width and its padding alike."""
    from vfarm.cc_modules import table

    measured: list[str] = []

    def counting(text: str) -> int:
        measured.append(text)
        return display_width(text)

    rows = [["i-1", "Owner", 1], ["i-2", "漢字", 22]]
    expected = render(["ID", "STATE", "N"], rows, right=["N"])
    monkeypatch.setattr(table, "display_width", counting)
    assert table.render(["ID", "STATE", "N"], rows, right=["N"]) == expected
    assert sorted(measured) == sorted(["ID", "STATE", "N", "i-1", "Owner", "1", "i-2", "漢字", "22"])
