"""A local "cloud" of worker VMs on this machine, for `vfarm scale` with `cloud.type: local`.

The same calls the scaler makes of clouds/ec2.py (launch with tags and a client token, instances
by tag filters and states, terminate with its marks), answered from folders on disk instead of an
API:

- One folder per instance under ROOT/instances/<id>/: LocalInstance's disks, seed and console
  logs, plus `record.json` (tags, launch time, client token, image, size, and the pid + start
  time of its supervisor). These folders ARE the cloud, as EC2's API is: a scaler that restarts
  finds its workers here by tag, with no state file of its own.
- Each VM runs NON-blocking: a detached supervisor process (`python -m vfarm.clouds.local_farm
  supervise FOLDER`, a session of its own, so it outlives the scaler) calls LocalInstance.boot()
  and writes `exit.json` when qemu exits. qemu dies with its supervisor (PR_SET_PDEATHSIG).
- States as EC2 names them: pending (being prepared), running (supervisor alive), stopped (qemu
  exited: the VM powered itself off, e.g. a failed final check; or the supervisor is gone), and
  terminated: terminate kills the supervisor's process group (qemu and its socats with it), removes
  the folder and keeps a small tombstone in ROOT/ended/ for an hour, as EC2 lists terminated
  instances for a while (the scaler's black-hole rule reads the end tags of ended instances).
- The guest's network is slirp with restrict=on: its one route is 10.0.2.100:9618, forwarded
  (a socat per connection) to the pool's collector as the scaler reaches it. qemu runs in the
  scaler's own network namespace.

The local test images power off after cloud-init (their harness, for collecting results): a farm
worker must keep running, so `keep_running()` gives a user-data part that cancels that step.
"""

from __future__ import annotations

import datetime
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Optional

from .hostcmd import CommandError, locked, start
from .verdict import CONSOLE_TAIL, Verdict, find_line, parse_console

LIVE_STATES = ("pending", "running")
ENDED_KEEP = 3600.0  # seconds a terminated instance stays listed (EC2: about an hour)
STOP_WAIT = 30.0  # seconds for qemu to go after SIGTERM before SIGKILL
FOREVER = 10 * 365 * 86400.0  # a farm worker's boot has no time limit: the scaler decides its end
DEFAULT_IMAGE = "trixie-condor"
DEFAULT_MEMORY = "2G"
DEFAULT_VCPUS = 2
POOL_PORT = 9618
HARNESS_UNIT = "vfarm-local-harness.service"
KEEP_RUNNING = f"""#!/bin/sh
# vfarm scale (cloud type local): this test image powers off after cloud-init for its test
# harness; a farm worker must keep running until the scaler ends it: cancel that step.
systemctl --no-block stop {HARNESS_UNIT} || true
echo "vfarm-local-farm: keeps running after cloud-init" > /dev/console
"""


class LocalFarmError(Exception):
    """A failed call on the local cloud; one line."""


def default_root() -> Path:
    from .local import local_root

    return local_root() / "farm"


def memory_mib(text: str) -> int:
    """`2G`, `1536M`, `1536` (MiB) -> MiB."""
    m = re.fullmatch(r"([0-9]+)([MG]?)", str(text))
    if not m:
        raise LocalFarmError(f"memory: expected like 2G or 1536M, got {text!r}")
    return int(m.group(1)) * (1024 if m.group(2) == "G" else 1)


def pool_forward(collector: str) -> str:
    """The collector as `host:port` (HTCondor's default port when none is given)."""
    if collector.startswith("["):
        return collector if "]:" in collector else f"{collector}:{POOL_PORT}"
    return collector if ":" in collector else f"{collector}:{POOL_PORT}"


def keep_running() -> Any:
    """The user-data part that keeps a local test image running after cloud-init."""
    from ..mime_builder import mime

    return mime.Attachment("text/x-shellscript", "vfarm-local-keep-running.sh", KEEP_RUNNING.encode())


# --- processes ---------------------------------------------------------------------------------------


def _stat(pid: int) -> Optional[list[str]]:
    """Fields of /proc/PID/stat after the command name (field 3 on), or None."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return text.rsplit(")", 1)[1].split()


def start_time(pid: int) -> Optional[int]:
    fields = _stat(pid)
    return int(fields[19]) if fields else None


def alive(pid: int, started: Optional[int]) -> bool:
    """PID runs and is the same process (its start time matches: pids are reused); zombies are dead."""
    fields = _stat(pid)
    if not fields or fields[0] == "Z":
        return False
    return started is None or int(fields[19]) == started


def cmdline(pid: int) -> list[str]:
    """PID's argv as /proc shows it ([] when it is gone)."""
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return []
    return raw.decode("utf-8", errors="replace").split("\0")[:-1] if raw else []


