"""What the writers on the instance share: one exception for a value a file format cannot carry,
and the characters no line-based file of ours may hold raw.

Every writer checks its values itself, even after validation: the instance may get a
hand-written part, and a value that breaks a line in a config file changes what the file says
(in HTCondor's config, a second line can run a command as root)."""

from __future__ import annotations

import re
from typing import Optional

# The characters no config value of ours holds, as regex class ranges, one home for the loader's
# refusal, the writers' checks and the escapes of what is printed:
# C0 (newline, CR, tab, NUL, ESC...), DEL and C1 (Unicode's category Cc);
C0_C1 = "\x00-\x1f\x7f-\x9f"
# the line and paragraph separators: not control characters, but line breaks to Python, editors
# and many line readers;
SEPARATORS = "\u2028\u2029"
# the bidi controls (marks, embeddings, overrides, isolates): they reorder text on screen.
BIDI = "\u200e\u200f\u202a-\u202e\u2066-\u2069"
_BREAKS_A_LINE = re.compile(f"[{C0_C1}{SEPARATORS}]")


class UnsafeValue(ValueError):
    """A value the file being written cannot carry: the writer refuses it instead of mangling it.
    The message names the setting and the reason, never the value (it may be a secret)."""


def control_character(text: str, allow_tab: bool = False) -> Optional[str]:
    """The first control character in TEXT (C0 including newline, CR and NUL, DEL, C1, U+2028
    and U+2029) as `U+XXXX`, or None. A tab passes when ALLOW_TAB."""
    for found in _BREAKS_A_LINE.finditer(text):
        if found.group() != "\t" or not allow_tab:
            return f"U+{ord(found.group()):04X}"
    return None


def refuse_control(what: str, text: str, allow_tab: bool = False) -> None:
    """Raise UnsafeValue when TEXT holds a control character (see `control_character`)."""
    found = control_character(text, allow_tab)
    if found:
        raise UnsafeValue(f"{what} holds a control character ({found}): it cannot be written on one line")
