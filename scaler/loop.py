"""The scaler's cycle and loop: discover -> plan -> apply -> record (log lines and metrics).

A cycle whose discover step fails (collector, schedd or cloud unreachable) is skipped with a
warning and changes nothing: a failed query is never read as "nothing there". The loop runs a
cycle every `check-every` seconds until asked to stop (SIGTERM/SIGINT set the stop event; the
cycle in progress runs to its end).

The scaler remembers, in memory only, since when it has seen each worker idle in every cycle
(`observed_idle_since`, fed to the planner with every snapshot): a worker is drained only after
idle-time of such sightings, whatever its lagging slot ads say. A skipped or failed cycle forgets
them all (it saw nothing, so the next one starts afresh), as a restart does: both can only delay a
drain.

Reading the farm file again (SIGHUP: `Reload`) between cycles keeps all of that: the new settings
take effect from the next cycle on, with the workers' idle sightings and back-off timers of the old
ones, and launches of unknown outcome while what they launch is unchanged. The farm's name and its
clouds (names, kinds and where their instances are) must stay: the farm's instances are found by
them. A reload that fails in any way leaves the scaler as it was.

The scaler also keeps its own history for the status page (`History`): a bounded ring of cycle
records (figures, decisions and what was done), in memory only, never more than HISTORY_CYCLES
records and HISTORY_DECISIONS cycles with their decisions, however long it runs.
"""

from __future__ import annotations

import collections
import dataclasses
import logging
import threading
import time
from collections.abc import Sequence
from typing import Any, Callable, NamedTuple, Optional

from ..clouds import verdict as verdicts
from ..config.condor import INSTANCE_ATTRIBUTE
from ..config.scale import ScaleSpec
from ..redaction import redact_strings
from . import discover, runlock
from . import plan as planner
from .apply import Applier, Backend, CloudError, Drainer, Outcome
from .model import CLOUD_TAG, END_TAG, ENDED, STOPPED, TYPE_TAG, Action, Plan, WorkerState, cloud_state, tag

# The rows of --status whose instance ended or is ending: they show the final check's verdict.
VERDICT_STATES = frozenset({WorkerState.LOST.value, *STOPPED, *ENDED})


