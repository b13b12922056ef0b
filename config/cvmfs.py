"""The cvmfs section as data: key mapping, value rendering and semantic checks (pure, no I/O)."""

from __future__ import annotations

import re
from typing import Any, Optional
from urllib.parse import urlsplit

from ..redaction import redact
from ..textsafe import UnsafeValue, refuse_control
from .findings import Finding

# How list values join, per variable; CVMFS reads `;` between failover groups and `|` inside one.
SEPARATORS = {
    "CVMFS_HTTP_PROXY": ";",
    "CVMFS_SERVER_URL": ";",
    "CVMFS_PAC_URLS": ";",
    "CVMFS_FALLBACK_PROXY": ";",
    "CVMFS_KEYS_DIR": ":",
}
GROUP_SEPARATOR = "|"
DEFAULT_SEPARATOR = ","
PROXY_KEYS = ("CVMFS_HTTP_PROXY", "CVMFS_FALLBACK_PROXY")
DEFAULT_CACHE_BASE = "/var/cache/cvmfs"
# quota-limit: auto leaves room on the cache filesystem, as puppet-cvmfs does (0.85 x size).
AUTO_QUOTA_SHARE = 0.85
# What a .local file may hold; why: see render().
VARIABLE_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_NOT_CARRIED = {'"': "a double quote", "'": "a single quote", "\\": "a backslash", "$": "a $", "`": "a backquote", "#": "a #"}
_ECHO_OPTION = re.compile(r"-[neE]+")
_GLOB = re.compile(r"[*?\[]")
_URL_START = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://")
MAX_QUOTA_MB = 1024**3  # 1 PiB: more than any cache; CernVM-FS multiplies it into bytes
# A fully qualified repository name (RFC 1123 labels, at least two): CernVM-FS finds its
# config.d file and mount point by it.
FQRN = re.compile(r"(?=[^\n]{1,253}\Z)[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?(\.[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?)+\Z")



def variable(key: str) -> str:
    """`http-proxy` -> `CVMFS_HTTP_PROXY`; `CVMFS_*` passes through."""
    return key if key.startswith("CVMFS_") else "CVMFS_" + key.upper().replace("-", "_")


def join(name: str, value: Any) -> str:
    """One value as CVMFS expects it in a .local file (unquoted)."""
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, list):
        separator = SEPARATORS.get(name, DEFAULT_SEPARATOR)
        return separator.join(GROUP_SEPARATOR.join(map(str, item)) if isinstance(item, list) else join(name, item) for item in value)
    return str(value)


def quote(value: str, name: str = "value") -> str:
    """VALUE as the right-hand side of `NAME=` in a .local file, read back as the same single
    value by /bin/sh and by both CernVM-FS parsers (the rules: render()). UnsafeValue otherwise."""
    refuse_control(name, value)
    for char, what in _NOT_CARRIED.items():
        if char in value:
            raise UnsafeValue(f"{name} holds {what}: CernVM-FS cannot read it back as written")
    words = value.split(" ")
    if value and "" in words:
        raise UnsafeValue(f"{name} has blanks at an end or two in a row: CernVM-FS reads it through `echo $NAME`, which drops them")
    if value and _ECHO_OPTION.fullmatch(words[0]):
        raise UnsafeValue(f"{name} starts with {words[0]}: CernVM-FS reads it through `echo $NAME`, which takes that as an option")
    for word in words:
        if _GLOB.search(word) and not _URL_START.match(word):
            raise UnsafeValue(f"{name} holds *, ? or [ outside a URL: CernVM-FS reads it through `echo $NAME`, which expands file names")
    return f'"{value}"' if value else ""


def render(settings: dict[str, Any], quota_mb: Optional[int] = None, header: str = "") -> str:
    """The text of a .local file: `NAME="VALUE"` lines. `quota_mb` replaces `quota-limit: auto`.

    How CernVM-FS reads the file (cvmfs 2.12 options.cc, mount/config.sh), and the rule it gives:
    - BashOptionsManager (cvmfs2 and the mount helper) writes every line to /bin/sh (dash on Debian,
      bash on EL) after `cd` to the file's folder. Then, for each line, it cuts from the first `#`,
      trims, splits at `=`; the text before the first `=` (without `export `, `readonly `,
      `eval `) is the name. It sends `echo $NAME` to the shell and takes ONE line of output as the
      value: unquoted, so blanks are collapsed, `*?[` expand file names, a leading `-n`/`-e` is
      an option, dash's echo reads backslash escapes, and a value of two lines hands its second
      line to the next name.
    - SimpleOptionsParser (cvmfs2 -o simple_options_parsing, libcvmfs) runs no shell: the same
      line split, then the value is the rest of the line trimmed, without one pair of enclosing
      `"` or `'` (only when longer than two characters), and no unescaping at all.
    - cvmfs_config (cvmfs_readconfig) evals `NAME=VALUE` from `cvmfs2 -o parse`, which quotes a
      value in single quotes with `\\'` for a quote inside: wrong in sh, so a `'` in a value ends
      the quoting there and the rest runs as shell code.
    So a value is written as `NAME="VALUE"` (bare `NAME=` when empty) and refused when it holds a
    control character (newline, CR, tab, NUL, ... and U+2028/U+2029), `"`, `'`, backslash, `$`,
    backquote or `#`; blanks at an end or two in a row; a first word `-n`, `-e`, `-E`; `*`, `?`
    or `[` in a word that is not a URL (a URL's first path part, `scheme:`, is never a folder
    beside the config files). Names are shell variable names."""
    lines = [f"# {line}" for line in header.splitlines()] if header else []
    for key, value in settings.items():
        name = variable(key)
        if not VARIABLE_NAME.fullmatch(name):
            raise UnsafeValue(f"{name!r} is not a shell variable name")
        if name == "CVMFS_QUOTA_LIMIT" and value == "auto":
            if quota_mb is None:
                raise ValueError("quota-limit: auto needs the cache filesystem's size")
            value = quota_mb
        lines.append(f"{name}={quote(join(name, value), name)}")
    return "\n".join(lines) + "\n"


