"""Apply: carry out one plan exactly (launch, drain, terminate), and remember nothing on disk.

Every decision is the planner's (scaler/plan.py): how many of which type, the token of each launch,
what to launch instead on a quota or capacity refusal, the black hole and its probe, back-offs.
What happens here:
- Launch goes through the cloud backend (the factory in scaler/backends.py) with the farm's
  user-data and the tags `vfarm:farm` = name (and `vfarm:type` = type when the farm lists types).
  Every launch carries the plan's ClientToken; one whose outcome is unknown (endpoint down,
  time-out) is remembered as an intent, and the next plan retries it with the SAME token and count,
  so the cloud hands back the instances of the first call instead of starting them twice. A launch
  refused for quota or capacity is followed, in the same cycle, by the plan's fallback launches
  (in a hybrid farm: the next clouds'), less what the refused call started before its refusal;
  each fallback taken is recorded in the outcome. One fallback per cycle (each is planned with
  the plan's other launches going ahead: two could together pass a cap), and in a hybrid farm
  nothing more is launched on a cloud that refused (the fallback placed the jobs of all its launches).
- Drain is HTCondor's own graceful drain, `condor_drain -graceful` (running jobs run to their
  end under MaxJobRetirementTime, no new job starts), run through the host runner
  (clouds/hostcmd.py) with the prefix `pool.admin-command` (how to run HTCondor's admin tools on
  this host). The htcondor2 bindings cannot drain a token-only worker (see BINDINGS_DRAIN below).
  Every drain, an idle worker's or a consolidation's, gives the reason DRAIN_REASON_PREFIX + the
  plan's reason: the startd's DrainReason is how the planner knows the drain for its own.
- Terminate only what the plan names (lost, or drained by the scaler with no claim), after tagging it
  `vfarm:end` = lost|drained: that tag is how the black-hole rule finds its history again after
  a restart. A hybrid farm terminates cloud by cloud, each with its own back-off.
- A failed cloud call backs off exponentially (per operation, launches per type; in a hybrid
  farm per cloud, launches and terminations each): the applier
  keeps the timers and hands them to the next plan, which holds the call until then. Failures are
  logged and counted; nothing here raises out of `apply`.
- Lost workers, by reason: the first time a plan names a launch lost (its black hole's `lost`),
  the applier reads the verdict its final check wrote to the console (clouds/verdict.py, through
  the backend's `verdict`), before anything is terminated, logs it and counts the loss under a
  short reason (check-failed:cvmfs, no-verdict, ...); the black-hole message names the reasons.
"""

from __future__ import annotations

import logging
import os
import shlex
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Optional, Protocol

from ..clouds import hostcmd
from ..config.condor import INSTANCE_ATTRIBUTE
from ..config.scale import ScaleSpec, WorkerType
from . import plan as planner
from .model import CLOUD_TAG, DRAIN_REASON_PREFIX, END_OF, FARM_TAG, TYPE_TAG, Action, Decision, LaunchOption, Plan

CLOUD_BACKOFF_MAX = 900.0
DRAIN_TIMEOUT = 120.0
# Prefixes whose words after the host are one command line for a remote shell, not an argv.
REMOTE_SHELLS = ("ssh",)
BLACK_HOLE_LOG_EVERY = 60.0

# Tried against a token-only worker of HTCondor 23.9 with htcondor2 25.14 from the host, admin token
# in hand: Startd(ad).drainJobs() -> "Startd failed to start draining jobs"; send_command(master ad,
# DaemonsOffPeaceful) -> "Failed to start command" (the worker logs IDTOKENS authentication failed:
# it cannot check a token signed by a key it does not hold); send_command(startd ad, ...) -> "Failed
# to convert ad type to daemon type". The CLI tools get a session from the collector
# (remote-admin capability), which the bindings' queries do not ask for.
BINDINGS_DRAIN = "htcondor2 cannot drain a token-only worker; condor_drain through pool.admin-command"


class CloudError(Exception):
    """A cloud call that failed; one line."""


class CapacityError(CloudError):
    """The cloud refused a launch for quota or capacity (OpenStack: also no valid host): another
    type, or the next cloud of a hybrid farm, may still start. STARTED: the instances the call
    started before the refusal (a launch of several, one create each)."""

    def __init__(self, message: str, started: Sequence[str] = ()) -> None:
        super().__init__(message)
        self.started = list(started)


