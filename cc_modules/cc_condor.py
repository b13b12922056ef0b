"""cloud-init config module `condor`: make this worker join the site's HTCondor pool.

discover (the config and token on disk, the package, the service) -> plan (pure: typed steps) ->
apply (the step engine) -> record. The token goes to a 0600 file and never into a
log, a step or a reason. The new config is checked with HTCondor's own `condor_config_val` before
condor is (re)started, and put back as it was when the check fails. Then the handler waits until
the pool's collector lists a startd advertising this instance's `VfarmInstanceId`: a worker that
has not joined within `join-timeout` is a failed handler, so the final check powers it off.
Before condor starts, the metadata guard (metadata_guard.py, `protect-metadata`, on by default)
limits the cloud's metadata service, which serves the user-data and so the token, to root.
A second run writes nothing and restarts nothing. The part-handler for text/condor-config runs
`work` too; it comes after localfs, so an execute directory on a localfs mount lands there.
"""

from __future__ import annotations

import json
import os
import pwd
import shutil
import stat
import time
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any, Callable, Optional

from ..config import condor as condor_spec
from ..config.condor import CondorSpec
from ..errors import StepError
from ..files import atomic_write, read_text
from ..textsafe import UnsafeValue, control_character
from . import metadata_guard
from .handling import PER_INSTANCE, Context, config_module
from .meta import DISTROS, module_meta
from .packages import APT, env_for, package_manager
from .steps import Custom, Plan, Run, Step, WriteFile, apply

NAME = "condor"
POLL_SECONDS = 5.0  # between collector queries while waiting for this worker's startd
SERVICE = "condor"
# A hung command must end as a recorded failure, not as a boot that never finishes.
TIMEOUTS = {"install": 1800.0, "install-guard": 1800.0, "mkdir": 60.0, "check-config": 600.0, "start": 300.0, "restart": 300.0,
            "enable-guard": 60.0, "protect-metadata": 60.0, "hold": 60.0}

frequency = PER_INSTANCE
distros = DISTROS
meta = module_meta("cc_condor", "Join the site's HTCondor pool", __doc__, frequency)


@dataclass
class Facts:
    config: Optional[str]  # current 50-vfarm.conf, None when absent
    token: Optional[str]  # current token file
    installed: bool  # condor_config_val runs
    active: bool  # the condor service runs
    execute_exists: bool
    package_manager: Optional[str]  # apt-get, dnf or yum
    firewall: Optional[str] = None  # the packet filter tool for the metadata guard: nft, iptables or None
    guard_rules: Optional[str] = None  # current metadata_guard.RULES_FILE
    guard_unit: Optional[str] = None  # current metadata_guard.UNIT_FILE
    guard_active: bool = False  # the guard's rules are in place now
    guard_enabled: bool = False  # its boot-time unit is enabled (an earlier run may have written it, then failed)
    token_private: bool = True  # the token file (if any) is a regular file of root's, mode 0600
    execute_holds: list[str] = field(default_factory=list)  # a few entries of an existing EXECUTE that is not condor's (owner)


def discover(spec: CondorSpec, ctx: Context) -> Facts:
    firewall = metadata_guard.backend(shutil.which) if spec.protect_metadata else None
    guard_active = firewall is not None and all(ctx.runner.run(argv, check=False, changes=False).returncode == 0
                                                for argv in metadata_guard.active_argvs(firewall))
    guard_enabled = spec.protect_metadata and ctx.runner.run(["systemctl", "is-enabled", "--quiet", metadata_guard.UNIT], check=False,
                                                             changes=False).returncode == 0
    return Facts(
        config=read_text(ctx.path(condor_spec.CONFIG_FILE)),
        token=read_text(ctx.path(condor_spec.TOKEN_FILE)),
        installed=shutil.which("condor_config_val") is not None,
        active=ctx.runner.run(["systemctl", "is-active", "--quiet", SERVICE], check=False, changes=False).returncode == 0,
        execute_exists=ctx.path(spec.execute).is_dir(),
        execute_holds=_holds(ctx.path(spec.execute)),
        package_manager=package_manager(),
        firewall=firewall,
        guard_rules=read_text(ctx.path(metadata_guard.RULES_FILE)) if spec.protect_metadata else None,
        guard_unit=read_text(ctx.path(metadata_guard.UNIT_FILE)) if spec.protect_metadata else None,
        guard_active=guard_active,
        guard_enabled=guard_enabled,
        token_private=_private(ctx.path(condor_spec.TOKEN_FILE)),
    )


