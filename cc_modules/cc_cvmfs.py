"""cloud-init config module `cvmfs`: the CernVM-FS client. discover (package manager, installed
version, current config files, cache filesystem size) -> plan (pure) -> apply -> record.

The package repository is CERN's (through its cvmfs-release package) unless `package-repository`
names another; `version` pins the package; /etc/cvmfs/default.local, domain.d/*.local and
config.d/*.local are rendered by cvmfs_spec and written atomically, only when they differ;
`cvmfs_config setup` runs only when `cvmfs_config chksetup` asks for it; then every repository
is probed. The part-handler for text/cvmfs-config runs `work` too.
"""

from __future__ import annotations

import os
import re
import shutil
import time
import urllib.request
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Optional

from . import cvmfs_spec
from .files import atomic_write, read_text
from .handling import PER_INSTANCE, Context, StepError, config_module
from .localfs_spec import PlanError
from .meta import DISTROS, module_meta
from .runner import CommandFailed
from .textsafe import UnsafeValue, refuse_control

NAME = "cvmfs"
CONFIG_DIR = "/etc/cvmfs"
RELEASE_DEB = "https://cvmrepo.s3.cern.ch/cvmrepo/apt/cvmfs-release-latest_all.deb"
RELEASE_RPM = "https://cvmrepo.s3.cern.ch/cvmrepo/yum/cvmfs-release-latest.noarch.rpm"
DOWNLOAD_DIR = "/run/vfarm/cvmfs"
APT_LIST = "/etc/apt/sources.list.d/vfarm-cvmfs.list"
APT_KEY = "/etc/apt/keyrings/vfarm-cvmfs.asc"
YUM_REPO = "/etc/yum.repos.d/vfarm-cvmfs.repo"
HEADER = "Written by vfarm cvmfs (cloud-init) from the vfarm config: change that, not this file."
APT_ENV = {"DEBIAN_FRONTEND": "noninteractive"}
# Generous limits: a hung mirror or proxy must end as a recorded failure, not a boot that hangs.
INSTALL_TIMEOUT = 1800.0
PROBE_TIMEOUT = 300.0
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
    manager: Optional[str] = None  # apt, dnf, yum
    codename: str = ""
    installed: Optional[str] = None  # version of the cvmfs package, None when absent
    release_installed: bool = False  # CERN's cvmfs-release package
    files: dict[str, Optional[str]] = field(default_factory=dict)  # path -> current text
    cache_fs_bytes: Optional[int] = None

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def upstream(version: str) -> str:
    """`2.11.5~1+debian12` or `1:2.11.5-1` -> `2.11.5`."""
    version = version.split(":", 1)[-1]
    for mark in ("~", "-", "+"):
        version = version.split(mark, 1)[0]
    return version


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
    if manager == "apt":
        result = ctx.runner.run(["dpkg-query", "-W", "-f=${Status}\t${Version}", package], check=False, changes=False)
        status, _, version = result.stdout.partition("\t")
        return version.strip() if result.returncode == 0 and "install ok installed" in status else None
    if manager in ("dnf", "yum"):
        result = ctx.runner.run(["rpm", "-q", "--qf", "%{VERSION}", package], check=False, changes=False)
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
    facts.manager = next((m for m, tool in (("apt", "apt-get"), ("dnf", "dnf"), ("yum", "yum")) if shutil.which(tool)), None)
    for line in (read_text(ctx.path("/etc/os-release")) or "").splitlines():
        if line.startswith("VERSION_CODENAME="):
            facts.codename = line.split("=", 1)[1].strip().strip('"')
    facts.installed = _package_version(ctx, facts.manager, "cvmfs")
    facts.release_installed = _package_version(ctx, facts.manager, "cvmfs-release") is not None
    for path in config_files(section):
        facts.files[path] = read_text(ctx.path(path))
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


