"""The scaler's decisions as a pure function of one snapshot and the `scale` section.

A snapshot is what one discover step saw, in the systems' own JSON shapes:

    {"now": EPOCH_SECONDS,
     "jobs": [job ClassAds as `condor_q -json` prints them],
     "slots": [machine ClassAds as `condor_status -json` prints them],
     "instances": [instance dicts as EC2 DescribeInstances returns them],
     "collector": optional: the collector's ad, or the list `condor_status -collector -json` prints,
     "observed_idle_since": optional: {instance id: epoch seconds}, what the scaler itself saw}

`plan(snapshot, spec)` applies the rules of issue 11 point 2 exactly and returns plain data:
how many to launch, which instances to drain and to terminate, each with its reason, plus the
state of every farm instance and the counts behind the decision. Same snapshot, same plan.

Idle truth. A worker counts as idle only when no evidence says otherwise:
- the schedd: a running job (JobStatus 2) whose RemoteHost is one of the worker's slots, or names
  its startd (the part after the slot's '@'), makes the worker busy whatever its slot ads say;
- the scaler's own observations: `observed_idle_since` maps each worker seen idle in every cycle of
  an unbroken run to the time of the first cycle of that run. A worker missing from it is seen idle
  for the first time now: idle for 0 s. The plan returns the map for the next cycle (the loop keeps
  it in memory, never in a file; a skipped cycle or a restart starts it afresh, which can only
  delay a drain);
- the ads only as a lower bound: a slot ad is refreshed every UPDATE_INTERVAL (300 s by default),
  so its EnteredCurrentState or NumDynamicSlotsTime may be long out of date. A worker's idle time is
  the shorter of what its ads say and what the scaler observed.
A snapshot without `observed_idle_since` is therefore planned as the first cycle of a fresh scaler:
it drains nothing (unless idle-time is 0). To replay a later cycle, the snapshot carries the map.
Left to the ads alone: a job that starts and ends between two cycles; once an ad refreshed after
its end arrives (within UPDATE_INTERVAL), NumDynamicSlotsTime shows that end.
"""

from __future__ import annotations

import datetime
import math
from typing import Any, Optional, Union

from ..config.scale import ScaleSpec

FARM_TAG = "vfarm:farm"
INSTANCE_ATTR = "VfarmInstanceId"
LIVE_STATES = ("pending", "running")
# Instance states, in the order the status table lists them.
STATES = ("booting", "lost", "idle", "busy", "other", "draining", "drained")
REQUIRED = ("now", "jobs", "slots", "instances")
OBSERVED = "observed_idle_since"
RUNNING = 2  # JobStatus of a running job

Number = Union[int, float]


class SnapshotError(ValueError):
    """A snapshot that cannot be planned from; the message is one line for the user."""


# The numbers plan() reads, per list: they must fit in 64 bits (sums of them never overflow a float).
NUMBER_FIELDS = {
    "jobs": ("EnteredCurrentStatus", "QDate", "RequestCpus"),
    "slots": ("Cpus", "EnteredCurrentState", "NumDynamicSlotsTime"),
    "instances": ("LaunchTime",),
    "collector": ("DaemonStartTime", "MyCurrentTime", "MonitorSelfAge"),
}
NUMBER_LIMIT = 2**63


