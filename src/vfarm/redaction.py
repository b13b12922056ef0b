"""The one redaction of the project: logs, status records, summaries and error messages pass
through `redact`, so secrets (proxy passwords in URLs, pool tokens, cloud keys) never reach them
in clear.

Every pass takes time linear in the text (a 256 KiB value in milliseconds, whatever it holds).
No pattern here loops over characters that a loop before it could also take (that backtracks
quadratically), and none but two (the user options' and the `-p` commands', whose every try is
a few characters, after sshpass a few words) is tried at every position of a text: the passes
jump with `str.find` to the few places a secret can start (`://`, `eyJ`, `@`, a secret word, an
option's `-`) and look around those alone, a run of characters at most once (a YAML block's
lines: once per key line).
"""

from __future__ import annotations

import heapq
import logging
import re
from collections.abc import Sequence
from typing import Any

# Names whose values are secrets (env variables, options, KEY=VALUE settings, JSON keys). `pass`
# and `pwd` only as a whole part of a name (`DB_PASS`, `--pwd`, `%3Fpass` and `%26pass`: after a
# URL-encoded `?` or `&`): `passed`, `bypass` are no secrets.
_SECRET_WORD = (r"(?:passw(?:or)?d|passphrase|(?:(?<![a-z0-9])|(?<=%3f|%26))(?:pass|pwd)(?![a-z0-9])|secret|token|api[_-]?key|access[_-]?key"
                r"|private[_-]?key|credential|auth[_-]?key|authorization)")
