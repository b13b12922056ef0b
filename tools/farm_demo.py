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
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Optional

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.fixtures.condor_pool import CondorPool, local_farm_file, namespaced_pool  # noqa: E402
from tools.demo import exit_on_signals  # noqa: E402
from vfarm.cli.common import whole_number  # noqa: E402
from vfarm.clouds import local_farm  # noqa: E402
from vfarm.clouds.local import _die_with_parent  # noqa: E402

POOL_ADDRESS = "10.0.2.100"  # inside the demo's namespace only
FARM = "demo"
OVERALL_TIMEOUT = 3600.0  # two TCG worker boots, the jobs, idle-time and the drains take 10-20 minutes
# In --out, the demo's own: the folder may be emptied on the next run only when it holds this file.
MARKER = ".vfarm-farm-demo"
STOP_WAIT = 60.0  # seconds for the scaler to finish its cycle after SIGTERM


class DemoError(Exception):
    """Why the demo cannot start; one line."""


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


def prepare_out(out: Path) -> None:
    """OUT empty, with the demo's marker: an earlier demo's folder (it has the marker) is emptied,
    a missing or empty one made; any other folder is refused, so `--out .` never deletes a checkout."""
    if out.is_dir() and not out.is_symlink() and any(out.iterdir()):
        if not (out / MARKER).is_file():
            raise DemoError(f"--out {out}: not empty and not an earlier demo's folder (no {MARKER}): choose an empty or new folder")
        for entry in out.iterdir():
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry)
            else:
                entry.unlink()
    elif out.exists() and not out.is_dir():
        raise DemoError(f"--out {out}: not a folder")
    out.mkdir(parents=True, exist_ok=True)
    (out / MARKER).write_text("made by tools/farm_demo.py: the next run empties this folder\n")


def check_port(port: int) -> None:
    """PORT can be bound on 127.0.0.1 (socat's listen there would fail later, silently)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as socat's reuseaddr: a closing connection is no clash
        try:
            probe.bind(("127.0.0.1", port))
        except OSError as err:
            raise DemoError(f"--port {port}: 127.0.0.1:{port} cannot be bound ({err.strerror or err}): choose another port") from None


def start_group(argv: list[str], **kwargs: Any) -> subprocess.Popen[bytes]:
    """ARGV in a process group of its own (stop_group ends it with everything it started), which
    also gets SIGTERM when the demo dies (PR_SET_PDEATHSIG, kept across nsenter's exec)."""
    return subprocess.Popen(argv, stdin=subprocess.DEVNULL, start_new_session=True, preexec_fn=_die_with_parent, **kwargs)


def stop_group(proc: Optional[subprocess.Popen[bytes]], timeout: float = STOP_WAIT) -> None:
    """SIGTERM to PROC's process group (the scaler finishes its cycle first), SIGKILL after TIMEOUT."""
    if proc is None:
        return
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(proc.pid, sig)  # its own group (start_group): the leader's pid names it
        except ProcessLookupError:
            break
        try:
            proc.wait(timeout)
            break
        except subprocess.TimeoutExpired:
            continue
    proc.wait()


def page_forward(pool: CondorPool, port: int, log: Path) -> subprocess.Popen[bytes]:
    """127.0.0.1:PORT on this host -> 127.0.0.1:PORT in the pool's namespace (one socat per
    connection); its errors in LOG. A socat that ends at once (its listen failed) is a DemoError."""
    inner = f"nsenter --net=/proc/{pool.master_pid}/ns/net socat STDIO TCP4\\:127.0.0.1\\:{port}"
    with open(log, "wb") as err:
        proc = start_group(["socat", f"TCP4-LISTEN:{port},bind=127.0.0.1,reuseaddr,fork", f"EXEC:{inner}"],
                           stdout=subprocess.DEVNULL, stderr=err)
    try:
        proc.wait(timeout=1.0)  # a failed listen ends socat within milliseconds
    except subprocess.TimeoutExpired:
        return proc  # listening
    why = log.read_text(errors="replace").strip().splitlines()
    raise DemoError(f"the page's forward (socat on 127.0.0.1:{port}) ended at once (exit {proc.returncode})"
                    + (f": {why[-1]}" if why else ""))


def run(out: Path, jobs: int, seconds: int, workers: int, port: int) -> int:
    check_port(port)
    prepare_out(out)
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
            with open(log, "wb") as err:
                scaler = start_group(["nsenter", f"--net=/proc/{pool.master_pid}/ns/net", "--", sys.executable, "-m", "vfarm", "scale",
                                      str(farm_path), "--http", f"127.0.0.1:{port}"], stdout=subprocess.DEVNULL, stderr=err, env=env)
            forward = page_forward(pool, port, out / "page-forward.log")
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
            stop_group(forward, timeout=10)
            stop_group(scaler)
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
    parser.add_argument("--out", type=Path, default=ROOT / "out/farm-demo",
                        help=f"what the demo keeps (default out/farm-demo): a new or empty folder, or an earlier run's (it has {MARKER})")
    parser.add_argument("--jobs", type=whole_number(1), default=6, help="jobs in the burst (default 6)")
    parser.add_argument("--seconds", type=whole_number(1), default=60, help="each job's run time (default 60)")
    parser.add_argument("--workers", type=whole_number(1), default=2, help="max-vms: worker VMs at most (default 2)")
    parser.add_argument("--port", type=whole_number(1, 65535), default=8631, help="the page's port on 127.0.0.1 (default 8631)")
    args = parser.parse_args(argv)
    exit_on_signals()
    try:
        return run(args.out.resolve(), args.jobs, args.seconds, args.workers, args.port)
    except DemoError as err:
        say(f"error: {err}")
        return 2


if __name__ == "__main__":
    sys.exit(main())