class Metrics:
    """Prometheus metrics of one scaler, in a registry of its own (labelled with the farm). A hybrid
    farm's (CLOUDS: its cloud names) have per-cloud families too, labelled with the cloud."""

    def __init__(self, farm: str, clouds: Sequence[str] = ()) -> None:
        from prometheus_client import CollectorRegistry, Counter, Gauge

        self.farm = farm
        self.registry = CollectorRegistry()
        r = self.registry
        self.waiting = Gauge("vfarm_scale_waiting_jobs", "Idle jobs that waited at least waiting-time and fit a worker", ["farm"], registry=r)
        self.demand = Gauge("vfarm_scale_demand_cpus", "CPUs asked for by the waiting jobs", ["farm"], registry=r)
        self.supply = Gauge("vfarm_scale_supply_cpus", "Unclaimed CPUs of joined workers plus cpus-per-vm per booting worker", ["farm"], registry=r)
        self.active = Gauge("vfarm_scale_active_instances", "Farm instances neither lost nor draining", ["farm"], registry=r)
        self.instances = Gauge("vfarm_scale_instances", "Farm instances by state", ["farm", "state"], registry=r)
        self.black_hole = Gauge("vfarm_scale_black_hole", "1 while launches are stopped by the black-hole rule", ["farm"], registry=r)
        self.last_cycle = Gauge("vfarm_scale_last_cycle_timestamp_seconds", "When the last cycle ended", ["farm"], registry=r)
        self.launches = Counter("vfarm_scale_launches", "Instances launched", ["farm"], registry=r)
        self.drains = Counter("vfarm_scale_drains", "Graceful drains started", ["farm"], registry=r)
        self.terminations = Counter("vfarm_scale_terminations", "Instances terminated", ["farm"], registry=r)
        self.cloud_errors = Counter("vfarm_scale_cloud_errors", "Failed cloud calls", ["farm", "operation"], registry=r)
        self.drain_errors = Counter("vfarm_scale_drain_errors", "Failed drain commands", ["farm"], registry=r)
        self.cycles = Counter("vfarm_scale_cycles", "Cycles, by result (applied, skipped, failed: a bug or an unexpected error ended it)",
                              ["farm", "result"], registry=r)
        self.lost = Counter("vfarm_scale_lost_workers", "Workers lost (never joined the pool), by the reason their console gave "
                            "(check-failed:HANDLER, check-error, check-ok, no-verdict, console-unreadable)", ["farm", "reason"], registry=r)
        for state in planner.STATES:
            self.instances.labels(farm, state).set(0)
        for op in ("discover", "launch", "terminate"):
            self.cloud_errors.labels(farm, op)
        for result in ("applied", "skipped", "failed"):
            self.cycles.labels(farm, result)
        self.lost.labels(farm, "no-verdict")
        self.clouds = list(clouds)
        if self.clouds:
            self._cloud_families(farm)

    def _cloud_families(self, farm: str) -> None:
        from prometheus_client import Counter, Gauge

        r = self.registry
        self.cloud_instances = Gauge("vfarm_scale_cloud_instances", "Farm instances by cloud and state (hybrid farms)", ["farm", "cloud", "state"],
                                     registry=r)
        self.cloud_active = Gauge("vfarm_scale_cloud_active_instances", "Farm instances neither lost nor draining, by cloud (hybrid farms)",
                                  ["farm", "cloud"], registry=r)
        self.cloud_launches = Counter("vfarm_scale_cloud_launches", "Instances launched, by cloud (hybrid farms)", ["farm", "cloud"], registry=r)
        self.cloud_fallbacks = Counter("vfarm_scale_cloud_fallbacks", "Launches moved to another cloud or type after a quota or capacity refusal, "
                                       "by the cloud that refused (hybrid farms)", ["farm", "cloud"], registry=r)
        for cloud in self.clouds:
            self.cloud_active.labels(farm, cloud)
            self.cloud_launches.labels(farm, cloud)
            self.cloud_fallbacks.labels(farm, cloud)
            for state in planner.STATES:
                self.cloud_instances.labels(farm, cloud, state).set(0)

    def serve(self, port: int, address: str = "127.0.0.1") -> Any:
        """Serve /metrics on ADDRESS:PORT (loopback by default) in a thread; the server."""
        from prometheus_client import start_http_server

        server, _thread = start_http_server(port, addr=address, registry=self.registry)
        return server

    def text(self) -> str:
        from prometheus_client import generate_latest

        return generate_latest(self.registry).decode()


# The history the status page plots: a day of cycles at one a minute (a record is a few hundred bytes).
HISTORY_CYCLES = 1440
# The cycles whose decisions the page lists, and at most this many decisions of each.
HISTORY_DECISIONS = 30
DECISIONS_PER_CYCLE = 100
# How long the page shows "no verdict" (or an unreadable console) before reading the console again.
VERDICT_RETRY = 300.0


class History:
    """The scaler's own record of its last cycles, for the status page: bounded, in memory only.
    Written by the loop's thread, read by the page's; every read gets copies."""

    def __init__(self, check_every: Optional[float] = None, cycles: int = HISTORY_CYCLES, decisions: int = HISTORY_DECISIONS,
                 per_cycle: int = DECISIONS_PER_CYCLE) -> None:
        self._lock = threading.Lock()
        self._figures: collections.deque[dict[str, Any]] = collections.deque(maxlen=cycles)
        self._decisions: collections.deque[dict[str, Any]] = collections.deque(maxlen=decisions)
        self._per_cycle = per_cycle
        self.check_every = check_every  # the scaler's, as its farm file says now (a reload changes it; the page shows it)
        self._status: Optional[dict[str, Any]] = None

    def applied(self, at: float, result: Plan, outcome: Outcome) -> None:
        """One applied cycle: its figures, the first `per_cycle` decisions and what was done."""
        figures = {"time": at, "now": result.now, "waiting": result.waiting, "demand": result.demand, "supply": result.supply,
                   "active": result.active, "states": dict(result.states), "launched": len(outcome.launched),
                   "drained": len(outcome.drained), "terminated": len(outcome.terminated),
                   "cloud_errors": sum(outcome.cloud_errors.values()), "drain_errors": outcome.drain_errors}
        decisions = [d.to_json() for d in result.decisions]
        entry = {"time": at, "decisions": redact_strings(decisions[:self._per_cycle]), "more": max(0, len(decisions) - self._per_cycle),
                 "launched": list(outcome.launched), "drained": list(outcome.drained), "terminated": list(outcome.terminated),
                 "warnings": redact_strings(list(result.warnings))}
        with self._lock:
            self._figures.append(figures)
            self._decisions.append(entry)

    def skipped(self, at: float, reason: str) -> None:
        """A cycle that changed nothing: why (plots show a gap there)."""
        with self._lock:
            self._figures.append({"time": at, "skipped": True})
            self._decisions.append({"time": at, "skipped": redact_strings(reason)})

    def set_status(self, status: dict[str, Any]) -> None:
        with self._lock:
            self._status = status

    def status(self) -> Optional[dict[str, Any]]:
        """The farm as the last applied cycle saw it (status_document), or None before the first."""
        with self._lock:
            return None if self._status is None else dict(self._status)

    def to_json(self) -> dict[str, Any]:
        with self._lock:
            return {"cycles": [dict(f) for f in self._figures], "decisions": [dict(d) for d in reversed(self._decisions)],
                    "limits": {"cycles": self._figures.maxlen, "decisions": self._decisions.maxlen, "per_cycle": self._per_cycle}}