SECRET_NAME = re.compile(r"(?i)" + _SECRET_WORD)
# SECRET_NAME on a _folded text (without `(?i)`, the search is many times faster); every match
# of it holds one of the _TRIGGERS.
_SECRET_FOLDED = re.compile(_SECRET_WORD)
_TRIGGERS = ("pass", "pwd", "secret", "token", "key", "credential", "authoriz")
# A setting: KEY, then `=`, `=>`, `:` or a URL-encoded `=` (`%3D`, a query inside a query) (quotes
# and spaces around, escaped quotes too: `\"password\": \"x\"` of JSON in a JSON string; `[` opens a
# JSON list), then its value: quoted, to its closing quote (an escaped one's: to an unescaped one); else to
# a blank, after `=` also to `&` or `;` (which end values in a query and in cookies and lists: after
# `:`, YAML's and a header's, they are the value's own), or after `%3D` to an encoded `&` (`%26`).
# An `Authorization: Basic X` hides X, not the scheme.
_KEY_CHARS = re.compile(r"[\w.-]*")
_SEPARATOR = re.compile(r"""(?:\\*["'])?\s*(?:=[=>]?|:|(%3[Dd]))()\s*(?:\[\s*)?(?:\\*(["']))?""")
_SETTING_VALUE = re.compile(r"[^\s&;]+")
_COLON_VALUE = re.compile(r"\S+")
# YAML node properties after a `:` (a tag `!!str`, `!x`, an anchor `&a`: a YAML value cannot start
# with `!` or `&`), then the value proper, maybe quoted. A plain one is hidden with them. Once one
# starts, the match succeeds (the text's end ends one too): no key inside is read again.
_PROPERTIES = re.compile(r"""(?:[!&]\S*(?:\s+|\Z))+(?:\\*(["']))?""")
_ENCODED_VALUE = re.compile(r"[^\s&;%]*(?:%(?!26)[^\s&;%]*)*")
# A YAML block scalar's header (`password: |`, `token: >-`, `|2+`): the value is the lines below.
_BLOCK_HEADER = re.compile(r"[|>][-+0-9]*[ \t]*")
# A comment after one runs on over the lines (in TWICE, below) that start with no blank: a `\n` in it may
# be its own (`# C:\new`); a block's lines start with a blank.
_COMMENT = re.compile(r"[ \t\r]*#[^\n]*(?:\n[^ \t\r\n][^\n]*)*")
_INDENT = re.compile(r"[ \t]*")
# A text may hold line ends (and tabs) escaped: `\n` (a repr: cloud-init's errors, a traceback's
# lines) or `\x0a`, `\x09` (`escape_controls`, which `shown` applies before it redacts). Keys are read
# in a copy where each is the real character (`\r` a `\n`: alone, it ends a line of old Mac text),
# padded with `\r` to the same length (so are the blocks of a key line that ends escaped); `\\` (a
# repr's backslash) stays. In a repr of a repr (a JSON record's) they are escaped twice (`\\n`; `\\\\`
# is a backslash): a second copy reads those as line ends too, for the blanks after a key's `:` and a
# block whose header's line end is escaped so. Not for keys: `\\npass` may as well be a backslash and
# `npass`.
_ESCAPED_END = re.compile(r"\\(?:[nrt]|x0[9ad]|\\)")
_TWICE_ESCAPED_END = re.compile(r"\\(?:\\{3}|\\?(?:[nrt]|x0[9ad])|\\)")
_LINE_END = {"\\n": "\r\n", "\\r": "\r\n", "\\t": "\r\t", "\\x0a": "\r\r\r\n", "\\x09": "\r\r\r\t", "\\x0d": "\r\r\r\n", "\\\\": "\\\\", "\\" * 4: "\\" * 4}
# A real `\r` alone ends a line too (old Mac text): where blocks are read, it is a `\n`.
_LONE_CR = re.compile(r"\r(?!\n)")
_AUTH_SCHEME = re.compile(r"(?i)(?:basic|bearer|digest|negotiate)[ \t]+")
# A quoted value's rest, when its closing quote (not one escaped by `\`) is on the same line.
_QUOTED = {quote: re.compile(rf"(?:[^{quote}\\\n]|\\.)*{quote}") for quote in "\"'"}
# An option: `-` or `--` and a name, whitespace, then its value unless that is an option too.
_OPTION_CHARS = re.compile(r"[\w-]*")
_GAP = re.compile(r"\s+")
_WORD = re.compile(r"\S+")
# The options whose value is `user:password` (curl's, wget's): the password is hidden. The user
# part stops at `=` too, so that no run of `-u=-u=...` is read once per option.
_USER_OPTIONS = ("-u", "-U", "--user", "--proxy-user")
_USER_OPTION = re.compile(f"(?:{'|'.join(map(re.escape, _USER_OPTIONS))})" + r"(?:=|[ \t]+)[^\s:=]*:(\S+)")
# Commands that take a password glued to `-p` (`mysql -pSECRET`, `sshpass -pSECRET`): after one of
# them, in its argv or on its line, `-p` with text glued to it is a password (a quoted one to its
# quote). Only after them: elsewhere `-p` is something else (`mkdir -p`, `ssh -p 22`, `cp -pr`).
# sshpass also takes it as the next word (`sshpass -p SECRET ssh ...`), among its own options:
# those before the command it runs (a few at most: `-v`, `-e`, `-f FILE`, `-d FD`, `-P PROMPT`).
# Not mysql: `-p` alone prompts there, and a word after it is the database.
_GLUED_COMMAND = r"(?:mysql|mariadb)[\w-]*|sshpass"
_GLUED_LINE = re.compile(rf"(?<![\w-])(?:{_GLUED_COMMAND})(?![\w-])[^\n]*")
_GLUED_PASSWORD = re.compile(r"""(?:(?<![^\s"'])-p|(?<![\w-])sshpass(?:[ \t]+-(?:[fdP][ \t]*\S+|[evVh]+)){0,4}[ \t]+-p[ \t]+)"""
                             r"""(?:'([^'\n]*)|"([^"\n]*)|([^\s"']\S*))""")
_SSHPASS_ARGUMENTS = ("-f", "-d", "-P", "-p")
# An IDTOKEN (JWT): HTCondor pool tokens. JWT is its shape, to match one value; in a text,
# `redact` finds each `eyJ` (a JWT header is base64url of `{"`), whatever precedes it (`%3D` of
# a URL-encoded `token=`, `_`), and reads the rest with _JWT_REST, which never scans a segment
# twice (JWT.sub would, from every `eyJ` of `eyJ-eyJ-eyJ-...`).
JWT = re.compile(r"\beyJ[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+")
_JWT_REST = re.compile(r"[A-Za-z0-9_-]+(\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+)?")
# URLs: a scheme read backwards from its `://`; what separates the URLs of a proxy list
# (CernVM-FS: `a|b;c`, others `a,b`) and quotes around one. In JSON text `://` may be `:\/\/`.
_URL_MARK = re.compile(r":(?://|\\/\\/)")
_SCHEME_BACKWARDS = re.compile(r"[A-Za-z0-9+.-]*")
_SPACE = re.compile(r"\s")
_PATH_START = re.compile(r"[/?#]")
_LIST_TAIL = "|;,'\" "
# A word holding a `user:password@host` without a scheme (`https_proxy=alice:pw@proxy:3128`): it
# ends at a blank, and at a quote or backtick unless the word goes on past it (a password may hold
# one: `"user:p'w@host"`), read in either direction; `=:,;` and brackets beyond a quote end it
# there (`"mail":"bob@host"`: the quote opens a value).
_BARE_WORD = re.compile(r"""(?:[^\s"'`]|["'`](?=[^\s"'`=:,;()\[\]{}]))*""")
_HOST_START = re.compile(r"[A-Za-z0-9\[]")
HIDDEN = "***"


