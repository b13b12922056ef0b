"""The local qemu backend: boot user-data in a throw-away VM on this machine and read back the result.

One instance = a folder with a sparse copy of the image's disk (its own instance-id), a data disk
(an empty volume group `vg_local` by default, as a site image's disk would have; blank on request;
or a disk file the caller made), a NoCloud seed ISO and the serial console log. A boot waits on
events only: console lines (stages, the harness's marker) and qemu's exit, under a timeout. After
power-off the files are read straight from the disk image with debugfs (no mount). Booting the same
instance again is a reboot: same disk, same instance-id.

qemu runs under TCG with the fastest line test-vm-facts.md measured (microvm, two vCPUs); KVM only
where a cheap test and a bounded probe boot say it really works. The guest's network (when asked
for) is slirp with restrict=on: the guest reaches exactly one address, 10.0.2.100:80, forwarded to
an HTTP server on this machine's 127.0.0.1.
"""

from __future__ import annotations

import base64
import ctypes
import http.server
import json
import os
import re
import shutil
import signal
import socketserver
import stat
import subprocess
import tempfile
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from ..files import atomic_write
from .hostcmd import CommandError, Stopwatch, locked, progress, run, start
from .images import HARNESS_MARK, Image, cache_root
from .loopback import LoopbackServer

GUEST_HTTP = "10.0.2.100"
GUEST_MAC = "52:54:00:12:34:56"
GUEST_POOL_PORT = 9618  # --pool-forward: the guest's 10.0.2.100:9618 goes to the pool (a socat per connection)
VG_NAME = "vg_local"
DEFAULT_TIMEOUT = 600.0
# The kernel prints steadily until userspace starts; this long a silence before that is a hang
# (seen with microvm under TCG on a loaded host: timer calibration never returns).
EARLY_STALL = 30.0
# What `collect` copies out: (path in the guest, kind). Directories are copied whole.
COLLECT = [
    ("/var/log/vfarm", "dir"),
    ("/var/log/vfarm-local", "dir"),
    ("/etc/cvmfs", "dir"),
    ("/var/log/cloud-init.log", "file"),
    ("/var/log/cloud-init-output.log", "file"),
    ("/var/lib/cloud/data/status.json", "file"),
    ("/var/lib/cloud/data/result.json", "file"),
    ("/etc/fstab", "file"),
    ("/etc/apt/sources.list.d", "dir"),
]
# Console lines worth a progress line: (pattern, label; {0} is the first group).
STAGES = [
    (re.compile(r"Linux version (\S+)"), "kernel {0}"),
    (re.compile(r"Welcome to (.+?)!"), "systemd: {0}"),
    (re.compile(r"Cloud-init v\. (\S+) running '([^']+)'"), "cloud-init {0}: {1}"),
    (re.compile(r"Cloud-init v\. \S+ finished at"), "cloud-init finished"),
    (re.compile(r"(vfarm check: .*)"), "{0}"),
    (re.compile(re.escape(HARNESS_MARK)), "local harness: cloud-init done, powering off"),
    (re.compile(r"reboot: (Power down|System halted)"), "{0}"),
    (re.compile(r"(Kernel panic.*)"), "{0}"),
]
# The kernel's report of its own fault (an oops), as opposed to a panic userspace brings about
# ("Attempted to kill init!", out of memory).
KERNEL_FAULT = re.compile(r"\bOops: ")
ESCAPES = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]|\r")
NETNS_NO_HTTP = "the loopback HTTP server cannot serve a guest in another network namespace: use --handlers embed or baked"
PRIVATE_DIR = 0o700  # instance state: the seed carries the user-data and with it the pool's token
PRIVATE_FILE = 0o600


# --- where local instances live ------------------------------------------------------------------


def local_root() -> Path:
    """The local state root: $VFARM_LOCAL_DIR, else /var/tmp/vfarm-local (instances, the farm)."""
    return Path(os.environ.get("VFARM_LOCAL_DIR", "/var/tmp/vfarm-local"))


def private_dir(path: Path, *, create: bool = True) -> Path:
    """PATH as a folder only this user reaches: made 0700 when missing (CREATE), tightened to 0700
    when it is ours. Refused (CommandError, one line) when it is not a folder, when it (or the
    symlink naming it) belongs to another user than the effective uid, or when group or others may
    write it: the default root sits in the shared /var/tmp, and what another user put there first
    (records a terminate trusts, a seed) must never be used. Loosening is never done for the caller."""
    path = Path(path)
    if create:
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            path.mkdir(mode=PRIVATE_DIR)
        except FileExistsError:
            pass  # checked below like any existing folder
    try:
        link, info = os.lstat(path), os.stat(path)
    except OSError as err:
        raise CommandError(f"{path}: {err.strerror or err}") from None
    uid = os.geteuid()
    owner = link.st_uid if link.st_uid != uid else info.st_uid
    if not stat.S_ISDIR(info.st_mode):
        problem = "is not a folder"
    elif owner != uid:
        problem = f"belongs to uid {owner}, not to this user (uid {uid})"
    elif info.st_mode & 0o022:
        problem = f"is writable by group or others (mode {stat.S_IMODE(info.st_mode):04o})"
    else:
        if stat.S_IMODE(info.st_mode) != PRIVATE_DIR:
            os.chmod(path, PRIVATE_DIR)
        return path
    raise CommandError(f"{path} {problem}: another user could have put files there, so vfarm keeps no instance state in it; "
                       "remove it, or set VFARM_LOCAL_DIR to a folder of your own")