class ReloadError(Exception):
    """Why the farm file read again cannot be taken: one line."""


class Parts(NamedTuple):
    """What a reload hands the scaler: the new section, its cloud backend, its drain command and
    token folder, and whether the workers' user-data is the one its launches carried so far."""

    spec: ScaleSpec
    backend: Backend
    drainer: Drainer
    token_dir: Optional[str]
    same_userdata: bool = True


# The settings a reload reports when they change, in the section's spelling.
RELOAD_NUMBERS = ("max_vms", "min_vms", "max_cpus", "waiting_jobs_threshold", "consolidate_idle_cpus", "disruption_budget")
RELOAD_DURATIONS = ("waiting_time", "idle_time", "boot_timeout", "check_every")
RELOAD_MAPPINGS = ("cloud", "pool")  # by key; values are not shown (an endpoint may hold a password)
RELOAD_LISTS = ("types", "clouds")
# What says where a cloud's instances are (besides its kind): a change makes them another farm's.
LOCATING = {"ec2": ("endpoint-url", "region", "profile"), "openstack": ("cloud", "region")}
RELOAD_POLL = 0.5  # how soon a waiting loop notices a reload request


@dataclasses.dataclass
class Reload:
    """A request to read the farm file again, and how: READ gives the scaler's new parts or raises
    ReloadError; SETTLED hears how it ended (the section taken, or None: the scaler goes on as it
    was). `ask()` may be called from a signal handler."""

    read: Callable[[], Parts]
    asked: threading.Event = dataclasses.field(default_factory=threading.Event)
    settled: Callable[[Optional[ScaleSpec]], None] = lambda _spec: None

    def ask(self) -> None:
        self.asked.set()


def _clouds(spec: ScaleSpec) -> list[tuple[str, str, tuple[Any, ...]]]:
    """Where a farm's instances are found: (name, kind, locating settings) of each cloud ('' for a farm of one cloud)."""
    settings = [(c.name, c.settings) for c in spec.clouds] or [("", spec.cloud)]
    return [(name, str(cloud.get("type")), tuple(cloud.get(k) for k in LOCATING.get(str(cloud.get("type")), ()))) for name, cloud in settings]


def changed_settings(old: ScaleSpec, new: ScaleSpec) -> list[str]:
    """What differs between two farm sections, as the admin wrote it: `max-vms 20 -> 40`,
    `idle-time 3600s -> 1800s`, `cloud: instance-type changed`."""
    def shown(value: Any, unit: str = "") -> str:
        return "-" if value is None else f"{value:g}{unit}" if isinstance(value, float) else str(value)

    said = []
    for name in RELOAD_NUMBERS + RELOAD_DURATIONS:
        before, after = getattr(old, name), getattr(new, name)
        if before != after:
            unit = "s" if name in RELOAD_DURATIONS else ""
            said.append(f"{name.replace('_', '-')} {shown(before, unit)} -> {shown(after, unit)}")
    cpus = [spec.cpus_per_vm if spec.cpus_per_vm_given else None for spec in (old, new)]
    if cpus[0] != cpus[1]:
        said.append(f"cpus-per-vm {shown(cpus[0])} -> {shown(cpus[1])}")
    for name in RELOAD_MAPPINGS:
        before, after = getattr(old, name), getattr(new, name)
        keys = sorted(str(k) for k in set(before) | set(after) if before.get(k) != after.get(k))
        if keys:
            said.append(f"{name}: {', '.join(keys)} changed")
    said += [f"{name} changed" for name in RELOAD_LISTS if getattr(old, name) != getattr(new, name)]
    return said


