"""Apply: carry out one plan (launch, drain, terminate) safely, and remember nothing on disk.

- Launch goes through the cloud backend (clouds/ec2.py for type ec2) with the farm's user-data
  (what `vfarm build` makes of the farm file) and the tag `vfarm:farm` = name. Every RunInstances
  carries a ClientToken; a launch whose outcome is unknown (endpoint down, time-out) is retried
  with the SAME token and count, so the cloud hands back the instances of the first call instead
  of starting them twice.
- Drain is HTCondor's own graceful drain, `condor_drain -graceful` (running jobs run to their
  end under MaxJobRetirementTime, no new job starts), run through the one command runner with the
  prefix `pool.admin-command` (how to run HTCondor's admin tools on this host). The htcondor2
  bindings cannot drain a token-only worker (see BINDINGS_DRAIN below).
- Terminate only what the plan names (lost, or drained with no claim), after tagging it
  `vfarm:end` = lost|drained: that tag is how the black-hole rule finds its history again after
  a restart.
- Cloud errors back off exponentially (per operation), are logged and counted; nothing here
  raises out of `apply`.
- Black hole: when the newest three decided launches (joined or lost, newest first) were all
  lost, launching stops for 5 min, doubling per further lost launch up to 1 h, counted from the
  moment the newest one became lost (LaunchTime + boot-timeout). After the back-off one probe
  instance at a time is launched until one joins. All of it is computed every cycle from the
  cloud's instance list (terminated ones included, with their `vfarm:end` tags): no state file.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Callable, Optional, Protocol

from ..cc_modules.runner import Runner
from ..config.scale import ScaleSpec
from .plan import FARM_TAG, LIVE_STATES, epoch

END_TAG = "vfarm:end"
BLACK_HOLE_LOSSES = 3
BLACK_HOLE_FIRST = 300.0
BLACK_HOLE_MAX = 3600.0
CLOUD_BACKOFF_MAX = 900.0
DRAIN_TIMEOUT = 120.0

# Tried against a token-only worker of HTCondor 23.9 with htcondor2 25.14 from the host, admin token
# in hand: Startd(ad).drainJobs() -> "Startd failed to start draining jobs"; send_command(master ad,
# DaemonsOffPeaceful) -> "Failed to start command" (the worker logs IDTOKENS authentication failed:
# it cannot check a token signed by a key it does not hold); send_command(startd ad, ...) -> "Failed
# to convert ad type to daemon type". The CLI tools get a session from the collector
# (remote-admin capability), which the bindings' queries do not ask for.
BINDINGS_DRAIN = "htcondor2 cannot drain a token-only worker; condor_drain through pool.admin-command"


class CloudError(Exception):
    """A cloud call that failed; one line."""


class Backend(Protocol):
    """What the scaler needs of a cloud."""

    def farm_instances(self) -> list[dict[str, Any]]:
        """Every instance of the farm the cloud still lists, ended ones included (DescribeInstances
        shape, JSON-plain). Raises CloudError: a failed query is never "no instances"."""

    def launch(self, count: int, token: str) -> list[str]:
        """Start COUNT workers (idempotent for the same TOKEN); their ids."""

    def terminate(self, ends: dict[str, str]) -> None:
        """Tag each id with `vfarm:end` = its end (lost/drained), then terminate them."""


class Drainer(Protocol):
    def drain(self, instance_id: str, slots: list[dict[str, Any]], reason: str) -> None:
        """Start a graceful drain of every startd of the instance; raises DrainError."""


class DrainError(Exception):
    pass


class CondorDrain:
    """`condor_drain -graceful` per startd of an instance, through the one command runner."""

    def __init__(self, runner: Runner, collector: str, prefix: Sequence[str] = (), timeout: float = DRAIN_TIMEOUT,
                 env: Optional[dict[str, str]] = None) -> None:
        self.runner = runner
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
            if not isinstance(name, str):
                continue
            daemon = str(slot.get("MyAddress") or name.split("@", 1)[-1])
            chosen = by_daemon.get(daemon)
            if chosen is None or (slot.get("SlotType") == "Partitionable" and chosen.get("SlotType") != "Partitionable"):
                by_daemon[daemon] = slot
        return sorted(str(s["Name"]) for s in by_daemon.values())

    def drain(self, instance_id: str, slots: list[dict[str, Any]], reason: str) -> None:
        targets = self.targets(slots)
        if not targets:
            raise DrainError(f"{instance_id}: no slot name to drain")
        for name in targets:
            argv = [*self.prefix, "condor_drain", "-pool", self.collector, "-graceful", "-reason", f"vfarm scale: {reason}", name]
            result = self.runner.run(argv, check=False, timeout=self.timeout, env=self.env)
            if result.returncode != 0:
                raise DrainError(f"{instance_id}: {result.summary()}")


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


def client_token(name: str, first_attempt: float, count: int) -> str:
    """EC2's idempotency token (at most 64 ASCII characters) for one launch intent."""
    digest = hashlib.sha256(f"{name}\0{first_attempt:.6f}\0{count}".encode()).hexdigest()[:40]
    return f"vfarm-{digest}"