def _holds(folder: Path) -> list[str]:
    """A few of the entries of FOLDER (absent: none) when it is not the condor user's: the startd
    removes everything in EXECUTE when it starts. A new file system's lost+found is no one's data."""
    try:
        if folder.stat().st_uid == pwd.getpwnam("condor").pw_uid:
            return []
    except (OSError, KeyError):  # no such folder, or no condor user yet (installed in this run)
        pass
    try:
        entries = sorted(entry for entry in os.listdir(folder) if entry != "lost+found")
    except OSError:
        return []
    return entries[:3] + ([f"{len(entries) - 3} more"] if len(entries) > 3 else [])


def _private(path: Path) -> bool:
    """PATH is absent, or a regular file (not a link) of root's that nobody else may read or write."""
    try:
        info = path.lstat()
    except FileNotFoundError:
        return True
    return stat.S_ISREG(info.st_mode) and info.st_uid == 0 and stat.S_IMODE(info.st_mode) == 0o600


def _mask(verb: str) -> list[str]:
    return ["systemctl", verb, "--runtime", SERVICE]


def _release_start(ctx: Context) -> None:
    ctx.runner.run(_mask("unmask"), check=False, timeout=TIMEOUTS["hold"])


def _install_argv(spec: CondorSpec, manager: Optional[str]) -> list[str]:
    if manager is None:
        raise StepError("condor.install is true but this image has no apt-get, dnf or yum")
    package = f"condor={spec.version}*" if spec.version and manager == APT else f"condor-{spec.version}" if spec.version else "condor"
    if manager == APT:
        return ["apt-get", "install", "-y", "--no-install-recommends", package]
    return [manager, "install", "-y", package]


def guard_steps(spec: CondorSpec, facts: Facts) -> list[Step]:
    """The metadata guard's steps: its rule file (nft) and boot-time unit, enabled, and the rule
    put in place now when anything changed or it is not in place."""
    tool = facts.firewall
    steps: list[Step] = []
    if tool is None:
        if not spec.install:
            raise StepError("condor.protect-metadata: this image has neither nft nor iptables to keep the metadata service (and the pool's "
                            "token in the user-data) from jobs: add nftables to the image, set condor.install: true, or protect-metadata: false")
        if facts.package_manager is None:
            raise StepError("condor.protect-metadata: no nft or iptables, and no apt-get, dnf or yum to install nftables with")
        extra = ["--no-install-recommends"] if facts.package_manager == APT else []
        steps.append(Run("install-guard", [facts.package_manager, "install", "-y", *extra, metadata_guard.PACKAGE], env=env_for(facts.package_manager),
                         timeout=TIMEOUTS["install-guard"]))
        tool = "nft"
    rules = metadata_guard.nft_rules() if tool == "nft" else None
    unit = metadata_guard.unit_text(tool)
    writes: list[Step] = []
    if rules is not None and facts.guard_rules != rules:
        writes.append(WriteFile("write-guard-rules", metadata_guard.RULES_FILE, rules, 0o644))
    if facts.guard_unit != unit:
        writes.append(WriteFile("write-guard-unit", metadata_guard.UNIT_FILE, unit, 0o644))
    if facts.guard_unit != unit or not facts.guard_enabled:
        writes.append(Run("enable-guard", ["systemctl", "enable", metadata_guard.UNIT], timeout=TIMEOUTS["enable-guard"]))
    if writes:
        folders = sorted({str(PurePosixPath(s.path).parent) for s in writes if isinstance(s, WriteFile)})
        steps.append(Custom("guard-folders", lambda ctx: _folders(ctx, folders), {"paths": folders}))
        steps += writes
    if writes or not facts.guard_active:
        argvs = metadata_guard.apply_argvs(tool)
        details = {"tool": tool, "argvs": [argv for argv, _ in argvs], "show": metadata_guard.show_command(tool)}
        steps.append(Custom("protect-metadata", lambda ctx: _protect(ctx, argvs, details), details))
    return steps