class Scaler:
    """One farm's scaler: discovery, planning, applying and recording, one cycle at a time."""

    def __init__(self, spec: ScaleSpec, backend: Backend, drainer: Drainer, logger: logging.Logger, *,
                 token_dir: Optional[str] = None, dry_run: bool = False, metrics: Optional[Metrics] = None,
                 clock: Callable[[], float] = time.time,
                 pool: Optional[Callable[[], dict[str, Any]]] = None, keep_status: bool = False) -> None:
        self.spec = spec
        self.backend = backend
        self.log = logger
        self.token_dir = token_dir
        self.clock = clock
        self.metrics = metrics
        self.applier = Applier(spec, backend, drainer, logger, dry_run=dry_run)
        # Since when each worker has been seen idle in every cycle: planner.OBSERVED.
        self.observed_idle_since: dict[str, float] = {}
        # Farm instances seen in the pool (live or ended): the black hole's "joined".
        self.joined: list[str] = []
        # The newest decided launches (plan.ENDED_KEY): the black hole's memory of what the cloud forgets.
        self.ended: list[dict[str, Any]] = []
        # Workers drained for consolidation: the disruption budget counts them until their ads show it.
        self.consolidating: list[str] = []
        self.outcome: Optional[Outcome] = None  # what the last cycle's apply did
        self._pool = pool
        self.history = History(spec.check_every)
        # KEEP_STATUS: after each cycle, the farm as --status shows it goes into the history (the page).
        self.keep_status = keep_status
        # The page's verdicts read from consoles: (reason, what it said, when to read again or None),
        # kept while the cloud lists the instance.
        self._verdicts: dict[str, tuple[str, str, Optional[float]]] = {}

    # --- discover -----------------------------------------------------------------------------
    def discover(self) -> dict[str, Any]:
        """One snapshot: the pool, and every farm instance the cloud lists (ended ones too: the
        black hole's history). Raises DiscoverError (pool or cloud) without changing anything."""
        if self._pool is not None:  # tests: a pool that answers from memory
            now = self.clock()
            pool = self._pool()
        else:
            if not self.spec.collector:
                raise discover.DiscoverError("the scale section has no pool.collector: live cycles need one")
            now = self.clock()
            pool = discover.pool_snapshot(self.spec.collector, self.spec.pool.get("schedd"), self.token_dir)
        try:
            instances = self.backend.farm_instances()
        except CloudError as err:
            if self.metrics:
                self.metrics.cloud_errors.labels(self.spec.name, "discover").inc()
            raise discover.DiscoverError(f"cloud: {err}") from None
        return {"now": now, "jobs": pool["jobs"], "slots": pool["slots"], "instances": instances, "collector": pool.get("collector")}

    def memory(self) -> dict[str, Any]:
        """What this scaler remembers for the next plan (in memory only: a restart starts afresh)."""
        return {planner.OBSERVED: dict(self.observed_idle_since), planner.JOINED_KEY: list(self.joined),
                planner.CONSOLIDATING: list(self.consolidating), planner.ENDED_KEY: [dict(e) for e in self.ended], **self.applier.memory()}

    def adopt(self, parts: Parts) -> list[str]:
        """Go on with the farm section read again (PARTS), keeping what this scaler learnt of the
        farm; what changed. ReloadError if it names another farm or other clouds (or the same ones
        reached elsewhere). A launch of unknown outcome is retried with its token only while what
        it launches is unchanged (a cloud refuses a token again with other parameters): else it is
        forgotten, said in a warning."""
        spec = parts.spec
        if spec.name != self.spec.name:
            raise ReloadError(f"the farm's name changed ({self.spec.name} -> {spec.name}): that is another farm; restart for it")
        if _clouds(spec) != _clouds(self.spec):
            raise ReloadError("the farm's clouds changed (names, kinds, or where their instances are: endpoint, region, account): "
                              "its instances are found on them; restart for that")
        # Everything is made first and swapped in last: a failure on the way leaves the scaler as it was.
        old, old_spec = self.applier, self.spec
        applier = Applier(spec, parts.backend, parts.drainer, self.log, dry_run=old.dry_run)
        before = {p.name: p for p in old_spec.placements}
        after = {p.name: p for p in spec.placements}
        forgotten = []
        for name, intent in old.intents.items():  # a type the file no longer lists included
            p = after.get(name)
            if p is not None and parts.same_userdata and name in before and old_spec.cloud_of(before[name]) == spec.cloud_of(p):
                applier.intents[name] = intent
            else:
                forgotten.append((intent[1], name))
        for key, timer in old.backoff.items():
            applier.backoff[key] = dataclasses.replace(timer, base=applier.base)
        applier.lost_reasons = dict(old.lost_reasons)
        applier._said_black_hole = dict(old._said_black_hole)
        changed = changed_settings(old_spec, spec)
        self.spec, self.backend, self.token_dir, self.applier = spec, parts.backend, parts.token_dir, applier
        self.history.check_every = spec.check_every
        for count, name in forgotten:
            self.log.warning("launch of %d worker(s) of unknown outcome (%s) forgotten: what it launches changed with the farm file", count, name)
        return changed

    def _reload(self, reload: Reload) -> None:
        try:
            changed = self.adopt(reload.read())
        except ReloadError as err:
            self.log.error("reload refused, going on as before: %s", err)
            reload.settled(None)
            return
        except Exception as err:  # noqa: BLE001 - a reload must never end the loop
            self.log.exception("reload failed, going on as before: %s", err)
            reload.settled(None)
            return
        reload.settled(self.spec)
        self.log.info("reloaded the farm file: %s", "; ".join(changed) if changed else "no setting of the scale section changed")

    # --- one cycle -----------------------------------------------------------------------------
    def cycle(self, save: Optional[Callable[[dict[str, Any]], None]] = None, strict: bool = False) -> Optional[Plan]:
        """Discover, plan, apply, record. The plan, or None when the cycle was skipped.
        SAVE: called with the snapshot planned from; STRICT: raise what skips the cycle (after
        counting it) instead of logging it: `--once` reports it as its error."""
        observed, self.observed_idle_since = self.observed_idle_since, {}  # kept only if this cycle sees
        try:
            snapshot = self.discover()
            snapshot.update({**self.memory(), planner.OBSERVED: observed})
            if save is not None:
                save(snapshot)
            result = planner.plan(snapshot, self.spec)
        except (discover.DiscoverError, planner.SnapshotError) as err:
            if self.metrics:
                self.metrics.cycles.labels(self.spec.name, "skipped").inc()
            if strict:
                raise
            if isinstance(err, planner.SnapshotError):  # live ads outside what the planner can read: decide nothing
                why = f"what the pool or cloud answered cannot be planned from: {err}"
            else:
                why = str(err)
            self.log.warning("cycle skipped, nothing changed: %s", why)
            self.history.skipped(self.clock(), why)
            return None
        self.observed_idle_since = dict(result.observed_idle_since)
        self.joined = list(result.joined)
        self.ended = [dict(e) for e in result.ended]
        for warning in result.warnings:
            self.log.warning("%s", warning)
        self.log.info("cycle: %d waiting job(s), demand %d CPU(s), supply %d CPU(s), %d active (%s)",
                      result.waiting, result.demand, result.supply, result.active,
                      ", ".join(f"{n} {s}" for s, n in result.states.items() if n) or "no instance")
        self.outcome = self.applier.apply(result, snapshot)
        # A consolidation drain that failed is not remembered: it would hold the disruption budget
        # for the worker's life while nothing drains it; the next plan may choose it again.
        failed = {d.instance for d in result.decisions if d.action is Action.DRAIN} - set(self.outcome.drained)
        self.consolidating = [iid for iid in result.consolidating if iid not in failed]
        self.record(result, self.outcome)
        self.history.applied(self.clock(), result, self.outcome)
        if self.keep_status:
            self.history.set_status(status_document(result, snapshot, self.spec, self._cached_verdict))
            listed = {str(i.get("InstanceId")) for i in snapshot["instances"]}
            self._verdicts = {iid: v for iid, v in self._verdicts.items() if iid in listed}
        return result

    def _cached_verdict(self, iid: str) -> tuple[str, str]:
        """read_verdict for the page, one console read per instance: a verdict found stays (the
        check ran once); none found yet is read again VERDICT_RETRY seconds later at the soonest."""
        now = self.clock()
        known = self._verdicts.get(iid)
        if known is not None and (known[2] is None or now < known[2]):
            return known[0], known[1]
        reason, said = self.applier.read_verdict(iid)
        again = now + VERDICT_RETRY if reason in (verdicts.NO_VERDICT, verdicts.UNREADABLE) else None
        self._verdicts[iid] = (reason, said, again)
        return reason, said

    def record(self, result: Plan, outcome: Outcome) -> None:
        m, farm = self.metrics, self.spec.name
        if m is None:
            return
        m.waiting.labels(farm).set(result.waiting)
        m.demand.labels(farm).set(result.demand)
        m.supply.labels(farm).set(result.supply)
        m.active.labels(farm).set(result.active)
        for state, count in result.states.items():
            m.instances.labels(farm, state).set(count)
        m.launches.labels(farm).inc(len(outcome.launched))
        m.drains.labels(farm).inc(len(outcome.drained))
        m.terminations.labels(farm).inc(len(outcome.terminated))
        for op, count in outcome.cloud_errors.items():
            m.cloud_errors.labels(farm, op).inc(count)
        m.drain_errors.labels(farm).inc(outcome.drain_errors)
        for reason, count in outcome.lost.items():
            m.lost.labels(farm, reason).inc(count)
        m.black_hole.labels(farm).set(1 if any(f.black_hole.blocked for f in result.types.values()) else 0)
        for name, figures in result.clouds.items() if m.clouds else ():
            m.cloud_active.labels(farm, name).set(figures.active)
            for state, count in figures.states.items():
                m.cloud_instances.labels(farm, name, state).set(count)
            m.cloud_launches.labels(farm, name).inc(outcome.launched_by_cloud.get(name, 0))
        for fallback in outcome.fallbacks:
            refused = self.spec.worker_type(str(fallback["from"])).on
            if refused is not None:
                m.cloud_fallbacks.labels(farm, refused).inc(int(fallback["count"]))
        m.cycles.labels(farm, "applied").inc()
        m.last_cycle.labels(farm).set(self.clock())

    # --- the loop ------------------------------------------------------------------------------
    def loop(self, stop: threading.Event, cycles: Optional[int] = None, reload: Optional[Reload] = None) -> int:
        """Cycles every check-every seconds until STOP is set (or CYCLES ran); how many ran.
        A stop request during a cycle lets it finish; no exception of one cycle ends the loop.
        A RELOAD request is taken before the next cycle, which then starts at once."""
        done = 0
        self.log.info("scaling farm %s every %.0fs (min %d, max %d workers%s)", self.spec.name, self.spec.check_every,
                      self.spec.min_vms, self.spec.max_vms, f", max-cpus {self.spec.max_cpus}" if self.spec.max_cpus is not None else "")
        while not stop.is_set():
            if reload is not None and reload.asked.is_set():
                reload.asked.clear()
                self._reload(reload)
            started = time.monotonic()
            try:
                self.cycle()
            except Exception as err:  # noqa: BLE001 - the loop must outlive any one cycle's bug
                self.log.exception("cycle failed, nothing more done in it: %s", err)
                self.history.skipped(self.clock(), f"cycle failed: {err}")
                if self.metrics:
                    self.metrics.cycles.labels(self.spec.name, "failed").inc()
            done += 1
            if cycles is not None and done >= cycles:
                break
            until = started + self.spec.check_every
            while not stop.is_set() and time.monotonic() < until and not (reload is not None and reload.asked.is_set()):
                stop.wait(max(0.0, min(until - time.monotonic(), RELOAD_POLL if reload is not None else self.spec.check_every)))
        self.log.info("stopped after %d cycle(s)", done)
        return done