# --- acceleration --------------------------------------------------------------------------------

_KVM: Optional[bool] = None


def host_tsc_khz(cpuinfo: Path = Path("/proc/cpuinfo"), cpufreq: Path = Path("/sys/devices/system/cpu/cpu0/cpufreq")) -> Optional[int]:
    """The rate of this host's TSC in kHz, which a TCG guest's TSC runs at (qemu reads the host's),
    when CPUINFO gives it: an invariant TSC (constant_tsc, nonstop_tsc) on a host without CPUFREQ
    and without aperfmperf, where "cpu MHz" is the kernel's TSC rate, not a measured clock
    frequency. Else None."""
    try:
        text = cpuinfo.read_text(errors="replace")
    except OSError:
        return None
    flags = re.search(r"^flags\s*:(.*)$", text, re.M)
    mhz = re.search(r"^cpu MHz\s*:\s*(\d+(?:\.\d+)?)\s*$", text, re.M)
    have = set(flags.group(1).split()) if flags else set()
    if mhz is None or cpufreq.exists() or not {"constant_tsc", "nonstop_tsc"} <= have or "aperfmperf" in have:
        return None
    khz = round(float(mhz.group(1)) * 1000)
    return khz if 100_000 <= khz <= 10_000_000 else None


def kvm_works(kernel: Optional[Path] = None) -> bool:
    """True only where KVM really runs a guest: vmx/svm and kvm_intel/kvm_amd, then a bounded probe
    boot. On these machines /dev/kvm is a software backend that hangs stock kernels (test-vm-facts)."""
    global _KVM
    if _KVM is not None:
        return _KVM
    _KVM = False
    if os.environ.get("VFARM_ACCEL") == "tcg" or not os.path.exists("/dev/kvm"):
        return False
    flags = Path("/proc/cpuinfo").read_text(errors="replace")
    if not re.search(r"^flags\s*:.*\b(vmx|svm)\b", flags, re.M):
        return False
    if not (Path("/sys/module/kvm_intel").exists() or Path("/sys/module/kvm_amd").exists()):
        return False
    if kernel is None:
        return False
    argv = ["timeout", "15", "qemu-system-x86_64", "-accel", "kvm", "-m", "256", "-nodefaults", "-nographic", "-serial", "stdio",
            "-no-reboot", "-kernel", str(kernel), "-append", "console=ttyS0 panic=-1"]
    try:
        done = run(argv, check=False, timeout=30)
    except CommandError:
        return False
    _KVM = "Kernel panic" in done.stdout
    return _KVM


# --- the loopback HTTP server ---------------------------------------------------------------------


# --- an EC2-style metadata service -----------------------------------------------------------------

# The guest reaches the metadata service where a cloud has it, 169.254.169.254:80. slirp forwards
# (guestfwd) only addresses inside its own network, so a guest that gets its user-data this way
# lives in 169.254.0.0/16 (qemu refuses the forward in the default 10.0.2.0/24).
METADATA_ADDRESS = "169.254.169.254"
METADATA_NET = "169.254.0.0/16"
METADATA_HOST = "169.254.0.2"  # slirp's own address (the gateway)
METADATA_DNS = "169.254.0.3"
METADATA_GUEST = "169.254.0.15"  # what slirp's DHCP hands the guest first
METADATA_POOL = "169.254.0.100"  # the pool forward's address in that network (GUEST_HTTP's role)
# The API versions cloud-init's Ec2 datasource asks for (22.4: 2009-04-04, 2016-09-02; 25.1 also
# 2021-03-23), and `latest`; each gets the same answers.
METADATA_VERSIONS = ("1.0", "2009-04-04", "2016-09-02", "2021-03-23", "latest")
TOKEN_TTL_HEADER = "X-aws-ec2-metadata-token-ttl-seconds"
TOKEN_HEADER = "X-aws-ec2-metadata-token"