def _folders(ctx: Context, folders: list[str]) -> dict[str, Any]:
    """The guard's folders (/etc/vfarm; /etc/systemd/system on an image that lacks it)."""
    made = [f for f in folders if not ctx.path(f).is_dir()]
    for folder in made:
        ctx.path(folder).mkdir(mode=0o755, parents=True, exist_ok=True)
    return {"made": made, "changed": bool(made)}


def _protect(ctx: Context, argvs: list[tuple[list[str], bool]], details: dict[str, Any]) -> dict[str, Any]:
    """Put the guard's rule in place now (a failure to delete an absent iptables rule is fine)."""
    for argv, must in argvs:
        ctx.runner.run(argv, check=must, timeout=TIMEOUTS["protect-metadata"])
    ctx.logger.info("metadata service %s: root only (%s); show the rule: %s", metadata_guard.ADDRESS, details["tool"], details["show"])
    return {"address": metadata_guard.ADDRESS}


def plan(spec: CondorSpec, facts: Facts, instance_id: str) -> Plan:
    """The steps that make this machine a worker of the pool."""
    steps: list[Step] = []
    if not facts.installed:
        if not spec.install:
            raise StepError("HTCondor is not installed (no condor_config_val): install it in the image or set condor.install: true")
        # Debian's postinst starts condor with a blocking `systemctl start`, which would wait for
        # network-online.target, so for the end of the very stage this handler runs in: a deadlock
        # (see the start step). Masked in /run for the install (gone at reboot), started below.
        steps.append(Run("hold-start", _mask("mask"), timeout=TIMEOUTS["hold"]))
        steps.append(Run("install", _install_argv(spec, facts.package_manager), env=env_for(facts.package_manager), timeout=TIMEOUTS["install"],
                         undo=_release_start))
        steps.append(Run("release-start", _mask("unmask"), timeout=TIMEOUTS["hold"]))
    try:
        config = condor_spec.render(spec, instance_id)
    except UnsafeValue as err:
        raise StepError(f"cannot write {condor_spec.CONFIG_FILE}: {err}") from None
    if facts.execute_holds and f"\nEXECUTE = {spec.execute}\n" not in (facts.config or ""):
        raise StepError(f"execute {spec.execute} holds files ({', '.join(facts.execute_holds)}) and is not condor's: HTCondor's startd "
                        f"removes everything in it when it starts; name a new or empty folder")
    if spec.token is not None and control_character(spec.token):
        raise StepError(f"cannot write {condor_spec.TOKEN_FILE}: the pool token holds a control character")
    # The guard first: a run that fails to put it in place writes no token and no pool config,
    # so nothing joins the pool with the metadata service (and the token in it) open to jobs.
    if spec.protect_metadata:
        steps += guard_steps(spec, facts)
    changed = False
    if spec.token is not None and (facts.token != spec.token + "\n" or not facts.token_private):
        steps.append(WriteFile("write-token", condor_spec.TOKEN_FILE, spec.token + "\n", 0o600, secret=True))
        changed = True
    if facts.config != config:
        steps.append(WriteFile("write-config", condor_spec.CONFIG_FILE, config, 0o644))
        changed = True
    if not facts.execute_exists:
        steps.append(Run("mkdir", ["install", "-d", "-o", "condor", "-g", "condor", "-m", "0755", spec.execute], timeout=TIMEOUTS["mkdir"]))
    if changed or not facts.installed:
        # HTCondor's own parser checks the new config; a rejected one is put back as it was.
        steps.append(Run("check-config", ["condor_config_val", "-summary"], timeout=TIMEOUTS["check-config"], reads_only=True,
                         undo=lambda ctx: _restore(ctx, facts.config)))
    if changed or not facts.active:
        # The part-handler runs inside cloud-init's network stage, which is ordered Before=
        # network-online.target, and condor.service is After= it: a plain start would wait for the
        # end of the very stage that waits for it (a deadlock). The network is up by then.
        verb = "restart" if facts.active else "start"
        steps.append(Run(verb, ["systemctl", verb, "--job-mode=ignore-dependencies", SERVICE], timeout=TIMEOUTS[verb]))
    join = {"collector": spec.collector, "instance_id": instance_id, "timeout": spec.join_timeout}
    steps.append(Custom("wait-join", lambda ctx: wait_join(ctx, spec.collector, instance_id, spec.join_timeout), join, changes=False))
    return Plan(steps)