def _shown(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _check_numbers(ad: dict[str, Any], where: str, keys: tuple[str, ...]) -> None:
    for key in keys:
        value = ad.get(key)
        if isinstance(value, (int, float)) and not isinstance(value, bool) and not (math.isfinite(value) and abs(value) <= NUMBER_LIMIT):
            raise SnapshotError(f"'{where}.{key}' is out of range (a 64-bit number), got {_shown(value)}")


def check_snapshot(data: Any) -> dict[str, Any]:
    """DATA as a snapshot, or SnapshotError saying (in one line, with the place) what is wrong
    with it: the shape plan() relies on, and the numbers it reads within 64 bits."""
    if not isinstance(data, dict):
        raise SnapshotError(f"a snapshot is a JSON object with {', '.join(REQUIRED)}; got {type(data).__name__}")
    missing = [key for key in REQUIRED if key not in data]
    if missing:
        raise SnapshotError(f"the snapshot lacks {', '.join(repr(m) for m in missing)}")
    if not _is_number(data["now"]) or abs(data["now"]) > NUMBER_LIMIT:
        raise SnapshotError(f"'now' must be epoch seconds (a number), got {_shown(data['now'])}")
    for key in ("jobs", "slots", "instances"):
        items = data[key]
        if not isinstance(items, list):
            raise SnapshotError(f"'{key}' must be a list, got {type(items).__name__}")
        for i, item in enumerate(items):
            if not isinstance(item, dict):
                raise SnapshotError(f"'{key}[{i}]' must be an object, got {type(item).__name__}")
            _check_numbers(item, f"{key}[{i}]", NUMBER_FIELDS[key])
    for i, instance in enumerate(data["instances"]):
        if not isinstance(instance.get("InstanceId"), str):
            raise SnapshotError(f"'instances[{i}]' has no InstanceId")
        tags = instance.get("Tags")
        if tags is not None and not isinstance(tags, list):
            raise SnapshotError(f"'instances[{i}].Tags' must be a list of {{Key, Value}}, got {type(tags).__name__}")
    observed = data.get(OBSERVED)
    if observed is not None:
        if not isinstance(observed, dict):
            raise SnapshotError(f"'{OBSERVED}' must be an object of instance id: epoch seconds, got {type(observed).__name__}")
        for iid, since in observed.items():
            if not _is_number(since) or abs(since) > NUMBER_LIMIT:
                raise SnapshotError(f"'{OBSERVED}.{iid}' must be epoch seconds (a number), got {_shown(since)}")
    collector = data.get("collector")
    if collector is not None and not isinstance(collector, (dict, list)):
        raise SnapshotError(f"'collector' must be an ad or a list of ads, got {type(collector).__name__}")
    ads = collector if isinstance(collector, list) else [collector] if collector is not None else []
    for i, ad in enumerate(ads):
        if isinstance(ad, dict):
            _check_numbers(ad, f"collector[{i}]" if isinstance(collector, list) else "collector", NUMBER_FIELDS["collector"])
    return data


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def epoch(value: Any) -> Optional[float]:
    """EC2's LaunchTime (ISO 8601 as the CLI and JSON print it, or epoch seconds) as seconds."""
    if _is_number(value):
        return float(value)
    if isinstance(value, datetime.datetime):
        moment = value
    elif isinstance(value, str):
        text = value.strip()
        if text.endswith(("Z", "z")):
            text = text[:-1] + "+00:00"
        try:
            moment = datetime.datetime.fromisoformat(text)
        except ValueError:
            return None
    else:
        return None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=datetime.timezone.utc)  # EC2 times are UTC
    return moment.timestamp()


def _tag(instance: dict[str, Any], key: str) -> Optional[str]:
    for tag in instance.get("Tags") or []:
        if isinstance(tag, dict) and tag.get("Key") == key:
            value = tag.get("Value")
            return str(value) if value is not None else None
    return None


def _state_name(instance: dict[str, Any]) -> str:
    state = instance.get("State")
    return str(state.get("Name", "")) if isinstance(state, dict) else str(state or "")


def farm_instances(instances: list[dict[str, Any]], name: str) -> list[dict[str, Any]]:
    """The instances of farm NAME that are pending or running; every other one is ignored."""
    return [i for i in instances if _tag(i, FARM_TAG) == name and _state_name(i) in LIVE_STATES]


def _number(value: Any, default: Number) -> Number:
    return value if _is_number(value) else default


def collector_started(collector: Any) -> Optional[float]:
    """When the (most recently started) collector started, or None when no ad says."""
    ads = collector if isinstance(collector, list) else [collector] if isinstance(collector, dict) else []
    starts = []
    for ad in ads:
        if not isinstance(ad, dict):
            continue
        if _is_number(ad.get("DaemonStartTime")):
            starts.append(float(ad["DaemonStartTime"]))
        elif _is_number(ad.get("MyCurrentTime")) and _is_number(ad.get("MonitorSelfAge")):
            # HTCondor 23.9's collector ad has no DaemonStartTime.
            starts.append(float(ad["MyCurrentTime"]) - float(ad["MonitorSelfAge"]))
    return max(starts) if starts else None


def _startd(name: str) -> str:
    """The startd's name in a slot's name ("slot1_2@w-i-1@host" -> "w-i-1@host")."""
    return name.split("@", 1)[1] if "@" in name else name


def running_by_startd(jobs: list[dict[str, Any]]) -> dict[str, int]:
    """How many running jobs the schedd places on each startd (by the job's RemoteHost)."""
    counts: dict[str, int] = {}
    for job in jobs:
        host = job.get("RemoteHost")
        if job.get("JobStatus") == RUNNING and isinstance(host, str) and host:
            key = _startd(host)
            counts[key] = counts.get(key, 0) + 1
    return counts