class Backend(Protocol):
    """What the scaler needs of a cloud."""

    def farm_instances(self) -> list[dict[str, Any]]:
        """Every instance of the farm the cloud still lists, ended ones included (DescribeInstances
        shape, JSON-plain). Raises CloudError: a failed query is never "no instances"."""

    def launch(self, count: int, token: str, worker_type: WorkerType) -> list[str]:
        """Start COUNT workers of WORKER_TYPE (idempotent for the same TOKEN); their ids.
        Raises CapacityError for a quota or capacity refusal, CloudError otherwise."""

    def terminate(self, ends: dict[str, str]) -> None:
        """Tag each id with `vfarm:end` = its end (lost/drained), then terminate it: only once every
        id proved to be this farm's (vfarm's, tagged vfarm:farm with its name). One that is not
        refuses the whole call (CloudError) with nothing tagged or terminated."""


class Drainer(Protocol):
    def drain(self, instance_id: str, slots: list[dict[str, Any]], reason: str) -> None:
        """Start a graceful drain of every startd of the instance; raises DrainError."""


class DrainError(Exception):
    pass


class CondorDrain:
    """`condor_drain -graceful` per startd of an instance, through the host runner."""

    def __init__(self, collector: str, prefix: Sequence[str] = (), timeout: float = DRAIN_TIMEOUT,
                 env: Optional[dict[str, str]] = None, log: Optional[logging.Logger] = None) -> None:
        self.log = log
        self.collector = collector
        self.prefix = list(prefix)
        self.timeout = timeout
        self.env = env

    @staticmethod
    def targets(slots: list[dict[str, Any]]) -> list[str]:
        """One slot name per startd (condor_drain drains the whole startd of the slot it is given);
        the partitionable slot where there is one."""
        by_daemon: dict[str, dict[str, Any]] = {}
        for slot in slots:
            name = slot.get("Name")
            if not isinstance(name, str) or name.startswith("-"):  # never read as an option of condor_drain
                continue
            daemon = str(slot.get("MyAddress") or name.split("@", 1)[-1])
            chosen = by_daemon.get(daemon)
            if chosen is None or (slot.get("SlotType") == "Partitionable" and chosen.get("SlotType") != "Partitionable"):
                by_daemon[daemon] = slot
        return sorted(str(s["Name"]) for s in by_daemon.values())

    def command(self, name: str, reason: str) -> list[str]:
        """The argv that drains the startd of slot NAME: the prefix, then condor_drain's words;
        after an ssh prefix those words go as one shell-quoted line (ssh joins its words with
        blanks for the remote shell, which would split the reason and run what a slot name says)."""
        words = ["condor_drain", "-pool", self.collector, "-graceful", "-reason", DRAIN_REASON_PREFIX + reason, name]
        remote = bool(self.prefix) and os.path.basename(self.prefix[0]) in REMOTE_SHELLS
        return [*self.prefix, shlex.join(words)] if remote else [*self.prefix, *words]

    def drain(self, instance_id: str, slots: list[dict[str, Any]], reason: str) -> None:
        targets = self.targets(slots)
        if not targets:
            raise DrainError(f"{instance_id}: no slot name to drain")
        # The prefix is never shown: it may carry a password (sshpass -p, a proxy's user:password).
        through = f" (through admin-command {os.path.basename(self.prefix[0])})" if self.prefix else ""
        for name in targets:
            argv = self.command(name, reason)
            if self.log is not None:
                self.log.info("run: %s%s", shlex.join(argv[len(self.prefix):]), through)
            try:
                hostcmd.run(argv, timeout=self.timeout, env=self.env)
            except hostcmd.CommandError as err:
                raise DrainError(f"{instance_id}: condor_drain {name}{through}: {err.why}") from None


@dataclass
class Backoff:
    """Exponential back-off after failures: BASE, 2*BASE, ... up to CAP; reset by a success."""

    base: float
    cap: float
    failures: int = 0
    until: float = 0.0

    def blocked(self, now: float) -> bool:
        return now < self.until

    def failed(self, now: float) -> float:
        delay = min(self.cap, self.base * 2**self.failures)
        self.failures += 1
        self.until = now + delay
        return delay

    def succeeded(self) -> None:
        self.failures, self.until = 0, 0.0