def joined(ctx: Context, collector: str, instance_id: str) -> bool:
    """Whether the collector lists a startd with our VfarmInstanceId (a failed query: not yet)."""
    constraint = f"{condor_spec.INSTANCE_ATTRIBUTE} == {condor_spec.classad_literal(instance_id)}"
    argv = ["condor_status", "-pool", collector, "-startd", "-constraint", constraint, "-af", "Name"]
    result = ctx.runner.run(argv, check=False, changes=False, timeout=60)
    return result.returncode == 0 and bool(result.stdout.strip())


def wait_join(ctx: Context, collector: str, instance_id: str, timeout: float, clock: Callable[[], float] = time.monotonic,
              sleep: Callable[[float], None] = time.sleep) -> None:
    deadline = clock() + timeout
    while True:
        if joined(ctx, collector, instance_id):
            ctx.logger.info("joined: the collector %s lists this worker (%s)", collector, instance_id)
            return
        if clock() >= deadline:
            raise StepError(f"not joined: the collector {collector} did not list this worker's startd within {timeout} s")
        # A short join-timeout gets polls to match (and no sleep past the deadline).
        sleep(max(0.05, min(POLL_SECONDS, timeout / 10, deadline - clock())))


def _restore(ctx: Context, previous: Optional[str]) -> None:
    """Put the config back as it was, so a restart of condor by anyone finds a working config."""
    path = ctx.path(condor_spec.CONFIG_FILE)
    if previous is None:
        path.unlink(missing_ok=True)
        ctx.logger.error("condor_config_val rejected the new %s: removed it again", condor_spec.CONFIG_FILE)
    else:
        atomic_write(path, previous)
        ctx.logger.error("condor_config_val rejected the new %s: restored the previous one", condor_spec.CONFIG_FILE)


def work(section: dict[str, Any], ctx: Context) -> bool:
    spec = condor_spec.parse(section)
    instance_id = ctx.record.instance_id
    if not instance_id:
        raise StepError("no instance id from cloud-init: the scaler could not map this worker to its instance")
    if spec.token is None:
        raise StepError("the condor section holds no token (vfarm build reads token-file into the part)")
    facts = discover(spec, ctx)
    ctx.record.step("discover", True, installed=facts.installed, active=facts.active, config_present=facts.config is not None,
                    firewall=facts.firewall, guard_active=facts.guard_active)
    todo = plan(spec, facts, instance_id)
    ctx.logger.info("plan: %s", json.dumps(todo.listing()))
    ctx.record.step("plan", True, steps=todo.actions())
    return apply(todo, ctx)


handle = config_module(NAME, work)