def running_on(slots: list[dict[str, Any]], running: dict[str, int]) -> int:
    """The schedd's running jobs on the worker holding SLOTS: on one of its startds or machines."""
    keys = {_startd(s["Name"]) for s in slots if isinstance(s.get("Name"), str)}
    keys |= {s["Machine"] for s in slots if isinstance(s.get("Machine"), str)}
    return sum(running.get(key, 0) for key in keys)


def classify(instance: dict[str, Any], slots: list[dict[str, Any]], now: float, spec: ScaleSpec, collector_young: bool,
             running: int = 0, observed_since: Optional[float] = None) -> dict[str, Any]:
    """One farm instance's state, with its reason and the figures behind it. RUNNING: the jobs the
    schedd says run there; OBSERVED_SINCE: since when this scaler has seen it idle in every cycle
    (None: not before now)."""
    iid = instance["InstanceId"]
    launched = epoch(instance.get("LaunchTime"))
    age = now - launched if launched is not None else None
    states = [s.get("State") for s in slots]
    claimed = sum(1 for s in states if s == "Claimed")
    info: dict[str, Any] = {"id": iid, "age": age, "slots": len(slots), "claimed": claimed, "idle_since": None,
                            "seen_idle_since": None}
    if not slots:
        if age is None:
            # No launch time: it cannot be shown to be late, so it is not declared lost.
            return {**info, "state": "booting", "reason": "not in the pool yet; launch time unknown"}
        if age >= spec.boot_timeout:
            if collector_young:
                why = f"not in the pool after {age:.0f}s, but the collector restarted less than {spec.boot_timeout:.0f}s ago"
                return {**info, "state": "booting", "reason": why}
            return {**info, "state": "lost", "reason": f"not in the pool {age:.0f}s after launch (boot-timeout {spec.boot_timeout:.0f}s)"}
        return {**info, "state": "booting", "reason": f"launched {age:.0f}s ago, not in the pool yet"}
    if "Drained" in states:
        if all(s.get("State") == "Drained" and s.get("Activity") == "Idle" for s in slots):
            return {**info, "state": "drained", "reason": "every slot drained and idle"}
        return {**info, "state": "draining", "reason": f"draining, {claimed} slot(s) still claimed" if claimed else "draining"}
    if claimed:
        return {**info, "state": "busy", "reason": f"{claimed} of {len(slots)} slot(s) claimed"}
    if running:
        # The slot ads lag (UPDATE_INTERVAL); the schedd knows its running jobs now.
        return {**info, "state": "busy", "reason": f"{running} job(s) running there by the schedd, whatever its slot ads say"}
    if all(s == "Unclaimed" for s in states):
        entered = [float(s["EnteredCurrentState"]) for s in slots if _is_number(s.get("EnteredCurrentState"))]
        # Without the attribute the idle time is unknown: count it from now (never drained early).
        by_ads = max(entered) if len(entered) == len(slots) else now
        # A partitionable slot stays Unclaimed while its dynamic slots run jobs, so its
        # EnteredCurrentState is its join time: the end of its last job is when its number of
        # dynamic slots last changed (NumDynamicSlotsTime, seen on HTCondor 23.9). Without this
        # a worker would look idle for its whole life and be drained as its last job ends.
        changed = [float(s["NumDynamicSlotsTime"]) for s in slots if s.get("PartitionableSlot") and _is_number(s.get("NumDynamicSlotsTime"))]
        by_ads = max([by_ads, *changed])
        # The ads are only a lower bound: the scaler must also have seen it idle all along.
        seen = min(now, observed_since) if observed_since is not None else now
        since = max(by_ads, seen)
        why = f"every slot unclaimed for {now - by_ads:.0f}s by its ads, seen idle in every cycle for {now - seen:.0f}s"
        return {**info, "state": "idle", "idle_since": since, "seen_idle_since": seen, "reason": why}
    odd = sorted({str(s) for s in states if s != "Unclaimed"})
    return {**info, "state": "other", "reason": f"slot state(s) {', '.join(odd)}: neither idle nor busy"}


