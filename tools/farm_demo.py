"""The elastic farm's demo (`tools/run farm-demo`): a real HTCondor pool, a burst of jobs, and
`vfarm scale` growing a farm of real worker VMs (local qemu cloud) to run them, then draining and
ending them, with its status page open on this host. Ends by itself when the jobs are done and the
farm is empty again; prints where the page was and what it kept (out/farm-demo/).

Network: the pool listens in a network namespace of its own (10.0.2.100:9618 there), the scaler
runs in that namespace (its workers' only route is to that address), and one socat on this host's
127.0.0.1:PORT carries the page out of it. Nothing else is contacted."""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Optional

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.fixtures.condor_pool import CondorPool, local_farm_file, namespaced_pool, stop_process  # noqa: E402
from vfarm.clouds import local_farm  # noqa: E402

POOL_ADDRESS = "10.0.2.100"  # inside the demo's namespace only
FARM = "demo"
OVERALL_TIMEOUT = 3600.0  # two TCG worker boots, the jobs, idle-time and the drains take 10-20 minutes


def say(message: str) -> None:
    print(f"[farm-demo {time.strftime('%H:%M:%S')}] {message}", flush=True)


def submit_burst(pool: CondorPool, jobs: int, seconds: int) -> int:
    return pool.submit_file("burst.sub", f"""\
universe = vanilla
executable = /bin/sh
transfer_executable = false
arguments = "-c 'sleep {seconds}; hostname'"
should_transfer_files = YES
when_to_transfer_output = ON_EXIT
output = /home/vfarm/burst-$(Cluster).$(Process).out
error = /home/vfarm/burst-$(Cluster).$(Process).err
request_cpus = 1
request_memory = 64
requirements = VfarmInstanceId =!= undefined
queue {jobs}
""")


def job_states(pool: CondorPool, cluster: int) -> dict[str, int]:
    """Jobs of CLUSTER by state: idle, running, done."""
    queued = pool.run(["condor_q", str(cluster), "-af", "JobStatus"], check=False).stdout.split()
    done = pool.run(["condor_history", str(cluster), "-af", "JobStatus"], check=False).stdout.split()
    return {"idle": queued.count("1"), "running": queued.count("2"), "done": done.count("4")}


def page_forward(pool: CondorPool, port: int) -> subprocess.Popen[bytes]:
    """127.0.0.1:PORT on this host -> 127.0.0.1:PORT in the pool's namespace (one socat per connection)."""
    inner = f"nsenter --net=/proc/{pool.master_pid}/ns/net socat STDIO TCP4\\:127.0.0.1\\:{port}"
    return subprocess.Popen(["socat", f"TCP4-LISTEN:{port},bind=127.0.0.1,reuseaddr,fork", f"EXEC:{inner}"],
                            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def run(out: Path, jobs: int, seconds: int, workers: int, port: int) -> int:
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    local_root = out / "local"
    farm = local_farm.LocalFarm(local_root / "farm")
    say("starting a real HTCondor pool in a network namespace of its own")
    with namespaced_pool(POOL_ADDRESS, prefix="vfarm-demo-") as pool:
        farm_path = local_farm_file(out, pool, name=FARM, address=POOL_ADDRESS, max_vms=workers, idle_time=30, join_timeout=900,
                                    boot_timeout=1200, check_every=5)
        env = {**os.environ, "VFARM_LOCAL_DIR": str(local_root), "CONDOR_CONFIG": str(pool.host_config)}
        env.pop("_CONDOR_SEC_TOKEN_DIRECTORY", None)
        scaler: Optional[subprocess.Popen[bytes]] = None
        forward: Optional[subprocess.Popen[bytes]] = None
        log = out / "scale.log"
        ok = False
        try:
            cluster = submit_burst(pool, jobs, seconds)
            say(f"submitted {jobs} jobs of {seconds} s (cluster {cluster}); the farm may grow to {workers} worker VM(s) of 2 CPUs")
            with open(log, "w") as err:
                scaler = subprocess.Popen(["nsenter", f"--net=/proc/{pool.master_pid}/ns/net", "--", sys.executable, "-m", "vfarm", "scale",
                                           str(farm_path), "--http", f"127.0.0.1:{port}"],
                                          stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=err, env=env)
            forward = page_forward(pool, port)
            say(f"the farm's page: http://127.0.0.1:{port}/  (the scaler's log: {log})")
            started = time.monotonic()
            last = ""
            while time.monotonic() - started < OVERALL_TIMEOUT:
                if scaler.poll() is not None:
                    say(f"the scaler stopped (exit {scaler.returncode}): see {log}")
                    break
                states = job_states(pool, cluster)
                instances = farm.instances(tag_filters={"vfarm:farm": FARM}, states=None)
                by_state: dict[str, int] = {}
                for inst in instances:
                    name = inst["State"]["Name"]
                    by_state[name] = by_state.get(name, 0) + 1
                joined = pool.run(["condor_status", "-const", "VfarmInstanceId =!= undefined", "-af", "VfarmInstanceId"], check=False).stdout
                line = (f"jobs: {states['idle']} waiting, {states['running']} running, {states['done']}/{jobs} done; workers: "
                        + (", ".join(f"{n} {s}" for s, n in sorted(by_state.items())) or "none")
                        + f"; in the pool: {len(set(joined.split()))}")
                if line != last:
                    say(line)
                    last = line
                if states["done"] == jobs and instances and all(i["State"]["Name"] == "terminated" for i in instances):
                    ok = True
                    break
                time.sleep(5)  # a progress display's refresh, not a test's wait
            (out / "status.json").write_text(subprocess.run(
                ["nsenter", f"--net=/proc/{pool.master_pid}/ns/net", "--", sys.executable, "-m", "vfarm", "scale", str(farm_path), "--status",
                 "--json"], capture_output=True, text=True, env=env).stdout)
        finally:
            stop_process(forward)
            stop_process(scaler)
            leftover = [i["InstanceId"] for i in farm.instances(states=("pending", "running", "stopped"))]
            farm.terminate(leftover)  # never leave a VM running
    if ok:
        say(f"done: every job ran and the farm is empty again. Kept in {out}: status.json (each worker's verdict), scale.log, farm.yaml")
        say(f"the page was http://127.0.0.1:{port}/ (it ends with the scaler); run the demo again to watch it live")
        return 0
    say(f"the demo did not finish: see {out}/scale.log")
    return 1


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=ROOT / "out/farm-demo", help="what the demo keeps (default out/farm-demo)")
    parser.add_argument("--jobs", type=int, default=6, help="jobs in the burst (default 6)")
    parser.add_argument("--seconds", type=int, default=60, help="each job's run time (default 60)")
    parser.add_argument("--workers", type=int, default=2, help="max-vms: worker VMs at most (default 2)")
    parser.add_argument("--port", type=int, default=8631, help="the page's port on 127.0.0.1 (default 8631)")
    args = parser.parse_args(argv)
    return run(args.out.resolve(), args.jobs, args.seconds, args.workers, args.port)


if __name__ == "__main__":
    sys.exit(main())
