"""Consolidation against the real pool (trixie's condor 23.9 on 127.0.0.1): two workers of 4 slots
each, filled by a long job on each and short ones, then a stream of short jobs, one after the
other, lasting past the long jobs. Once the short ones end, both workers are 1/4 used: with
consolidation one is drained and the stream fills the other, without it both stay. The scaler's loop (real discover, real
`condor_drain -graceful`) runs the same stream twice, with consolidation on (its defaults) and off
(disruption-budget 0). Every job starts exactly once (condor_history NumJobStarts == 1) in both,
and with consolidation the first worker is given back sooner.

Waits are on events (jobs running or done, the scaler's give-backs); the stream's next job is
submitted when the previous one is done.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

import pytest

from tests.fixtures.condor_pool import CLEAN_ENV, CondorPool, wait_for
from vfarm.config import scale as scale_spec
from vfarm.scaler import apply, loop

pytestmark = pytest.mark.pool

CPUS = 4
LONG_SECONDS = 40
SHORT_SECONDS = 8
STREAM_JOBS = 6
IDLE_TIME = 15
# Measured on this 2-core machine at load 7-8 (one run each): first give-back +48.9 s with
# consolidation, +65.9 s without; the whole test 277 s. Every wait is far below 1/3 of this.
TIMEOUT = 400.0


class Cloud:
    """The farm's two instances; a terminate switches the worker off (the test plays the hypervisor)."""

    def __init__(self, pool: CondorPool, ids: tuple[str, ...], farm: str) -> None:
        self.pool = pool
        self.instances = {iid: {"InstanceId": iid, "LaunchTime": time.time() - 60, "State": {"Name": "running"},
                                "Tags": [{"Key": "vfarm:farm", "Value": farm}]} for iid in ids}
        self.given_back: dict[str, float] = {}
        self.lock = threading.Lock()

    def farm_instances(self) -> list[dict[str, Any]]:
        with self.lock:
            return [dict(i) for i in self.instances.values()]

    def launch(self, count: int, token: str, worker_type: scale_spec.WorkerType) -> list[str]:
        raise AssertionError("the farm has its two workers: nothing is launched here")

    def terminate(self, ends: dict[str, str]) -> None:
        for iid in ends:
            with self.lock:
                self.given_back[iid] = time.time()
                self.instances[iid] = {**self.instances[iid], "State": {"Name": "terminated"}}
            self.pool.remove_worker(iid)


def run_stream(pool: CondorPool, mode: str, budget: int) -> tuple[dict[str, float], float, list[int], list[str]]:
    """The burst and the stream on two fresh workers with the scaler running; when each worker was
    given back, when it all started, the job clusters, the consolidation drains' reasons."""
    ids = (f"i-{mode}-a", f"i-{mode}-b")
    for iid in ids:
        pool.add_worker(iid, cpus=CPUS, memory=CPUS * 256)
    where = " || ".join(f'VfarmInstanceId == "{iid}"' for iid in ids)
    admin = ["nsenter", f"--target={pool.master_pid}", "--mount", "--pid", "--", "chroot", str(pool.merged), "env", "-i", f"PATH={CLEAN_ENV['PATH']}"]
    spec = scale_spec.parse({"name": f"cons-{mode}", "cloud": {"type": "ec2"}, "pool": {"collector": pool.collector_address},
                             "max-vms": 2, "cpus-per-vm": CPUS, "waiting-time": 0, "waiting-jobs-threshold": 100,
                             "idle-time": IDLE_TIME, "check-every": 1, "boot-timeout": 600, "disruption-budget": budget})
    cloud = Cloud(pool, ids, spec.name)
    reasons: list[str] = []

    class Drainer(apply.CondorDrain):
        def drain(self, instance_id: str, slots: list[dict[str, Any]], reason: str) -> None:
            if reason.startswith("consolidation"):
                reasons.append(reason)
            super().drain(instance_id, slots, reason)

    scaler = loop.Scaler(spec, cloud, Drainer(pool.collector_address, admin), logging.getLogger(f"vfarm.test.cons.{mode}"))
    stop = threading.Event()
    thread = threading.Thread(target=scaler.loop, args=(stop,), daemon=True)
    started = time.time()
    clusters = [pool.submit(1, LONG_SECONDS, requirements=f'VfarmInstanceId == "{iid}"') for iid in ids]
    thread.start()
    try:
        wait_for(lambda: all(j.get("JobStatus") == 2 for c in clusters for j in pool.jobs(c)), TIMEOUT, "a long job on each worker")
        clusters.append(pool.submit(2 * (CPUS - 1), SHORT_SECONDS, requirements=where))
        for _ in range(STREAM_JOBS):
            clusters.append(pool.submit(1, SHORT_SECONDS, requirements=where))
            wait_for(lambda: pool.finished(clusters[-1]), TIMEOUT, "the stream's job done")
        wait_for(lambda: len(cloud.given_back) == 2 or None, TIMEOUT, "both workers given back")
    finally:
        stop.set()
        thread.join(60)
        for cluster in clusters:
            pool.run(["condor_rm", str(cluster)], check=False)
        for iid in ids:
            if iid not in cloud.given_back:
                pool.remove_worker(iid)
    return cloud.given_back, started, clusters, reasons


def starts(pool: CondorPool, clusters: list[int]) -> list[int]:
    return [int(ad["NumJobStarts"]) for cluster in clusters for ad in pool.history(cluster)]


def test_consolidation_gives_a_worker_back_sooner_and_starts_every_job_once(condor_pool: CondorPool) -> None:
    jobs = 2 + 2 * (CPUS - 1) + STREAM_JOBS
    on, on_started, on_clusters, on_reasons = run_stream(condor_pool, "on", 1)
    assert starts(condor_pool, on_clusters) == [1] * jobs
    off, off_started, off_clusters, off_reasons = run_stream(condor_pool, "off", 0)
    assert starts(condor_pool, off_clusters) == [1] * jobs
    first_on, first_off = min(on.values()) - on_started, min(off.values()) - off_started
    worker_s_on = sum(t - on_started for t in on.values())
    worker_s_off = sum(t - off_started for t in off.values())
    print(f"first give-back: consolidation +{first_on:.1f} s, without +{first_off:.1f} s; worker-seconds {worker_s_on:.0f} vs "
          f"{worker_s_off:.0f}; consolidation drains: {on_reasons}")
    assert on_reasons and not off_reasons
    assert first_on < first_off
