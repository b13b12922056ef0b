#!/usr/bin/env python3
"""Issue 11 point 8: replay a bursty synthetic day through the scaler's planner (scaler/plan.py)
and through elastiq's original rule, on the same trace, with simulated boot times; and time the
planner on a snapshot of 10,000 jobs, 1,000 slots and 300 instances (target 50 ms).

The trace (seeded, `--seed`, default 8): 24 hours; a background of single-CPU jobs arriving as a
Poisson process (about 20 an hour), plus 8 bursts at random times, each 40-400 jobs submitted
within 5 minutes (the "a user submits a task" shape). Job run times are log-normal (median 20
minutes, capped at 4 hours). The simulation goes on after 24 h until the queue is empty.

The farm (the same for both policies): workers of 4 CPUs (4 one-CPU slots), at most 30, at least
0; waiting-time 40 s, waiting-jobs-threshold 0, idle-time 20 min, boot-timeout 600 s. The i-th
VM launched boots in B[i] seconds, drawn once from the seed (uniform 60-240 s; 3 % never join:
a "lost" VM), so both policies meet the same boot times in launch order. Every 15 s: jobs
finish, booted VMs join, the negotiator matches idle jobs to free slots in submit order, then
the policy decides.
- vfarm: `scaler.plan.plan(snapshot, spec)` on a snapshot of the simulated pool, in the shapes
  `condor_q -json`, `condor_status -json` and DescribeInstances print, with the since-when-seen-idle
  record of the previous cycle's plan (as the scaler's loop keeps it); a drained VM's slots show
  `Drained`/`Idle` the next cycle, when the plan terminates it.
- elastiq (../shared/anchors.md): every 15 s, waiting = idle jobs - booting VMs x 4; above the
  threshold for longer than 40 s -> launch ceil(waiting / 4) within the quota; every 45 s, a VM
  whose slots all stayed idle for 20 min is terminated at once (no drain), a VM not in the pool
  600 s after launch is terminated.
Reported: job wait (start - submit) median and 95th percentile, VM-hours (total, idle = joined
with no claimed slot, booting), launches, lost VMs terminated. Drawn: one SVG per policy and farm
size (benchmarks/figures/scale-day-<policy>-<max-vms>.svg beside the --output file, linked from
its section; benchmarks/_svgplot.py): the waiting jobs, the workers by state (busy, idle,
draining, booting, lost = not joined boot-timeout after launch) and the idle cores of joined
workers over the day, 2-minute means of the ticks, every figure on the same axes.

    benchmarks/scale_sim.py [--seed 8] [--planner-runs 15] [--figures DIR]
    benchmarks/scale_sim.py --smoke        # a 2-hour trace, a small planner snapshot
"""

from __future__ import annotations

import argparse
import math
import os
import random
import re
import shutil
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as common  # noqa: E402
import _svgplot as svgplot  # noqa: E402

NAME = "scale-sim"
TITLE = "Scaler simulation: vfarm's planner vs elastiq's rule on a bursty day (issue 11 point 8)"
FARM = "sim"
TICK = 15.0
CPUS = 4
START = 1_750_000_000.0  # an arbitrary epoch for the trace's t = 0
PLANNER_TARGET = 0.050
BIG_TARGET = 0.100  # 100,000 jobs, 10,000 slots, 3,000 instances
WORKER_STATES = ("busy", "idle", "draining", "booting", "lost")  # bottom to top in the figures
SAMPLED = ("time", "waiting", "idle cores", *WORKER_STATES)
BUCKET = 120.0  # seconds averaged into one point of a figure (about one pixel)
SECTION: dict[str, Any] = {"name": FARM, "max-vms": 30, "min-vms": 0, "cpus-per-vm": CPUS, "waiting-jobs-threshold": 0,
           "waiting-time": 40, "idle-time": 1200, "boot-timeout": 600}


@dataclass
class Job:
    id: int
    submit: float
    runtime: float
    start: Optional[float] = None
    vm: Optional[str] = None


@dataclass
class VM:
    id: str
    launched: float
    boot: Optional[float]  # None: never joins
    slots: list[Optional[int]] = field(default_factory=lambda: [None] * CPUS)  # job id per slot
    slot_since: list[float] = field(default_factory=lambda: [0.0] * CPUS)
    joined: bool = False
    draining: bool = False


def trace(seed: int, hours: float, bursts: int, background_per_hour: float) -> list[Job]:
    rng = random.Random(seed)
    span = hours * 3600
    times: list[float] = []
    t = 0.0
    while True:
        t += rng.expovariate(background_per_hour / 3600)
        if t >= span:
            break
        times.append(t)
    for _ in range(bursts):
        at = rng.uniform(0, span * 0.9)
        times += [at + rng.uniform(0, 300) for _ in range(rng.randint(40, 400))]
    times.sort()
    return [Job(i, s, min(4 * 3600.0, rng.lognormvariate(math.log(1200), 0.8))) for i, s in enumerate(times)]


def drain_attributes(draining: bool) -> dict[str, Any]:
    """What the startd of a worker the scaler drains advertises (HTCondor 23.9): condor_drain's -reason."""
    if not draining:
        return {}
    from vfarm.scaler.model import DRAIN_REASON_PREFIX  # imported where used, as the rest of vfarm here

    return {"Draining": True, "DrainReason": f"{DRAIN_REASON_PREFIX}idle"}


def boot_times(seed: int, count: int = 5000) -> list[Optional[float]]:
    rng = random.Random(seed * 7919 + 1)
    return [None if rng.random() < 0.03 else rng.uniform(60, 240) for _ in range(count)]


class Sim:
    """The pool, the queue and the cloud; a policy decides once per tick."""

    def __init__(self, jobs: Sequence[Job], boots: list[Optional[float]]):
        self.pending = [Job(j.id, j.submit, j.runtime) for j in jobs]  # not submitted yet, by submit time
        self.queue: list[Job] = []
        self.running: dict[int, Job] = {}
        self.done: list[Job] = []
        self.vms: dict[str, VM] = {}
        self.boots = boots
        self.launches = 0
        self.lost_terminated = 0
        self.vm_s = self.idle_s = self.boot_s = self.idle_core_s = self.core_s = 0.0
        self.peak_cores = 0  # the most CPUs of live workers (booting included) at one tick
        self.cpus = CPUS
        self.samples: dict[str, list[float]] = {name: [] for name in SAMPLED}

    def launch(self, now: float, count: int, kind: Optional[str] = None) -> None:
        for _ in range(count):
            vid = f"i-{self.launches:06d}"
            self.vms[vid] = VM(vid, now, self.boots[self.launches % len(self.boots)])
            self.launches += 1

    def terminate(self, vid: str) -> None:
        vm = self.vms.pop(vid)
        assert all(s is None for s in vm.slots), f"{vid} terminated with a running job"
        if not vm.joined:
            self.lost_terminated += 1

    def step(self, now: float) -> None:
        while self.pending and self.pending[0].submit <= now:
            self.queue.append(self.pending.pop(0))
        for job in [j for j in self.running.values() if j.start is not None and j.start + j.runtime <= now]:
            vm = self.vms[job.vm or ""]
            index = vm.slots.index(job.id)
            vm.slots[index] = None
            vm.slot_since[index] = job.start + job.runtime if job.start is not None else now
            del self.running[job.id]
            self.done.append(job)
        for vm in self.vms.values():
            if not vm.joined and vm.boot is not None and vm.launched + vm.boot <= now:
                vm.joined = True
                vm.slot_since = [vm.launched + vm.boot] * CPUS
        free = [(vm, i) for vm in sorted(self.vms.values(), key=lambda v: v.id) if vm.joined and not vm.draining
                for i, s in enumerate(vm.slots) if s is None]
        while self.queue and free:
            job = self.queue.pop(0)
            vm, index = free.pop(0)
            vm.slots[index] = job.id
            vm.slot_since[index] = now
            job.start, job.vm = now, vm.id
            self.running[job.id] = job

    def account(self, dt: float) -> None:
        for vm in self.vms.values():
            self.vm_s += dt
            if not vm.joined:
                self.boot_s += dt
                continue
            self.idle_core_s += dt * sum(1 for s in vm.slots if s is None)
            if all(s is None for s in vm.slots):
                self.idle_s += dt

    def sample(self, now: float) -> None:
        """Record the tick's picture: jobs waiting, workers per state, idle cores of joined workers."""
        counts = dict.fromkeys(WORKER_STATES, 0)
        idle_cores = 0
        for vm in self.vms.values():
            if not vm.joined:
                counts["lost" if now - vm.launched >= SECTION["boot-timeout"] else "booting"] += 1
                continue
            free = sum(1 for s in vm.slots if s is None)
            idle_cores += free
            counts["draining" if vm.draining else ("idle" if free == CPUS else "busy")] += 1
        values = {"time": now, "waiting": len(self.queue), "idle cores": idle_cores, **counts}
        for name in SAMPLED:
            self.samples[name].append(float(values[name]))

    def waits(self, cpus: Optional[int] = None) -> list[float]:
        """How long each finished job (of CPUS, if given) waited: start - submit, in seconds."""
        return [(j.start or 0) - j.submit for j in self.done if cpus is None or getattr(j, "cpus", 1) == cpus]

    def finished(self) -> bool:
        return not self.pending and not self.queue and not self.running

    def idle_since(self, vid: str) -> Optional[float]:
        """Since when every core of joined VM VID has been free (None: a job runs there)."""
        vm = self.vms[vid]
        return max(vm.slot_since) if all(s is None for s in vm.slots) else None

    def snapshot(self, now: float) -> dict[str, Any]:
        jobs: list[dict[str, Any]] = [{"ClusterId": j.id, "ProcId": 0, "JobStatus": 1, "QDate": START + j.submit, "EnteredCurrentStatus": START + j.submit,
                 "RequestCpus": 1} for j in self.queue]
        jobs += [{"ClusterId": j.id, "ProcId": 0, "JobStatus": 2, "QDate": START + j.submit, "EnteredCurrentStatus": START + (j.start or 0),
                  "RequestCpus": 1, "RemoteHost": f"slot{self.vms[j.vm or ''].slots.index(j.id) + 1}@{j.vm}"} for j in self.running.values()]
        slots: list[dict[str, Any]] = []
        instances: list[dict[str, Any]] = []
        for vm in self.vms.values():
            instances.append({"InstanceId": vm.id, "State": {"Name": "running"}, "LaunchTime": START + vm.launched,
                              "Tags": [{"Key": "vfarm:farm", "Value": FARM}]})
            if not vm.joined:
                continue
            for i, job in enumerate(vm.slots):
                state = "Claimed" if job is not None else ("Drained" if vm.draining else "Unclaimed")
                activity = ("Retiring" if vm.draining else "Busy") if job is not None else "Idle"
                slots.append({"Name": f"slot{i + 1}@{vm.id}", "VfarmInstanceId": vm.id, "State": state, "Activity": activity, "Cpus": 1,
                              "EnteredCurrentState": START + vm.slot_since[i], **drain_attributes(vm.draining)})
        return {"now": START + now, "jobs": jobs, "slots": slots, "instances": instances}