def names_folder(pid: int, folder: Path) -> bool:
    """PID's command line names FOLDER: an argument that is FOLDER (the supervisor's `supervise
    FOLDER`) or holds a path inside it (qemu's disks)."""
    names = {str(folder), os.path.realpath(folder)}
    return any(arg == name or name + "/" in arg for arg in cmdline(pid) for name in names)


def group_members(pgid: int) -> list[int]:
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            fields = _stat(int(entry))
            if fields and int(fields[2]) == pgid and fields[0] != "Z":
                found.append(int(entry))
    return found


def _write_json(path: Path, data: Any) -> None:
    """Atomically (a reader never sees half a file)."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(data, indent=1, sort_keys=True) + "\n", encoding="utf-8")
    tmp.replace(path)


def _read_json(path: Path) -> Optional[dict[str, Any]]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


class LocalFarm:
    """Worker VMs under ROOT, with EC2's calls. SUPERVISOR (tests) makes the argv that runs a
    launched instance's folder; by default this module's `supervise`."""

    def __init__(self, root: Optional[Path] = None, *, image: str = DEFAULT_IMAGE, memory: str = DEFAULT_MEMORY,
                 vcpus: int = DEFAULT_VCPUS, disk_size: str = "8G", data_disk: str = "vg",
                 supervisor: Optional[Callable[[Path], list[str]]] = None,
                 find_image: Optional[Callable[[str], Any]] = None) -> None:
        self.root = Path(os.path.abspath(root if root else default_root()))  # as the supervisors' command lines name it
        self._in_local_root = root is None
        self.image_name = image
        self.memory = memory_mib(memory)
        self.vcpus = int(vcpus)
        self.disk_size = disk_size
        self.data_disk = data_disk
        self.supervisor = supervisor or (lambda folder: [sys.executable, "-m", __name__, "supervise", str(folder)])
        self._find_image = find_image
        self._image: Any = None
        self._children: dict[int, subprocess.Popen[bytes]] = {}  # reaped here, so they never linger as zombies

    @classmethod
    def from_section(cls, section: Mapping[str, Any], root: Optional[Path] = None) -> LocalFarm:
        """From `scale.cloud` (type local: image, memory, vcpus)."""
        return cls(root, image=str(section.get("image", DEFAULT_IMAGE)), memory=str(section.get("memory", DEFAULT_MEMORY)),
                   vcpus=int(section.get("vcpus", DEFAULT_VCPUS)))

    @property
    def instances_dir(self) -> Path:
        return self.root / "instances"

    @property
    def ended_dir(self) -> Path:
        return self.root / "ended"

    def image(self) -> Any:
        """The worker image (built the first time when it is one of the test images)."""
        if self._image is None:
            from . import images

            try:
                self._image = (self._find_image or images.find)(self.image_name)
            except CommandError as err:
                raise LocalFarmError(f"image {self.image_name}: {err}") from None
        return self._image

    def _private(self, folder: Optional[Path] = None) -> None:
        """ROOT (with the local state root above the default one) made or checked private, and FOLDER
        below it: clouds/local.py's private_dir, its refusal as a LocalFarmError. The records in them
        are trusted (a terminate signals the pid one names), so nobody else may have written them."""
        from .local import local_root, private_dir

        try:
            if self._in_local_root:
                private_dir(local_root())
            private_dir(self.root)
            if folder is not None:
                private_dir(folder)
        except CommandError as err:
            raise LocalFarmError(str(err)) from None

    @contextmanager
    def _locked(self) -> Iterator[None]:
        self._private()
        with locked(self.root / ".lock"):
            yield

    def _reap(self) -> None:
        for pid, proc in list(self._children.items()):
            if proc.poll() is not None:
                del self._children[pid]

    # --- describe ------------------------------------------------------------------------------
    def _describe(self, folder: Path, record: dict[str, Any]) -> dict[str, Any]:
        exit_record = _read_json(folder / "exit.json")
        sup = record.get("supervisor") or {}
        reason = None
        if exit_record is not None:
            state = "stopped"
            reason = f"qemu exited: {exit_record.get('outcome')} after {exit_record.get('seconds', 0):.0f} s" + (
                " (the instance powered itself off)" if exit_record.get("self_poweroff") else "")
        elif not sup:
            state = "pending"
        elif alive(int(sup["pid"]), sup.get("start")):
            state = "running"
        else:
            state = "stopped"
            reason = "its supervisor is gone (killed, or the host restarted)"
        return self._shape(record, state, reason)

    @staticmethod
    def _shape(record: dict[str, Any], state: str, reason: Optional[str]) -> dict[str, Any]:
        codes = {"pending": 0, "running": 16, "shutting-down": 32, "terminated": 48, "stopping": 64, "stopped": 80}
        inst: dict[str, Any] = {
            "InstanceId": record["InstanceId"],
            "ImageId": record.get("ImageId", ""),
            "InstanceType": record.get("InstanceType", ""),
            "LaunchTime": datetime.datetime.fromtimestamp(float(record["LaunchEpoch"]), datetime.timezone.utc),
            "State": {"Code": codes[state], "Name": state},
            "Tags": [{"Key": k, "Value": v} for k, v in sorted(record.get("TagMap", {}).items())],
            "ClientToken": record.get("ClientToken", ""),
            "Placement": {"AvailabilityZone": "local"},
            "StateTransitionReason": reason or "",
        }
        if reason and state == "stopped":
            inst["StateReason"] = {"Code": "Client.InstanceInitiatedShutdown", "Message": reason}
        qemu = record.get("qemu_pid")
        if qemu:
            inst["VfarmLocal"] = {"qemu_pid": qemu}
        return inst

    def _records(self) -> list[tuple[Optional[Path], dict[str, Any]]]:
        """(folder or None for an ended one, record) of every instance this cloud still lists."""
        found: list[tuple[Optional[Path], dict[str, Any]]] = []
        if not self.root.exists():
            return found  # nothing launched yet: listing makes no folder
        self._private()
        # terminate writes the tombstone before it removes the folder: an id with both is ended.
        ended = {p.stem for p in self.ended_dir.glob("*.json")} if self.ended_dir.is_dir() else set()
        if self.instances_dir.is_dir():
            for folder in sorted(self.instances_dir.iterdir()):
                if folder.name in ended:
                    continue
                record = _read_json(folder / "record.json")
                if record is not None:  # a folder without a record is being made or removed
                    qemu = (folder / "qemu.pid").read_text().strip() if (folder / "qemu.pid").exists() else ""
                    if qemu.isdigit():
                        record["qemu_pid"] = int(qemu)
                    found.append((folder, record))
        if self.ended_dir.is_dir():
            now = time.time()
            for path in sorted(self.ended_dir.glob("*.json")):
                record = _read_json(path)
                if record is None:
                    continue
                if now - float(record.get("EndEpoch", now)) > ENDED_KEEP:
                    path.unlink(missing_ok=True)  # EC2 too forgets terminated instances after a while
                    continue
                found.append((None, record))
        return found

    def instances(self, tag_filters: Optional[Mapping[str, str]] = None, states: Optional[Sequence[str]] = LIVE_STATES,
                  ids: Sequence[str] = ()) -> list[dict[str, Any]]:
        """Instances with every tag of TAG_FILTERS, in STATES (None: every state, terminated too)."""
        self._reap()
        try:
            records = self._records()
        except OSError as err:
            raise LocalFarmError(f"{self.root}: cannot list the instances: {err.strerror or err}") from None
        out = []
        for folder, record in records:
            tags = record.get("TagMap", {})
            if any(tags.get(k) != v for k, v in (tag_filters or {}).items()):
                continue
            if ids and record["InstanceId"] not in ids:
                continue
            inst = self._describe(folder, record) if folder is not None else self._shape(record, "terminated", record.get("EndReason"))
            if states is None or inst["State"]["Name"] in states:
                out.append(inst)
        return sorted(out, key=lambda i: (i["LaunchTime"], i["InstanceId"]))

    # --- launch --------------------------------------------------------------------------------
    def launch(self, userdata: bytes, count: int = 1, tags: Optional[Mapping[str, str]] = None, client_token: Optional[str] = None,
               pool: Optional[str] = None) -> list[dict[str, Any]]:
        """Start COUNT worker VMs (each in the background) with USERDATA and TAGS; POOL: HOST:PORT the
        guest's 10.0.2.100:9618 reaches. The same CLIENT_TOKEN again returns the first call's instances."""
        if count < 1:
            raise LocalFarmError(f"launch: count must be at least 1, got {count}")
        image = self.image()
        with self._locked():
            if client_token:
                known = [r["InstanceId"] for _f, r in self._records() if r.get("ClientToken") == client_token]
                if known:
                    return self.instances(ids=known, states=None)
            started = [self._launch_one(image, userdata, dict(tags or {}), client_token, pool) for _ in range(count)]
        return self.instances(ids=started, states=None)

    def _launch_one(self, image: Any, userdata: bytes, tags: dict[str, str], token: Optional[str], pool: Optional[str]) -> str:
        from .local import LocalInstance

        iid = f"i-local-{uuid.uuid4().hex[:12]}"
        folder = self.instances_dir / iid
        record: dict[str, Any] = {
            "InstanceId": iid, "ImageId": Path(image.directory).name, "ImageDir": str(image.directory),
            "InstanceType": f"local.{self.vcpus}cpu.{self.memory}m", "LaunchEpoch": time.time(), "TagMap": tags,
            "ClientToken": token or "", "smp": self.vcpus, "memory": self.memory, "pool_forward": pool,
        }
        try:
            self._private(self.instances_dir)
            folder.mkdir(mode=0o700)  # a fresh id: never an existing folder
            _write_json(folder / "record.json", record)  # pending from here on
            LocalInstance(image, userdata, folder=folder, instance_id=iid, disk_size=self.disk_size, data_disk=self.data_disk,
                          smp=self.vcpus, memory=self.memory, pool_forward=pool, quiet=True).prepare()
            with open(folder / "supervisor.log", "wb") as log:
                proc = start(self.supervisor(folder), stdout=log, stderr=subprocess.STDOUT, start_new_session=True, cwd=folder)
        except (OSError, CommandError) as err:
            shutil.rmtree(folder, ignore_errors=True)
            why = err.strerror if isinstance(err, OSError) and err.strerror else err
            raise LocalFarmError(f"launch {iid}: {why}") from None
        self._children[proc.pid] = proc
        record["supervisor"] = {"pid": proc.pid, "start": start_time(proc.pid)}
        _write_json(folder / "record.json", record)
        return iid

    # --- tag, terminate ------------------------------------------------------------------------
    def _find(self, ids: Sequence[str]) -> dict[str, tuple[Path, dict[str, Any]]]:
        """Where each id's record is (live folder's record.json, or its tombstone); unknown ids: error."""
        found: dict[str, tuple[Path, dict[str, Any]]] = {}
        for iid in ids:
            if not re.fullmatch(r"i-local-[0-9a-f]{12}", iid):
                raise LocalFarmError(f"no such instance: {iid}")
            if (self.instances_dir / iid).exists():
                self._private(self.instances_dir / iid)
            for path in (self.instances_dir / iid / "record.json", self.ended_dir / f"{iid}.json"):
                record = _read_json(path)
                if record is not None:
                    found[iid] = (path, record)
                    break
            else:
                raise LocalFarmError(f"no such instance: {iid}")
        return found

    def verdict(self, iid: str) -> Optional[Verdict]:
        """The final check's verdict from the instance's console logs (newest boot last), or the
        one its tombstone kept; None when there is none."""
        path, record = self._find([iid])[iid]
        if path.parent == self.ended_dir:
            line = record.get("VerdictLine")
            return parse_console(line, iid) if isinstance(line, str) else None
        line = console_verdict_line(path.parent, iid)
        return parse_console(line, iid) if line else None

    def terminate(self, ids: Sequence[str], tags: Optional[Mapping[str, str]] = None,
                  mark: Optional[Mapping[str, Mapping[str, str]]] = None) -> list[str]:
        """Kill each VM (its supervisor's process group: qemu and its socats), remove its folder,
        keep a tombstone. Before anything is marked or touched, refuses unknown ids and any id
        lacking one of TAGS (K=V each: the scaler touches only its farm's instances). MARK (ID ->
        tags) is then set on each instance just before it is killed (the scaler records why it
        ended a worker). Ended ones (tombstones: a retry, another cycle): only the tags of MARK they
        lack are added, nothing more; what the first end recorded (vfarm:end, EndEpoch, EndReason)
        stands."""
        with self._locked():
            found = self._find(list(dict.fromkeys(ids)))
            wanted = dict(tags or {})
            other = [iid for iid, (_p, record) in found.items() if any(record.get("TagMap", {}).get(k) != v for k, v in wanted.items())]
            if other:
                shown = " ".join(f"{k}={v}" for k, v in sorted(wanted.items()))
                raise LocalFarmError(f"not tagged {shown}, nothing terminated: {' '.join(other)}")
            self._private(self.ended_dir)
            marks = mark or {}
            for iid, (path, record) in found.items():
                ended = path.parent == self.ended_dir
                have = record.get("TagMap", {})
                # An ended one keeps what its first end recorded: only the tags it lacks are added.
                new = {k: v for k, v in (marks.get(iid) or {}).items() if not (ended and k in have)}
                if new:
                    record["TagMap"] = {**have, **new}
                    _write_json(path, record)
                if ended:
                    continue
                self._stop(record, path.parent)
                # The console logs go with the folder: the tombstone keeps the verdict line.
                record["VerdictLine"] = console_verdict_line(path.parent, iid)
                record["EndEpoch"] = time.time()
                record["EndReason"] = "terminated by the user"
                record.pop("supervisor", None)
                _write_json(self.ended_dir / f"{iid}.json", record)
                shutil.rmtree(path.parent, ignore_errors=True)
        self._reap()
        return list(found)

    def _runs_for(self, pid: int, folder: Path) -> bool:
        """PID is FOLDER's supervisor (its command line is the one this cloud starts for FOLDER) or
        names FOLDER (qemu's disks). What a record says alone proves nothing: its pid may have been
        reused, or the record written by someone else."""
        return names_folder(pid, folder) or cmdline(pid) == [str(a) for a in self.supervisor(folder)]

    def _stop(self, record: dict[str, Any], folder: Path) -> None:
        """End the VM of the instance in FOLDER: its supervisor's process group, only while that
        group is FOLDER's (the pid is the same process, by its start time, and _runs_for FOLDER;
        or, the supervisor gone, a member of the group runs for it: qemu)."""
        sup = record.get("supervisor") or {}
        if not sup:
            return
        pgid = int(sup["pid"])
        if alive(pgid, sup.get("start")) and self._runs_for(pgid, folder):
            os.killpg(pgid, signal.SIGTERM)
        elif alive(pgid, None) or not any(self._runs_for(pid, folder) for pid in group_members(pgid)):
            # Another process holds the supervisor's pid (Linux hands out no pid that names a
            # living process group, so ours is gone, and the group of that number is someone
            # else's), or nothing of that number runs for FOLDER: a stale or planted record.
            return
        deadline = time.monotonic() + STOP_WAIT
        while group_members(pgid):  # a group of ours: the supervisor's session (setsid) made it
            self._reap()
            if time.monotonic() > deadline:
                try:
                    os.killpg(pgid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                deadline = time.monotonic() + 10
            time.sleep(0.1)


def console_verdict_line(folder: Path, iid: str) -> Optional[str]:
    """The newest verdict line in FOLDER's console logs (each boot's log, oldest first)."""
    found: Optional[str] = None
    try:  # the folder may go away meanwhile (a terminate): then there is nothing to read
        logs = sorted(folder.glob("console-*.log"), key=lambda p: (p.stat().st_mtime, p.name))
    except OSError:
        return None
    for log in logs:
        try:
            with open(log, "rb") as console:
                console.seek(max(0, log.stat().st_size - CONSOLE_TAIL))
                text = console.read().decode("utf-8", errors="replace")
        except OSError:
            continue
        found = find_line(text, iid) or found
    return found


# --- the supervisor: one per VM, in the background -------------------------------------------------


def _watch_qemu(folder: Path, stop: threading.Event) -> None:
    """Writes the pid of the supervisor's qemu child to FOLDER/qemu.pid (again after a retry as pc)."""
    me, last = os.getpid(), 0
    while not stop.wait(0.5):
        for entry in os.listdir("/proc"):
            if not entry.isdigit() or int(entry) == last:
                continue
            fields = _stat(int(entry))
            if fields and int(fields[1]) == me:
                try:
                    exe = Path(f"/proc/{entry}/exe").resolve().name
                except OSError:
                    continue
                if exe.startswith("qemu-system"):
                    last = int(entry)
                    (folder / "qemu.pid").write_text(f"{last}\n")


def supervise(folder: Path) -> int:
    """Boot the prepared instance in FOLDER until qemu exits; then write exit.json."""
    from .images import load_image
    from .local import LocalInstance

    record = _read_json(folder / "record.json")
    if record is None:
        print(f"vfarm local farm: {folder}: no record.json", file=sys.stderr)
        return 1
    instance = LocalInstance(load_image(Path(record["ImageDir"])), b"", folder=folder, instance_id=record["InstanceId"],
                             smp=int(record["smp"]), memory=int(record["memory"]), pool_forward=record.get("pool_forward"))
    stop = threading.Event()
    threading.Thread(target=_watch_qemu, args=(folder, stop), daemon=True).start()
    try:
        result = instance.boot(timeout=FOREVER)
    finally:
        stop.set()
    _write_json(folder / "exit.json", {"outcome": result.outcome, "seconds": result.seconds, "self_poweroff": result.self_poweroff,
                                       "harness_poweroff": result.harness_poweroff, "at": time.time()})
    return 0


def main(argv: Sequence[str]) -> int:
    if len(argv) == 2 and argv[0] == "supervise":
        return supervise(Path(argv[1]))
    print("usage: python -m vfarm.clouds.local_farm supervise FOLDER", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