def _tag(instance: dict[str, Any], key: str) -> Optional[str]:
    for tag in instance.get("Tags") or []:
        if isinstance(tag, dict) and tag.get("Key") == key:
            return str(tag.get("Value", ""))
    return None


def black_hole(instances: list[dict[str, Any]], plan_states: dict[str, str], joined: set[str], spec: ScaleSpec,
               now: float) -> dict[str, Any]:
    """The black-hole state from the farm's instances (ended ones included) and this cycle's plan.

    Fate of a launch, newest first: joined (has been in the pool: seen by this process, or ended
    with `vfarm:end=drained`, or joined now), lost (`vfarm:end=lost`, lost now, or ended before
    ever joining without a tag of ours: it powered itself off, e.g. a failed final check), or
    undecided (still booting)."""
    fates: list[tuple[float, str, str]] = []
    for inst in instances:
        iid = str(inst.get("InstanceId"))
        if _tag(inst, FARM_TAG) != spec.name:
            continue
        launched = epoch(inst.get("LaunchTime"))
        if launched is None:
            continue
        state = (inst.get("State") or {}).get("Name", "")
        end = _tag(inst, END_TAG)
        current = plan_states.get(iid)
        if iid in joined or end == "drained" or current in ("idle", "busy", "other", "draining", "drained"):
            fate = "joined"
        elif end == "lost" or current == "lost":
            fate = "lost"
        elif state in LIVE_STATES:
            fate = "booting"
        else:
            fate = "lost"  # ended without our tag, never seen in the pool
        fates.append((launched, iid, fate))
    fates.sort(reverse=True)
    streak = 0
    newest_lost: Optional[float] = None
    in_flight = 0
    for launched, _iid, fate in fates:
        if fate == "booting":
            in_flight += 1
            continue
        if fate != "lost":
            break
        streak += 1
        if newest_lost is None:
            newest_lost = launched + spec.boot_timeout
    active = streak >= BLACK_HOLE_LOSSES
    delay = min(BLACK_HOLE_MAX, BLACK_HOLE_FIRST * 2 ** (streak - BLACK_HOLE_LOSSES)) if active else 0.0
    until = (newest_lost or now) + delay if active else 0.0
    return {"active": active, "streak": streak, "delay": delay, "until": until, "blocked": active and now < until,
            "probing": active and now >= until, "in_flight": in_flight}


@dataclass
class Outcome:
    launched: list[str] = field(default_factory=list)
    drained: list[str] = field(default_factory=list)
    terminated: list[str] = field(default_factory=list)
    cloud_errors: dict[str, int] = field(default_factory=dict)
    drain_errors: int = 0
    black_hole: dict[str, Any] = field(default_factory=dict)