def status_rows(result: Plan, snapshot: dict[str, Any], spec: ScaleSpec) -> list[dict[str, Any]]:
    """The farm as operators want to see it: instance, type, state, age, slots, jobs there (running,
    transferring output or suspended). SNAPSHOT as Scaler.discover() makes it: only the farm's
    instances, stopped ones included."""
    # Jobs as the planner counts them: by the startd or machine of each job's RemoteHost (a job on
    # a dynamic slot whose ad has not arrived yet is the worker's all the same).
    by_instance: dict[str, list[dict[str, Any]]] = {}
    for slot in snapshot["slots"]:
        if isinstance(slot.get(INSTANCE_ATTRIBUTE), str):
            by_instance.setdefault(slot[INSTANCE_ATTRIBUTE], []).append(slot)
    running = planner.running_by_startd(snapshot["jobs"])
    jobs = {iid: planner.running_on(slots, running) for iid, slots in by_instance.items()}
    rows = [{"instance": w.id, "type": spec.worker_type(w.type).kind, "state": w.state.value, "age": w.age, "slots": w.slots,
             "jobs": jobs.get(w.id, 0), "reason": w.reason, **_cloud_of(w.cloud, spec)} for w in result.instances]
    # Stopped, or in a state no rule knows: the plan's others.
    rows += [{"instance": o["instance"], "type": o["type"], "state": o["state"], "age": o["age"], "slots": 0, "jobs": 0, "reason": o["reason"],
              **_cloud_of(o["cloud"], spec)} for o in result.others]
    return rows


