"""cloud-init config module `cvmfs`: the CernVM-FS client. discover (package manager, installed
version, current config files, cache filesystem size) -> plan (pure) -> apply -> record.

The package repository is CERN's (through its cvmfs-release package) unless `package-repository`
names another; `version` pins the package; /etc/cvmfs/default.local, domain.d/*.local and
config.d/*.local are rendered by cvmfs_spec and written atomically, only when they differ (one
vfarm did not write, without HEADER, is kept once as NAME.vfarm-orig first: an image's keys);
`cvmfs_config setup` runs only when `cvmfs_config chksetup` asks for it; then every repository
is probed. The part-handler for text/cvmfs-config runs `work` too.

Under systemd, autofs (which mounts /cvmfs/REPO on demand) is ordered after network-online.target,
which comes after cloud-init's init stage, where the part-handlers run: a `systemctl start autofs`
from there waits for the end of that stage, which waits for it. So under systemd the set-up is
`cvmfs_config setup nostart` plus autofs enabled and started without waiting (`--no-block`: it
runs once the stage is over), and a repository is probed with `cvmfs_config probe` when autofs is
active, else by mounting it with the client's mount helper at a private mount point, reading its
root and unmounting it (the same client, configuration and proxies; autofs mounts it later).
"""

from __future__ import annotations

import base64
import os
import re
import time
import urllib.parse
import urllib.request
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Optional

from ..config import cvmfs as cvmfs_spec
from ..errors import PlanError, StepError
from ..files import atomic_write, read_text
from ..textsafe import UnsafeValue, refuse_control
from .handling import PER_INSTANCE, Context, config_module
from .meta import DISTROS, module_meta
from .packages import APT, APT_ENV, env_for, package_manager
from .steps import Custom, Plan, Run, Step, WriteFile, apply

NAME = "cvmfs"
CONFIG_DIR = "/etc/cvmfs"
RELEASE_DEB = "https://cvmrepo.s3.cern.ch/cvmrepo/apt/cvmfs-release-latest_all.deb"
RELEASE_RPM = "https://cvmrepo.s3.cern.ch/cvmrepo/yum/cvmfs-release-latest.noarch.rpm"
DOWNLOAD_DIR = "/run/vfarm/cvmfs"
APT_LIST = "/etc/apt/sources.list.d/vfarm-cvmfs.list"
APT_KEY = "/etc/apt/keyrings/vfarm-cvmfs.asc"
YUM_REPO = "/etc/yum.repos.d/vfarm-cvmfs.repo"
HEADER = "Written by vfarm cvmfs (cloud-init) from the vfarm config: change that, not this file."
ORIGINAL = ".vfarm-orig"  # a config file vfarm did not write is kept once as NAME.vfarm-orig
# Generous limits: a hung mirror or proxy must end as a recorded failure, not a boot that hangs.
INSTALL_TIMEOUT = 1800.0
PROBE_TIMEOUT = 300.0
PROBE_MOUNTS = "/run/vfarm/cvmfs-probe"  # where a repository is mounted to probe it while autofs is not running
SYSTEMD_RUNNING = "/run/systemd/system"  # exists only when systemd is the init system (sd_booted)
# A domain or repository name becomes a file name in domain.d/ or config.d/: no / and no `..`.
FILE_NAME = re.compile(r"[a-z0-9]([a-z0-9-]*[a-z0-9])?(\.[a-z0-9]([a-z0-9-]*[a-z0-9])?)+")
# One word of an apt source line or a yum .repo value: no blank (apt splits words at blanks),
# no # (apt cuts the line there), no control character (checked apart).
REPOSITORY_URL = re.compile(r"(https?|file)://[^\s#]+")
APT_SUITE = re.compile(r"[A-Za-z0-9{}._/-]+")
APT_COMPONENTS = re.compile(r"[A-Za-z0-9._-]+( [A-Za-z0-9._-]+)*")

frequency = PER_INSTANCE
distros = DISTROS
meta = module_meta("cc_cvmfs", "Install and configure the CernVM-FS client", __doc__, frequency)