def redact(text: str) -> str:
    """Hide secrets in TEXT: credentials (see `hide_credentials`), the values of secret-named
    settings (`TOKEN=...`, `"password": "..."`, `password%3D...`, `Authorization: Basic ...`, a
    YAML block `password: |` and its lines, a YAML tag or anchor before a value: `password: &a
    !!str X` with X) and options (`--token X`, `--password 'a b'`), the password of `-u
    user:password`, and that of `-pSECRET` after `mysql` (_GLUED_COMMAND) or of `sshpass -p SECRET`."""
    text = hide_credentials(text)
    if "-" in text:
        text = _hide(text, _user_option_spans(text))
        if "-p" in text:
            text = _hide(text, _glued_password_spans(text))
    folded = _folded(text)
    if any(word in folded for word in _TRIGGERS):
        text = _hide(text, _value_spans(text, folded))
    return text


def hide_credentials(text: str) -> str:
    """Hide the secrets that show by their shape alone, never mistaken for prose: the password of
    `scheme://user:password@host` URLs (the whole userinfo when it has no `:`; a URL ends at
    whitespace; `:\\/\\/` of JSON text counts as `://`) and of a `user:password@host` word without
    a scheme (a proxy setting), and IDTOKENs. For messages that name a secret-named key
    (`condor.token: expected ...`) without holding its value, where `redact` would hide the words
    after the key."""
    if "://" in text or ":\\/\\/" in text:
        text = _hide(text, _url_spans(text))
    if "@" in text:
        text = _hide(text, _bare_userinfo_spans(text))
    if "eyJ" in text:
        text = _hide(text, _jwt_spans(text))
    return text


def redact_argv(argv: Sequence[str]) -> list[str]:
    """ARGV redacted as the command it is, not word by word: an argument after a secret-named
    option (`--token X`, unless X is an option) is hidden whole, blanks and all; the password of
    one after a user option (`-u user:password`) is hidden, and so is the text of `-pSECRET` after
    a command that takes it so (`mysql`, _GLUED_COMMAND), and the word after `-p` among sshpass's
    own options (up to its command); every argument goes through `redact`."""
    out: list[str] = []
    glued = sshpass = False
    for number, arg in enumerate(argv):
        option = argv[number - 1] if number else ""
        if option.startswith("-") and "=" not in option and is_secret_name(option) and arg and not arg.startswith("-"):
            out.append(HIDDEN)
        elif option in _USER_OPTIONS and ":" in arg:
            out.append(arg[: arg.index(":") + 1] + HIDDEN)
        elif glued and arg.startswith("-p") and len(arg) > 2:
            out.append("-p" + HIDDEN)
        elif sshpass and option == "-p":
            out.append(HIDDEN)
        else:
            out.append(redact(arg))
        command = arg.rsplit("/", 1)[-1]
        glued = glued or re.fullmatch(_GLUED_COMMAND, command) is not None
        sshpass = command == "sshpass" or sshpass and (arg.startswith("-") or option in _SSHPASS_ARGUMENTS)
    return out


class RedactingFormatter(logging.Formatter):
    """A log formatter that passes each formatted record, traceback included, through `redact`:
    what a handler's log holds is redacted even when the message and its arguments were not (an
    exception's text, a traceback's source lines)."""

    def format(self, record: logging.LogRecord) -> str:
        return redact(super().format(record))