def _repository_steps(section: dict[str, Any], facts: Facts) -> list[dict[str, Any]]:
    """The steps that add the package repository. An apt source is one line `deb [OPTION] URL
    SUITE COMPONENTS`, a yum source one `KEY=VALUE` per line: every value is checked to be one
    word (components: words) with no line break, blank, `#` or control character, so it can
    neither add a line nor an apt option like `[trusted=yes]`."""
    custom = section.get("package-repository") or {}
    manager = facts.manager
    steps: list[dict[str, Any]] = []
    if manager == "apt":
        if custom.get("apt"):
            trusted = "trusted=yes" if custom.get("trusted") else f"signed-by={APT_KEY}"
            if custom.get("gpg-key") and not custom.get("trusted"):
                steps.append({"action": "download", "url": _checked("gpg-key", custom["gpg-key"], REPOSITORY_URL), "path": APT_KEY})
            suite = str(custom.get("suite", "{codename}-prod")).replace("{codename}", facts.codename or "stable")
            url = _checked("apt", custom["apt"], REPOSITORY_URL)
            components = _checked("components", custom.get("components", "main"), APT_COMPONENTS)
            line = f"deb [{trusted}] {url} {_checked('suite', suite, APT_SUITE)} {components}\n"
            steps.append({"action": "write-file", "path": APT_LIST, "content": line})
        elif not facts.release_installed:
            deb = f"{DOWNLOAD_DIR}/cvmfs-release-latest_all.deb"
            steps += [{"action": "download", "url": RELEASE_DEB, "path": deb}, {"action": "add-repository", "argv": ["dpkg", "-i", deb]}]
        steps.append({"action": "update", "argv": ["apt-get", "update", "-q"]})
    elif manager in ("dnf", "yum"):
        if custom.get("yum"):
            check = "0" if custom.get("trusted") else "1"
            key = f"gpgkey={_checked('gpg-key', custom['gpg-key'], REPOSITORY_URL)}\n" if custom.get("gpg-key") else ""
            url = _checked("yum", custom["yum"], REPOSITORY_URL)
            text = f"[vfarm-cvmfs]\nname=CernVM-FS (vfarm)\nbaseurl={url}\nenabled=1\ngpgcheck={check}\n{key}"
            steps.append({"action": "write-file", "path": YUM_REPO, "content": text})
        elif not facts.release_installed:
            steps.append({"action": "add-repository", "argv": [manager, "install", "-y", RELEASE_RPM]})
    return steps


def plan(section: dict[str, Any], facts: Facts) -> dict[str, Any]:
    steps: list[dict[str, Any]] = []
    wanted = section.get("version")
    if section.get("install"):
        if facts.manager is None:
            raise PlanError("no apt-get, dnf or yum on this machine: cannot install cvmfs")
        current_ok = facts.installed is not None and (wanted is None or upstream(facts.installed) == wanted)
        if not current_ok:
            try:
                steps += _repository_steps(section, facts)
            except UnsafeValue as err:
                raise PlanError(str(err)) from None
            steps.append({"action": "install", "manager": facts.manager, "package": "cvmfs", "version": wanted})
    elif facts.installed is None:
        raise PlanError("cvmfs is not installed and install is false: install it in the image or set install: true")
    quota_mb = cvmfs_spec.auto_quota_mb(facts.cache_fs_bytes) if facts.cache_fs_bytes else None
    if _needs_auto_quota(section) and quota_mb is None:
        raise PlanError(f"quota-limit: auto, but the size of the cache filesystem ({cvmfs_spec.cache_base(section)}) is unknown")
    for path, settings in config_files(section).items():
        try:
            text = cvmfs_spec.render(settings, quota_mb, HEADER)
        except UnsafeValue as err:
            raise PlanError(f"cannot write {path}: {err}") from None
        if facts.files.get(path) != text:
            steps.append({"action": "write-file", "path": path, "content": text})
    steps.append({"action": "setup"})  # cvmfs_config setup, only if chksetup asks for it
    repos = repositories(section)
    if repos:
        steps.append({"action": "probe", "repositories": repos})
    return {"steps": steps, "quota_mb": quota_mb, "repositories": repos}


# --- apply ------------------------------------------------------------------------------------


def _download(url: str, path: Path, ctx: Context) -> None:
    last: Optional[Exception] = None
    for attempt in range(3):
        try:
            with urllib.request.urlopen(url, timeout=30) as response:  # noqa: S310 - http(s) URLs from the validated config
                atomic_write(path, response.read(), 0o644)
            return
        except OSError as err:
            last = err
            ctx.logger.warning("download of %s failed (attempt %d): %s", cvmfs_spec.redact(url), attempt + 1, err)
            time.sleep(2 * (attempt + 1))
    raise StepError(f"cannot download {cvmfs_spec.redact(url)}: {last}")