@dataclass
class Facts:
    manager: Optional[str] = None  # packages.MANAGERS
    codename: str = ""
    installed: Optional[str] = None  # version of the cvmfs package, None when absent
    release_installed: bool = False  # CERN's cvmfs-release package
    files: dict[str, Optional[str]] = field(default_factory=dict)  # path -> current text
    originals: list[str] = field(default_factory=list)  # paths whose NAME.vfarm-orig exists
    cache_fs_bytes: Optional[int] = None

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def upstream(version: str) -> str:
    """`2.11.5~1+debian12` or `1:2.11.5-1` -> `2.11.5`."""
    version = version.split(":", 1)[-1]
    for mark in ("~", "-", "+"):
        version = version.split(mark, 1)[0]
    return version


def is_version(found: str, wanted: str) -> bool:
    """Whether the package version FOUND is the WANTED one: written whole (`2.11.5~1+debian12`,
    `2.11.5-1.el9`) or as its upstream version (`2.11.5`)."""
    return found == wanted or upstream(found) == wanted


def config_files(section: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Absolute path of each .local file -> its settings."""
    out: dict[str, dict[str, Any]] = {}
    if section.get("local"):
        out[f"{CONFIG_DIR}/default.local"] = section["local"]
    for group, directory in (("domain", "domain.d"), ("repository", "config.d")):
        for name, settings in section.get(group, {}).items():
            if not FILE_NAME.fullmatch(name):
                raise PlanError(f"{group} {name!r} is not a name like cern.ch: it cannot name a file in {CONFIG_DIR}/{directory}")
            out[f"{CONFIG_DIR}/{directory}/{name}.local"] = settings
    return out


def repositories(section: dict[str, Any]) -> list[str]:
    names: list[str] = []
    for key, value in section.get("local", {}).items():
        if cvmfs_spec.variable(key) == "CVMFS_REPOSITORIES":
            items = value if isinstance(value, list) else str(value).split(",")
            names += [str(i).strip() for i in items if str(i).strip()]
    names += [n for n in section.get("repository", {}) if n not in names]
    return names


def _needs_auto_quota(section: dict[str, Any]) -> bool:
    for settings in config_files(section).values():
        if any(cvmfs_spec.variable(k) == "CVMFS_QUOTA_LIMIT" and v == "auto" for k, v in settings.items()):
            return True
    return False


# --- discover ---------------------------------------------------------------------------------


def _package_version(ctx: Context, manager: Optional[str], package: str) -> Optional[str]:
    if manager == APT:
        result = ctx.runner.run(["dpkg-query", "-W", "-f=${Status}\t${Version}", package], check=False, changes=False)
        status, _, version = result.stdout.partition("\t")
        return version.strip() if result.returncode == 0 and "install ok installed" in status else None
    if manager in ("dnf", "yum"):
        result = ctx.runner.run(["rpm", "-q", "--qf", "%{VERSION}-%{RELEASE}", package], check=False, changes=False)
        return result.stdout.strip() if result.returncode == 0 else None
    return None


def _filesystem_size(path: Path) -> Optional[int]:
    while not path.exists() and path != path.parent:
        path = path.parent
    try:
        stat = os.statvfs(path)
    except OSError:
        return None
    return stat.f_blocks * stat.f_frsize


def discover(section: dict[str, Any], ctx: Context) -> Facts:
    facts = Facts()
    facts.manager = package_manager()
    for line in (read_text(ctx.path("/etc/os-release")) or "").splitlines():
        if line.startswith("VERSION_CODENAME="):
            facts.codename = line.split("=", 1)[1].strip().strip('"')
    facts.installed = _package_version(ctx, facts.manager, "cvmfs")
    facts.release_installed = _package_version(ctx, facts.manager, "cvmfs-release") is not None
    for path in config_files(section):
        facts.files[path] = read_text(ctx.path(path))
        if os.path.lexists(ctx.path(path + ORIGINAL)):
            facts.originals.append(path)
    if _needs_auto_quota(section):
        facts.cache_fs_bytes = _filesystem_size(ctx.path(cvmfs_spec.cache_base(section)))
    return facts


# --- plan (pure) ------------------------------------------------------------------------------


def _checked(what: str, value: str, pattern: re.Pattern[str]) -> str:
    """VALUE, refused unless it is one word (or words) of a source line as PATTERN says."""
    refuse_control(f"package-repository {what}", value)
    if not pattern.fullmatch(value):
        raise UnsafeValue(f"package-repository {what} cannot be written on one apt or yum source line")
    return value


def _repository_steps(section: dict[str, Any], facts: Facts) -> list[Step]:
    """The steps that add the package repository. An apt source is one line `deb [OPTION] URL
    SUITE COMPONENTS`, a yum source one `KEY=VALUE` per line: every value is checked to be one
    word (components: words) with no line break, blank, `#` or control character, so it can
    neither add a line nor an apt option like `[trusted=yes]`."""
    custom = section.get("package-repository") or {}
    manager = facts.manager
    steps: list[Step] = []
    if manager == APT:
        if custom.get("apt"):
            trusted = "trusted=yes" if custom.get("trusted") else f"signed-by={APT_KEY}"
            if custom.get("gpg-key") and not custom.get("trusted"):
                steps.append(_download_step(_checked("gpg-key", custom["gpg-key"], REPOSITORY_URL), APT_KEY))
            suite = str(custom.get("suite", "{codename}-prod")).replace("{codename}", facts.codename or "stable")
            url = _checked("apt", custom["apt"], REPOSITORY_URL)
            components = _checked("components", custom.get("components", "main"), APT_COMPONENTS)
            line = f"deb [{trusted}] {url} {_checked('suite', suite, APT_SUITE)} {components}\n"
            steps.append(WriteFile("write-file", APT_LIST, line, 0o644))
        elif not facts.release_installed:
            deb = f"{DOWNLOAD_DIR}/cvmfs-release-latest_all.deb"
            steps += [_download_step(RELEASE_DEB, deb), _package_command("add-repository", ["dpkg", "-i", deb])]
        steps.append(_package_command("update", ["apt-get", "update", "-q"]))
    elif manager in ("dnf", "yum"):
        if custom.get("yum"):
            check = "0" if custom.get("trusted") else "1"
            key = f"gpgkey={_checked('gpg-key', custom['gpg-key'], REPOSITORY_URL)}\n" if custom.get("gpg-key") else ""
            url = _checked("yum", custom["yum"], REPOSITORY_URL)
            text = f"[vfarm-cvmfs]\nname=CernVM-FS (vfarm)\nbaseurl={url}\nenabled=1\ngpgcheck={check}\n{key}"
            steps.append(WriteFile("write-file", YUM_REPO, text, 0o644))
        elif not facts.release_installed:
            steps.append(_package_command("add-repository", [manager, "install", "-y", RELEASE_RPM]))
    if any(isinstance(s, WriteFile) for s in steps) and not custom.get("gpg-key") and not custom.get("trusted"):
        raise PlanError("package-repository has no gpg-key and is not trusted: add gpg-key, or trusted: true")  # signed-by= a key never written
    return steps


@dataclass
class CvmfsPlan(Plan):
    quota_mb: Optional[int] = None
    repositories: list[str] = field(default_factory=list)


def plan(section: dict[str, Any], facts: Facts) -> CvmfsPlan:
    steps: list[Step] = []
    wanted = section.get("version")
    if section.get("install"):
        if facts.manager is None:
            raise PlanError("no apt-get, dnf or yum on this machine: cannot install cvmfs")
        current_ok = facts.installed is not None and (wanted is None or is_version(facts.installed, wanted))
        if not current_ok:
            try:
                steps += _repository_steps(section, facts)
            except UnsafeValue as err:
                raise PlanError(str(err)) from None
            steps.append(_install_step(facts.manager, "cvmfs", wanted))
    elif facts.installed is None:
        raise PlanError("cvmfs is not installed and install is false: install it in the image or set install: true")
    quota_mb = cvmfs_spec.auto_quota_mb(facts.cache_fs_bytes) if facts.cache_fs_bytes else None
    if _needs_auto_quota(section) and quota_mb is None:
        raise PlanError(f"quota-limit: auto, but the size of the cache filesystem ({cvmfs_spec.cache_base(section)}) is unknown")
    wrote_config = False
    notes = []
    for path, settings in config_files(section).items():
        try:
            text = cvmfs_spec.render(settings, quota_mb, HEADER)
        except UnsafeValue as err:
            raise PlanError(f"cannot write {path}: {err}") from None
        current = facts.files.get(path)
        if current != text:
            if current is not None and not current.startswith(f"# {HEADER}\n"):
                if path in facts.originals:
                    notes.append(f"{path} was not written by vfarm: replaced, its first version is kept in {path}{ORIGINAL} already")
                else:
                    notes.append(f"{path} was not written by vfarm: kept as {path}{ORIGINAL}, then replaced")
                    steps.append(_keep_step(path))
            steps.append(WriteFile("write-file", path, text, 0o644))
            wrote_config = True
    steps.append(_setup_step(reload=wrote_config))
    repos = repositories(section)
    if repos:
        steps.append(Custom("probe", lambda ctx: _probe(ctx, repos), {"repositories": repos}, changes=False))
    return CvmfsPlan(steps, notes, quota_mb=quota_mb, repositories=repos)


# --- the steps that are neither a command nor a file --------------------------------------------


def _package_command(action: str, argv: list[str]) -> Run:
    return Run(action, argv, env=APT_ENV if argv[0].startswith("apt") or argv[0] == "dpkg" else None, timeout=INSTALL_TIMEOUT)


def _download_step(url: str, path: str) -> Custom:
    return Custom("download", lambda ctx: _download(url, ctx.path(path), ctx), {"url": url, "path": path})


def _download(url: str, path: Path, ctx: Context) -> None:
    last: Optional[Exception] = None
    for attempt in range(3):
        try:
            with urllib.request.urlopen(_request(url), timeout=30) as response:  # noqa: S310 - http(s) URLs from the validated config
                atomic_write(path, response.read(), 0o644)
            return
        except (OSError, ValueError) as err:  # ValueError: a URL urllib cannot open (http.client.InvalidURL)
            last = err
            ctx.logger.warning("download of %s failed (attempt %d): %s", cvmfs_spec.redact(url), attempt + 1, _without_password(str(err), url))
            time.sleep(2 * (attempt + 1))
    raise StepError(f"cannot download {cvmfs_spec.redact(url)}: {_without_password(str(last), url)}")


def _request(url: str) -> urllib.request.Request:
    """URL as a request. urllib reads a user:password in a URL as part of the host: they are sent
    as HTTP basic authentication instead, and never to the host of a redirect."""
    parts = urllib.parse.urlsplit(url)
    if parts.username is None:
        return urllib.request.Request(url)
    request = urllib.request.Request(urllib.parse.urlunsplit(parts._replace(netloc=parts.netloc.rpartition("@")[2])))
    user, password = urllib.parse.unquote(parts.username), urllib.parse.unquote(parts.password or "")
    request.add_unredirected_header("Authorization", "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode("ascii"))
    return request


def _without_password(text: str, url: str) -> str:
    """TEXT (an error about URL) without URL's password, as written or decoded."""
    password = urllib.parse.urlsplit(url).password
    for secret in {password, urllib.parse.unquote(password or "")} - {None, ""}:
        text = text.replace(str(secret), "***")
    return cvmfs_spec.redact(text)


def _keep_step(path: str) -> Custom:
    """Copy PATH (a file vfarm did not write) to PATH.vfarm-orig, whole or not at all, with its
    mode; never over a copy that exists."""
    copy = path + ORIGINAL

    def keep(ctx: Context) -> dict[str, Any]:
        if os.path.lexists(ctx.path(copy)):
            return {"changed": False}
        source = ctx.path(path)
        atomic_write(ctx.path(copy), source.read_bytes(), source.stat().st_mode & 0o7777)
        ctx.logger.info("kept %s (not written by vfarm) as %s", path, copy)
        return {}

    return Custom("keep-original", keep, {"path": path, "copy": copy})


def _install_step(manager: str, package: str, version: Optional[str]) -> Custom:
    """Install PACKAGE; apt's exact version string for an upstream VERSION is looked up first."""

    def install(ctx: Context) -> dict[str, Any]:
        argv = _install_argv(ctx, manager, package, version)
        ctx.runner.run(argv, env=env_for(manager), timeout=INSTALL_TIMEOUT)
        return {"argv": argv}

    return Custom("install", install, {"manager": manager, "package": package, "version": version})


def _install_argv(ctx: Context, manager: str, package: str, version: Optional[str]) -> list[str]:
    if manager == APT:
        spec = package
        if version:
            madison = ctx.runner.run(["apt-cache", "madison", package], changes=False)
            exact = [line.split("|")[1].strip() for line in madison.stdout.splitlines() if line.count("|") >= 2]
            match = [v for v in exact if is_version(v, version)]
            if not match and not ctx.dry_run:
                raise StepError(f"cvmfs {version} is not in the package repository (it has: {', '.join(exact) or 'no cvmfs at all'})")
            spec = f"{package}={match[0] if match else version}"
        return ["apt-get", "install", "-y", "-q", "--allow-downgrades", spec]
    return [manager, "install", "-y", f"{package}-{version}" if version else package]


def _systemd(ctx: Context) -> bool:
    return ctx.path(SYSTEMD_RUNNING).is_dir()


def _setup_step(reload: bool) -> Custom:
    """`cvmfs_config setup` when `cvmfs_config chksetup` asks for it, else a reload when the
    config changed (RELOAD). Under systemd autofs is started without waiting (module docstring)."""

    def setup(ctx: Context) -> dict[str, Any]:
        check = ctx.runner.run(["cvmfs_config", "chksetup"], check=False, changes=False)
        if check.returncode != 0 or check.stdout.strip() != "OK":
            ctx.logger.info("cvmfs_config chksetup asks for a set-up: %s", (check.stdout + check.stderr).strip()[-500:])
            if not _systemd(ctx):
                ctx.runner.run(["cvmfs_config", "setup"], timeout=INSTALL_TIMEOUT)
                return {"ran": "setup"}
            ctx.runner.run(["cvmfs_config", "setup", "nostart"], timeout=INSTALL_TIMEOUT)
            ctx.runner.run(["systemctl", "enable", "--quiet", "autofs.service"], timeout=INSTALL_TIMEOUT)
            ctx.runner.run(["systemctl", "start", "--no-block", "autofs.service"], timeout=INSTALL_TIMEOUT)
            return {"ran": "setup nostart, autofs started without waiting"}
        if reload:
            ctx.runner.run(["cvmfs_config", "reload"], timeout=INSTALL_TIMEOUT)
            return {"ran": "reload"}
        return {"ran": "nothing", "changed": False}

    return Custom("setup", setup, {"reload": reload})


def _probe(ctx: Context, repos: list[str]) -> dict[str, Any]:
    """`cvmfs_config probe` through autofs when it runs, else a mount of each repository of its own."""
    autofs = not _systemd(ctx) or ctx.runner.run(["systemctl", "is-active", "--quiet", "autofs.service"], check=False,
                                                 changes=False).returncode == 0
    for repo in repos:
        if autofs:
            ctx.runner.run(["cvmfs_config", "probe", repo], timeout=PROBE_TIMEOUT)
        else:
            _probe_by_mount(ctx, repo)
    return {"how": "cvmfs_config probe" if autofs else f"mount -t cvmfs at {PROBE_MOUNTS}/REPO (autofs not running yet)"}


def _probe_by_mount(ctx: Context, repo: str) -> None:
    mountpoint = f"{PROBE_MOUNTS}/{repo}"
    if not ctx.dry_run:
        ctx.path(mountpoint).mkdir(parents=True, exist_ok=True)
    ctx.logger.info("autofs is not running yet (systemd starts it after this stage): probing %s by mounting it at %s", repo, mountpoint)
    ctx.runner.run(["mount", "-t", "cvmfs", repo, mountpoint], timeout=PROBE_TIMEOUT)
    try:
        ctx.runner.run(["ls", "-A", mountpoint], timeout=PROBE_TIMEOUT, changes=False)
    finally:
        ctx.runner.run(["umount", mountpoint], timeout=PROBE_TIMEOUT, check=False)


def work(section: dict[str, Any], ctx: Context) -> bool:
    facts = discover(section, ctx)
    ctx.record.step("discover", True, manager=facts.manager, installed=facts.installed, cache_fs_bytes=facts.cache_fs_bytes)
    todo = plan(section, facts)
    ctx.record.step("plan", True, steps=todo.actions(), quota_mb=todo.quota_mb, notes=todo.notes)
    for note in todo.notes:
        ctx.logger.info("%s", note)
    return apply(todo, ctx) and not ctx.dry_run


handle = config_module(NAME, work)