class MetadataHandler(http.server.BaseHTTPRequestHandler):
    server: UnixMetadataServer  # or any socketserver mixed with MetadataService

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the base class's name
        self.server.requests.append(f"{self.command} {self.path} {args[1] if len(args) > 1 else ''}".strip())

    def _send(self, code: int, body: bytes, kind: str = "text/plain") -> None:
        self.send_response(code)
        self.send_header("Content-Type", kind)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_PUT(self) -> None:  # noqa: N802 - http.server's name
        """IMDSv2: PUT /latest/api/token with a TTL header gives a session token."""
        ttl = self.headers.get(TOKEN_TTL_HEADER, "")
        if self.path != "/latest/api/token" or not ttl.isdigit() or not 1 <= int(ttl) <= 21600:
            self._send(400, b"Bad Request")
            return
        self._send(200, self.server.token.encode())

    def do_GET(self) -> None:  # noqa: N802 - http.server's name
        token = self.headers.get(TOKEN_HEADER)
        if token is not None and token != self.server.token:
            self._send(401, b"Unauthorized")
            return
        if self.server.require_token and token is None:
            self._send(401, b"Unauthorized")
            return
        found = self.server.answer(self.path)
        if found is None:
            self._send(404, b"Not Found")
        else:
            self._send(200, found[0], found[1])