def ended_rows(snapshot: dict[str, Any], spec: ScaleSpec) -> list[dict[str, Any]]:
    """Farm instances that ended (terminated, shutting down) and the cloud still lists, with how
    they ended: the scaler's `vfarm:end` tag, or none (the instance powered itself off)."""
    now = float(snapshot["now"])
    rows = []
    for inst in snapshot["instances"]:
        state = cloud_state(inst)
        if state not in ENDED:  # the backend lists the farm's instances only
            continue
        end = tag(inst, END_TAG)
        launched = planner.epoch(inst.get("LaunchTime"))
        why = f"ended by the scaler ({END_TAG}={end})" if end else "ended without the scaler: it powered itself off, or someone terminated it"
        rows.append({"instance": inst["InstanceId"], "type": spec.worker_type(tag(inst, TYPE_TAG)).name, "state": state,
                     "age": now - launched if launched is not None else None, "slots": 0, "jobs": 0, "reason": why,
                     **_cloud_of(tag(inst, CLOUD_TAG), spec)})
    return rows


def _cloud_of(cloud: Optional[str], spec: ScaleSpec) -> dict[str, Any]:
    """A status row's cloud: only a hybrid farm's rows have one."""
    return {"cloud": cloud} if spec.hybrid else {}


def cloud_counts(rows: list[dict[str, Any]], spec: ScaleSpec) -> dict[str, dict[str, int]]:
    """A hybrid farm's status rows counted per cloud (in priority order) and state."""
    counts: dict[str, dict[str, int]] = {c.name: {} for c in spec.clouds}
    for row in rows:
        of_cloud = counts.setdefault(str(row.get("cloud")), {})
        of_cloud[row["state"]] = of_cloud.get(row["state"], 0) + 1
    return counts


def status_document(result: Plan, snapshot: dict[str, Any], spec: ScaleSpec, read_verdict: Callable[[str], tuple[str, str]]) -> dict[str, Any]:
    """The farm as `vfarm scale --status --json` prints it and the status page serves it: the
    queue's figures and every farm instance (live, stopped, ended), with the final check's verdict
    of those that ended or are ending (READ_VERDICT: Applier.read_verdict); strings redacted. A
    hybrid farm's counts per cloud too (`clouds`); whether a scaler of the farm runs on this host
    (`scaler_here`: runlock)."""
    rows = status_rows(result, snapshot, spec) + ended_rows(snapshot, spec)
    for row in rows:
        if row["state"] in VERDICT_STATES:
            row["lost_reason"], row["verdict"] = read_verdict(row["instance"])
    held, pid = runlock.running(spec.name)
    document = {"farm": spec.name, "now": snapshot["now"], "waiting": result.waiting, "demand": result.demand,
                "supply": result.supply, "instances": redact_strings(rows),
                "scaler_here": {"running": held, "pid": pid}}
    if spec.hybrid:
        document["clouds"] = cloud_counts(rows, spec)
    return document