def is_secret_name(name: str) -> bool:
    """Whether an env variable or option called NAME holds a secret."""
    return bool(SECRET_NAME.search(name))


def _hide(text: str, spans: list[tuple[int, int]]) -> str:
    """TEXT with each of the SPANS (sorted by start; overlapping ones merge) replaced by HIDDEN."""
    if not spans:
        return text
    out: list[str] = []
    done = 0
    for begin, end in spans:
        if begin == end:  # an empty userinfo (`http://@host`): nothing to hide
            continue
        if begin < done:  # inside, or overlapping, the span before
            if end > done:
                done = end
            continue
        out += (text[done:begin], HIDDEN)
        done = end
    out.append(text[done:])
    return "".join(out)


# --- IDTOKENs ---------------------------------------------------------------------------------


def _jwt_spans(text: str) -> list[tuple[int, int]]:
    """Where the IDTOKENs are. When the segment after an `eyJ` is not followed by two more, no
    later `eyJ` inside that segment can be either: the search goes on after it."""
    spans: list[tuple[int, int]] = []
    start = text.find("eyJ")
    while start >= 0:
        rest = _JWT_REST.match(text, start + 3)
        pos = rest.end() if rest else start + 3
        if rest is not None and rest.group(1) is not None:
            spans.append((start, pos))
        start = text.find("eyJ", pos)
    return spans


# --- secret-named settings and options ----------------------------------------------------------


def _folded(text: str) -> str:
    """TEXT lower-cased character for character (same length, same positions), with the few
    letters that SECRET_NAME also takes for ASCII ones (`ſ`, `ı`, `İ`, the Kelvin sign) made ASCII."""
    folded = text.replace("\u0130", "i").lower()  # the one letter whose lower case is two characters
    if not folded.isascii():
        folded = folded.replace("\u0131", "i").replace("\u017f", "s")
    return folded


def _run(text: str, backwards: str, at: int, chars: re.Pattern[str]) -> tuple[int, int]:
    """The run of CHARS around position AT (BACKWARDS is TEXT reversed: the run's start is found
    by a forward match there)."""
    mirrored = len(text) - at
    return at - (_end_of(chars, backwards, mirrored) - mirrored), _end_of(chars, text, at)


def _end_of(chars: re.Pattern[str], text: str, at: int, stop: int | None = None) -> int:
    """Where the run of CHARS that starts at AT in TEXT ends (AT itself if there is none)."""
    found = chars.match(text, at) if stop is None else chars.match(text, at, stop)
    return found.end() if found else at


Unclosed = dict[str, tuple[int, int]]


def _quoted_end(text: str, begin: int, quote: str, unclosed: Unclosed) -> int:
    """Where the value quoted by QUOTE whose first character is at BEGIN ends: at its closing
    quote (one not escaped by `\\`), else at the end of its line. UNCLOSED holds, per quote, the
    last stretch read without a closing quote: a value starting inside it has none either (its
    opening quote was an escaped one there, so the escapes pair up alike) and is not read again."""
    start, end = unclosed.get(quote, (0, -1))
    if start <= begin < end:
        return end
    found = _QUOTED[quote].match(text, begin)
    if found is not None:
        return found.end() - 1
    end = text.find("\n", begin)
    end = len(text) if end < 0 else end
    unclosed[quote] = (begin, end)
    return end


def _option_value(text: str, folded: str, start: int, end: int, spans: list[tuple[int, int]], unclosed: Unclosed) -> None:
    r"""Add the value of the option run START..END to SPANS if it is a secret option:
    `--?[\w-]*WORD[\w-]*` (a secret word after a dash), whitespace, then a word not starting with
    `-`, or a quoted value (blanks and all)."""
    dash = text.find("-", start, end)
    if dash >= 0 and _SECRET_FOLDED.search(folded, dash + 1, end):
        gap = _GAP.match(text, end)
        begin = gap.end() if gap else len(text)
        if begin == len(text) or text[begin] == "-":
            return
        if text[begin] in _QUOTED:
            spans.append((begin + 1, _quoted_end(text, begin + 1, text[begin], unclosed)))
        else:
            spans.append((begin, _end_of(_WORD, text, begin)))


