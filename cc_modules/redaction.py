"""The one redaction of the project: logs, status records, summaries and error messages pass
through `redact`, so secrets (proxy passwords in URLs, pool tokens, cloud keys) never reach them
in clear."""

from __future__ import annotations

import re

SECRET_IN_URL = re.compile(r"(://[^/\s:@]+:)[^@\s/]+@")
# Names whose values are secrets (env variables, options, KEY=VALUE settings, JSON keys).
_SECRET_WORD = r"(?:passw(?:or)?d|secret|token|api[_-]?key|access[_-]?key|private[_-]?key|credential|auth[_-]?key)"
SECRET_NAME = re.compile(r"(?i)" + _SECRET_WORD)
_SECRET_SETTING = re.compile(r"""(?i)(["']?[\w.-]*""" + _SECRET_WORD + r"""[\w.-]*["']?\s*[=:]\s*["']?)[^\s"',}]+""")
_SECRET_OPTION = re.compile(r"(?i)(--?[\w-]*" + _SECRET_WORD + r"[\w-]*\s+)(?!-)\S+")
# An IDTOKEN (JWT) anywhere in a text: HTCondor pool tokens.
JWT = re.compile(r"\beyJ[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+")


def redact(text: str) -> str:
    """Hide secrets in TEXT: the password of `http://user:password@host` style URLs, IDTOKENs,
    and the values of secret-named settings (`TOKEN=...`, `"password": ...`) and options
    (`--token X`)."""
    text = SECRET_IN_URL.sub(r"\1***@", text)
    text = JWT.sub("***", text)
    text = _SECRET_SETTING.sub(r"\1***", text)
    return _SECRET_OPTION.sub(r"\1***", text)


def is_secret_name(name: str) -> bool:
    """Whether an env variable or option called NAME holds a secret."""
    return bool(SECRET_NAME.search(name))