@dataclass
class Outcome:
    launched: list[str] = field(default_factory=list)
    drained: list[str] = field(default_factory=list)
    terminated: list[str] = field(default_factory=list)
    cloud_errors: dict[str, int] = field(default_factory=dict)
    drain_errors: int = 0
    lost: dict[str, int] = field(default_factory=dict)  # workers first found lost in this cycle, by reason
    black_hole_reasons: dict[str, dict[str, int]] = field(default_factory=dict)  # type: why its streak's workers were lost
    # Hybrid farms: instances launched per cloud, and each fallback taken after a refusal.
    launched_by_cloud: dict[str, int] = field(default_factory=dict)
    fallbacks: list[dict[str, Any]] = field(default_factory=list)  # {"from", "to", "count", "started_before", "reason"}

    def to_json(self) -> dict[str, Any]:
        data = {"launched": self.launched, "drained": self.drained, "terminated": self.terminated, "cloud_errors": self.cloud_errors,
                "drain_errors": self.drain_errors, "lost": self.lost, "black_hole_reasons": self.black_hole_reasons}
        if self.launched_by_cloud or self.fallbacks:
            data.update(launched_by_cloud=self.launched_by_cloud, fallbacks=self.fallbacks)
        return data


@dataclass
class _Refusals:
    """One cycle's launches refused for quota or capacity: the clouds that refused (a hybrid farm
    launches nothing more there in the cycle), and whether a fallback was taken."""

    clouds: set[str] = field(default_factory=set)
    fell_back: bool = False