def _value_spans(text: str, folded: str) -> list[tuple[int, int]]:
    """The values of secret-named settings and options. Each secret word found (by `str.find` in
    FOLDED) is looked at in its run of key characters and its run of option characters; the next
    search for that word starts after both runs, so no run is read twice."""
    backwards = text[::-1]
    spans: list[tuple[int, int]] = []
    key_end = option_end = 0
    value_run = (0, 0)  # the last value's run: a value starting inside it ends where it ends
    unclosed: Unclosed = {}
    ends = _LONE_CR.sub("\n", text) if "\r" in text else text
    padded = ends if "\\" not in text else _padded(ends, _ESCAPED_END)
    twice = padded if "\\\\" not in text else _padded(ends, _TWICE_ESCAPED_END)
    # Read there too: a key's start (`\npass` starts with `pass`; `\token` still reads as `token`), and
    # in TWICE the blanks after its `:` (YAML's `token:\n  X` is token X). A value ends at a blank of TEXT.
    keys = folded if padded is text else _folded(padded)
    line = [0, -1, 0, 0, -1]  # the last key line _block_value read: start, end, its block's span, next real line end
    heap = [(at, word) for word in _TRIGGERS if (at := folded.find(word)) >= 0]
    heapq.heapify(heap)
    while heap:
        at, word = heapq.heappop(heap)
        if at >= key_end:
            start, key_end = _run(text, backwards, at, _KEY_CHARS)
            # An option run lies inside the key run (the same one without a `.`): no dash, no option.
            if text.find("-", start, key_end) < 0:
                option_end = key_end
            elif text.find(".", start, key_end) < 0:
                option_end = key_end
                _option_value(text, folded, start, key_end, spans, unclosed)
            if _SECRET_FOLDED.search(keys, start, key_end) or _SECRET_FOLDED.search(folded, start, key_end):
                separator = _SEPARATOR.match(twice, key_end)
                if separator is not None:
                    begin, quote = separator.end(), separator.group(3)
                    scheme = None if quote else _AUTH_SCHEME.match(text, begin)
                    if scheme is not None:
                        begin = scheme.end()
                    if not value_run[0] <= begin < value_run[1]:
                        # The value's run starts before its properties: a key inside them is not read again.
                        colon = twice[separator.start(2) - 1] == ":"
                        tagged = _PROPERTIES.match(twice, begin) if colon and not quote else None
                        value = tagged.end() if tagged else begin
                        quote = tagged.group(1) if tagged else quote
                        block = None if quote else _block_value((ends, padded, twice), start, at, value, line)
                        if block is not None:  # the lines below are hidden, the header is not
                            value_run = (begin, block[1])
                            begin = block[0]
                        elif quote:
                            value_run = (begin, _quoted_end(text, value, quote, unclosed))
                            begin = value
                        else:
                            value_run = (begin, _end_of(_ENCODED_VALUE if separator.group(1) else _COLON_VALUE if colon else _SETTING_VALUE, text, value))
                            # No real blank before it, only escaped ones: they may be the value's own (`password=\new`).
                            if begin < value_run[1] and twice[begin - 1] != text[begin - 1] and not _SPACE.search(text, separator.start(2), begin):
                                begin = separator.start(2)
                    if begin < value_run[1]:
                        spans.append((begin, value_run[1]))
        if at >= option_end:
            start, option_end = _run(text, backwards, at, _OPTION_CHARS)
            _option_value(text, folded, start, option_end, spans, unclosed)
        following = folded.find(word, max(at + 1, min(key_end, option_end)))
        if following >= 0:
            heapq.heappush(heap, (following, word))
    spans.sort()
    return spans


def _padded(text: str, escaped: re.Pattern[str]) -> str:
    """TEXT with each ESCAPED line end (or tab) the real character, padded in front with `\\r` to the
    same length; an escaped backslash stays."""
    return escaped.sub(lambda end: _LINE_END.get(end.group()) or "\r" + _LINE_END[end.group()[1:]], text)