class MetadataService:
    """An EC2-style instance metadata service for one instance: its meta-data tree (instance id,
    host name, type, image, address, zone), its user-data as bytes, and IMDSv2 session tokens
    (IMDSv1 requests without a token too, unless REQUIRE_TOKEN). The guest sees it as
    http://169.254.169.254/ through `metadata_netdev`."""

    thread: threading.Thread

    def _init_service(self, instance_id: str, userdata: bytes, hostname: str, *, instance_type: str, image_id: str,
                      local_ipv4: str, zone: str, require_token: bool, instance_store: bool = False) -> None:
        self.userdata = userdata
        self.require_token = require_token
        self.token = uuid.uuid4().hex
        self.requests: list[str] = []
        self.meta: dict[str, Any] = {
            "ami-id": image_id or "ami-local", "hostname": hostname, "instance-id": instance_id, "instance-type": instance_type,
            "local-hostname": hostname, "local-ipv4": local_ipv4, "placement": {"availability-zone": zone}, "mac": GUEST_MAC,
            # The NIC as EC2 describes it: cloud-init then raises it with DHCPv4 only. Without it,
            # its fallback asks for DHCPv6 too, which slirp never answers (ifup hangs).
            "network": {"interfaces": {"macs": {GUEST_MAC: {"device-number": "0", "interface-id": "eni-local", "local-ipv4s": local_ipv4,
                                                            "mac": GUEST_MAC}}}},
        }
        if instance_store:  # the data disk, described as EC2 describes an instance store (cloud-init maps sdb to vdb)
            self.meta["block-device-mapping"] = {"ami": "/dev/sda1", "ephemeral0": "sdb", "root": "/dev/sda1"}
        self.identity = {"instanceId": instance_id, "instanceType": instance_type, "imageId": self.meta["ami-id"], "region": zone,
                         "availabilityZone": zone, "privateIp": local_ipv4}

    def _start(self, serve: Any) -> None:
        self.thread = threading.Thread(target=serve, name="vfarm-metadata", daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.shutdown()  # type: ignore[attr-defined]  # the socketserver it is mixed into
        self.server_close()  # type: ignore[attr-defined]

    def answer(self, path: str) -> Optional[tuple[bytes, str]]:
        """(body, content type) for a GET of PATH, None for 404."""
        path = path.split("?", 1)[0]
        if path == "/":
            return "\n".join(METADATA_VERSIONS).encode(), "text/plain"
        version, _, rest = path.lstrip("/").partition("/")
        if version not in METADATA_VERSIONS:
            return None
        if rest in ("", "/"):
            return b"dynamic\nmeta-data\n" + (b"user-data" if self.userdata else b""), "text/plain"
        if rest == "user-data":
            return (self.userdata, "application/octet-stream") if self.userdata else None
        if rest.rstrip("/") == "dynamic/instance-identity/document":
            return json.dumps(self.identity, indent=2).encode(), "application/json"
        if rest == "meta-data" or rest.startswith("meta-data/"):
            node: Any = self.meta
            for part in [p for p in rest.split("/")[1:] if p]:
                if not isinstance(node, dict) or part not in node:
                    return None
                node = node[part]
            if isinstance(node, dict):  # a folder: its entries, sub-folders with a trailing slash
                return "\n".join(k + "/" if isinstance(v, dict) else k for k, v in node.items()).encode(), "text/plain"
            return str(node).encode(), "text/plain"
        return None



class UnixMetadataServer(MetadataService, socketserver.ThreadingUnixStreamServer):
    """The metadata service on a Unix socket of its own: qemu's socat reaches it from any network
    namespace (a socket file is not in one), so a guest beside a pool in a namespace reads it too."""

    daemon_threads = True

    def __init__(self, instance_id: str, userdata: bytes, hostname: str, *, instance_type: str = "local", image_id: str = "",
                 local_ipv4: str = METADATA_GUEST, zone: str = "local", require_token: bool = False, instance_store: bool = False) -> None:
        self._init_service(instance_id, userdata, hostname, instance_type=instance_type, image_id=image_id, local_ipv4=local_ipv4,
                           zone=zone, require_token=require_token, instance_store=instance_store)
        # Its own short folder: a socket path may hold only 107 bytes.
        self.folder = Path(tempfile.mkdtemp(prefix="vfarm-md-"))
        super().__init__(str(self.folder / "metadata.sock"), MetadataHandler)
        self._start(self.serve_forever)

    @property
    def socat_target(self) -> str:
        return f"UNIX-CONNECT:{self.folder / 'metadata.sock'}"

    def close(self) -> None:
        super().close()
        shutil.rmtree(self.folder, ignore_errors=True)


# How a guest reading the metadata service raises its NIC: a static address in that network, on the
# kernel command line (cloud-init reads `network-config=` first, whatever the datasource). Off
# EC2, cloud-init's Ec2Local stage does not run (the platform is not identified as AWS), so the
# network stage would otherwise come up with the fallback config, whose DHCPv6 slirp never answers.
METADATA_NETWORK_B64 = base64.b64encode(f"""version: 2
ethernets:
  eth0:
    match: {{macaddress: "{GUEST_MAC}"}}
    set-name: eth0
    addresses: [{METADATA_GUEST}/16]
""".encode()).decode()


# System config on the kernel command line (cloud-init's `cc: ... end_cc`), for a guest that is not
# on EC2 yet reads an EC2 metadata service: no warning that the platform is not identified as AWS,
# and the network raised once (the network stage, where the Ec2 datasource is found off EC2, would
# bring eth0 up a second time and log ifup's "already configured").
METADATA_SYSTEM_CONFIG = "cc: {datasource: {Ec2: {strict_id: false}}, disable_network_activation: true} end_cc"


def metadata_cmdline(cloud_init_version: str) -> str:
    """The kernel command line's part for a metadata guest: the datasource (`ds=Ec2` from cloud-init
    23.2 on, which deprecates the older `ci.ds=`), its network and its system config."""
    major_minor = tuple(int(n) for n in re.findall(r"\d+", cloud_init_version)[:2])
    datasource = "ds=Ec2" if len(major_minor) == 2 and major_minor >= (23, 2) else "ci.ds=Ec2"
    return f"{datasource} network-config={METADATA_NETWORK_B64} {METADATA_SYSTEM_CONFIG}"


def metadata_netdev(metadata: str, pool_forward: Optional[str] = None, forwards: Optional[dict[int, str]] = None) -> str:
    """qemu's -netdev for a guest that reads its data from the metadata service: slirp with
    restrict=on in 169.254.0.0/16, 169.254.169.254:80 forwarded to METADATA (a socat address: a
    metadata server's socat_target), (POOL_FORWARD, HOST:PORT) the pool at METADATA_POOL:9618,
    and each of FORWARDS ({guest port: HOST:PORT}) at METADATA_POOL:PORT, a socat per connection."""
    options = ["user,id=n0,restrict=on", f"net={METADATA_NET}", f"host={METADATA_HOST}", f"dns={METADATA_DNS}", f"dhcpstart={METADATA_GUEST}",
               f"guestfwd=tcp:{METADATA_ADDRESS}:80-cmd:socat - {metadata}"]
    if pool_forward is not None:
        options.append(f"guestfwd=tcp:{METADATA_POOL}:{GUEST_POOL_PORT}-cmd:socat - TCP:{pool_forward}")
    options += [f"guestfwd=tcp:{METADATA_POOL}:{port}-cmd:socat - TCP:{target}" for port, target in sorted((forwards or {}).items())]
    return ",".join(options)


# --- disks ------------------------------------------------------------------------------------------


def _sparse_copy(src: Path, dest: Path) -> None:
    run(["cp", "--sparse=always", src, dest])


def vg_disk_template(size: str, vg: str = VG_NAME) -> tuple[Path, dict[str, int]]:
    """A cached data disk of SIZE carrying an empty volume group VG (pvcreate/vgcreate through a
    loop device: the host can do that much LVM, not more). Returns the file and the VG's extents."""
    base = cache_root() / "data"
    target = base / f"{vg}-{size}.raw"
    meta = target.with_suffix(".json")
    with locked(base / ".lock"):
        if target.is_file() and meta.is_file():
            return target, json.loads(meta.read_text())
        partial = base / f".{vg}-{size}.partial"
        run(["truncate", "-s", "0", partial])
        run(["truncate", "-s", size, partial])
        loop = run(["losetup", "--find", "--show", partial]).stdout.strip()
        try:
            # --devices keeps the host's LVM to this one device (no clash with any other vg_local).
            run(["pvcreate", "-q", "--devices", loop, loop])
            run(["vgcreate", "-q", "--devices", loop, vg, loop])
            report = json.loads(run(["vgs", "--devices", loop, "--reportformat", "json", "--units", "b", "--nosuffix",
                                     "-o", "vg_name,vg_extent_size,vg_extent_count,vg_free_count", vg]).stdout)
            row = report["report"][0]["vg"][0]
            info = {"extent_size": int(row["vg_extent_size"]), "extents": int(row["vg_extent_count"]), "free": int(row["vg_free_count"])}
            run(["vgchange", "-q", "--devices", loop, "-an", vg])
        finally:
            run(["losetup", "-d", loop], check=False)
        partial.rename(target)
        meta.write_text(json.dumps(info) + "\n")
        return target, info


# With a NIC, the seed says how to raise it: a static address in slirp's network. Without it,
# cloud-init's fallback asks for DHCPv6 too (25.1), which slirp never answers: ifup then hangs.
NETWORK_CONFIG = f"""version: 2
ethernets:
  eth0:
    match: {{macaddress: "{GUEST_MAC}"}}
    set-name: eth0
    addresses: [10.0.2.15/24]
    routes: [{{to: 0.0.0.0/0, via: 10.0.2.2}}]
"""


def make_seed(folder: Path, userdata: bytes, instance_id: str, hostname: str, network: bool = False) -> Path:
    """FOLDER/seed.iso, the NoCloud seed, and its files in FOLDER/seed/: all 0600 (the user-data may
    carry a pool token or proxy credentials, as `vfarm build` writes it)."""
    seed = folder / "seed"
    seed.mkdir(mode=PRIVATE_DIR, exist_ok=True)
    files = {"user-data": userdata, "meta-data": f"instance-id: {instance_id}\nlocal-hostname: {hostname}\n".encode()}
    if network:
        files["network-config"] = NETWORK_CONFIG.encode()
    for name, data in files.items():
        atomic_write(seed / name, data, PRIVATE_FILE, follow_symlinks=False)
    iso = folder / "seed.iso"
    run(["genisoimage", "-quiet", "-output", iso, "-volid", "cidata", "-joliet", "-rock", *(seed / name for name in files)])
    iso.chmod(PRIVATE_FILE)
    return iso


def debugfs_read(disk: Path, path: str) -> Optional[bytes]:
    """One file from an ext4 disk image, or None when it is not there."""
    done = run(["debugfs", "-R", f"cat {path}", disk], check=False, timeout=60, binary=True)
    if done.returncode != 0 or b"File not found" in done.stderr or b"not found" in done.stderr.lower():
        return None
    return done.stdout


def debugfs_collect(disk: Path, dest: Path, items: list[tuple[str, str]]) -> list[str]:
    """Copy ITEMS (path, "file"|"dir") out of DISK into DEST/<path>; returns what was found. They
    are copied into a fresh folder first, then each item's place in DEST is replaced by what came
    out (or emptied when nothing did): an earlier run's files in DEST are never reported as found.
    Nothing else in DEST is touched."""
    dest.mkdir(parents=True, exist_ok=True)
    fresh = Path(tempfile.mkdtemp(prefix=".collect-", dir=dest))  # in DEST: the moves below are renames
    try:
        commands = []
        for path, kind in items:
            parent = fresh / Path(path).parent.relative_to("/")
            parent.mkdir(parents=True, exist_ok=True)
            if kind == "dir":
                commands.append(f'rdump "{path}" "{parent}"')
            else:
                commands.append(f'dump -p "{path}" "{parent / Path(path).name}"')
        script = fresh / ".debugfs-commands"
        script.write_text("\n".join(commands) + "\n")
        run(["debugfs", "-f", script, disk], check=False, timeout=120)
        found = [path for path, _ in items if (fresh / path.lstrip("/")).exists()]
        for path, _kind in items:
            rel = path.lstrip("/")
            _remove(dest / rel)
            if path in found:
                (dest / rel).parent.mkdir(parents=True, exist_ok=True)
                (fresh / rel).rename(dest / rel)
    finally:
        shutil.rmtree(fresh, ignore_errors=True)
    return found


def _remove(path: Path) -> None:
    """PATH gone, whatever it is (a symlink itself, never what it points to)."""
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    else:
        path.unlink(missing_ok=True)


# --- the instance -------------------------------------------------------------------------------------


def _die_with_parent() -> None:
    """In the child before exec: qemu gets SIGTERM when the process that started it dies, so an
    interrupted test or launch never leaves a VM running."""
    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, int(signal.SIGTERM))  # PR_SET_PDEATHSIG
    except OSError:
        pass


