"""A fake machine for the on-instance code: FakeRunner answers commands from recorded outputs (or
from a small model of LVM, blkid, findmnt and swap that the commands change), so the whole
discover -> plan -> apply -> record path runs without root."""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from typing import Any, Callable, Optional, Union

from vfarm.cc_modules.runner import Result, Runner

Answer = Union[tuple[int, str, str], Callable[[list[str]], tuple[int, str, str]]]


class FakeRunner(Runner):
    """Runner whose commands never run: answers come from `answers` (argv prefix -> answer),
    then from `machine`, else exit 0 with no output. `fail` (argv prefix) makes that command
    fail with exit 5. Every argv is kept in `calls`."""

    def __init__(
        self,
        logger: Optional[logging.Logger] = None,
        *,
        dry_run: bool = False,
        answers: Optional[dict[tuple[str, ...], Answer]] = None,
        machine: Optional[FakeMachine] = None,
        fail: Optional[tuple[str, ...]] = None,
    ):
        super().__init__(logger or logging.getLogger("vfarm.test"), dry_run=dry_run)
        self.answers = answers or {}
        self.machine = machine
        self.fail = fail
        self.calls: list[list[str]] = []

    def _execute(self, argv: list[str], input: Optional[str], env: Optional[dict[str, str]], timeout: Optional[float]) -> Result:
        self.calls.append(list(argv))
        if self.fail and tuple(argv[: len(self.fail)]) == self.fail:
            return Result(argv, 5, "", f"{argv[0]}: simulated failure", 0.01)
        for prefix in sorted(self.answers, key=len, reverse=True):
            if tuple(argv[: len(prefix)]) == prefix:
                answer = self.answers[prefix]
                rc, out, err = answer(argv) if callable(answer) else answer
                return Result(argv, rc, out, err, 0.01)
        if self.machine is not None:
            rc, out, err = self.machine.command(argv)
            return Result(argv, rc, out, err, 0.01)
        return Result(argv, 0, "", "", 0.01)

    def changing_calls(self) -> list[list[str]]:
        """The calls that change something (not the read-only discovery commands)."""
        readonly = {"lvm", "blkid", "lsblk", "findmnt", "dpkg-query", "rpm", "apt-cache"}
        checks = (["swapon", "--show=NAME"], ["blockdev", "--getsize64"], ["cvmfs_config", "chksetup"], ["cvmfs_config", "probe"])
        return [c for c in self.calls if c[0] not in readonly and c[:2] not in checks]