def _block_value(views: tuple[str, str, str], key_start: int, key: int, begin: int, line: list[int]) -> tuple[int, int] | None:
    """The span of the YAML block scalar whose header (`|`, `>-`) is at BEGIN, alone on its line (that
    of the key whose secret word is at KEY, or one below it: `? password\\n: |`; KEY, not the key's
    start: the `n` of an escaped `\\n` before it is a key character) or before a comment: the lines
    below that are blank (`\\r` too), indented more than the key's line, or by a tab (no YAML
    indentation, but meant as one), without the blanks around them; None when there is no header or
    no such line. VIEWS are the text, PADDED and TWICE (_ESCAPED_END; a `\\r` alone is a `\\n` in
    all three): lines are the text's if the header's line ends at a real line end (a `\\n` below is a
    value's), else PADDED's, TWICE's if the header's line end (or that of its comment, _COMMENT) is
    escaped twice, up to the next real one (a repr's). On a real line's first escaped line, a key
    (from KEY_START) after other text (`    raise ValueError('password: |`) is indented by the blanks
    after a quote right before it (a repr's opening one), else not at all: the YAML starts there, not
    at the real line's start. LINE caches the span from the key's line to the header's line end, the
    block's span and the next real line end: the keys of one line read the lines below once."""
    text, padded, twice = views
    header = _BLOCK_HEADER.match(padded, begin)
    if header is None or (header.end() < len(padded) and twice[header.end()] not in "\r\n#"):
        return None
    if not line[0] <= key <= line[1]:
        lines = twice if padded[header.end() : header.end() + 1] == "\\" else padded
        end = lines.find("\n", begin)
        end = len(text) if end < 0 else end
        if line[4] < end:
            stop = text.find("\n", end)
            line[4] = len(text) if stop < 0 else stop
        comment = _COMMENT.match(twice, header.end(), line[4])
        if comment is not None:  # the lines below are read as the line end that ends it is: real, escaped once or twice
            end = comment.end()
            lines = padded if padded.startswith("\n", end) else twice
        lines, stop = (text, len(text)) if line[4] == end else (lines, line[4])
        start = lines.rfind("\n", 0, key) + 1
        indent = _end_of(_INDENT, lines, start) - start
        if lines is not text and key_start > start + indent and (start == 0 or text[start - 1] == "\n"):
            prefix = lines[start:key_start].rstrip(" \t")
            indent = min(indent, key_start - start - len(prefix) if prefix[-1] in "'\"" else 0)
        block = re.compile(rf"(?:[ \t\r]*\n|(?:[ \t]{{{indent + 1}}}|[ \r]*\t)[^\n]*\n?)*").match(lines, end + 1, stop)
        below = block.group() if block else ""
        line[:4] = [start, end, end + 1 + len(below) - len(below.lstrip()), end + 1 + len(below.rstrip())]
    return (line[2], line[3]) if line[2] < line[3] else None


def _glued_password_spans(text: str) -> list[tuple[int, int]]:
    """The passwords glued to `-p` (`-pSECRET`, `-p'a b'`) on the rest of each line after a
    command that takes one so (_GLUED_COMMAND), and those after sshpass's `-p` (`-p SECRET`)."""
    return [found.span(found.lastindex or 0) for line in _GLUED_LINE.finditer(text)
            for found in _GLUED_PASSWORD.finditer(text, line.start(), line.end())]


# --- URLs -------------------------------------------------------------------------------------


def _is_userinfo(candidate: str) -> bool:
    """Whether the text between `://` and an `@` is a userinfo (else the `@` is in the path)."""
    if candidate.startswith("["):  # an IPv6 host: `http://[::1]:80/a@b`
        return False
    return ":" in candidate or _PATH_START.search(candidate) is None


def _credentials(text: str, start: int, end: int, cut: bool) -> tuple[int, int] | None:
    """The span to hide in the URL whose authority starts at START and which ends at END (CUT:
    another URL follows at END in the same word)."""
    at = text.rfind("@", start, end)  # the userinfo ends at the LAST `@`: passwords may hold one
    if at >= 0:
        candidate = text[start:at]
        if not _is_userinfo(candidate):
            return None
        colon = candidate.find(":")
        return (start + colon + 1 if colon >= 0 else start, at)
    if not cut or text.find(":", start, end) < 0:
        return None
    # No `@` before the next URL: either a plain `host:port` of a list, or a password that
    # holds `scheme://` itself. Anything but a port after the `:` means the latter.
    path = _PATH_START.search(text, start, end)
    authority = text[start : path.start() if path else end].rstrip(_LIST_TAIL)
    if authority.startswith("[") or ":" not in authority:
        return None
    port = authority.split(":", 1)[1]
    if not port or (port.isascii() and port.isdigit()):
        return None
    return (start + authority.index(":") + 1, end)


