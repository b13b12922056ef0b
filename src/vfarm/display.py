"""Text from user data, made safe to print: on a terminal, a console or in a log someone `cat`s.

A file name in a MIME part, a reason in a summary or a value quoted in an error may hold control
characters: ESC sequences move the cursor, retitle the terminal or hide what came before; a
newline forges a line; bidi controls reorder what is shown; zero-width characters hide inside a
value. `escape_controls` shows each one as an escape (`\\x1b`, `\\n`, `\\u202e`, `\\u200b`)
instead. Every print site of user-derived text goes through `shown` (user data: file names,
reasons, values: every secret hidden) or `shown_message` (vfarm's own messages quoting user data:
credentials in URLs and IDTOKENs hidden, but not the words after a key named like a secret, which
a message names without holding its value: `condor.token: expected`). `display_width` counts the
terminal columns of what is shown (tables pad by it).
"""

from __future__ import annotations

import logging
import re
import unicodedata

from .redaction import hide_credentials, redact
from .textsafe import BIDI, C0_C1, SEPARATORS

# What no config value holds (newline and tab too: one value stays one line), plus the Arabic
# letter mark (a bidi mark a value may hold, but a screen reorders by it), lone surrogates
# (bytes that were not UTF-8, which a UTF-8 terminal stream cannot even encode) and the
# zero-width characters (a value may hold them, but printed raw they are invisible: two values
# that look equal differ, and a table's column widths count them).
_ZERO_WIDTH = "\u200b-\u200d\u2060\ufeff"
_CONTROL = re.compile(f"[{C0_C1}{SEPARATORS}{BIDI}\u061c\ud800-\udfff{_ZERO_WIDTH}]")
# Unicode categories a terminal draws over the character before (combining marks) or not at all
# (format characters): no column of their own; but the soft hyphen is drawn as a hyphen (as
# wcwidth() counts them).
_NO_COLUMN = ("Mn", "Me", "Cf")
_SOFT_HYPHEN = "\u00ad"
# East Asian widths a terminal gives two columns: Wide (CJK, most emoji) and Fullwidth forms.
_TWO_COLUMNS = ("W", "F")


def _escape(match: re.Match[str]) -> str:
    code = ord(match.group())
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def escape_controls(text: str) -> str:
    """TEXT with every control, bidi and zero-width character shown as an escape; the rest unchanged."""
    return _CONTROL.sub(_escape, text)


def display_width(text: str) -> int:
    """The columns TEXT takes on a terminal: 2 per wide or full-width character, 0 per combining
    mark or format character (but the soft hyphen), 1 per other character (East Asian ambiguous
    ones included)."""
    width = 0
    for char in text:
        if unicodedata.category(char) in _NO_COLUMN and char != _SOFT_HYPHEN:
            continue
        width += 2 if unicodedata.east_asian_width(char) in _TWO_COLUMNS else 1
    return width


def shown(value: object) -> str:
    """VALUE as vfarm prints user-derived text: control characters escaped (first, so that a
    newline inside a password cannot cut its URL short), then secrets hidden (a YAML block's
    lines too: the redaction reads a text's escaped line ends as line ends when it has no other)."""
    return redact(escape_controls(str(value)))


def shown_message(value: object) -> str:
    """A message of vfarm's own as it prints it: control characters escaped, then credentials
    in URLs and IDTOKENs hidden."""
    return hide_credentials(escape_controls(str(value)))


class ShownFormatter(logging.Formatter):
    """A log formatter for logs a terminal shows: each record (traceback included) becomes one
    line through `shown_message`, so that no record forges another or leaks a credential."""

    def format(self, record: logging.LogRecord) -> str:
        return shown_message(super().format(record))