def auto_quota_mb(cache_fs_bytes: int) -> int:
    return int(cache_fs_bytes * AUTO_QUOTA_SHARE) // (1024 * 1024)


def cache_base(section: dict[str, Any]) -> str:
    for key, value in section.get("local", {}).items():
        if variable(key) == "CVMFS_CACHE_BASE":
            return str(value)
    return DEFAULT_CACHE_BASE


def _shown_proxy(proxy: str) -> str:
    """PROXY for a message: the password (between the user's colon and the last @) hidden, however
    malformed (a blank in it would end redact's URL there)."""
    scheme, sep, rest = proxy.partition("://")
    userinfo, at, host = rest.rpartition("@")
    if sep and at and ":" in userinfo:
        return redact(f"{scheme}://{userinfo.split(':', 1)[0]}:***@{host}")
    return redact(proxy)


def _proxy_problem(proxy: str) -> Optional[str]:
    if proxy in ("DIRECT", "auto"):
        return None
    shown = _shown_proxy(proxy)
    try:
        parts = urlsplit(proxy)
        port = parts.port
    except ValueError as err:
        if shown != proxy:  # urllib quotes the piece it failed on: a piece of the password
            return f"proxy {shown!r} does not parse (characters such as / # ? @ in a password must be percent-encoded)"
        return f"proxy {shown!r} does not parse: {err}"
    if parts.scheme != "http" or not parts.hostname:
        return f"proxy {shown!r} is not a URL like http://squid.example.org:3128 (or DIRECT)"
    if port is None:
        return f"proxy {shown!r} has no port (squids usually listen on 3128)"
    return None


def _settings_findings(settings: dict[str, Any], where: tuple[str, ...]) -> list[Finding]:
    path: tuple[str | int, ...]
    findings = []
    spelled: dict[str, str] = {}  # variable -> the key that set it first
    for key, value in settings.items():
        name = variable(key)
        if name in spelled:  # two spellings of one variable: the file's last line would win, silently
            message = f"{name} is set twice, as '{spelled[name]}' and as '{key}': keep one of them"
            findings.append(Finding(where + (key,), message, at_key=True))
        spelled.setdefault(name, key)
        if name in PROXY_KEYS:
            groups = value if isinstance(value, list) else str(value).split(";")
            for i, group in enumerate(groups):
                members = group if isinstance(group, list) else str(group).split("|")
                for proxy in members:
                    problem = _proxy_problem(str(proxy).strip())
                    if problem:
                        path = (*where, key, i) if isinstance(value, list) else (*where, key)
                        findings.append(Finding(path, problem))
        if name == "CVMFS_QUOTA_LIMIT" and value != "auto" and not (isinstance(value, int) and not isinstance(value, bool) and 0 < value <= MAX_QUOTA_MB):
            findings.append(Finding(where + (key,), f"quota-limit must be a number of megabytes (1 to {MAX_QUOTA_MB}) or auto"))
        if name == "CVMFS_REPOSITORIES":
            names = value if isinstance(value, list) else str(value).split(",")
            for i, repository in enumerate(names):
                text = str(repository).strip()
                if not FQRN.match(text):
                    path = (*where, key, i) if isinstance(value, list) else (*where, key)
                    findings.append(Finding(path, f"repository {redact(text)!r} is not a fully qualified repository name like alice.cern.ch"))
    return findings


def check(section: dict[str, Any]) -> list[Finding]:
    """Semantic checks beyond the schema, on a schema-valid section."""
    findings = _settings_findings(section.get("local", {}), ("local",))
    for group in ("domain", "repository"):
        for name, settings in section.get(group, {}).items():
            findings += _settings_findings(settings, (group, name))
    custom = section.get("package-repository") or {}
    for manager in ("apt", "yum"):
        if custom.get(manager) and not custom.get("gpg-key") and not custom.get("trusted"):
            message = (f"package-repository {manager} has no gpg-key: add gpg-key (the URL of its signing key), "
                       "or trusted: true for an unsigned test repository")
            findings.append(Finding(("package-repository", manager), message, at_key=True))
    if section.get("install") and not section.get("local") and not section.get("repository"):
        message = "cvmfs is installed but nothing configures it: add a local: section with repositories and http-proxy"
        findings.append(Finding((), message, warning=True, at_key=True))
    return findings


def cross_check(sections: dict[str, Any]) -> list[Finding]:
    """A cvmfs part of localfs that the cache never uses: a warning (the config's other sections)."""
    from . import localfs as localfs_spec

    localfs, cvmfs = sections.get("localfs"), sections.get("cvmfs")
    if not localfs or not cvmfs:
        return []
    spec = localfs_spec.parse(localfs)
    if "cvmfs" not in {p.name for p in spec.parts}:
        return []
    base = cache_base(cvmfs).rstrip("/") or "/"
    mounts = [p.mount for p in spec.parts if p.mount]
    if any(base == m or base.startswith(m.rstrip("/") + "/") for m in mounts):
        return []
    key = next((k for k in cvmfs.get("local", {}) if variable(k) == "CVMFS_CACHE_BASE"), None)
    path: tuple[str, ...] = ("local", key) if key else ()
    message = f"cvmfs: cache-base {base} is on none of the localfs parts ({', '.join(mounts)}): the cvmfs part would go unused"
    return [Finding(path, message, warning=True, at_key=key is None)]