def _url_spans(text: str) -> list[tuple[int, int]]:
    """The credentials of every `scheme://userinfo@host` in TEXT (see `_credentials`). A URL runs
    to the next whitespace, or to the scheme of the next URL in the same word (a proxy list)."""
    marks = [found.span() for found in _URL_MARK.finditer(text)]
    colons = [colon for colon, _ in marks]
    backwards = text[::-1] if len(colons) > 1 else ""
    spans: list[tuple[int, int]] = []
    word_end = -1
    for number, (_, start) in enumerate(marks):
        if word_end < start:
            space = _SPACE.search(text, start)
            word_end = space.start() if space else len(text)
        end, cut = word_end, False
        if number + 1 < len(colons) and colons[number + 1] < word_end:
            following = colons[number + 1]
            mirrored = len(text) - following
            end, cut = following - (_end_of(_SCHEME_BACKWARDS, backwards, mirrored, len(text) - start) - mirrored), True
            if (end == start or text[end - 1] not in _LIST_TAIL) and "@" not in text[start:end]:
                # No separator before that `scheme://` (or nothing: it starts the authority) and
                # no `@` yet: it is inside this URL's userinfo (`user:0://x@host`, `user://0?@host`:
                # a password starting `//`), not a next URL of a proxy list (`a|http://b`).
                end, cut = word_end, False
        span = _credentials(text, start, end, cut)
        if span is not None:
            spans.append(span)
    return spans


def _bare_userinfo_spans(text: str) -> list[tuple[int, int]]:
    """The passwords of `user:password@host` words without a scheme (`alice:pw@proxy:3128`, a
    proxy setting): from the word's first `:` to its last `@`, when a host follows that `@` and
    the word holds no URL (`_url_spans` reads those). A word ends at a blank or a quote."""
    backwards = text[::-1]
    spans: list[tuple[int, int]] = []
    at = text.find("@")
    while at >= 0:
        start, end = _run(text, backwards, at, _BARE_WORD)
        last = text.rfind("@", start, end)
        colon = text.find(":", start, last)
        if colon >= 0 and _HOST_START.match(text, last + 1, end) and _URL_MARK.search(text, start, end) is None:
            spans.append((colon + 1, last))
        at = text.find("@", end)
    return spans


def _user_option_spans(text: str) -> list[tuple[int, int]]:
    """The passwords of `-u user:password` (curl's and wget's user options, `--user=...` too)
    where the option starts a word."""
    return [found.span(1) for found in _USER_OPTION.finditer(text)
            if found.start() == 0 or text[found.start() - 1].isspace() or text[found.start() - 1] in "\"'"]


def redact_strings(value: Any) -> Any:
    """A copy of VALUE (JSON-like data: dicts, lists or tuples, scalars) with every string redacted;
    keys are kept. A value under a secret-named key (`password`, `CONDOR_TOKEN`) is hidden whole,
    but for None, booleans and "" (no secret in them); a list of strings is redacted as an argv
    (`redact_argv`: `["--token", X]` hides X). Iterative, so that no depth the JSON parser accepts
    can exhaust the stack."""
    root, more = _redacted_leaf(value, False)
    stack = [(value, root)] if more else []
    while stack:
        source, copy = stack.pop()
        for key, item in source.items() if isinstance(source, dict) else enumerate(source):
            new, more = _redacted_leaf(item, isinstance(source, dict) and is_secret_name(str(key)))
            if isinstance(copy, dict):
                copy[key] = new
            else:
                copy.append(new)
            if more:
                stack.append((item, new))
    return root


def _redacted_leaf(value: Any, secret: bool) -> tuple[Any, bool]:
    """VALUE's copy (SECRET: it is under a secret-named key) and whether it is an empty container
    whose items are still to be copied."""
    if secret and value is not None and not isinstance(value, bool) and value != "":
        return HIDDEN, False
    if isinstance(value, str):
        return redact(value), False
    if isinstance(value, dict):
        return {}, bool(value)
    if isinstance(value, (list, tuple)):
        if value and all(isinstance(item, str) for item in value):
            return redact_argv(value), False
        return [], bool(value)
    return value, False