class Applier:
    """Carries out plans, one per cycle. Holds only what may be lost on a restart and hands it to the
    next plan (`memory`): back-off timers and the launches of unknown outcome."""

    def __init__(self, spec: ScaleSpec, backend: Backend, drainer: Drainer, logger: logging.Logger, dry_run: bool = False) -> None:
        self.spec = spec
        self.backend = backend
        self.drainer = drainer
        self.log = logger
        self.dry_run = dry_run
        self.base = max(spec.check_every, 5.0)
        self.backoff: dict[str, Backoff] = {}
        self.intents: dict[str, tuple[str, int]] = {}  # type: (token, count) of a launch of unknown outcome
        self._said_black_hole: dict[str, float] = {}
        # Why each lost worker was lost (its verdict's label), read once per worker; lost on a restart.
        self.lost_reasons: dict[str, str] = {}

    def read_verdict(self, iid: str) -> tuple[str, str]:
        """(reason label, what the worker's console says) for a lost or ended worker. A backend may
        offer `verdict(id)` (the final check's verdict on the console, None when there is none;
        CloudError when the console cannot be read); without it every console is unreadable."""
        from ..clouds import verdict as verdicts

        read = getattr(self.backend, "verdict", None)
        if read is None:
            return verdicts.UNREADABLE, "this cloud backend cannot read consoles"
        try:
            found = read(iid)
        except CloudError as err:
            return verdicts.UNREADABLE, f"its console could not be read: {err}"
        if found is None:
            return verdicts.NO_VERDICT, "no verdict on its console: its final check never finished"
        return found.label(), f"its final check said {found.text()}"

    def note_lost(self, lost: Sequence[str], outcome: Outcome) -> None:
        """Read, log and count the verdict of each worker found lost for the first time."""
        for iid in lost:
            if iid in self.lost_reasons:
                continue
            reason, said = self.read_verdict(iid)
            self.lost_reasons[iid] = reason
            outcome.lost[reason] = outcome.lost.get(reason, 0) + 1
            self.log.warning("lost worker %s (%s): %s", iid, reason, said)

    def memory(self) -> dict[str, Any]:
        """What the next plan must know of this applier: launches to retry, calls to hold."""
        return {planner.INTENTS: {name: {"token": token, "count": count} for name, (token, count) in self.intents.items()},
                planner.BACKOFF: {key: b.until for key, b in self.backoff.items() if b.until}}

    def _timer(self, key: str) -> Backoff:
        return self.backoff.setdefault(key, Backoff(self.base, CLOUD_BACKOFF_MAX))

    def _cloud_error(self, op: str, key: str, err: Exception, now: float, outcome: Outcome) -> None:
        delay = self._timer(key).failed(now)
        outcome.cloud_errors[op] = outcome.cloud_errors.get(op, 0) + 1
        self.log.warning("cloud error (%s): %s; next %s attempt in %.0fs at the earliest", op, err, key, delay)

    def apply(self, plan: Plan, snapshot: dict[str, Any]) -> Outcome:
        """Carry out PLAN (made from SNAPSHOT)."""
        now = plan.now
        outcome = Outcome()
        # Before anything is terminated: a lost worker's console is read while the cloud has it.
        self.note_lost([iid for figures in plan.types.values() for iid in figures.black_hole.lost], outcome)
        self._say_black_holes(plan, now, outcome)
        for decision in plan.of(Action.HOLD):
            blocked = decision.type is not None and decision.instance is None and plan.types[decision.type].black_hole.blocked
            self.log.log(logging.ERROR if blocked else logging.WARNING, "hold: %s", decision.reason)
        self._terminate(plan, now, outcome)
        slots_of: dict[str, list[dict[str, Any]]] = {}
        for slot in snapshot["slots"]:
            owner = slot.get(INSTANCE_ATTRIBUTE)
            if isinstance(owner, str):
                slots_of.setdefault(owner, []).append(slot)
        for decision in plan.of(Action.DRAIN):
            iid = str(decision.instance)
            self.log.info("drain %s: %s", iid, decision.reason)
            if self.dry_run:
                continue
            try:
                self.drainer.drain(iid, slots_of.get(iid, []), decision.reason)
                outcome.drained.append(iid)
            except DrainError as err:
                outcome.drain_errors += 1
                self.log.warning("drain of %s failed (tried again next cycle while it stays idle): %s", iid, err)
        self.intents = dict(plan.intents)
        for decision in plan.of(Action.FORGET):
            self.log.info("forget: %s", decision.reason)
        refusals = _Refusals()
        for decision in plan.of(Action.LAUNCH):
            self._launch(decision, now, outcome, refusals)
        return outcome

    def _say_black_holes(self, plan: Plan, now: float, outcome: Outcome) -> None:
        for name, figures in plan.types.items():
            hole = figures.black_hole
            if not hole.active:
                continue
            seen: dict[str, int] = {}  # why the streak's workers were lost (their verdicts' labels)
            for iid in hole.streak_ids:
                reason = self.lost_reasons.get(iid, "unknown")
                seen[reason] = seen.get(reason, 0) + 1
            outcome.black_hole_reasons[name] = seen
            if now - self._said_black_hole.get(name, -BLACK_HOLE_LOG_EVERY) >= BLACK_HOLE_LOG_EVERY:
                self._said_black_hole[name] = now
                of_type = f" of type {name}" if self.spec.typed else ""
                reasons = ", ".join(f"{n}x {r}" for r, n in sorted(seen.items(), key=lambda x: (-x[1], x[0])))
                self.log.error("BLACK HOLE: the last %d launched instance(s)%s were all lost (never joined the pool within "
                               "boot-timeout; reasons seen: %s): launching stops for %.0fs (until %.0fs from now), then one probe at a time",
                               hole.streak, of_type, reasons, hole.delay, max(0.0, hole.until - now))

    def _terminate(self, plan: Plan, now: float, outcome: Outcome) -> None:
        ends = {str(d.instance): END_OF[plan.worker(str(d.instance)).state] for d in plan.of(Action.TERMINATE)}
        if not ends:
            return
        by_cloud: dict[Optional[str], dict[str, str]] = {}
        for decision in plan.of(Action.TERMINATE):
            self.log.info("terminate %s (%s%s): %s", decision.instance, ends[str(decision.instance)],
                          f", cloud {decision.cloud}" if decision.cloud is not None else "", decision.reason)
            by_cloud.setdefault(decision.cloud, {})[str(decision.instance)] = ends[str(decision.instance)]
        if self.dry_run:
            self.log.info("dry run: not terminating %s", " ".join(ends))
            return
        for cloud, of_cloud in by_cloud.items():  # each cloud on its own: one failing holds back no other
            key = planner.terminate_key(cloud)
            try:
                self.backend.terminate(of_cloud)
                self._timer(key).succeeded()
                outcome.terminated += list(of_cloud)
            except CloudError as err:
                self._cloud_error("terminate", key, err, now, outcome)

    def _launch(self, decision: Decision, now: float, outcome: Outcome, refusals: _Refusals) -> None:
        assert decision.type is not None and decision.token is not None
        if decision.cloud is not None and decision.cloud in refusals.clouds:
            self.log.info("launch %d of %s skipped: cloud %s refused a launch for quota or capacity in this cycle, and the fallback "
                          "taken then placed its jobs", decision.count, decision.type, decision.cloud)
            return
        self.log.info("launch %d%s: %s", decision.count, f" of type {decision.type}" if self.spec.typed else "", decision.reason)
        if self.dry_run:
            self.log.info("dry run: not launching")
            return
        try:
            self._start(decision.type, decision.count, decision.token, now, outcome)
        except CapacityError as err:
            if decision.cloud is not None:
                refusals.clouds.add(decision.cloud)
            if refusals.fell_back:
                # Each fallback was planned with the plan's other launches going ahead; two in one
                # cycle could together exceed a cap. The next cycle plans with this refusal's back-off.
                if decision.fallback:
                    self.log.info("no fallback for %s in this cycle: one was taken already", decision.type)
                return
            refusals.fell_back = bool(decision.fallback)
            self._fall_back(decision, err, now, outcome)
        except CloudError:
            pass

    def _fall_back(self, decision: Decision, err: CapacityError, now: float, outcome: Outcome) -> None:
        """Start every launch of DECISION's fallback (together they hold the refused launch's jobs),
        less what the refused call started before its refusal."""
        started = len(err.started)
        for option in decision.fallback:
            count = self._instead(decision, option, started)
            if count <= 0:
                continue
            before = f"; {started} started before the refusal" if started else ""
            if option.cloud is not None and decision.cloud is not None:
                self.log.info("launch %d of %s instead (cloud %s refused %s for quota or capacity%s)", count, option.type, decision.cloud,
                              decision.type, before)
            else:
                self.log.info("launch %d of type %s instead (the cloud refused type %s for quota or capacity%s)", count, option.type,
                              decision.type, before)
            outcome.fallbacks.append({"from": decision.type, "to": option.type, "count": count, "started_before": started, "reason": str(err)})
            try:
                self._start(option.type, count, option.token if count == option.count else f"{option.token[:50]}-{count}", now, outcome)
            except CloudError:
                continue

    def _instead(self, decision: Decision, option: LaunchOption, started: int) -> int:
        """How many of OPTION still to start when the refused DECISION started STARTED of its
        count: one for one on another cloud of the same type, in proportion for another type."""
        if not started:
            return option.count
        if self.spec.worker_type(option.type).kind == self.spec.worker_type(decision.type).kind:
            return max(0, option.count - started)
        return -(-option.count * (decision.count - started) // decision.count)

    def _start(self, type_name: str, count: int, token: str, now: float, outcome: Outcome) -> None:
        """One launch call; on failure its back-off and, unless refused outright, its retry intent."""
        placement = self.spec.worker_type(type_name)
        key = planner.launch_key(placement)
        self.intents[type_name] = (token, count)
        try:
            ids = self.backend.launch(count, token, placement)
        except CapacityError as err:
            del self.intents[type_name]  # refused: nothing more will start with this token
            self._cloud_error("launch", key, err, now, outcome)
            self._launched(placement.on, err.started, outcome)
            raise
        except CloudError as err:
            self._cloud_error("launch", key, err, now, outcome)
            raise
        del self.intents[type_name]
        self._timer(key).succeeded()
        self._launched(placement.on, ids, outcome)
        self.log.info("launched %s (client token %s)", " ".join(ids), token)

    @staticmethod
    def _launched(cloud: Optional[str], ids: Sequence[str], outcome: Outcome) -> None:
        outcome.launched += ids
        if cloud is not None and ids:
            outcome.launched_by_cloud[cloud] = outcome.launched_by_cloud.get(cloud, 0) + len(ids)


def launch_tags(spec: ScaleSpec, worker_type: WorkerType) -> dict[str, str]:
    """The tags every launched worker carries."""
    return {FARM_TAG: spec.name, **({TYPE_TAG: worker_type.kind} if spec.typed else {}),
            **({CLOUD_TAG: worker_type.on} if worker_type.on is not None else {})}