def _install(step: dict[str, Any], ctx: Context) -> list[str]:
    manager, package, version = step["manager"], step["package"], step["version"]
    if manager == "apt":
        spec = package
        if version:
            madison = ctx.runner.run(["apt-cache", "madison", package], changes=False)
            exact = [line.split("|")[1].strip() for line in madison.stdout.splitlines() if line.count("|") >= 2]
            match = [v for v in exact if upstream(v) == version]
            if not match and not ctx.dry_run:
                raise StepError(f"cvmfs {version} is not in the package repository (it has: {', '.join(exact) or 'no cvmfs at all'})")
            spec = f"{package}={match[0] if match else version}"
        return ["apt-get", "install", "-y", "-q", "--allow-downgrades", spec]
    return [manager, "install", "-y", f"{package}-{version}" if version else package]


def _run_step(ctx: Context, action: str, argv: list[str], env: Optional[dict[str, str]] = None, check: bool = True,
              timeout: Optional[float] = INSTALL_TIMEOUT) -> Any:
    try:
        result = ctx.runner.run(argv, env=env, check=check, timeout=timeout)
    except CommandFailed as err:
        ctx.record.step(action, False, argv=argv, returncode=err.result.returncode, seconds=round(err.result.seconds, 3), error=err.result.summary())
        raise
    ctx.record.step(action, True, argv=argv, seconds=round(result.seconds, 3), changed=not result.dry_run and action not in ("probe", "chksetup"))
    return result


def apply(steps: list[dict[str, Any]], ctx: Context) -> bool:
    changed = False
    wrote_config = False
    for step in steps:
        action = step["action"]
        if action == "download":
            if ctx.dry_run:
                ctx.logger.info("dry-run, not downloading %s", step["url"])
            else:
                _download(step["url"], ctx.path(step["path"]), ctx)
            ctx.record.step(action, True, url=step["url"], path=step["path"])
        elif action == "write-file":
            if ctx.dry_run:
                ctx.logger.info("dry-run, not writing %s:\n%s", step["path"], cvmfs_spec.redact(step["content"]))
            else:
                atomic_write(ctx.path(step["path"]), step["content"], 0o644)
                ctx.logger.info("wrote %s", step["path"])
            ctx.record.step(action, True, path=step["path"], bytes=len(step["content"]))
            changed = True
            wrote_config = wrote_config or step["path"].startswith(CONFIG_DIR)
        elif action == "install":
            _run_step(ctx, action, _install(step, ctx), env=APT_ENV if step["manager"] == "apt" else None)
            changed = True
        elif action == "setup":
            if ctx.dry_run:
                ctx.logger.info("dry-run, not checking the cvmfs set-up")
                continue
            check = _run_step(ctx, "chksetup", ["cvmfs_config", "chksetup"], check=False)
            if check.returncode != 0 or check.stdout.strip() != "OK":
                ctx.logger.info("cvmfs_config chksetup asks for a set-up: %s", (check.stdout + check.stderr).strip()[-500:])
                _run_step(ctx, "setup", ["cvmfs_config", "setup"])
                changed = True
            elif wrote_config:
                _run_step(ctx, "reload", ["cvmfs_config", "reload"])
        elif action == "probe":
            if ctx.dry_run:
                ctx.logger.info("dry-run, not probing %s", ", ".join(step["repositories"]))
                continue
            for repo in step["repositories"]:
                _run_step(ctx, "probe", ["cvmfs_config", "probe", repo], timeout=PROBE_TIMEOUT)
        elif "argv" in step:
            _run_step(ctx, action, step["argv"], env=APT_ENV if step["argv"][0].startswith("apt") or step["argv"][0] == "dpkg" else None)
            changed = True
        else:
            raise StepError(f"unknown step {action!r}")
    return changed


def work(section: dict[str, Any], ctx: Context) -> bool:
    facts = discover(section, ctx)
    ctx.record.step("discover", True, manager=facts.manager, installed=facts.installed, cache_fs_bytes=facts.cache_fs_bytes)
    steps = plan(section, facts)
    ctx.record.step("plan", True, steps=[s["action"] for s in steps["steps"]], quota_mb=steps["quota_mb"])
    return apply(steps["steps"], ctx) and not ctx.dry_run


handle = config_module(NAME, work)