@dataclass
class FakeMachine:
    """A small model: volume groups, LVs (with tags), PVs, what blkid finds, partitions, mounts,
    swaps. `links` are other names of devices (/dev/disk/by-id/x -> /dev/vdb): LVM names a PV by
    the kernel's name whatever name pvcreate and vgcreate were given. A disk with `partitions`
    holds a partition table (its signature is blkid's PTTYPE); wipefs on it is refused while it or
    a partition is mounted or swap (busy), and drops them (the kernel reads the table again)."""

    extent_size: int = 4 * 1024**2
    vgs: dict[str, dict[str, int]] = field(default_factory=dict)  # name -> extents, free
    lvs: dict[str, dict[str, Any]] = field(default_factory=dict)  # "vg/lv" -> extents, tags
    pvs: dict[str, str] = field(default_factory=dict)
    devices: dict[str, int] = field(default_factory=dict)  # blank disks: path -> extents
    signatures: dict[str, str] = field(default_factory=dict)  # path -> TYPE
    ids: dict[str, str] = field(default_factory=dict)  # path -> what else blkid -p says of it ("UUID=...\nLABEL=...\n"), gone with TYPE
    mounts: dict[str, str] = field(default_factory=dict)  # target -> source (`/dev/vdb[/sub]`: a bind mount), in the order made
    covered: dict[str, str] = field(default_factory=dict)  # target -> source of a mount made before the one `mounts` has there
    peers: list[set[str]] = field(default_factory=list)  # targets a umount of one of them clears all at once, covered mounts too (propagation)
    swaps: list[str] = field(default_factory=list)
    links: dict[str, str] = field(default_factory=dict)
    partitions: dict[str, list[str]] = field(default_factory=dict)  # disk -> its partitions (kernel names)
    stacked: dict[str, list[tuple[str, str]]] = field(default_factory=dict)  # disk -> (name, type) lsblk lists on it or its partitions

    def device_size(self, device: str) -> int:
        """What `blockdev --getsize64` says: the extents vgcreate makes of it, and the PV header."""
        return self.devices.get(device, 1000) * self.extent_size + 1024**2

    def add_vg(self, name: str, extents: int) -> FakeMachine:
        self.vgs[name] = {"extents": extents, "free": extents}
        return self

    def add_lv(self, vg: str, name: str, extents: int, tags: tuple[str, ...] = ("vfarm",), fs: Optional[str] = None) -> FakeMachine:
        self.lvs[f"{vg}/{name}"] = {"extents": extents, "tags": list(tags)}
        self.vgs[vg]["free"] -= extents
        if fs:
            self.signatures[f"/dev/{vg}/{name}"] = fs
        return self

    def report(self, kind: str, rows: list[dict[str, str]]) -> str:
        return json.dumps({"report": [{kind: rows}]})

    def fullreport(self) -> str:
        """As `lvm fullreport` groups it: one report per VG (its vg, pv, lv rows), one for the PVs in none."""
        size = str(self.extent_size)
        reports = []
        for name, vg in self.vgs.items():
            lvs = [{"lv_name": key.split("/")[1], "vg_name": name, "lv_size": str(lv["extents"] * self.extent_size), "lv_tags": ",".join(lv["tags"])}
                   for key, lv in self.lvs.items() if key.split("/")[0] == name]
            reports.append({"vg": [{"vg_name": name, "vg_extent_size": size, "vg_extent_count": str(vg["extents"]), "vg_free_count": str(vg["free"])}],
                            "pv": [{"pv_name": d, "vg_name": name} for d, v in self.pvs.items() if v == name], "lv": lvs, "pvseg": [], "seg": []})
        orphans = [{"pv_name": d, "vg_name": ""} for d, v in self.pvs.items() if not v]
        if orphans:
            reports.append({"pv": orphans, "pvseg": []})
        return json.dumps({"report": reports})

    def command(self, argv: list[str]) -> tuple[int, str, str]:
        tool = argv[0]
        if argv[:2] == ["lvm", "fullreport"]:
            return 0, self.fullreport(), ""
        argv = [self.links.get(a, a) for a in argv]  # the kernel's names
        if argv[:2] == ["blockdev", "--getsize64"]:
            return 0, f"{self.device_size(argv[2])}\n", ""
        if tool == "blkid" and argv[1:4] == ["-o", "device", "-t"]:  # every device carrying that UUID=, LABEL=...
            named = [d for d, ids in self.ids.items() if argv[4] in ids.replace('"', "").splitlines() and self.signatures.get(d)]
            return (0, "".join(f"{d}\n" for d in named), "") if named else (2, "", "")
        if tool == "blkid":
            found = self.signatures.get(argv[-1])
            kind = "PTTYPE" if argv[-1] in self.partitions else "TYPE"
            return (0, f"DEVNAME={argv[-1]}\n{kind}={found}\n{self.ids.get(argv[-1], '')}", "") if found else (2, "", "")
        if tool == "lsblk":  # --json --list --paths -o NAME,TYPE DEVICE: it and its partitions
            part = any(argv[-1] in parts for parts in self.partitions.values())
            below = [{"name": argv[-1], "type": "part" if part else "disk"}, *({"name": p, "type": "part"} for p in self.partitions.get(argv[-1], []))]
            below += [{"name": name, "type": kind} for name, kind in self.stacked.get(argv[-1], [])]
            return 0, json.dumps({"blockdevices": below}), ""
        if tool == "findmnt":  # each in the one made last at its point or at a folder above it (the host's / at least)
            rows: list[dict[str, Any]] = [{"target": "/", "source": "/dev/host", "id": 1, "parent": 0}]
            for number, (target, source) in enumerate([*self.covered.items(), *self.mounts.items()], start=2):
                above = [row for row in rows if target == row["target"] or target.startswith(row["target"].rstrip("/") + "/")]
                parent = max(row["id"] for row in above)
                rows.append({"target": target, "source": source, "id": number, "parent": parent, "fstype": "nfs4" if ":/" in source else "ext4"})
            return 0, json.dumps({"filesystems": rows}), ""
        if tool == "swapon" and argv[1:2] == ["--show=NAME"]:
            return 0, "".join(f"{s}\n" for s in self.swaps), ""
        if tool == "swapon":
            self.swaps.append(argv[-1])
        elif tool == "swapoff":
            self.swaps = [s for s in self.swaps if self.links.get(s, s) != argv[-1]]
        elif tool == "pvcreate":
            self.pvs[argv[-1]] = ""
            self.signatures.pop(argv[-1], None)
            self.ids.pop(argv[-1], None)
        elif tool == "wipefs":
            wiped = [argv[-1], *self.partitions.get(argv[-1], [])]
            if {self.links.get(d, d) for d in [*(s.split("[")[0] for s in [*self.mounts.values(), *self.covered.values()]), *self.swaps]} & set(wiped):
                return 1, "", f"wipefs: error: {argv[-1]}: probing initialization failed: Device or resource busy"
            self.partitions.pop(argv[-1], None)
            for device in wiped:
                self.signatures.pop(device, None)
                self.ids.pop(device, None)
        elif tool == "vgcreate":
            name, devices = argv[1], argv[2:]
            extents = sum(self.devices.get(d, 1000) for d in devices)
            self.vgs[name] = {"extents": extents, "free": extents}
            for d in devices:
                self.pvs[d] = name
        elif tool == "lvcreate":
            name = argv[argv.index("-n") + 1]
            extents = int(argv[argv.index("-l") + 1])
            vg = argv[-1]
            if self.vgs[vg]["free"] < extents:
                return 5, "", f"Volume group \"{vg}\" has insufficient free space"
            tags = [argv[i + 1] for i, a in enumerate(argv) if a == "--addtag"]
            self.add_lv(vg, name, extents, tuple(tags))
        elif tool.startswith("mkfs.") or tool == "mkswap":
            self.signatures[argv[-1]] = "swap" if tool == "mkswap" else tool.split(".", 1)[1]
        elif tool == "mount":  # over what is mounted there: that one is covered
            if argv[-1] in self.mounts:
                self.covered[argv[-1]] = self.mounts.pop(argv[-1])
            self.mounts[argv[-1]] = argv[-2]
        elif tool == "umount":  # the mount on top there; the one it covered is on top then
            if argv[-1] not in self.mounts:
                return 32, "", f"umount: {argv[-1]}: not mounted."
            peers = next((group for group in self.peers if argv[-1] in group), None)
            for target in peers or ():
                self.mounts.pop(target, None)
                self.covered.pop(target, None)
            if peers is None:
                self.mounts.pop(argv[-1])
                if argv[-1] in self.covered:
                    self.mounts[argv[-1]] = self.covered.pop(argv[-1])
        return 0, "", ""
