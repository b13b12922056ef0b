"""What the writers on the instance share: one exception for a value a file format cannot carry,
and the characters no line-based file of ours may hold raw.

Every writer checks its values itself, even after validation: the instance may get a
hand-written part, and a value that breaks a line in a config file changes what the file says
(in HTCondor's config, a second line can run a command as root)."""

from __future__ import annotations

import unicodedata
from typing import Optional

# Line and paragraph separators: not control characters, but line breaks to Python, editors and
# many line readers.
_SEPARATORS = {"\u2028", "\u2029"}


class UnsafeValue(ValueError):
    """A value the file being written cannot carry: the writer refuses it instead of mangling it.
    The message names the setting and the reason, never the value (it may be a secret)."""


def control_character(text: str, allow_tab: bool = False) -> Optional[str]:
    """The first control character in TEXT (C0 including newline, CR and NUL, DEL, C1, U+2028
    and U+2029) as `U+XXXX`, or None. A tab passes when ALLOW_TAB."""
    for char in text:
        if char == "\t" and allow_tab:
            continue
        if char in _SEPARATORS or unicodedata.category(char) == "Cc":
            return f"U+{ord(char):04X}"
    return None


def refuse_control(what: str, text: str, allow_tab: bool = False) -> None:
    """Raise UnsafeValue when TEXT holds a control character (see `control_character`)."""
    found = control_character(text, allow_tab)
    if found:
        raise UnsafeValue(f"{what} holds a control character ({found}): it cannot be written on one line")