class Applier:
    """Carries out plans, one per cycle. Holds only what may be lost on a restart: back-off timers,
    an unfinished launch intent, and the ids it has seen joined (a speed-up, rebuilt from the pool)."""

    def __init__(self, spec: ScaleSpec, backend: Backend, drainer: Drainer, logger: logging.Logger,
                 dry_run: bool = False, clock: Optional[Callable[[], float]] = None) -> None:
        self.spec = spec
        self.backend = backend
        self.drainer = drainer
        self.log = logger
        self.dry_run = dry_run
        base = max(spec.check_every, 5.0)
        self.backoff = {"launch": Backoff(base, CLOUD_BACKOFF_MAX), "terminate": Backoff(base, CLOUD_BACKOFF_MAX)}
        self.intent: Optional[tuple[str, int]] = None  # (token, count) of a launch of unknown outcome
        self.joined: set[str] = set()
        self._said_black_hole = 0.0

    def _cloud_error(self, op: str, err: Exception, now: float, outcome: Outcome) -> None:
        delay = self.backoff[op].failed(now)
        outcome.cloud_errors[op] = outcome.cloud_errors.get(op, 0) + 1
        self.log.warning("cloud error (%s): %s; next %s attempt in %.0fs at the earliest", op, err, op, delay)

    def apply(self, plan: dict[str, Any], snapshot: dict[str, Any], history: list[dict[str, Any]]) -> Outcome:
        """Carry out PLAN (made from SNAPSHOT); HISTORY: the farm's instances, ended ones included."""
        now = float(snapshot["now"])
        outcome = Outcome()
        states = {i["id"]: i["state"] for i in plan["instances"]}
        self.joined |= {iid for iid, st in states.items() if st in ("idle", "busy", "other", "draining", "drained")}
        slots_of: dict[str, list[dict[str, Any]]] = {}
        for slot in snapshot["slots"]:
            owner = slot.get("VfarmInstanceId")
            if isinstance(owner, str):
                slots_of.setdefault(owner, []).append(slot)
        reasons = {d.get("instance"): d["reason"] for d in plan["decisions"] if d.get("instance")}

        # Terminate first: it frees quota for the launches below.
        ends = {iid: ("lost" if states.get(iid) == "lost" else "drained") for iid in plan["terminate"]}
        if ends:
            for iid, end in ends.items():
                self.log.info("terminate %s (%s): %s", iid, end, reasons.get(iid, ""))
            if self.dry_run:
                self.log.info("dry run: not terminating %s", " ".join(ends))
            elif self.backoff["terminate"].blocked(now):
                self.log.warning("terminate of %s postponed: cloud back-off until %.0fs from now", " ".join(ends), self.backoff["terminate"].until - now)
            else:
                try:
                    self.backend.terminate(ends)
                    self.backoff["terminate"].succeeded()
                    outcome.terminated = list(ends)
                    for inst in history:
                        if inst.get("InstanceId") in ends:
                            inst.setdefault("Tags", []).append({"Key": END_TAG, "Value": ends[inst["InstanceId"]]})
                except CloudError as err:
                    self._cloud_error("terminate", err, now, outcome)

        for iid in plan["drain"]:
            why = reasons.get(iid, "idle")
            self.log.info("drain %s: %s", iid, why)
            if self.dry_run:
                continue
            try:
                self.drainer.drain(iid, slots_of.get(iid, []), why)
                outcome.drained.append(iid)
            except DrainError as err:
                outcome.drain_errors += 1
                self.log.warning("drain of %s failed (tried again next cycle while it stays idle): %s", iid, err)

        self._launch(plan, history, states, now, outcome)
        return outcome

    def _launch(self, plan: dict[str, Any], history: list[dict[str, Any]], states: dict[str, str], now: float, outcome: Outcome) -> None:
        wanted = int(plan["launch"])
        hole = black_hole(history, states, self.joined, self.spec, now)
        outcome.black_hole = hole
        if hole["active"] and now - self._said_black_hole >= 60:
            self._said_black_hole = now
            self.log.error("BLACK HOLE: the last %d launched instance(s) were all lost (never joined the pool within "
                           "boot-timeout): launching stops for %.0fs (until %.0fs from now), then one probe at a time",
                           hole["streak"], hole["delay"], max(0.0, hole["until"] - now))
        if wanted <= 0:
            if self.intent is not None:
                self.log.info("launch intent of %d worker(s) dropped: no longer wanted", self.intent[1])
                self.intent = None
            return
        reason = next((d["reason"] for d in plan["decisions"] if d["action"] == "launch"), "")
        if hole["blocked"]:
            self.log.error("launch %d: NOT launching, black hole back-off (%d lost in a row) for %.0fs more: %s",
                           wanted, hole["streak"], hole["until"] - now, reason)
            return
        if hole["probing"]:
            if hole["in_flight"]:
                self.log.warning("launch %d: held, a probe instance is still booting after a black hole", wanted)
                return
            wanted = 1
            reason = f"probe after a black hole ({hole['streak']} lost in a row); " + reason
        if self.backoff["launch"].blocked(now):
            self.log.warning("launch %d: postponed, cloud back-off for %.0fs more: %s", wanted, self.backoff["launch"].until - now, reason)
            return
        if self.intent is not None and self.intent[1] <= wanted:
            token, count = self.intent  # same call again: the cloud returns what a lost reply started
        else:
            token, count = client_token(self.spec.name, now, wanted), wanted
        self.log.info("launch %d: %s", count, reason)
        if self.dry_run:
            self.log.info("dry run: not launching")
            return
        self.intent = (token, count)
        try:
            ids = self.backend.launch(count, token)
        except CloudError as err:
            self._cloud_error("launch", err, now, outcome)
            return
        self.intent = None
        self.backoff["launch"].succeeded()
        outcome.launched = ids
        self.log.info("launched %s (client token %s)", " ".join(ids), token)


class Ec2Backend:
    """The scaler's view of an EC2 cloud, through clouds/ec2.py."""

    def __init__(self, spec: ScaleSpec, userdata: bytes, cloud: Any = None) -> None:
        from ..clouds import ec2

        self.spec = spec
        self.userdata = userdata
        self.cloud = cloud or ec2.cloud_from_section(spec.cloud)
        self._ec2 = ec2

    def _call(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except self._ec2.Ec2Error as err:
            raise CloudError(str(err)) from None

    def farm_instances(self) -> list[dict[str, Any]]:
        from .discover import plain

        found = self._call(self.cloud.instances, tag_filters={FARM_TAG: self.spec.name}, states=None)
        return plain(found)

    def launch(self, count: int, token: str) -> list[str]:
        options = self._ec2.launch_options(self.spec.cloud)
        options["tags"] = {**options["tags"], FARM_TAG: self.spec.name}
        started = self._call(self.cloud.launch, self.userdata, count=count, client_token=token, **options)
        return [str(i["InstanceId"]) for i in started]

    def terminate(self, ends: dict[str, str]) -> None:
        for end in sorted(set(ends.values())):
            self._call(self.cloud.tag, [i for i, e in ends.items() if e == end], {END_TAG: end})
        self._call(self.cloud.terminate, list(ends))