MIXED_CPUS = 8
MIXED_MEMORY = 32768  # MB per worker
MIXED_SECTION: dict[str, Any] = {"name": FARM, "max-vms": 30, "min-vms": 0, "waiting-jobs-threshold": 0, "waiting-time": 40,
                                 "idle-time": 1200, "boot-timeout": 600,
                                 "types": [{"name": "w8", "cpus": MIXED_CPUS, "memory": MIXED_MEMORY}]}


# A farm of several worker types (issue 21 point 2), the same 4 GB per CPU as MIXED_SECTION's one
# type: the planner fits each job onto the type with least waste, ties to the first listed, so
# small jobs go to small workers.
MIXED_TYPES: list[dict[str, Any]] = [{"name": f"w{c}", "cpus": c, "memory": c * MIXED_MEMORY // MIXED_CPUS} for c in (1, 2, 4, 8)]
MIXED_MAX_VMS = (30, 100, 400)  # 400: more than any policy here ever uses (no cap binds)


@dataclass
class MixedJob(Job):
    cpus: int = 1
    memory: int = 2048


@dataclass
class MixedVM:
    """A worker of MIXED_CPUS cores with one partitionable slot (HTCondor's default on a worker)."""

    id: str
    launched: float
    boot: Optional[float]
    jobs: dict[int, MixedJob] = field(default_factory=dict)
    changed: float = 0.0  # when its number of jobs last changed (NumDynamicSlotsTime)
    joined: bool = False
    draining: bool = False
    kind: str = "w8"  # its worker type
    cpus: int = MIXED_CPUS
    memory: int = MIXED_MEMORY
    ran_a_job: bool = False

    @property
    def free_cpus(self) -> int:
        return self.cpus - sum(j.cpus for j in self.jobs.values())

    @property
    def free_memory(self) -> int:
        return self.memory - sum(j.memory for j in self.jobs.values())


def mixed_trace(seed: int, hours: float, bursts: int, background_per_hour: float) -> list[MixedJob]:
    """The day's arrival times and run times, each job asking for 1, 2, 4 or 8 CPUs (half of them
    one) and 1-3 GB of memory per CPU; a burst is one user's task: all its jobs the same shape."""
    rng = random.Random(seed * 31 + 5)
    jobs = []
    for job in trace(seed, hours, bursts, background_per_hour):
        cpus, per_cpu = rng.choice((1, 1, 1, 1, 1, 2, 2, 4, 4, 8)), rng.uniform(1024, 3072)
        jobs.append(MixedJob(job.id, job.submit, job.runtime, cpus=cpus, memory=min(MIXED_MEMORY, int(cpus * per_cpu))))
    # Bursts: consecutive jobs submitted within 5 minutes of each other share their first job's shape.
    for before, job in zip(jobs, jobs[1:]):
        if job.submit - before.submit < 5:
            job.cpus, job.memory = before.cpus, before.memory
    return jobs


class MixedSim(Sim):
    """The pool with partitionable slots: a job takes the CPUs and memory it asks for; the
    negotiator takes jobs in submit order, each onto the worker with the fewest free CPUs that
    holds it (HTCondor's default NEGOTIATOR_PRE_JOB_RANK prefers the slot with the fewest Cpus,
    then Memory), skipping jobs that fit nowhere for now."""

    def __init__(self, jobs: Sequence[Job], boots: list[Optional[float]], types: Optional[list[dict[str, Any]]] = None):
        super().__init__([], boots)
        self.pending = [MixedJob(j.id, j.submit, j.runtime, cpus=getattr(j, "cpus", 1), memory=getattr(j, "memory", 2048)) for j in jobs]
        self.vms: dict[str, MixedVM] = {}  # type: ignore[assignment]
        self.cpus = MIXED_CPUS
        self.types = {t["name"]: t for t in types or MIXED_SECTION["types"]}
        self.core_quota: Optional[int] = None  # the cloud's quota in cores: a launch beyond it starts only what fits
        self.waiting_idle_core_s = 0.0  # idle cores of joined workers while jobs waited
        self.stranded_core_s = 0.0  # of those: cores of idle workers too small for the largest waiting job
        # Idle cores of joined workers, by kind: beside running jobs, of idle workers that ran a job
        # (their idle-time tails), of idle workers that never ran one (launched for jobs placed elsewhere).
        self.beside_jobs_core_s = self.tail_core_s = self.never_used_core_s = 0.0

    def launch(self, now: float, count: int, kind: Optional[str] = None) -> None:
        shape = self.types[kind] if kind in self.types else next(iter(self.types.values()))
        if self.core_quota is not None:
            count = max(0, min(count, (self.core_quota - sum(vm.cpus for vm in self.vms.values())) // shape["cpus"]))
        for _ in range(count):
            vid = f"i-{self.launches:06d}"
            self.vms[vid] = MixedVM(vid, now, self.boots[self.launches % len(self.boots)], kind=shape["name"], cpus=shape["cpus"],
                                    memory=shape["memory"])
            self.launches += 1

    def terminate(self, vid: str) -> None:
        vm = self.vms.pop(vid)
        assert not vm.jobs, f"{vid} terminated with a running job"
        if not vm.joined:
            self.lost_terminated += 1

    def step(self, now: float) -> None:
        while self.pending and self.pending[0].submit <= now:
            self.queue.append(self.pending.pop(0))
        for job in [j for j in self.running.values() if j.start is not None and j.start + j.runtime <= now]:
            vm = self.vms[job.vm or ""]
            del vm.jobs[job.id]
            vm.changed = job.start + job.runtime if job.start is not None else now
            del self.running[job.id]
            self.done.append(job)
        for vm in self.vms.values():
            if not vm.joined and vm.boot is not None and vm.launched + vm.boot <= now:
                vm.joined, vm.changed = True, vm.launched + vm.boot
        open_vms = [vm for vm in self.vms.values() if vm.joined and not vm.draining]
        waiting = []
        for job in self.queue:
            fits = [vm for vm in open_vms if vm.free_cpus >= job.cpus and vm.free_memory >= job.memory]  # type: ignore[attr-defined]
            if not fits:
                waiting.append(job)
                continue
            vm = min(fits, key=lambda v: (v.free_cpus, v.free_memory, v.id))
            vm.jobs[job.id] = job  # type: ignore[assignment]
            vm.changed, vm.ran_a_job = now, True
            job.start, job.vm = now, vm.id
            self.running[job.id] = job
        self.queue = waiting

    def account(self, dt: float) -> None:
        self.peak_cores = max(self.peak_cores, sum(vm.cpus for vm in self.vms.values()))
        largest = max((j.cpus for j in self.queue), default=0)  # type: ignore[attr-defined]
        for vm in self.vms.values():
            if largest and vm.joined and not vm.draining:
                self.waiting_idle_core_s += dt * vm.free_cpus
                if not vm.jobs and vm.cpus < largest:
                    self.stranded_core_s += dt * vm.cpus
            self.vm_s += dt
            self.core_s += dt * vm.cpus
            if not vm.joined:
                self.boot_s += dt
                continue
            self.idle_core_s += dt * vm.free_cpus
            if vm.jobs:
                self.beside_jobs_core_s += dt * vm.free_cpus
            else:
                self.idle_s += dt
                if vm.ran_a_job:
                    self.tail_core_s += dt * vm.cpus
                else:
                    self.never_used_core_s += dt * vm.cpus

    def sample(self, now: float) -> None:
        counts = dict.fromkeys(WORKER_STATES, 0)
        idle_cores = 0
        for vm in self.vms.values():
            if not vm.joined:
                counts["lost" if now - vm.launched >= MIXED_SECTION["boot-timeout"] else "booting"] += 1
                continue
            idle_cores += vm.free_cpus
            counts["draining" if vm.draining else ("idle" if not vm.jobs else "busy")] += 1
        values = {"time": now, "waiting": len(self.queue), "idle cores": idle_cores, **counts}
        for name in SAMPLED:
            self.samples[name].append(float(values[name]))

    def idle_since(self, vid: str) -> Optional[float]:
        vm = self.vms[vid]
        return None if vm.jobs else vm.changed

    def snapshot(self, now: float) -> dict[str, Any]:
        def ad(job: Job, status: int) -> dict[str, Any]:
            data = {"ClusterId": job.id, "ProcId": 0, "JobStatus": status, "QDate": START + job.submit, "RequestCpus": job.cpus,  # type: ignore[attr-defined]
                    "RequestMemory": job.memory, "EnteredCurrentStatus": START + (job.start if status == 2 and job.start else job.submit)}  # type: ignore[attr-defined]
            if status == 2:
                data["RemoteHost"] = f"slot1_{job.id}@{job.vm}"
            return data

        jobs = [ad(j, 1) for j in self.queue] + [ad(j, 2) for j in self.running.values()]
        slots: list[dict[str, Any]] = []
        instances: list[dict[str, Any]] = []
        for vm in self.vms.values():
            instances.append({"InstanceId": vm.id, "State": {"Name": "running"}, "LaunchTime": START + vm.launched,
                              "Tags": [{"Key": "vfarm:farm", "Value": FARM}, {"Key": "vfarm:type", "Value": vm.kind}]})
            if not vm.joined:
                continue
            slots.append({"Name": f"slot1@{vm.id}", "VfarmInstanceId": vm.id, "State": "Drained" if vm.draining else "Unclaimed",
                          "Activity": "Retiring" if vm.draining and vm.jobs else "Idle", "Cpus": vm.free_cpus, "Memory": vm.free_memory,
                          "PartitionableSlot": True, "EnteredCurrentState": START + (vm.launched + (vm.boot or 0)),
                          "NumDynamicSlotsTime": START + vm.changed, **drain_attributes(vm.draining)})
            slots += [{"Name": f"slot1_{j.id}@{vm.id}", "VfarmInstanceId": vm.id, "State": "Claimed", "Activity": "Retiring" if vm.draining else "Busy",
                       "Cpus": j.cpus, "Memory": j.memory, "DynamicSlot": True, "EnteredCurrentState": START + (j.start or 0)} for j in vm.jobs.values()]
        return {"now": START + now, "jobs": jobs, "slots": slots, "instances": instances}


class VfarmPolicy:
    name = "vfarm (scaler/plan.py)"
    slug = "vfarm"

    def __init__(self, section: Optional[dict[str, Any]] = None, name: str = "", slug: str = "") -> None:
        from vfarm.config import scale as spec

        self.name, self.slug = name or self.name, slug or self.slug
        self.section = section or SECTION
        self.spec = spec.parse(self.section)
        self.plan_seconds: list[float] = []
        self.core_quota: Optional[int] = None  # the mixed trace: the cloud's quota in cores (vfarm does not know it)
        self.observed_idle_since: dict[str, float] = {}  # carried from cycle to cycle, as the scaler's loop does
        self.consolidating: list[str] = []

    def decide(self, sim: Sim, now: float) -> None:
        from vfarm.scaler import plan

        snap = sim.snapshot(now)
        snap[plan.OBSERVED] = self.observed_idle_since
        snap[plan.CONSOLIDATING] = self.consolidating
        t = time.perf_counter()
        decided = plan.plan(snap, self.spec)
        self.plan_seconds.append(time.perf_counter() - t)
        self.observed_idle_since = dict(decided.observed_idle_since)
        self.consolidating = list(decided.consolidating)
        for vid in decided.terminate:
            sim.terminate(vid)
        for vid in decided.drain:
            sim.vms[vid].draining = True
        for launch in decided.of(plan.Action.LAUNCH):
            sim.launch(now, launch.count, launch.type)


class ElastiqPolicy:
    name = "elastiq's rule"
    slug = "elastiq"

    def __init__(self, section: Optional[dict[str, Any]] = None) -> None:
        self.section = section or SECTION
        self.over_since: Optional[float] = None
        self.last_vm_check = -math.inf

    def queued(self, sim: Sim) -> int:
        """What the rule counts as waiting: idle jobs (elastiq's jobs were single-core)."""
        return len(sim.queue)

    def decide(self, sim: Sim, now: float) -> None:
        cfg = self.section
        booting = [vm for vm in sim.vms.values() if not vm.joined]
        waiting = self.queued(sim) - len(booting) * sim.cpus
        if waiting > cfg["waiting-jobs-threshold"]:
            if self.over_since is None:
                self.over_since = now
            elif now - self.over_since >= cfg["waiting-time"]:
                room = cfg["max-vms"] - len(sim.vms)
                sim.launch(now, max(0, min(room, math.ceil(waiting / sim.cpus))))
                self.over_since = None
        else:
            self.over_since = None
        if now - self.last_vm_check >= 45:
            self.last_vm_check = now
            for vm in sorted(sim.vms.values(), key=lambda v: v.id):
                if len(sim.vms) <= cfg["min-vms"]:
                    break
                idle_since = sim.idle_since(vm.id) if vm.joined else None
                if idle_since is not None and now - idle_since >= cfg["idle-time"]:
                    sim.terminate(vm.id)
                elif not vm.joined and now - vm.launched >= cfg["boot-timeout"]:
                    sim.terminate(vm.id)


class ElastiqCpusPolicy(ElastiqPolicy):
    """elastiq's rule counting the CPUs the idle jobs ask for instead of the jobs: the same rule
    without its undercount of multi-core jobs (one 8-CPU worker per 8 waiting 8-CPU jobs)."""

    name = "elastiq's rule counting CPUs"
    slug = "elastiq-cpus"

    def queued(self, sim: Sim) -> int:
        return sum(getattr(job, "cpus", 1) for job in sim.queue)


def simulate(policy: Any, jobs: Sequence[Job], boots: list[Optional[float]], limit_hours: float, kind: type[Sim] = Sim) -> Sim:
    types = getattr(policy, "section", None) or {}
    sim = MixedSim(jobs, boots, types.get("types")) if kind is MixedSim else kind(jobs, boots)
    if isinstance(sim, MixedSim):
        sim.core_quota = getattr(policy, "core_quota", None)
    now = 0.0
    while now <= limit_hours * 3600:
        sim.step(now)
        policy.decide(sim, now)
        sim.sample(now)
        if sim.finished() and not sim.vms:
            break
        sim.account(TICK)
        now += TICK
    if isinstance(sim, MixedSim):  # its split of the idle core-hours adds up to them
        split = sim.tail_core_s + sim.never_used_core_s + sim.beside_jobs_core_s
        assert abs(split - sim.idle_core_s) <= 1e-6 * max(1.0, sim.idle_core_s), (split, sim.idle_core_s)
    return sim


def planner_snapshot(jobs: int, instances: int, slots: int, seed: int = 1) -> dict[str, Any]:
    """A big snapshot: JOBS jobs (80 % idle) submitted as clusters of 1-1,000 jobs (each cluster
    one submit second and one request, as condor_submit gives them), INSTANCES farm instances (10 %
    booting), SLOTS slots spread over the joined ones, a mix of claimed/unclaimed/drained, plus
    foreign instances. Every job ad is listed (the shape before idle jobs were read as groups)."""
    rng = random.Random(seed)
    now = START + 86400
    insts = [{"InstanceId": f"i-{i:08x}", "State": {"Name": "running"},
              "LaunchTime": time.strftime("%Y-%m-%dT%H:%M:%S+00:00", time.gmtime(now - rng.uniform(0, 86400))),
              "Tags": [{"Key": "vfarm:farm", "Value": FARM}, {"Key": "Name", "Value": f"w{i}"}]} for i in range(instances)]
    insts += [{"InstanceId": f"i-f{i:07x}", "State": {"Name": "running"}, "Tags": [{"Key": "vfarm:farm", "Value": "other"}]} for i in range(instances // 10)]
    joined = [inst["InstanceId"] for inst in insts[: instances - instances // 10]]
    snap_jobs: list[dict[str, Any]] = []
    cluster = 0
    while len(snap_jobs) < jobs:
        cluster += 1
        queued, cpus = int(now - rng.uniform(0, 7200)), rng.choice((1, 1, 1, 2, 8))
        for proc in range(min(rng.randint(1, 1000), jobs - len(snap_jobs))):
            ad: dict[str, Any] = {"ClusterId": cluster, "ProcId": proc, "JobStatus": 1, "QDate": queued, "EnteredCurrentStatus": queued,
                                  "RequestCpus": cpus}
            if rng.random() >= 0.8:
                ad.update(JobStatus=2, EnteredCurrentStatus=int(rng.uniform(queued, now)),
                          RemoteHost=f"slot1_{proc}@{joined[rng.randrange(len(joined))]}")
            snap_jobs.append(ad)
    snap_slots = []
    for n in range(slots):
        owner = joined[n % len(joined)]
        state = rng.choice(("Claimed", "Claimed", "Unclaimed", "Drained"))
        snap_slots.append({"Name": f"slot{n}@{owner}", "VfarmInstanceId": owner, "State": state, "Activity": "Busy" if state == "Claimed" else "Idle",
                           "Cpus": rng.choice((1, 2, 4)), "EnteredCurrentState": now - rng.uniform(0, 7200)})
    return {"now": now, "jobs": snap_jobs, "slots": snap_slots, "instances": insts,
            "collector": {"MyCurrentTime": now, "MonitorSelfAge": 86400}}


GROUP_KEYS = ("JobStatus", "QDate", "EnteredCurrentStatus", "RequestCpus", "RequestMemory", "RequestGPUs", "Requirements")


def grouped(snapshot: dict[str, Any]) -> dict[str, Any]:
    """SNAPSHOT as discover reads it: running jobs one by one, idle ones grouped as the schedd's
    group-by query returns them (one ad per set of jobs equal in GROUP_KEYS, with JobCount and JobIds)."""
    jobs = [j for j in snapshot["jobs"] if j["JobStatus"] != 1]
    groups: dict[tuple[Any, ...], list[dict[str, Any]]] = {}
    for j in snapshot["jobs"]:
        if j["JobStatus"] == 1:
            groups.setdefault(tuple(j.get(k) for k in GROUP_KEYS), []).append(j)
    for members in groups.values():
        first, last = members[0], members[-1]
        jobs.append({**{k: first[k] for k in GROUP_KEYS if k in first}, "JobCount": len(members),
                     "JobIds": f"{first['ClusterId']}.{first['ProcId']} ... {last['ClusterId']}.{last['ProcId']}"})
    return {**snapshot, "jobs": jobs}


def run(args: argparse.Namespace, section: common.Section) -> None:
    from vfarm.config import scale as spec
    from vfarm.scaler import plan

    hours, bursts = (2.0, 2) if args.smoke else (24.0, 8)
    jobs = trace(args.seed, hours, bursts, 20)
    boots = boot_times(args.seed)
    rows: list[list[object]] = []
    per_cycle: list[float] = []
    runs: list[Run] = []
    for max_vms in args.max_vms or [30, 100]:
        SECTION["max-vms"] = max_vms
        vfarm_policy = VfarmPolicy()
        for policy in (vfarm_policy, ElastiqPolicy()):
            sim = simulate(policy, jobs, boots, hours + 12)
            waits = sim.waits()
            summary = (f"job wait median {common.median(waits) / 60:.1f} min, p95 {common.percentile(waits, 95) / 60:.1f} min; "
                       f"{sim.vm_s / 3600:.0f} VM-hours ({sim.idle_s / 3600:.0f} idle); {sim.launches} launches")
            runs.append(Run(max_vms, policy.name, policy.slug, summary, sim.samples))
            rows.append([max_vms, policy.name, f"{len(sim.done)}/{len(jobs)}", f"{common.median(waits) / 60:.1f} min",
                         f"{common.percentile(waits, 95) / 60:.1f} min", f"{sim.vm_s / 3600:.1f}", f"{sim.idle_s / 3600:.1f}",
                         f"{sim.boot_s / 3600:.1f}", sim.launches, sim.lost_terminated])
        per_cycle += vfarm_policy.plan_seconds
    farm = {k: v for k, v in SECTION.items() if k != "max-vms"}
    section.add(f"Trace: seed {args.seed}, {hours:g} h, {len(jobs)} jobs ({bursts} bursts + background), total work "
                f"{sum(j.runtime for j in jobs) / 3600:.0f} CPU-hours; farm: {farm}, max-vms as in the first column.\n")
    section.add(common.table(["max-vms", "policy", "jobs done", "wait median", "wait p95", "VM-hours", "idle VM-hours", "booting VM-hours",
                              "launches", "lost VMs terminated"], rows))
    section.add(f"vfarm's planner during the replay: {len(per_cycle)} cycles, median {common.fmt_ms(common.median(per_cycle))}, "
                f"max {common.fmt_ms(max(per_cycle))}.\n")
    figures = args.figures or args.output.resolve().parent / "benchmarks" / "figures"
    section.add(figure_table(draw(runs, args.seed, figures), args.output.resolve().parent))
    section.add(SIM_NOTE)
    run_mixed(args, section, hours, bursts)

    # The planner on big snapshots.
    every = [(1000, 30, 100, PLANNER_TARGET)] if args.smoke else [(10_000, 300, 1_000, PLANNER_TARGET), (100_000, 3_000, 10_000, BIG_TARGET)]
    rows = []
    for jobs_n, instances_n, slots_n, target in every:
        listed = planner_snapshot(jobs_n, instances_n, slots_n)
        shapes = {"as discover reads it (idle jobs grouped)": grouped(listed), "every job one by one": listed}
        scale_spec = spec.parse({**SECTION, "max-vms": 4 * instances_n})
        times: dict[str, list[float]] = {name: [] for name in shapes}
        decided: dict[str, Any] = {}
        for snap in shapes.values():
            plan.plan(snap, scale_spec)
        for _ in range(3 if args.smoke else args.planner_runs):
            for name, snap in shapes.items():  # interleaved: load drift hits both alike
                t = time.perf_counter()
                decided[name] = plan.plan(snap, scale_spec)
                times[name].append(time.perf_counter() - t)
        for name, snap in shapes.items():
            med, r = common.median(times[name]), decided[name]
            rows.append([f"{jobs_n:,} / {slots_n:,} / {instances_n:,} (+{instances_n // 10})", name, f"{len(snap['jobs']):,}",
                         f"{common.fmt_ms(med)} (min {common.fmt_ms(min(times[name]))}, max {common.fmt_ms(max(times[name]))})",
                         f"{common.fmt_ms(target)}: {'met' if med <= target else 'MISSED'}",
                         f"launch {r.launch}, drain {len(r.drain)}, terminate {len(r.terminate)}, {r.waiting:,} waiting"])
    section.add(f"\n**Planner on one snapshot** (jobs / slots / farm instances (+ foreign); {3 if args.smoke else args.planner_runs} "
                f"interleaved runs of each shape; the jobs come in clusters of 1-1,000, 80 % idle, each cluster one submit second "
                f"and one request):\n")
    section.add(common.table(["jobs / slots / instances", "snapshot", "job entries", "plan() median", "target", "it decided"], rows))
    if not args.smoke:
        section.add(PLANNER_NOTE)
    if not args.smoke and not args.no_pool:
        try:
            pool_cycle(args, section)
        except Exception as err:  # noqa: BLE001 - the simulation's figures are kept; the failure is written down
            section.add(f"\nThe whole cycle against a real pool FAILED: {' '.join(str(err).split())[:500]}\n")
    elif not args.smoke:
        kept = kept_pool_part(args.output)
        if kept:
            section.add(kept)


POOL_HEADING = "**One whole cycle against a real pool**"


def kept_pool_part(output: Path) -> str:
    """The real-pool part of the scale-sim section OUTPUT holds (a --no-pool run does not measure it),
    with the time of the run that did; empty when there is none."""
    try:
        text = output.read_text(encoding="utf-8")
    except OSError:
        return ""
    found = common.section_pattern(NAME).search(text)
    if not found or POOL_HEADING not in found.group(1):
        return ""
    body = found.group(1)
    measured = re.search(r"^Run: ([^,]+),", body, re.M)
    when = re.search(r"^\(the real-pool part below: kept from the run of ([^,)]+)", body, re.M)
    run_at = when.group(1) if when else (measured.group(1) if measured else "an earlier run")
    part = body[body.index(POOL_HEADING):].strip("\n")
    return (f"\n(the real-pool part below: kept from the run of {run_at}, unchanged; this run skipped it, `--no-pool`)\n\n"
            + part + "\n")


def run_mixed(args: argparse.Namespace, section: common.Section, hours: float, bursts: int) -> None:
    """The mixed trace: vfarm with consolidation (the defaults), vfarm without it, elastiq's rule."""
    jobs = mixed_trace(args.seed, hours, bursts, 20)
    boots = boot_times(args.seed)
    rows: list[list[object]] = []
    for max_vms in args.max_vms or ([30] if args.smoke else MIXED_MAX_VMS):
        farm = {**MIXED_SECTION, "max-vms": max_vms}
        policies: list[VfarmPolicy | ElastiqPolicy] = [VfarmPolicy(farm, "vfarm, consolidation (defaults)", "vfarm"),
                    VfarmPolicy({**farm, "disruption-budget": 5}, "vfarm, consolidation, disruption-budget 5", "vfarm-5"),
                    VfarmPolicy({**farm, "disruption-budget": 0}, "vfarm, no consolidation", "vfarm-off"),
                    VfarmPolicy({**farm, "types": MIXED_TYPES}, "vfarm, types of 1/2/4/8 CPUs (defaults)", "vfarm-types")]
        if max_vms < MIXED_MAX_VMS[-1]:
            # The same cores as elastiq's max-vms x 8, as a site's quota in cores would give: the cloud starts no
            # worker beyond it; vfarm's max-vms is then no limit (400).
            quota = VfarmPolicy({**farm, "max-vms": MIXED_MAX_VMS[-1], "types": MIXED_TYPES},
                                f"vfarm, types of 1/2/4/8 CPUs, max-vms {MIXED_MAX_VMS[-1]}, a cloud quota of {max_vms * MIXED_CPUS} cores",
                                "vfarm-quota")
            quota.core_quota = max_vms * MIXED_CPUS
            policies.append(quota)
            # The same quota, and the planner told of it (max-cpus): it plans nothing the cloud would refuse, and
            # drains idle workers of other types to make room for the held-back ones.
            known = VfarmPolicy({**farm, "max-vms": MIXED_MAX_VMS[-1], "max-cpus": max_vms * MIXED_CPUS, "types": MIXED_TYPES},
                                f"vfarm, types of 1/2/4/8 CPUs, max-vms {MIXED_MAX_VMS[-1]}, max-cpus {max_vms * MIXED_CPUS} "
                                f"= a cloud quota of {max_vms * MIXED_CPUS} cores", "vfarm-max-cpus")
            known.core_quota = max_vms * MIXED_CPUS
            policies.append(known)
        policies.append(ElastiqPolicy(farm))
        figures: dict[str, tuple[float, float]] = {}
        for policy in policies:
            sim = simulate(policy, jobs, boots, hours + 12, MixedSim)
            assert isinstance(sim, MixedSim)
            waits = sim.waits()
            p95 = common.percentile(waits, 95)
            figures[policy.slug] = (sim.idle_core_s, p95)
            by_cpus = "/".join(f"{common.percentile(sim.waits(c), 95) / 60:.0f}" for c in (1, 2, 4, 8))
            rows.append([max_vms, policy.name, f"{len(sim.done)}/{len(jobs)}", f"{common.median(waits) / 60:.1f} min", f"{p95 / 60:.1f} min",
                         by_cpus, f"{sim.vm_s / 3600:.1f}", f"{sim.core_s / 3600:.0f}", sim.peak_cores, f"{sim.idle_core_s / 3600:.0f}",
                         f"{sim.waiting_idle_core_s / 3600:.0f} ({sim.stranded_core_s / 3600:.0f})", sim.launches])
        elastiq_idle, elastiq_p95 = figures["elastiq"]
        for row, slug in zip(rows[-len(policies):], [p.slug for p in policies]):
            idle, p95 = figures[slug]
            row.append(f"{idle / elastiq_idle:.2f}; p95 {'<=' if p95 <= elastiq_p95 else '>'} elastiq's" if slug != "elastiq" else "1")
    work = sum(j.runtime * j.cpus for j in jobs) / 3600
    shapes = {c: sum(1 for j in jobs if j.cpus == c) for c in (1, 2, 4, 8)}
    section.add(f"\n**Mixed trace** (the same arrival and run times; jobs of 1/2/4/8 CPUs: {shapes}, 1-3 GB of memory per CPU, "
                f"each burst one shape; {work:.0f} core-hours of work). Workers of {MIXED_CPUS} CPUs and {MIXED_MEMORY // 1024} GB, "
                f"one partitionable slot; the negotiator puts each job on the worker with the fewest free CPUs that holds it "
                f"(HTCondor's default rank). Farm: {({k: v for k, v in MIXED_SECTION.items() if k != 'max-vms'})}; "
                f"consolidation at its defaults (consolidate-idle-cpus = {MIXED_CPUS}, disruption-budget 1). The types row: "
                f"`types` {[{k: v for k, v in t.items()} for t in MIXED_TYPES]} instead (4 GB per CPU each, as the one type), "
                f"consolidate-idle-cpus then 8 (the largest type). Peak cores: the most CPUs of live workers (booting included) "
                f"at one tick. Idle core-hours while jobs waited: the idle cores of joined workers (not draining) at the "
                f"ticks when some job waited; in brackets, the cores of idle workers too small for the largest waiting job "
                f"(capacity a farm of one 8-CPU type never strands). Target: idle core-hours <= 0.7 x elastiq's rule at an "
                f"equal or lower p95 wait.\n")
    section.add(common.table(["max-vms", "policy", "jobs done", "wait median", "wait p95", "p95 of 1/2/4/8-CPU jobs (min)", "VM-hours",
                              "core-hours", "peak cores", "idle core-hours", "of them while jobs waited (idle workers too small for the "
                              "largest waiting job)", "launches", "idle core-hours / elastiq's"], rows))
    section.add(MIXED_NOTE)
    mixed_seeds(args, section, hours, bursts)


def mixed_seeds(args: argparse.Namespace, section: common.Section, hours: float, bursts: int) -> None:
    """The no-cap row of the mixed trace on other seeds' traces: how much the target's verdict owes to one draw."""
    max_vms = MIXED_MAX_VMS[-1]
    farm = {**MIXED_SECTION, "max-vms": max_vms}
    rows: list[list[object]] = []
    met = 0
    seeds = range(1, 1 + (2 if args.smoke else args.mixed_seeds))
    for seed in seeds:
        jobs = mixed_trace(seed, hours, bursts, 20)
        boots = boot_times(seed)
        figures: dict[str, tuple[float, float]] = {}
        parts: dict[str, str] = {}
        for policy in (ElastiqPolicy(farm), ElastiqCpusPolicy(farm), VfarmPolicy({**farm, "types": MIXED_TYPES}, slug="vfarm-types")):
            sim = simulate(policy, jobs, boots, hours + 12, MixedSim)
            assert isinstance(sim, MixedSim)
            figures[policy.slug] = (sim.idle_core_s / 3600, common.percentile(sim.waits(), 95) / 60)
            parts[policy.slug] = (f"{sim.tail_core_s / 3600:.0f} + {sim.never_used_core_s / 3600:.0f} + "
                                  f"{sim.beside_jobs_core_s / 3600:.0f} ({sim.launches} launched)")
        (e_idle, e_p95), (c_idle, c_p95), (v_idle, v_p95) = figures["elastiq"], figures["elastiq-cpus"], figures["vfarm-types"]
        ok = v_idle <= 0.7 * e_idle and v_p95 <= e_p95
        met += ok
        shares = "/".join(f"{100 * sum(1 for j in jobs if j.cpus == c) / len(jobs):.0f}" for c in (1, 2, 4, 8))
        rows.append([f"{seed}{' (the table above)' if seed == args.seed else ''}", len(jobs), shares,
                     f"{e_idle:.0f}, {e_p95:.1f} min", f"{c_idle:.0f}, {c_p95:.1f} min", f"{v_idle:.0f}, {v_p95:.1f} min",
                     f"{v_idle / e_idle:.2f}: {'met' if ok else 'missed'}", f"{v_idle / c_idle:.2f}", parts["elastiq"], parts["vfarm-types"]])
    section.add(f"\n**The no-cap row on other traces** (seeds {seeds.start}-{seeds.stop - 1} of the same generator, {hours:g} h, "
                f"{bursts} bursts; max-vms {max_vms}; idle core-hours and p95 wait of each policy). \"elastiq's rule counting "
                f"CPUs\" is the same rule launching one 8-CPU worker per 8 waiting CPUs instead of per 8 waiting jobs. The idle "
                f"core-hours split three ways: idle workers that ran a job (the idle-time tail after their last one), idle workers "
                f"that never ran one (launched for jobs that were placed elsewhere), and free cores of workers running jobs. Target "
                f"met on {met} of {len(seeds)} traces.\n")
    section.add(common.table(["seed", "jobs", "1/2/4/8-CPU jobs (%)", "elastiq's rule", "elastiq's rule counting CPUs",
                              "vfarm, types of 1/2/4/8 CPUs", "vfarm / elastiq's (target <= 0.7, p95 <=)", "vfarm / elastiq counting CPUs",
                              "elastiq's idle core-hours: tails + never used + beside jobs", "vfarm's: tails + never used + beside jobs"], rows))
    if not args.smoke:
        section.add(SEEDS_NOTE)


POOL_TARGET = 5.0
HOLLOW_BATCH = 1000  # ads per condor_advertise call


def hollow_ads(slots: int, instances: int, now: float, seed: int = 3) -> str:
    """SLOTS slot ads of INSTANCES farm workers (partitionable slots and their dynamic slots, as a
    busy farm shows), in the format condor_advertise -multiple reads. Start is false: no job ever
    matches them, and the negotiator never tries to claim what is not there."""
    rng = random.Random(seed)
    ads = []
    for n in range(slots):
        owner = f"i-{n % instances:08x}"
        dynamic = n >= instances  # one partitionable slot per worker, the rest its dynamic slots
        name = f"slot1_{n // instances}@hollow-{owner}" if dynamic else f"slot1@hollow-{owner}"
        state = "Claimed" if dynamic else "Unclaimed"
        ad = {"MyType": '"Machine"', "TargetType": '"Job"', "Name": f'"{name}"', "Machine": f'"hollow-{owner}"',
              "MyAddress": '"<127.0.0.1:9>"', "StartdIpAddr": '"<127.0.0.1:9>"', "State": f'"{state}"',
              "Activity": '"Busy"' if dynamic else '"Idle"', "Cpus": str(rng.choice((1, 2, 4)) if dynamic else rng.choice((0, 1, 2, 4))),
              "Memory": "2048", "Start": "false", "Requirements": "false", "Rank": "0", "CurrentRank": "0",
              "PartitionableSlot": "false" if dynamic else "true", "DynamicSlot": "true" if dynamic else "false",
              "EnteredCurrentState": str(int(now - rng.uniform(0, 7200))), "NumDynamicSlotsTime": str(int(now - rng.uniform(0, 7200))),
              "VfarmInstanceId": f'"{owner}"', "OpSys": '"LINUX"', "Arch": '"X86_64"'}
        ads.append("\n".join(f"{k} = {v}" for k, v in ad.items()))
    return "\n\n".join(ads) + "\n"


POOL_SCENARIOS = (("5 clusters of 20,000 jobs, one request each", 5), ("2,000 clusters of 50 jobs, 400 different requests", 2_000))


def pool_cycle(args: argparse.Namespace, section: common.Section) -> None:
    """One whole cycle (discover + plan) against a real pool of JOBS idle jobs and SLOTS hollow slot
    ads, once per scenario of POOL_SCENARIOS (the same jobs in few or many groups), each its own pool."""
    jobs, slots, instances = (2_000, 200, 60) if args.smoke else (100_000, 10_000, 3_000)
    rows: list[list[object]] = []
    setups = []
    medians = []
    for label, clusters in POOL_SCENARIOS[:1] if args.smoke else POOL_SCENARIOS:
        steps, cycles = _pool_scenario(jobs, slots, instances, clusters, 1 if args.smoke else 5)
        setups.append(f"{label}: " + ", ".join(f"{k} {v:.0f} s" for k, v in steps.items()))
        rows += [[label, i + 1, f"{d:.2f} s", f"{p:.3f} s", f"{d + p:.2f} s", f"{n_entries:,} ({n_jobs:,} jobs)", f"{n_slots:,}",
                  f"launch {r.launch}, drain {len(r.drain)}, terminate {len(r.terminate)}, {r.waiting:,} waiting"]
                 for i, (d, p, n_entries, n_jobs, n_slots, r) in enumerate(cycles)]
        medians.append((label, common.median([d + p for d, p, *_ in cycles])))
    section.add(f"\n**One whole cycle against a real pool** (discover = `scaler.discover.pool_snapshot`: the collector's slot and "
                f"collector ads, the schedd's running jobs one by one and its idle jobs as groups (the group-by query, one ad per set "
                f"of jobs equal in every attribute the planner reads, times included, with JobCount), through htcondor2 with an "
                f"IDTOKEN; plan = `scaler.plan.plan`). For each scenario the benchmark starts its own pool (tests/fixtures/condor_pool.py: "
                f"HTCondor 23.9 on 127.0.0.1), submits {jobs:,} jobs whose Requirements no machine meets (they stay idle), and "
                f"advertises {slots:,} hollow slot ads of {instances:,} farm workers with condor_advertise (Start = false). The "
                f"{instances:,} instances are given as DescribeInstances would list them (no cloud call is timed). Set-up: "
                + "; ".join(setups) + ".\n")
    section.add(common.table(["queue", "cycle", "discover", "plan", "whole", "job ads read", "slot ads read", "it decided"], rows))
    section.add("Whole cycle: " + "; ".join(f"{label}: median {m:.2f} s, target {POOL_TARGET:.0f} s: {'met' if m <= POOL_TARGET else 'MISSED'}"
                                          for label, m in medians) + ".\n")
    section.add(POOL_NOTE)


def _pool_scenario(jobs: int, slots: int, instances: int, clusters: int, runs: int) -> tuple[dict[str, float], list[tuple[Any, ...]]]:
    sys.path.insert(0, str(common.REPO))
    from tests.fixtures import condor_pool as fixture
    from tests.fixtures.condor_rootfs import ensure_rootfs
    from vfarm.config import scale as spec
    from vfarm.scaler import discover, plan

    steps: dict[str, float] = {}
    state = Path(tempfile.mkdtemp(prefix="vfarm-bench-pool-"))
    pool = fixture.CondorPool(ensure_rootfs(), state)
    started = time.monotonic()
    pool.start()
    previous = pool.activate()
    cycles = []
    try:
        steps["pool start"] = time.monotonic() - started
        t = time.monotonic()
        # Idle for good: no startd satisfies their Requirements (the hollow ads refuse every job too).
        # Cluster k asks for 64 + (k mod 400) MB: with many clusters, many groups.
        for k in range(clusters):
            n = jobs // clusters + (1 if k < jobs % clusters else 0)
            pool.submit(n, 60, requirements="(TARGET.VfarmBenchNever =?= True)", request_memory=str(64 + k % 400))
        steps[f"submit {jobs:,} jobs"] = time.monotonic() - t
        t = time.monotonic()
        # condor_advertise inside the pool's root folder, as the pool's daemons (a token of condor@).
        pool.run(["install", "-d", "-m", "0700", "/etc/condor/advertiser-tokens"])
        pool.write("/etc/condor/advertiser-tokens/condor", pool.token(f"condor@{fixture.UID_DOMAIN}") + "\n", mode="0600")
        env = {"_CONDOR_SEC_TOKEN_DIRECTORY": "/etc/condor/advertiser-tokens", "_CONDOR_SEC_CLIENT_AUTHENTICATION_METHODS": "IDTOKENS"}
        batches = hollow_ads(slots, instances, time.time()).split("\n\n")
        for first in range(0, len(batches), HOLLOW_BATCH):
            pool.write("/tmp/hollow.ads", "\n\n".join(batches[first:first + HOLLOW_BATCH]) + "\n")
            pool.run(["condor_advertise", "-pool", pool.collector_address, "-multiple", "-tcp", "UPDATE_STARTD_AD", "/tmp/hollow.ads"],
                     env=env, timeout=300)
        fixture.wait_for(lambda: len(pool.ads("Startd", "VfarmInstanceId =!= undefined", ["Name"])) >= slots, 300, "the hollow ads in the collector")
        steps[f"advertise {slots:,} slot ads"] = time.monotonic() - t
        now = time.time()
        farm = [{"InstanceId": f"i-{i:08x}", "State": {"Name": "running"}, "LaunchTime": now - 7200,
                 "Tags": [{"Key": "vfarm:farm", "Value": FARM}]} for i in range(instances)]
        scale_spec = spec.parse({**SECTION, "max-vms": 4000, "waiting-time": 0})
        for _ in range(runs):
            t = time.monotonic()
            found = discover.pool_snapshot(pool.collector_address, token_dir=str(pool.token_dir))
            t_discover = time.monotonic() - t
            snap = {"now": time.time(), **found, "instances": farm}
            t = time.monotonic()
            decided = plan.plan(snap, scale_spec)
            cycles.append((t_discover, time.monotonic() - t, len(found["jobs"]), sum(j.get("JobCount", 1) for j in found["jobs"]),
                           len(found["slots"]), decided))
    finally:
        fixture.restore(previous)
        pool.stop()
        shutil.rmtree(state, ignore_errors=True)
    return steps, cycles


@dataclass
class Run:
    """One policy's replay of the day, as the figures need it."""

    max_vms: int
    policy: str
    slug: str
    summary: str
    samples: dict[str, list[float]]


def averaged(samples: dict[str, list[float]]) -> dict[str, list[float]]:
    """SAMPLES (one per tick) as means over BUCKET-second windows; "time" in hours, the window's mean."""
    windows: dict[int, list[int]] = {}
    for index, now in enumerate(samples["time"]):
        windows.setdefault(int(now // BUCKET), []).append(index)
    out: dict[str, list[float]] = {name: [] for name in samples}
    for indexes in windows.values():
        for name, values in samples.items():
            out[name].append(sum(values[i] for i in indexes) / len(indexes))
    out["time"] = [t / 3600 for t in out["time"]]
    return out


def draw(runs: list[Run], seed: int, folder: Path) -> dict[tuple[int, str], Path]:
    """One SVG per run in FOLDER (scale-day-<policy>-<max-vms>.svg), all on the same axes; the paths."""
    series = [averaged(run.samples) for run in runs]
    x_max = 2 * math.ceil(max(s["time"][-1] for s in series) / 2)
    waiting_max = svgplot.nice_ceiling(max(max(s["waiting"]) for s in series))
    workers_max = svgplot.nice_ceiling(max(max(map(sum, zip(*(s[state] for state in WORKER_STATES)))) for s in series))
    cores_max = svgplot.nice_ceiling(max(max(s["idle cores"]) for s in series))
    colors = {"busy": "#2ca02c", "idle": "#f2b134", "draining": "#9467bd", "booting": "#6baed6", "lost": "#d62728"}
    folder.mkdir(parents=True, exist_ok=True)
    paths = {}
    for run, s in zip(runs, series):
        panels = [
            svgplot.Panel("Queue: idle jobs waiting for a slot", "waiting jobs", waiting_max,
                          [svgplot.Series("waiting jobs", s["waiting"], "#1f77b4")]),
            svgplot.Panel("Workers by state", "workers (VMs)", workers_max,
                          [svgplot.Series(state, s[state], colors[state]) for state in WORKER_STATES], stacked=True),
            svgplot.Panel(f"Idle cores: joined workers' cores with no job ({CPUS} per worker)", "idle cores", cores_max,
                          [svgplot.Series("idle cores", s["idle cores"], "#ff7f0e")], stacked=True),
        ]
        title = f"{run.policy}, max-vms {run.max_vms}: the bursty day (seed {seed})"
        subtitle = f"{run.summary}. {BUCKET / 60:g}-minute means of the {TICK:g}-s ticks."
        hour_step = (1 if x_max <= 12 else 2) if x_max <= 48 else None
        svg = svgplot.figure(title, subtitle, s["time"], "time since the trace's start (hours)", x_max, panels, x_step=hour_step)
        path = folder / f"scale-day-{run.slug}-{run.max_vms}.svg"
        path.write_text(svg, encoding="utf-8")
        paths[run.max_vms, run.policy] = path
    return paths


def figure_table(paths: dict[tuple[int, str], Path], markdown_dir: Path) -> str:
    """The figures as a markdown table (a row per farm size, a column per policy), linked relative to MARKDOWN_DIR."""
    policies = list(dict.fromkeys(policy for _, policy in paths))
    sizes = list(dict.fromkeys(size for size, _ in paths))
    rows = [[size, *(f"[![{policy}, max-vms {size}]({link})]({link})"
                     for policy in policies for link in [Path(os.path.relpath(paths[size, policy], markdown_dir)).as_posix()])]
            for size in sizes]
    return ("Figures (click for full size): the queue, the workers by state and the idle cores over the day, one per policy "
            "and farm size, all on the same axes.\n\n" + common.table(["max-vms", *policies], rows))


MIXED_NOTE = """Reading the mixed trace: with one 8-CPU type, vfarm's idle core-hours stay within a few percent
of elastiq's: most of them are (a) the idle-time tail after each burst (20 min x 8 cores per worker
given back), which the idle-truth rule keeps for every policy (no worker drained before idle-time
after its last job ended), and (b) stragglers: a burst's jobs end at different times (log-normal
run times), and an 8-CPU worker with one job left holds 7 idle cores until it ends. Consolidation
(a graceful drain of a busy worker) removes neither. Worker types do: where no cap binds, each job
goes to the smallest type that holds it (least waste), so a straggler holds its own cores and
little more, and a worker's idle-time tail is its few cores. When max-vms or max-cpus binds, the
planner hands the cap out in queue order (the oldest jobs first, whatever their type) and, under
max-vms, packs the jobs that need a worker onto the type that holds them in the fewest workers.
Met on this trace (seed 8; on 2 of 12 traces, see the table after this note): where no cap binds
(max-vms 400: 0.62 x elastiq's idle core-hours, p95 4.1 against 14.2 min)
and under a cloud quota of elastiq's cores at max-vms 100 told to the planner (max-cpus 800: 0.59,
p95 8.9 against 14.7; elastiq counts jobs, not CPUs: one 8-CPU worker per 8 waiting jobs).
Not met, and why:
- max-cpus 240 (elastiq's 30 x 8 cores): 0.69 (799 against 1154), p95 58.8 against 50.7 min. The
  queue order changes nothing on this trace (each burst is one shape, so the budget is never
  contended by two types at once: in a replay that ran the farm-order rule beside it, none of its
  6,251 assignments, fallbacks included, launched otherwise). What costs the p95 is the column
  before the launches: while jobs waited, 215 core-hours sat in idle workers too small for the
  largest waiting job (elastiq: 0, its idle workers are all 8-CPU and take any job at once; listing
  the 8-CPU type first, which made every job's least-waste tie go to it, gave p95 51.1 min at 0.99
  x elastiq's idle core-hours in an earlier run). Those are workers whose jobs ended less than
  idle-time ago: the idle-truth rule forbids draining them earlier, and once past idle-time they
  are drained to make room (then a new worker boots). Packing held-back jobs onto 8-CPU workers
  under max-cpus as well (a run outside the table) gave p95 57.9 min at 0.75 x elastiq's: the
  8-CPU jobs' p95 (158 against 147 min) is set by that idle-time, not by the planner's choice.
  Under the quota without max-cpus the planner asks for workers the cloud refuses: 1.13, p95 62.5.
- max-vms 30 and 100 with types: with packing the p95 is 163.3 min at 30 and 28.1 at 100 (199.7
  and 61.4 without it, an earlier run) at 0.41 and 0.56 x elastiq's, above its 50.7 and 14.7. At 30
  it was 105.6 while consolidation read a partitionable slot given out whole (Cpus 0) as one idle
  CPU: the drains that miscount added freed worker slots for a burst's 8-CPU workers (a replay with
  the old reading gives 105.6 again); correct counting drains less. max-vms counts workers: jobs
  that come while the cap does not bind (the background's single jobs) get small workers, by the
  least-waste rule, and each holds a worker slot for its run time plus idle-time; when a burst
  comes, the farm cannot grow to elastiq's cores (peak 206 against 240 cores at max-vms 30, 612
  against 800 at 100), and the 8-CPU jobs wait longest (p95 287 against 147 min at 30). A farm
  capped at elastiq's count of 8-CPU workers meets elastiq's p95 only with 8-CPU workers whenever
  a burst may come, which is the one-type farm above (1.02 x elastiq's, p95 49.9 at 30): under a
  cap in workers the target (both bounds at once) is not reached by choosing worker sizes; a cap in
  cores (max-cpus, as a cloud's quota counts) is the one that worker types can use.
The mixed trace also found a starvation in the planner: at max-vms, idle small workers were never
drained while 8-CPU jobs waited (drains came only with a quiet queue); now idle workers of other
types (idle-time past) are drained to make room for the held-back ones, under max-vms and
max-cpus, and only when those caps (not a type's own max) hold them back.
"""

SEEDS_NOTE = """Reading it: the verdict of the mixed table above (seed 8) is not the rule. Across the 12 traces
vfarm's idle core-hours are 0.57-1.16 x elastiq's (median 0.85) at a p95 wait 3-5 x shorter; the
target holds on 2. What decides it is the share of 8-CPU jobs (2 and 6 % on the two traces where it
holds, 31 and 21 % on the two where vfarm idles more than elastiq) and elastiq's count: it launches
one 8-CPU worker per 8 waiting jobs, whatever they ask, so a burst of 8-CPU jobs gets an eighth of
the workers it needs and runs in waves on them (their p95 wait 17-29 min on seeds 1, 8 and 9,
against vfarm's 4-5), each worker running many jobs before its one idle-time tail. vfarm starts a
worker per waiting 8-CPU job, which runs one job and then idles for idle-time: 8 cores x 20 min per
job. Against the same rule counting CPUs (as fast as vfarm: p95 about 4 min) the right-sized
workers save 11-44 % of the idle core-hours (0.56-0.89). What is left is every worker's idle-time
tail, which the idle-truth rule (never drained less than idle-time after its last job) keeps for
every policy; `waiting-time` 300-900 s instead of 40 s (launching later, so that more jobs land on
workers that free up) moved the ratio by 0.02-0.07 at a p95 of 8-18 min (seeds 1, 6, 9 and 10, a
replay outside the table). Pacing the launches instead (at most 32, 64 or 128 cores booting at
once, elastiq's waves without its undercount; same replay) reaches neither bound at once: seed 1
0.66 at a p95 of 92 min and 0.74 at 56 (elastiq: 23.4), seed 9 0.83 at 51 and 0.94 at 30 (20.4).
The last two columns say where the idle core-hours are: vfarm wastes 1.5-8.8 x less beside running
jobs than elastiq (right-sized workers: 142-528 against 668-1,455 core-hours) and little on workers
that never ran a job (1-5 % of its idle core-hours), but its tails are 1.1-1.5 x elastiq's: 2.6-5.4
x as many launches, each worker holding its cores for idle-time after its last job. Launching fewer
workers of the larger types (one per k waiting jobs of the type, elastiq's count for them, k 2-8; a
replay outside the table) cuts those tails, and the big jobs then wait about as long as under
elastiq: the target held on at most 3 of the 12 traces for any k, and seeds 1 and 9 stayed at
0.82-1.05.
"""

POOL_NOTE = """Where a cycle's time goes: discover reads the running jobs one by one (none here) and the idle
ones through the schedd's group-by query, which the schedd answers from its own job table in one
pass; what comes back is one ad per group. A queue's number of groups is the number of distinct
(request, Requirements, QDate, EnteredCurrentStatus) among its idle jobs: a cluster submitted in
one second is one group, so the two scenarios are the same 100,000 jobs as 5 groups and as at
least 2,000; jobs trickling in one per second would be one group each (no worse than before).
The rest of a cycle is the collector's 10,001 slot ads turned into JSON, then the plan over
10,000 slots and 3,000 instances. Before (one ad per job, a projected query) the cycle took
11.6-44.9 s (median 18.7 s) at load 9: the schedd's answer and turning 100,000 ads into JSON.
"""

SIM_NOTE = """Reading it: both policies see the same jobs and the same boot time for the i-th launch, so the
rows differ only by the rule. Both are driven by the count of idle jobs, both wait about 40 s
before launching, both give VMs back after the same idle time, so on a trace like this they land
within a few percent of each other (elastiq launches a tick or two earlier: it counts a job as
soon as it is idle; vfarm counts a job once it has waited `waiting-time`, and also subtracts free
CPUs of joined workers). Idle VM-hours are mostly the idle-time tail after each burst: a shorter
`idle-time` trades them against relaunch (booting) hours. What sets vfarm's rule apart is not in
these figures: it drains before it terminates (elastiq terminates an idle worker at once, which
on a real pool can kill a job matched in between; the simulation matches and decides at the same
tick, so no job dies here), and it stops launching into a "black hole" (not simulated: every VM
here that boots, joins). The simulation has no negotiation-cycle delay and only one-CPU jobs.
The figures show the same: each burst is a spike of waiting jobs, answered by a wall of booting
then busy workers (capped at max-vms: at 30 the queue drains for hours, at 100 in minutes), and
followed by the idle-time tail of idle workers and idle cores; the two policies' figures differ
only in small details. Draining workers are a thin band: vfarm drains idle workers, which end at
the next cycle, and (consolidation) at most one half-used worker at a time while no job waits.
"""

PLANNER_NOTE = """The planner's time grows with the job entries it reads: each is read once for its numbers, state
and wait (scan_jobs), each idle one once more to group it by what it asks (fit.rank). As discover
reads the queue now (idle jobs grouped), 100,000 jobs at 80 % idle are the 20,000 running ones
plus a few hundred groups; what is left is the running jobs (their RemoteHost: the schedd's word
that a worker is busy), the 10,000 slots and the 3,000 instances. These machines are shared: the
same snapshot's plan takes 2-3 x longer at load 7 than at load 2, so compare the two shapes within
one run (they are interleaved), and see the load above.
"""


def extra(p: argparse.ArgumentParser) -> None:
    p.add_argument("--seed", type=int, default=8, help="the trace's seed (default 8)")
    p.add_argument("--max-vms", type=int, action="append", help="farm size(s) to simulate (default 30 and 100)")
    p.add_argument("--planner-runs", type=int, default=15, help="timed plan() calls on the big snapshot (default 15)")
    p.add_argument("--no-pool", action="store_true", help="skip the whole cycle against a real pool (it needs root; about 6 minutes); "
                   "the real-pool part the --output file holds is kept, with the time it was measured")
    p.add_argument("--mixed-seeds", type=int, default=12, help="traces (seeds 1-N) the mixed trace's no-cap row is replayed on (default 12)")
    p.add_argument("--figures", type=Path, help="folder for the SVG figures (default benchmarks/figures/ beside the --output file)")


if __name__ == "__main__":
    sys.exit(common.main(NAME, TITLE, "scale_sim.py", __doc__ or "", run, extra))
