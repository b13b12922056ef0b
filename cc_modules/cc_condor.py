"""cloud-init config module `condor`: make this worker join the site's HTCondor pool.

discover (the config and token on disk, the package, the service) -> plan (pure: typed steps) ->
apply (the step engine) -> record. The token goes to a 0600 file and never into a
log, a step or a reason. The new config is checked with HTCondor's own `condor_config_val` before
condor is (re)started, and put back as it was when the check fails. Then the handler waits until
the pool's collector lists a startd advertising this instance's `VfarmInstanceId`: a worker that
has not joined within `join-timeout` is a failed handler, so the final check powers it off.
A second run writes nothing and restarts nothing. The part-handler for text/condor-config runs
`work` too; it comes after localfs, so an execute directory on a localfs mount lands there.
"""

from __future__ import annotations

import json
import shutil
import time
from dataclasses import dataclass
from typing import Any, Callable, Optional

from ..config import condor as condor_spec
from ..config.condor import CondorSpec
from ..errors import StepError
from ..files import atomic_write, read_text
from ..textsafe import UnsafeValue, control_character
from .handling import PER_INSTANCE, Context, config_module
from .meta import DISTROS, module_meta
from .packages import APT, package_manager
from .steps import Custom, Plan, Run, Step, WriteFile, apply

NAME = "condor"
POLL_SECONDS = 5.0  # between collector queries while waiting for this worker's startd
SERVICE = "condor"
# A hung command must end as a recorded failure, not as a boot that never finishes.
TIMEOUTS = {"install": 1800.0, "mkdir": 60.0, "check-config": 600.0, "start": 300.0, "restart": 300.0}

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


def discover(spec: CondorSpec, ctx: Context) -> Facts:
    return Facts(
        config=read_text(ctx.path(condor_spec.CONFIG_FILE)),
        token=read_text(ctx.path(condor_spec.TOKEN_FILE)),
        installed=shutil.which("condor_config_val") is not None,
        active=ctx.runner.run(["systemctl", "is-active", "--quiet", SERVICE], check=False, changes=False).returncode == 0,
        execute_exists=ctx.path(spec.execute).is_dir(),
        package_manager=package_manager(),
    )


def _install_argv(spec: CondorSpec, manager: Optional[str]) -> list[str]:
    if manager is None:
        raise StepError("condor.install is true but this image has no apt-get, dnf or yum")
    package = f"condor={spec.version}*" if spec.version and manager == APT else f"condor-{spec.version}" if spec.version else "condor"
    if manager == APT:
        return ["apt-get", "install", "-y", "--no-install-recommends", package]
    return [manager, "install", "-y", package]


def plan(spec: CondorSpec, facts: Facts, instance_id: str) -> Plan:
    """The steps that make this machine a worker of the pool."""
    steps: list[Step] = []
    if not facts.installed:
        if not spec.install:
            raise StepError("HTCondor is not installed (no condor_config_val): install it in the image or set condor.install: true")
        steps.append(Run("install", _install_argv(spec, facts.package_manager), timeout=TIMEOUTS["install"]))
    try:
        config = condor_spec.render(spec, instance_id)
    except UnsafeValue as err:
        raise StepError(f"cannot write {condor_spec.CONFIG_FILE}: {err}") from None
    if spec.token is not None and control_character(spec.token):
        raise StepError(f"cannot write {condor_spec.TOKEN_FILE}: the pool token holds a control character")
    changed = False
    if spec.token is not None and facts.token != spec.token + "\n":
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
    ctx.record.step("discover", True, installed=facts.installed, active=facts.active, config_present=facts.config is not None)
    todo = plan(spec, facts, instance_id)
    ctx.logger.info("plan: %s", json.dumps(todo.listing()))
    ctx.record.step("plan", True, steps=todo.actions())
    return apply(todo, ctx)


handle = config_module(NAME, work)
