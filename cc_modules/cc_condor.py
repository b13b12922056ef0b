"""cloud-init config module `condor`: make this worker join the site's HTCondor pool.

discover (the config and token on disk, the package, the service) -> plan (pure: steps as plain
data) -> apply (through the one runner) -> record. The token goes to a 0600 file and never into a
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
import shutil
import time
from dataclasses import dataclass
from typing import Any, Callable, Optional

from . import condor_spec, metadata_guard
from .condor_spec import CondorSpec
from .files import atomic_write, read_text
from .handling import PER_INSTANCE, Context, StepError, config_module
from .meta import DISTROS, module_meta
from .runner import CommandFailed
from .textsafe import UnsafeValue, control_character

NAME = "condor"
POLL_SECONDS = 5.0  # between collector queries while waiting for this worker's startd
SERVICE = "condor"
# A hung command must end as a recorded failure, not as a boot that never finishes.
TIMEOUTS = {"install": 1800.0, "install-guard": 1800.0, "mkdir": 60.0, "check-config": 600.0, "start": 300.0, "restart": 300.0}

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
    guard_active: bool = False  # the guard's rule is in place now


def discover(spec: CondorSpec, ctx: Context) -> Facts:
    managers = [m for m in ("apt-get", "dnf", "yum") if shutil.which(m)]
    firewall = metadata_guard.backend(shutil.which) if spec.protect_metadata else None
    guard_active = firewall is not None and ctx.runner.run(metadata_guard.active_argv(firewall), check=False, changes=False).returncode == 0
    return Facts(
        config=read_text(ctx.path(condor_spec.CONFIG_FILE)),
        token=read_text(ctx.path(condor_spec.TOKEN_FILE)),
        installed=shutil.which("condor_config_val") is not None,
        active=ctx.runner.run(["systemctl", "is-active", "--quiet", SERVICE], check=False, changes=False).returncode == 0,
        execute_exists=ctx.path(spec.execute).is_dir(),
        package_manager=managers[0] if managers else None,
        firewall=firewall,
        guard_rules=read_text(ctx.path(metadata_guard.RULES_FILE)) if spec.protect_metadata else None,
        guard_unit=read_text(ctx.path(metadata_guard.UNIT_FILE)) if spec.protect_metadata else None,
        guard_active=guard_active,
    )


def _install_argv(spec: CondorSpec, manager: Optional[str]) -> list[str]:
    if manager is None:
        raise StepError("condor.install is true but this image has no apt-get, dnf or yum")
    package = f"condor={spec.version}*" if spec.version and manager == "apt-get" else f"condor-{spec.version}" if spec.version else "condor"
    if manager == "apt-get":
        return ["apt-get", "install", "-y", "--no-install-recommends", package]
    return [manager, "install", "-y", package]


def guard_steps(spec: CondorSpec, facts: Facts) -> list[dict[str, Any]]:
    """The metadata guard's steps: its rule file (nft) and boot-time unit, enabled, and the rule
    put in place now when anything changed or it is not in place."""
    tool = facts.firewall
    steps: list[dict[str, Any]] = []
    if tool is None:
        if not spec.install:
            raise StepError("condor.protect-metadata: this image has neither nft nor iptables to keep the metadata service (and the pool's "
                            "token in the user-data) from jobs: add nftables to the image, set condor.install: true, or protect-metadata: false")
        if facts.package_manager is None:
            raise StepError("condor.protect-metadata: no nft or iptables, and no apt-get, dnf or yum to install nftables with")
        extra = ["--no-install-recommends"] if facts.package_manager == "apt-get" else []
        steps.append({"action": "install-guard", "argv": [facts.package_manager, "install", "-y", *extra, metadata_guard.PACKAGE]})
        tool = "nft"
    changed = False
    if tool == "nft" and facts.guard_rules != metadata_guard.nft_rules():
        steps.append({"action": "write-guard-rules", "path": metadata_guard.RULES_FILE, "content": metadata_guard.nft_rules()})
        changed = True
    unit = metadata_guard.unit_text(tool)
    if facts.guard_unit != unit:
        steps.append({"action": "write-guard-unit", "path": metadata_guard.UNIT_FILE, "content": unit})
        steps.append({"action": "enable-guard", "argv": ["systemctl", "enable", metadata_guard.UNIT]})
        changed = True
    if changed or not facts.guard_active:
        steps.append({"action": "protect-metadata", "tool": tool, "argvs": metadata_guard.apply_argvs(tool), "show": metadata_guard.active_argv(tool)})
    return steps


def plan(spec: CondorSpec, facts: Facts, instance_id: str) -> list[dict[str, Any]]:
    """The steps that make this machine a worker of the pool, as plain data."""
    steps: list[dict[str, Any]] = []
    if not facts.installed:
        if not spec.install:
            raise StepError("HTCondor is not installed (no condor_config_val): install it in the image or set condor.install: true")
        steps.append({"action": "install", "argv": _install_argv(spec, facts.package_manager)})
    try:
        config = condor_spec.render(spec, instance_id)
    except UnsafeValue as err:
        raise StepError(f"cannot write {condor_spec.CONFIG_FILE}: {err}") from None
    if spec.token is not None and control_character(spec.token):
        raise StepError(f"cannot write {condor_spec.TOKEN_FILE}: the pool token holds a control character")
    changed = False
    if spec.token is not None and facts.token != spec.token + "\n":
        steps.append({"action": "write-token", "path": condor_spec.TOKEN_FILE, "secret": True})
        changed = True
    if facts.config != config:
        steps.append({"action": "write-config", "path": condor_spec.CONFIG_FILE, "content": config})
        changed = True
    if not facts.execute_exists:
        steps.append({"action": "mkdir", "argv": ["install", "-d", "-o", "condor", "-g", "condor", "-m", "0755", spec.execute]})
    if spec.protect_metadata:  # in place before condor (re)starts: before any job can run
        steps += guard_steps(spec, facts)
    if changed or not facts.installed:
        steps.append({"action": "check-config", "argv": ["condor_config_val", "-summary"]})
    if changed or not facts.active:
        # The part-handler runs inside cloud-init's network stage, which is ordered Before=
        # network-online.target, and condor.service is After= it: a plain start would wait for the
        # end of the very stage that waits for it (a deadlock). The network is up by then.
        verb = "restart" if facts.active else "start"
        steps.append({"action": verb, "argv": ["systemctl", verb, "--job-mode=ignore-dependencies", SERVICE]})
    steps.append({"action": "wait-join", "collector": spec.collector, "instance_id": instance_id, "timeout": spec.join_timeout})
    return steps


def joined(ctx: Context, collector: str, instance_id: str) -> bool:
    """Whether the collector lists a startd with our VfarmInstanceId (a failed query: not yet)."""
    constraint = f"{condor_spec.INSTANCE_ATTRIBUTE} == {condor_spec.classad_literal(instance_id)}"
    argv = ["condor_status", "-pool", collector, "-startd", "-constraint", constraint, "-af", "Name"]
    result = ctx.runner.run(argv, check=False, changes=False, timeout=60)
    return result.returncode == 0 and bool(result.stdout.strip())


def wait_join(ctx: Context, step: dict[str, Any], clock: Callable[[], float] = time.monotonic, sleep: Callable[[float], None] = time.sleep) -> None:
    deadline = clock() + step["timeout"]
    while True:
        if joined(ctx, step["collector"], step["instance_id"]):
            ctx.logger.info("joined: the collector %s lists this worker (%s)", step["collector"], step["instance_id"])
            return
        if clock() >= deadline:
            raise StepError(f"not joined: the collector {step['collector']} did not list this worker's startd within {step['timeout']} s")
        # A short join-timeout gets polls to match (and no sleep past the deadline).
        sleep(max(0.05, min(POLL_SECONDS, step["timeout"] / 10, deadline - clock())))


def apply(steps: list[dict[str, Any]], spec: CondorSpec, ctx: Context) -> None:
    previous_config = read_text(ctx.path(condor_spec.CONFIG_FILE))
    for step in steps:
        action = step["action"]
        if ctx.dry_run and action in ("write-token", "write-config"):
            ctx.logger.info("dry-run, not writing %s", step["path"])
            ctx.record.step(action, True, path=step["path"], changed=False)
        elif action == "write-token":
            assert spec.token is not None
            atomic_write(ctx.path(step["path"]), spec.token + "\n", 0o600)
            ctx.record.step(action, True, path=step["path"], mode="0600")
        elif action == "write-config":
            atomic_write(ctx.path(step["path"]), step["content"], 0o644)
            ctx.record.step(action, True, path=step["path"], bytes=len(step["content"]))
        elif action in ("write-guard-rules", "write-guard-unit"):
            if ctx.dry_run:
                ctx.record.step(action, True, path=step["path"], changed=False)
                continue
            ctx.path(step["path"]).parent.mkdir(mode=0o755, parents=True, exist_ok=True)
            atomic_write(ctx.path(step["path"]), step["content"], 0o644)
            ctx.record.step(action, True, path=step["path"], bytes=len(step["content"]))
        elif action == "protect-metadata":
            _protect(ctx, step)
        elif action == "wait-join":
            if ctx.dry_run:
                ctx.record.step(action, True, skipped="dry run")
                continue
            started = time.monotonic()
            try:
                wait_join(ctx, step)
            except StepError:
                ctx.record.step(action, False, collector=step["collector"], seconds=round(time.monotonic() - started, 1))
                raise
            ctx.record.step(action, True, collector=step["collector"], seconds=round(time.monotonic() - started, 1), changed=False)
        else:
            try:
                result = ctx.runner.run(step["argv"], changes=action != "check-config", timeout=TIMEOUTS.get(action, 300.0))
            except CommandFailed as err:
                ctx.record.step(action, False, argv=step["argv"], error=err.result.summary())
                if action == "check-config" and not ctx.dry_run:
                    _restore(ctx, previous_config)
                raise
            ctx.record.step(action, True, argv=step["argv"], seconds=round(result.seconds, 3), changed=action != "check-config" and not result.dry_run)


def _protect(ctx: Context, step: dict[str, Any]) -> None:
    """Put the guard's rule in place now; the record says how to show it."""
    for argv, must in step["argvs"]:
        try:
            ctx.runner.run(argv, check=must, timeout=60.0)
        except CommandFailed as err:
            ctx.record.step("protect-metadata", False, argv=argv, error=err.result.summary())
            raise
    show = " ".join(step["show"])
    ctx.logger.info("metadata service %s: root only (%s); show the rule: %s", metadata_guard.ADDRESS, step["tool"], show)
    ctx.record.step("protect-metadata", True, tool=step["tool"], address=metadata_guard.ADDRESS, show=show)


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
    steps = plan(spec, facts, instance_id)
    shown = [{k: v for k, v in s.items() if k != "content"} for s in steps]
    ctx.logger.info("plan: %s", json.dumps(shown))
    ctx.record.step("plan", True, steps=[s["action"] for s in steps])
    apply(steps, spec, ctx)
    return any(s["action"] not in ("wait-join", "check-config") for s in steps)


handle = config_module(NAME, work)