@dataclass
class BootResult:
    # "poweroff" (qemu exited), "timeout", "panic", "kernel-fault" (the guest kernel oopsed: a first
    # boot starts over from the image), "no-pit"/"stalled"/"early-panic" (kernel failed before userspace: retried as pc)
    outcome: str
    seconds: float
    harness_poweroff: bool  # the local harness powered it off (False: the instance did it itself)
    stages: list[tuple[float, str]] = field(default_factory=list)
    cloud_init_finished: bool = False
    console: Optional[Path] = None

    @property
    def powered_off(self) -> bool:
        return self.outcome == "poweroff"

    @property
    def self_poweroff(self) -> bool:
        """Powered off by itself (the final check), not by the test harness."""
        return self.powered_off and not self.harness_poweroff


class LocalInstance:
    """A local VM instance: prepare() once, boot() once or more (reboots), collect() after each."""

    def __init__(self, image: Image, userdata: bytes, *, folder: Optional[Path] = None, disk_size: str = "8G",
                 data_disk: str = "vg", http_root: Optional[Path] = None, smp: int = 2, memory: int = 2048,
                 instance_id: Optional[str] = None, quiet: bool = False, pool_forward: Optional[str] = None,
                 netns: Optional[str] = None, metadata: bool = False, forwards: Optional[dict[int, str]] = None,
                 instance_store: bool = False):
        self.image = image
        # METADATA: the guest reads meta-data and user-data from an EC2-style service at
        # 169.254.169.254 (UnixMetadataServer), as on a cloud, instead of a NoCloud seed; with
        # INSTANCE_STORE it says the data disk is EC2's instance store (ephemeral0), which
        # cloud-init's `mounts` then mounts at /mnt by default, as on EC2.
        self.metadata = metadata
        self.instance_store = instance_store
        self.pool_forward = pool_forward  # HOST:PORT of an HTCondor pool, as qemu's socat reaches it
        # More routes: the guest's 10.0.2.100:PORT (169.254.0.100:PORT with the metadata service) -> HOST:PORT
        # on this host (e.g. 3128 to a squid).
        self.forwards = dict(forwards or {})
        if 80 in self.forwards or GUEST_POOL_PORT in self.forwards:
            raise CommandError(f"ports 80 and {GUEST_POOL_PORT} of {GUEST_HTTP} are the HTTP server's and the pool's: forward another port")
        self.netns = netns  # a network namespace (/proc/PID/ns/net, /run/netns/NAME) to run qemu in
        self.userdata = userdata
        self.instance_id = instance_id or f"i-local-{uuid.uuid4().hex[:12]}"
        self._in_local_root = folder is None  # the root is then ours to make private too
        self.folder = Path(folder) if folder else local_root() / self.instance_id
        self.disk_size = disk_size
        self.data_disk_kind = data_disk  # "vg", "blank", or the path of a disk file to use as it is
        self.http_root = http_root
        self.smp = smp
        self.memory = memory
        self.quiet = quiet
        self.vg: dict[str, int] = {}
        self.boots: list[BootResult] = []
        self.http_requests: list[str] = []

    @property
    def disk(self) -> Path:
        return self.folder / "disk.raw"

    @property
    def data(self) -> Path:
        return self.folder / "data.raw"

    @property
    def hostname(self) -> str:
        return "vfarm-" + self.instance_id[-8:]

    def _say(self, message: str) -> None:
        if not self.quiet:
            progress("local", message)

    def make_folder(self) -> Path:
        """The instance folder, private (private_dir), and the local state root with it when the
        folder is the default one under it."""
        if self._in_local_root:
            private_dir(local_root())
        return private_dir(self.folder)

    def prepare(self) -> LocalInstance:
        self.make_folder()
        _sparse_copy(self.image.disk, self.disk)
        if self.data_disk_kind == "vg":
            template, self.vg = vg_disk_template(self.disk_size)
            _sparse_copy(template, self.data)
        elif self.data_disk_kind == "blank":
            run(["truncate", "-s", self.disk_size, self.data])
        else:
            _sparse_copy(Path(self.data_disk_kind), self.data)
        for disk in (self.disk, self.data):
            disk.chmod(PRIVATE_FILE)  # cp and truncate make them 0644
        if not self.metadata:
            make_seed(self.folder, self.userdata, self.instance_id, self.hostname,
                      network=self.http_root is not None or self.pool_forward is not None or bool(self.forwards))
        (self.folder / "instance.json").write_text(json.dumps({
            "instance_id": self.instance_id, "folder": str(self.folder), "image": str(self.image.directory), "data_disk": self.data_disk_kind,
            "disk_size": self.disk_size, "vg": self.vg}, indent=2) + "\n")
        return self

    def qemu_argv(self, port: Optional[int], machine: str = "microvm", metadata: Optional[str] = None) -> list[str]:
        """microvm (fastest) or pc (the conventional fallback): same disks, same network. With
        METADATA (a metadata server's socat address) the guest has no seed and cloud-init's Ec2 datasource
        (`ci.ds=Ec2`) reads its data at 169.254.169.254 (see metadata_netdev)."""
        # TCG with one thread for all vCPUs: with a thread per vCPU (MTTCG) the guest kernel's
        # live code patching (static keys, via int3) raced the other vCPU's translated code on a
        # loaded host and trixie guests died of "Oops: int3" (seen twice in full CI runs).
        accel = "kvm" if kvm_works(self.image.kernel) else "tcg,thread=single"
        mmio = machine == "microvm"
        # microvm has no HPET or ACPI PM timer: the kernel calibrates its TSC against the PIT alone,
        # which under TCG fails on some hosts on every boot (the kernel then hangs). Told the rate,
        # it skips the calibration (tsc=reliable: one TSC for both vCPUs, as qemu gives them).
        tsc = host_tsc_khz() if mmio and accel != "kvm" else None
        cmdline = "root=LABEL=root console=ttyS0 rw" + (f" tsc_early_khz={tsc} tsc=reliable" if tsc else "")
        if metadata is not None:
            cmdline += " " + metadata_cmdline(str(self.image.info.get("cloud_init", "")))
        argv = ["qemu-system-x86_64", "-accel", accel, "-cpu", "host" if accel == "kvm" else "qemu64",
                "-smp", str(self.smp), "-m", str(self.memory),
                "-machine", "microvm,pit=on,pic=on,rtc=on" if mmio else "pc", "-nodefaults", "-nographic", "-serial", "stdio", "-no-reboot",
                "-kernel", str(self.image.kernel), "-initrd", str(self.image.initrd),
                "-append", cmdline]
        disks = [(self.disk, False), (self.data, False)] + ([(self.folder / "seed.iso", True)] if metadata is None else [])
        suffix = "device" if mmio else "pci"
        for n, (path, readonly) in enumerate(disks):
            argv += ["-drive", f"id=d{n},file={path},format=raw,if=none" + (",readonly=on" if readonly else ""),
                     "-device", f"virtio-blk-{suffix},drive=d{n}"]
        argv += ["-device", f"virtio-rng-{suffix}"]
        # The only addresses the guest may reach (restrict=on): 10.0.2.100:80 -> 127.0.0.1:PORT, and
        # 10.0.2.100:9618 -> the pool, and any other port asked for. `cmd:socat` starts one socat per connection (a `tcp:` target
        # carries one connection only: a startd's later updates would never arrive).
        if metadata is not None:
            return argv + ["-netdev", metadata_netdev(metadata, self.pool_forward, self.forwards), "-device", f"virtio-net-{suffix},netdev=n0,mac={GUEST_MAC}"]
        forwards = []
        if port is not None:
            forwards.append(f"guestfwd=tcp:{GUEST_HTTP}:80-cmd:socat - TCP:127.0.0.1:{port}")
        if self.pool_forward is not None:
            forwards.append(f"guestfwd=tcp:{GUEST_HTTP}:{GUEST_POOL_PORT}-cmd:socat - TCP:{self.pool_forward}")
        for guest_port, target in sorted(self.forwards.items()):
            forwards.append(f"guestfwd=tcp:{GUEST_HTTP}:{guest_port}-cmd:socat - TCP:{target}")
        if forwards:
            argv += ["-netdev", ",".join(["user,id=n0,restrict=on", *forwards]),
                     "-device", f"virtio-net-{suffix},netdev=n0,mac={GUEST_MAC}"]
        return argv


    def boot(self, timeout: float = DEFAULT_TIMEOUT) -> BootResult:
        """Boot the instance once and wait until qemu exits (power-off) or TIMEOUT seconds pass."""
        number = len(self.boots) + 1
        console = self.folder / f"console-{number}.log"
        if self.netns and self.http_root:
            raise CommandError(NETNS_NO_HTTP)
        server = LoopbackServer(self.http_root) if self.http_root else None
        metadata = (UnixMetadataServer(self.instance_id, self.userdata, self.hostname, image_id=self.image.name, instance_store=self.instance_store)
                    if self.metadata else None)
        meta_target = metadata.socat_target if metadata else None
        port = server.port if server else None

        def run(machine: str) -> BootResult:
            argv = self.qemu_argv(port, machine, meta_target)
            (self.folder / f"qemu-{number}.argv").write_text(json.dumps(argv) + "\n")
            return self._run_qemu(argv, console, timeout, number)

        def keep_console(kept_as: str) -> None:
            console.rename(self.folder / f"console-{number}-{kept_as}.log")

        try:
            machine = os.environ.get("VFARM_QEMU_MACHINE", "microvm")
            result = run(machine)
            if result.outcome in ("no-pit", "stalled", "early-panic") and machine == "microvm":
                # microvm's timer calibration fails on some hosts (the kernel then hangs, or panics
                # in a timer interrupt), at random on a loaded one; it shows before userspace runs,
                # so the disks are untouched: boot again as `pc`.
                self._say(f"{self.instance_id}: microvm hung in the kernel ({result.outcome}): booting as -machine pc")
                keep_console(f"microvm-{result.outcome}")
                machine = "pc"
                result = run(machine)
            if result.outcome == "kernel-fault" and number == 1:
                # Under TCG on a loaded host the emulated CPU now and then corrupts the guest kernel's
                # state (seen: "Oops: int3", "Oops: double fault" with impossible EFLAGS), after the
                # guest wrote to its disks. Nothing it did can be trusted: start over from the image.
                # A fault the guest's own work causes comes back on the second boot, and fails there.
                self._say(f"{self.instance_id}: the guest kernel faulted (an emulation fault on a busy host): starting the instance over from its image")
                keep_console("kernel-fault")
                self.prepare()
                result = run(machine)
        finally:
            if server:
                self.http_requests += server.requests
                (self.folder / "http-requests.log").write_text("\n".join(self.http_requests) + "\n")
                server.close()
            if metadata:
                with open(self.folder / "metadata-requests.log", "a", encoding="utf-8") as log:
                    log.write("".join(f"{line}\n" for line in metadata.requests))
                metadata.close()
        self.boots.append(result)
        return result

    def _run_qemu(self, argv: list[str], console: Path, timeout: float, number: int) -> BootResult:
        watch = Stopwatch()
        stages: list[tuple[float, str]] = []
        flags = {"harness": False, "finished": False, "panic": False, "no-pit": False, "userspace": False, "oops": False}
        last_output = [time.monotonic()]
        machine = argv[argv.index("-machine") + 1].split(",")[0]
        self._say(f"{self.instance_id}: boot {number} ({self.image.name}, {argv[2]}, {machine}, {self.smp} vCPU), console: {console}")
        launcher = ["nsenter", f"--net={self.netns}", "--"] if self.netns else []
        proc = start(launcher + argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, preexec_fn=_die_with_parent)
        panic = threading.Event()

        def reader() -> None:
            assert proc.stdout is not None
            with open(console, "wb") as log:
                for raw in proc.stdout:
                    log.write(raw)
                    log.flush()
                    last_output[0] = time.monotonic()
                    line = ESCAPES.sub("", raw.decode("utf-8", errors="replace")).strip()
                    if "Run /init as init process" in line or "Welcome to" in line:
                        flags["userspace"] = True
                    elif KERNEL_FAULT.search(line):
                        flags["oops"] = True
                    for pattern, label in STAGES:
                        m = pattern.search(line)
                        if m:
                            text = label.format(*m.groups())
                            stages.append((watch(), text))
                            self._say(f"{watch():6.1f}s {text}")
                            if HARNESS_MARK in line:
                                flags["harness"] = True
                            elif "finished at" in line:
                                flags["finished"] = True
                            elif "Kernel panic" in line:
                                flags["panic"] = True
                                panic.set()
                            break
                    if "Unable to calibrate against PIT" in line and machine == "microvm":
                        # Fatal only on microvm: it has no HPET/PM timer to calibrate against instead.
                        flags["no-pit"] = True
                        panic.set()

        thread = threading.Thread(target=reader, name="vfarm-console", daemon=True)
        thread.start()
        outcome = "poweroff"
        deadline = time.monotonic() + timeout
        while proc.poll() is None:
            if panic.is_set():
                outcome = ("no-pit" if flags["no-pit"] else "early-panic" if not flags["userspace"]
                           else "kernel-fault" if flags["oops"] else "panic")
                break
            if time.monotonic() > deadline:
                outcome = "timeout"
                break
            if not flags["userspace"] and time.monotonic() - last_output[0] > EARLY_STALL:
                outcome = "stalled"
                break
            try:
                proc.wait(timeout=0.5)
            except subprocess.TimeoutExpired:
                pass
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        thread.join(timeout=10)
        seconds = watch()
        if outcome == "poweroff" and proc.returncode != 0:
            outcome = f"qemu exit {proc.returncode}"
        who = "the local harness" if flags["harness"] else "the instance itself"
        self._say(f"{self.instance_id}: boot {number}: {outcome} after {seconds:.1f} s"
                  + (f" (by {who})" if outcome == "poweroff" else ""))
        return BootResult(outcome, seconds, flags["harness"], stages, flags["finished"], console)

    def read(self, path: str) -> Optional[bytes]:
        """A file of the instance's root disk (after power-off)."""
        return debugfs_read(self.disk, path)

    def read_data_disk(self, path: str) -> Optional[bytes]:
        return debugfs_read(self.data, path)

    def collect(self, dest: Path) -> list[str]:
        """Copy summary, logs, status, fstab, /etc/cvmfs, lsblk/swapon output into DEST."""
        dest = Path(dest)
        found = debugfs_collect(self.disk, dest, COLLECT)
        shutil.copyfile(self.folder / "instance.json", dest / "instance.json")
        for stale in dest.glob("console-*.log"):  # an earlier run's boots
            stale.unlink()
        (dest / "http-requests.log").unlink(missing_ok=True)
        for boot_log in sorted(self.folder.glob("console-*.log")):
            shutil.copyfile(boot_log, dest / boot_log.name)
        if (self.folder / "http-requests.log").exists():
            shutil.copyfile(self.folder / "http-requests.log", dest / "http-requests.log")
        return found

    def summary(self) -> Optional[dict[str, Any]]:
        raw = self.read("/var/log/vfarm/summary.json")
        if raw is None:
            return None
        try:
            doc: dict[str, Any] = json.loads(raw)
        except ValueError:
            return None
        return doc

    def remove(self) -> None:
        shutil.rmtree(self.folder, ignore_errors=True)
