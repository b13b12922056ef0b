"""The cvmfs section as data: key mapping, value rendering and semantic checks (pure, no I/O)."""

from __future__ import annotations

from typing import Any, Optional
from urllib.parse import urlsplit

from .findings import Finding
from .redaction import redact

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


def quote(value: str) -> str:
    """Shell-safe double quoting (the .local files are sourced by bash)."""
    escaped = value.replace("\\", "\\\\").replace('"', '\\"').replace("$", "\\$").replace("`", "\\`")
    return f'"{escaped}"'


def render(settings: dict[str, Any], quota_mb: Optional[int] = None, header: str = "") -> str:
    """The text of a .local file. `quota_mb` replaces `quota-limit: auto`."""
    lines = [f"# {line}" for line in header.splitlines()] if header else []
    for key, value in settings.items():
        name = variable(key)
        if name == "CVMFS_QUOTA_LIMIT" and value == "auto":
            if quota_mb is None:
                raise ValueError("quota-limit: auto needs the cache filesystem's size")
            value = quota_mb
        lines.append(f"{name}={quote(join(name, value))}")
    return "\n".join(lines) + "\n"


def auto_quota_mb(cache_fs_bytes: int) -> int:
    return int(cache_fs_bytes * AUTO_QUOTA_SHARE) // (1024 * 1024)


def cache_base(section: dict[str, Any]) -> str:
    for key, value in section.get("local", {}).items():
        if variable(key) == "CVMFS_CACHE_BASE":
            return str(value)
    return DEFAULT_CACHE_BASE


def _proxy_problem(proxy: str) -> Optional[str]:
    if proxy in ("DIRECT", "auto"):
        return None
    try:
        parts = urlsplit(proxy)
        port = parts.port
    except ValueError as err:
        if redact(proxy) != proxy:  # urllib quotes the piece it failed on: a piece of the password
            return f"proxy {redact(proxy)!r} does not parse (characters such as / # ? @ in a password must be percent-encoded)"
        return f"proxy {redact(proxy)!r} does not parse: {err}"
    if parts.scheme != "http" or not parts.hostname:
        return f"proxy {redact(proxy)!r} is not a URL like http://squid.example.org:3128 (or DIRECT)"
    if port is None:
        return f"proxy {redact(proxy)!r} has no port (squids usually listen on 3128)"
    return None


def _settings_findings(settings: dict[str, Any], where: tuple[str, ...]) -> list[Finding]:
    path: tuple[str | int, ...]
    findings = []
    for key, value in settings.items():
        name = variable(key)
        if name in PROXY_KEYS:
            groups = value if isinstance(value, list) else str(value).split(";")
            for i, group in enumerate(groups):
                members = group if isinstance(group, list) else str(group).split("|")
                for proxy in members:
                    problem = _proxy_problem(str(proxy).strip())
                    if problem:
                        path = (*where, key, i) if isinstance(value, list) else (*where, key)
                        findings.append(Finding(path, problem))
        if name == "CVMFS_QUOTA_LIMIT" and value != "auto" and not (isinstance(value, int) and value > 0):
            findings.append(Finding(where + (key,), "quota-limit must be a number of megabytes (> 0) or auto"))
    return findings


def check(section: dict[str, Any]) -> list[Finding]:
    """Semantic checks beyond the schema, on a schema-valid section."""
    findings = _settings_findings(section.get("local", {}), ("local",))
    for group in ("domain", "repository"):
        for name, settings in section.get(group, {}).items():
            findings += _settings_findings(settings, (group, name))
    if section.get("install") and not section.get("local") and not section.get("repository"):
        message = "cvmfs is installed but nothing configures it: add a local: section with repositories and http-proxy"
        findings.append(Finding((), message, warning=True, at_key=True))
    return findings