def plan(snapshot: dict[str, Any], spec: ScaleSpec) -> dict[str, Any]:
    """The decisions for one snapshot (see the module's doc). Pure: reads nothing else."""
    snapshot = check_snapshot(snapshot)
    now = float(snapshot["now"])
    warnings: list[str] = []

    started = collector_started(snapshot.get("collector"))
    collector_young = started is not None and now - started < spec.boot_timeout

    by_instance: dict[str, list[dict[str, Any]]] = {}
    for slot in snapshot["slots"]:
        owner = slot.get(INSTANCE_ATTR)
        if isinstance(owner, str):
            by_instance.setdefault(owner, []).append(slot)

    farm = sorted(farm_instances(snapshot["instances"], spec.name), key=lambda i: str(i["InstanceId"]))
    running = running_by_startd(snapshot["jobs"])
    observed = snapshot.get(OBSERVED) or {}
    instances = []
    for inst in farm:
        slots = by_instance.get(inst["InstanceId"], [])
        seen = observed.get(inst["InstanceId"])
        instances.append(classify(inst, slots, now, spec, collector_young, running_on(slots, running) if slots else 0,
                                  float(seen) if seen is not None else None))

    # Waiting jobs: idle long enough, and small enough to ever run on one worker.
    waiting: list[dict[str, Any]] = []
    too_big = 0
    demand = 0
    for job in snapshot["jobs"]:
        if job.get("JobStatus") != 1:
            continue
        since = job.get("EnteredCurrentStatus") if _is_number(job.get("EnteredCurrentStatus")) else job.get("QDate")
        if not _is_number(since) or now - float(since) < spec.waiting_time:
            continue
        cpus = _number(job.get("RequestCpus"), 1)
        if cpus > spec.cpus_per_vm:
            too_big += 1
            continue
        waiting.append(job)
        demand += int(math.ceil(cpus))
    if too_big:
        warnings.append(f"{too_big} idle job(s) ask for more than cpus-per-vm ({spec.cpus_per_vm}) CPUs: no worker can ever run them, they are no demand")

    supply = 0
    for info in instances:
        if info["state"] == "booting":
            supply += spec.cpus_per_vm
        elif info["state"] not in ("lost", "draining", "drained"):
            for slot in by_instance.get(info["id"], []):
                if slot.get("State") == "Unclaimed":
                    supply += int(_number(slot.get("Cpus"), 0))
    active = sum(1 for i in instances if i["state"] not in ("lost", "draining", "drained"))
    count = len(waiting)
    over_threshold = count > spec.waiting_jobs_threshold

    decisions: list[dict[str, Any]] = []

    # Launch.
    wanted = math.ceil((demand - supply) / spec.cpus_per_vm) if over_threshold and demand > supply else 0
    launch = max(0, min(max(wanted, spec.min_vms - active), spec.max_vms - active))
    if launch:
        if wanted >= launch:
            why = f"{count} waiting job(s) need {demand} CPU(s), {supply} free or booting: {wanted} more worker(s) of {spec.cpus_per_vm} CPUs"
            if wanted > launch:
                why += f", capped at max-vms {spec.max_vms} ({active} active)"
        else:
            why = f"min-vms is {spec.min_vms}, {active} active"
        decisions.append({"action": "launch", "count": launch, "reason": why})
    elif wanted > 0:
        decisions.append({"action": "hold", "count": 0, "reason": f"{wanted} more worker(s) wanted but max-vms {spec.max_vms} reached ({active} active)"})

    # Drain: only while the queue is quiet; the longest idle first, never below min-vms.
    drain: list[str] = []
    if not over_threshold:
        candidates = [i for i in instances if i["state"] == "idle" and now - i["idle_since"] >= spec.idle_time]
        candidates.sort(key=lambda i: (i["idle_since"], i["id"]))
        room = max(0, active - spec.min_vms)
        for info in candidates[:room]:
            drain.append(info["id"])
            why = f"idle for {now - info['idle_since']:.0f}s (idle-time {spec.idle_time:.0f}s)"
            decisions.append({"action": "drain", "instance": info["id"], "reason": why})
        for info in candidates[room:]:
            info["reason"] += f"; kept for min-vms {spec.min_vms}"

    # Terminate: lost and drained instances, never one holding a claim.
    terminate: list[str] = []
    for info in instances:
        if info["state"] in ("lost", "drained") and info["claimed"] == 0:
            terminate.append(info["id"])
            decisions.append({"action": "terminate", "instance": info["id"], "reason": info["reason"]})

    by_state = {state: sum(1 for i in instances if i["state"] == state) for state in STATES}
    return {
        "now": now,
        "launch": launch,
        "drain": drain,
        "terminate": terminate,
        "waiting": count,
        "demand": demand,
        "supply": supply,
        "active": active,
        "states": by_state,
        "collector_started": started,
        "decisions": decisions,
        "instances": instances,
        "warnings": warnings,
        # Every worker seen idle in this cycle, since when: the next cycle's observed_idle_since.
        OBSERVED: {i["id"]: i["seen_idle_since"] for i in instances if i["state"] == "idle"},
    }
