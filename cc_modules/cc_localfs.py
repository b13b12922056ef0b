"""cloud-init config module `localfs`: LVM volumes by percentages, with filesystems, mounts,
swap and /etc/fstab. discover (lvm2 JSON reports, blkid, findmnt) -> plan (pure) -> apply
(through the one runner) -> record. The part-handler for text/localfs-config runs `work` too.

Safety: an existing LV is left alone (ours carry the LVM tag `localfs_spec.LV_TAG`; a same-named
LV without it is a conflict); no mkfs where blkid finds a filesystem; pvcreate only on blank
devices unless `force` (which unmounts and swaps off such a device and its partitions first:
cloud-init's `mounts` puts EC2's instance store, Azure's resource disk's sdb1 at /mnt; a failure
stops the run before any wipe; one mounted under another mount is refused); the sizes are known to fit before anything is touched (on a VG
still to create: the devices' sizes); existing content of a mount point is carried into the new
filesystem (once: a marker at its root) if that holds nothing else yet (a volume with data is
refused there, neither copied onto nor mounted over: by the plan when the volume is mounted
somewhere, its root read there), never with a mount below it that is not ours; a volume moved
elsewhere is unmounted from its old place once mounted at the new one (plain umount, a failure
recorded); fstab is written atomically, at the end, one line per volume of ours, each with
`nofail`; every line naming a device that becomes a PV, or one of its partitions (by any name:
a symlink, UUID=, LABEL=) is commented out, before the wipe, and recorded as `commented_out`; a
second run plans nothing. The record lists the volumes as `mounts` (what fstab says of them),
which the final check finds in place at every boot: this module runs once per instance.
Volumes of ours the config no longer names are kept, fstab lines too, and recorded as `kept`.
"""

from __future__ import annotations

import json
import os
import posixpath
import re
import stat
import unicodedata
from dataclasses import asdict, dataclass, field, replace
from pathlib import PurePosixPath
from typing import Any, Optional

from ..config import localfs as localfs_spec
from ..config.localfs import LV_TAG, LocalfsSpec, VolumeGroup
from ..errors import PlanError, StepError
from ..files import atomic_write, read_text, split_mounts, under, unescape_octal
from ..textsafe import UnsafeValue
from .handling import PER_INSTANCE, Context, config_module
from .meta import DISTROS, module_meta
from .runner import CommandFailed
from .steps import Custom, Plan, Run, Step, WriteFile, apply

NAME = "localfs"
DEFAULT_VG = "vg_local"  # the name of a VG created from `devices` when the config names none
FSTAB = "/etc/fstab"
CARRY_DIR = "/run/vfarm/localfs"  # where a new filesystem is mounted while content is copied in
CARRY_MARK = ".vfarm-localfs-copied"  # at the root of a filesystem the content was copied onto
NEW_EXTENT = 4 * 1024**2  # vgcreate's default extent size
PV_START = 1024**2  # where pvcreate's default alignment puts a PV's first extent
FSTAB_MARK = "# vfarm localfs"
LVM_ENV = {"LVM_SUPPRESS_FD_WARNINGS": "1"}
LVM_TOOLS = ("pvcreate", "vgcreate", "lvcreate", "lvm")

frequency = PER_INSTANCE
distros = DISTROS
meta = module_meta("cc_localfs", "LVM volumes by percentages, filesystems, mounts and swap", __doc__, frequency)


# --- discover ---------------------------------------------------------------------------------


@dataclass
class Facts:
    """What the machine has, as plain data (tests build it by hand)."""

    vgs: dict[str, dict[str, int]] = field(default_factory=dict)  # name -> extent_size, extents, free
    lvs: dict[str, dict[str, Any]] = field(default_factory=dict)  # "vg/lv" -> size, tags
    pvs: dict[str, str] = field(default_factory=dict)  # device (symlinks resolved) -> vg name ("" when none)
    devices: dict[str, str] = field(default_factory=dict)  # device named by the config, fstab, findmnt, swapon -> its symlinks resolved
    ids: dict[str, list[str]] = field(default_factory=dict)  # configured device -> UUID=, LABEL=... blkid found on it and its partitions: fstab's names of them
    partitions: dict[str, list[str]] = field(default_factory=dict)  # configured device force wipes -> its partitions (symlinks resolved)
    stacked: dict[str, list[str]] = field(default_factory=dict)  # the same -> devices on it or them: "NAME (TYPE)"
    sizes: dict[str, int] = field(default_factory=dict)  # configured device not in a VG -> bytes
    signatures: dict[str, Optional[str]] = field(default_factory=dict)  # device -> TYPE/PTTYPE or None
    mounts: dict[str, str] = field(default_factory=dict)  # target -> source of the mount on top there
    hidden: list[list[str]] = field(default_factory=list)  # [target, source] of mounts no path reaches (files.split_mounts)
    remote: list[str] = field(default_factory=list)  # mount points of network and FUSE filesystems
    swaps: list[str] = field(default_factory=list)  # active swap devices
    fstab: str = ""
    nonempty: list[str] = field(default_factory=list)  # mount points (absolute) with content
    existing_dirs: list[str] = field(default_factory=list)
    aliases: dict[str, list[str]] = field(default_factory=dict)  # lv path -> other names (dm, mapper)
    links: dict[str, str] = field(default_factory=dict)  # mount point (config's, fstab's) -> where its symlinks lead
    unreachable: dict[str, str] = field(default_factory=dict)  # mount point (config's, fstab's) whose walk stopped -> why
    roots: dict[str, tuple[Optional[str], bool]] = field(default_factory=dict)  # lv path (mounted) -> volume_root there

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


# One `lvm fullreport` reads the volume groups, PVs and LVs at once (under TCG each LVM command
# costs a scan of every device). Each VG is one report, PVs without a VG one more; the segment
# reports it always adds get one field each.
FULLREPORT = ["lvm", "fullreport", "--reportformat", "json", "--units", "b", "--nosuffix",
              "--configreport", "vg", "-o", "vg_name,vg_extent_size,vg_extent_count,vg_free_count",
              "--configreport", "pv", "-o", "pv_name,vg_name",
              "--configreport", "lv", "-o", "lv_name,vg_name,lv_size,lv_tags",
              "--configreport", "pvseg", "-o", "pvseg_start",
              "--configreport", "seg", "-o", "seg_start"]


def _lvm_report(ctx: Context) -> dict[str, list[dict[str, str]]]:
    """The rows of `lvm fullreport` by kind (vg, pv, lv), every report's rows together."""
    text = ctx.runner.run(FULLREPORT, env=LVM_ENV, changes=False).stdout
    rows: dict[str, list[dict[str, str]]] = {"vg": [], "pv": [], "lv": []}
    try:
        for report in json.loads(text or "{}").get("report", []):
            for kind, found in rows.items():
                found += report.get(kind, [])
    except (ValueError, AttributeError) as err:
        raise StepError(f"cannot read the JSON report of lvm fullreport: {err}") from None
    return rows


BLKID_IDS = {"UUID": "UUID", "LABEL": "LABEL", "PART_ENTRY_UUID": "PARTUUID", "PART_ENTRY_NAME": "PARTLABEL"}  # blkid -p's -> fstab's


def _probe(ctx: Context, device: str) -> tuple[Optional[str], list[str]]:
    """What blkid finds on DEVICE (filesystem TYPE or partition table; None when blank), and the
    names fstab may give it by that content (UUID=..., LABEL=..., PARTUUID=..., PARTLABEL=...)."""
    result = ctx.runner.run(["blkid", "-p", "-o", "export", device], check=False, changes=False)
    if result.returncode == 2 and not result.stderr.strip():
        return None, []
    if result.returncode != 0:
        raise CommandFailed(result)
    values = dict(line.split("=", 1) for line in result.stdout.splitlines() if "=" in line)
    ids = [BLKID_IDS[key] + "=" + re.sub(r"\\(.)", r"\1", value) for key, value in values.items() if key in BLKID_IDS and value]  # `\ `: a space
    if values.get("TYPE"):
        return values["TYPE"], ids
    if values.get("PTTYPE"):
        return f"a {values['PTTYPE']} partition table", ids
    return values.get("USAGE") or "something", ids


def _names_only(ctx: Context, name: str, real: str) -> bool:
    """Whether NAME (UUID=..., LABEL=...) names no device but REAL among those blkid knows: a disk
    made from the image's snapshot carries its root's UUID and LABEL, a reused LABEL another's."""
    found = ctx.runner.run(["blkid", "-o", "device", "-t", name], check=False, changes=False)
    return all(_real(ctx, other) == real for other in found.stdout.split())


def _partitions(ctx: Context, device: str, real: str) -> tuple[list[str], list[str]]:
    """The partitions the kernel knows on DEVICE (REAL: DEVICE itself, when it is one), symlinks
    resolved, and what is stacked on it or them ("NAME (TYPE)": dm-crypt, md, LVM's volumes)."""
    found = ctx.runner.run(["lsblk", "--json", "--list", "--paths", "-o", "NAME,TYPE", device], changes=False)
    try:  # --list: every device below it, holders (dm) too
        rows = json.loads(found.stdout or "{}").get("blockdevices", [])
        parts = [name for row in rows if row["type"] == "part" and (name := _real(ctx, row["name"])) != real]
        return parts, [f"{row['name']} ({row['type']})" for row in rows if row["type"] not in ("disk", "part", "loop")]
    except (ValueError, AttributeError, KeyError, TypeError) as err:
        raise StepError(f"cannot read lsblk's JSON: {err}") from None


def mapper_name(vg: str, lv: str) -> str:
    return f"/dev/mapper/{vg.replace('-', '--')}-{lv.replace('-', '--')}"


def _real(ctx: Context, device: str) -> str:
    """DEVICE with its symlinks resolved inside the root (/dev/disk/by-id/..., EC2's /dev/xvdb ->
    nvme1n1; /dev/mapper/x -> dm-0), so that a configured name and LVM's name of a PV compare."""
    try:
        return "/" + str(PurePosixPath(os.path.realpath(ctx.path(device))).relative_to(os.path.realpath(ctx.root)))
    except ValueError:  # a link out of a test's root
        return device


def _findmnt(ctx: Context, columns: str) -> list[dict[str, Any]]:
    """findmnt's rows of every mount (hidden ones too), with COLUMNS."""
    found = ctx.runner.run(["findmnt", "--json", "--list", "-o", columns], check=False, changes=False)
    if found.returncode not in (0, 1):  # 1: nothing mounted that matches
        raise CommandFailed(found)
    try:  # (the rows' fields are checked where they are read)
        return list(json.loads(found.stdout or "{}").get("filesystems", []))
    except (ValueError, AttributeError, TypeError) as err:
        raise StepError(f"cannot read findmnt's JSON: {err}") from None


def _device(source: str) -> str:
    """The device of findmnt's SOURCE: a bind mount's (or btrfs subvolume's) is `/dev/vdb[/sub]`."""
    return re.sub(r"\[/.*\]$", "", source)


# Filesystems whose server may not answer: a stat at or below their mount point may hang.
_REMOTE = re.compile(r"nfs.*|cifs|smb.*|ceph|glusterfs|lustre|gpfs|afs|9p|fuse.*")


def _follow(ctx: Context, facts: Facts, mount: str) -> str:
    """Where the (normalised) MOUNT point leads, kept in FACTS.links when it leads elsewhere. Not
    looked at: a mount point in use (the kernel names it by its real path already), nor one whose
    walk reaches a network or FUSE filesystem (a dead hard NFS mount hangs a stat; such mounts
    usually come after cloud-init's init stage, where this runs, but an image may make one
    earlier): kept in FACTS.unreachable with why."""
    if str(ctx.path(mount)) in {*facts.mounts, *(target for target, _ in facts.hidden)}:
        return mount
    real, why = _walk(ctx, facts, mount)
    if why:
        facts.unreachable[mount] = why
        return mount
    real = localfs_spec.normal_path(real)  # a link to the root: / not /.
    if real != mount:
        facts.links[mount] = real
    return real


_MAX_LINKS = 40  # as the kernel follows at most (ELOOP)


def _walk(ctx: Context, facts: Facts, path: str) -> tuple[str, str]:
    """PATH's real path, resolved one folder at a time as the kernel does (a link's target read
    where it lies, `..` from where the walk has got to), and ""; or "" and why the walk stopped:
    it would look at a network or FUSE filesystem's mount point or below it, or follow more links
    than the kernel."""
    todo = [part for part in path.split("/") if part not in ("", ".")]
    done, links = "/", 0
    while todo:
        name = todo.pop(0)
        if name == "..":
            done = posixpath.dirname(done)
            continue
        step = posixpath.join(done, name)
        where = ctx.path(step)
        remote = next((point for point in facts.remote if where.is_relative_to(point)), None)
        if remote is not None:
            inside = PurePosixPath(remote).relative_to(ctx.path("/"))
            return "", f"it leads onto the network or FUSE filesystem mounted at /{'' if inside == PurePosixPath('.') else inside}"
        try:
            is_link = stat.S_ISLNK(os.lstat(where).st_mode)
        except OSError:  # missing (or unreadable): made as named
            is_link = False
        if not is_link:
            done = step
            continue
        links += 1
        try:
            if links > _MAX_LINKS:
                raise OSError("too many levels of symbolic links")
            target = os.readlink(where)
        except OSError as err:  # a loop, or gone since: nothing to say where it leads
            return "", f"its symlinks cannot be followed ({err.strerror or err})"
        done = "/" if target.startswith("/") else done
        todo[:0] = [part for part in target.split("/") if part not in ("", ".")]
    return done, ""


def discover(spec: LocalfsSpec, ctx: Context) -> Facts:
    facts = Facts()
    report = _lvm_report(ctx)
    for row in report["vg"]:
        facts.vgs[row["vg_name"]] = {
            "extent_size": int(row["vg_extent_size"]),
            "extents": int(row["vg_extent_count"]),
            "free": int(row["vg_free_count"]),
        }
    for row in report["lv"]:
        tags = [t for t in row.get("lv_tags", "").split(",") if t]
        facts.lvs[f"{row['vg_name']}/{row['lv_name']}"] = {"size": int(row.get("lv_size") or 0), "tags": tags}
    for row in report["pv"]:
        facts.pvs[_real(ctx, row["pv_name"])] = row.get("vg_name", "")
    for device in spec.devices:
        real = facts.devices[device] = _real(ctx, device)
        if real not in facts.pvs:
            facts.signatures[device], ids = _probe(ctx, device)
            facts.ids[device] = [name for name in ids if _names_only(ctx, name, real)]
            if facts.signatures[device] and spec.force:  # what force wipes: its partitions are freed, their lines released too
                facts.partitions[device], facts.stacked[device] = _partitions(ctx, device, real)
                facts.ids[device] += [name for part in facts.partitions[device] for name in _probe(ctx, part)[1] if _names_only(ctx, name, part)]
        if not facts.pvs.get(real):
            size = ctx.runner.run(["blockdev", "--getsize64", device], changes=False).stdout.strip()
            facts.sizes[device] = int(size) if size.isdigit() else 0
    for key in facts.lvs:
        vg, lv = key.split("/", 1)
        if any(part.name == lv for part in spec.parts):
            path = f"/dev/{vg}/{lv}"
            facts.signatures[path] = _probe(ctx, path)[0]
            facts.aliases[path] = sorted({mapper_name(vg, lv), os.path.realpath(path)} - {path})
    rows = _findmnt(ctx, "TARGET,SOURCE,ID,PARENT,FSTYPE")
    try:  # (an older util-linux gives the IDs as strings)
        mounts = [(str(row["id"]), str(row["parent"]), row["target"], row.get("source") or "") for row in rows]
        facts.mounts, hidden = split_mounts(mounts)
        facts.hidden = [list(mount) for mount in hidden]
        facts.remote = [row["target"] for row in rows if _REMOTE.fullmatch(row.get("fstype") or "")]
    except (ValueError, AttributeError, KeyError, TypeError) as err:
        raise StepError(f"cannot read findmnt's JSON: {err}") from None
    for path in facts.aliases:  # our volumes that the config names
        seen = next((target for target, source in facts.mounts.items() if _is_device(facts, path, source)), None)
        if seen is not None:
            facts.roots[path] = volume_root(seen)
    swaps = ctx.runner.run(["swapon", "--show=NAME", "--noheadings", "--raw"], check=False, changes=False)
    facts.swaps = [line.strip() for line in swaps.stdout.splitlines() if line.strip()]
    facts.fstab = read_text(ctx.path(FSTAB)) or ""
    for mount in fstab_mount_points(facts.fstab):
        _follow(ctx, facts, localfs_spec.normal_path(mount))
    # Devices by other names (a symlink; EC2's /dev/xvdb): mounted, swap, of fstab's lines (ours commented out too, and what replaced them).
    mounted = [_device(source) for source in [*facts.mounts.values(), *(source for _, source in facts.hidden)]]
    for device in [*mounted, *facts.swaps, *(name for by, fields in _fstab_lines(facts.fstab) for name in (fields[0], by) if name)]:
        if device.startswith("/dev/"):
            facts.devices.setdefault(device, _real(ctx, device))
    for part in spec.parts:
        if part.mount:
            real = _follow(ctx, facts, part.mount)
            where = ctx.path(real)
            if part.mount not in facts.unreachable and where.is_dir():
                facts.existing_dirs.append(real)
                if any(entry != "lost+found" for entry in os.listdir(where)):
                    facts.nonempty.append(real)
    return facts


# --- plan (pure) ------------------------------------------------------------------------------


def _pv(facts: Facts, device: str) -> str:
    """The name FACTS.pvs knows DEVICE by (a configured one, or one discover saw elsewhere)."""
    return facts.devices.get(device, device)


def _own_lvs(facts: Facts, vg: str) -> list[str]:
    return [key.split("/", 1)[1] for key, lv in facts.lvs.items() if key.startswith(vg + "/") and LV_TAG in lv["tags"]]


def _reals(facts: Facts, device: str) -> set[str]:
    """The real names of DEVICE and of its partitions (force wipes them all)."""
    return {_pv(facts, device), *facts.partitions.get(device, [])}


def _pv_names(spec: LocalfsSpec, facts: Facts) -> dict[str, str]:
    """Each name fstab may give a device of SPEC or one of its partitions (its path, a symlink to
    it, UUID=, LABEL=... of what blkid found on it before the wipe) -> the config's name of it."""
    names: dict[str, str] = {}
    for device in spec.devices:
        reals = _reals(facts, device)
        names.update({name: device for name, other in facts.devices.items() if other in reals})
        names.update(dict.fromkeys([device, *reals, *facts.ids.get(device, [])], device))
    return names


def choose_vg(spec: LocalfsSpec, facts: Facts) -> tuple[str, bool]:
    """(volume group name, whether it must be created from `devices`): `vg` when named; else the
    one on `devices` when they are named; else the one holding vfarm's volumes, or the one with
    free space."""
    if spec.vg:
        if spec.vg in facts.vgs:
            return spec.vg, False
        if spec.devices:
            return spec.vg, True
        raise PlanError(f"volume group {spec.vg} does not exist (found: {', '.join(facts.vgs) or 'none'}) and no devices are given to create it")
    if spec.devices:
        # The devices named are where: their volume group (made there on an earlier run) or a new one.
        on_them = sorted({facts.pvs[_pv(facts, d)] for d in spec.devices if facts.pvs.get(_pv(facts, d))})
        if len(on_them) > 1:
            raise PlanError(f"the devices belong to several volume groups ({', '.join(on_them)}): name the one to use with vg:")
        if on_them:
            return on_them[0], False
        if DEFAULT_VG in facts.vgs:
            raise PlanError(f"volume group {DEFAULT_VG} exists on other devices than {', '.join(spec.devices)}: name the one to create with vg:")
        return DEFAULT_VG, True
    ours = sorted(vg for vg in facts.vgs if _own_lvs(facts, vg))
    if len(ours) == 1:
        return ours[0], False
    if len(ours) > 1:
        raise PlanError(f"vfarm volumes exist in several volume groups ({', '.join(ours)}): name the one to use with vg:")
    with_space = sorted(vg for vg, info in facts.vgs.items() if info["free"] > 0)
    if len(with_space) > 1:
        raise PlanError(f"several volume groups have free space ({', '.join(with_space)}): name the one to use with vg:")
    if with_space:
        return with_space[0], False
    found = ", ".join(f"{vg} (no free space)" for vg in facts.vgs) or "none"
    raise PlanError(f"no volume group with free space (found: {found}) and no devices to create one on")


def _command(action: str, argv: list[str], **details: Any) -> Run:
    return Run(action, argv, env=LVM_ENV if argv[0] in LVM_TOOLS else None, details=details)


def _mounted_at(ctx: Context, reals: set[str]) -> list[str]:
    """Where the devices REALS (symlinks resolved) are mounted now, hidden mounts too."""
    rows = _findmnt(ctx, "TARGET,SOURCE")
    try:
        return [row["target"] for row in rows if (row.get("source") or "").startswith("/dev/") and _real(ctx, _device(row["source"])) in reals]
    except (ValueError, AttributeError, KeyError, TypeError) as err:
        raise StepError(f"cannot read findmnt's JSON: {err}") from None


def _free(device: str, argv: list[str], where: str, reals: set[str]) -> Custom:
    """ARGV, a plain umount or swapoff (never lazy nor forced), so that force can wipe DEVICE
    (REALS: it and its partitions), in use WHERE. A failure (busy) stops the run before anything is
    wiped; nothing to undo. A umount that finds the mount gone (it went with a peer's: mount
    propagation) is no failure."""

    def run(ctx: Context) -> dict[str, Any]:
        result = ctx.runner.run(argv, check=False)
        if result.returncode != 0 and (argv[0] != "umount" or argv[1] in _mounted_at(ctx, reals)):
            raise StepError(f"device {device} is {where} and {result.summary()}: nothing wiped")
        return {} if result.returncode == 0 else {"changed": False}

    return Custom(argv[0], run, {"device": device, "argv": argv})


def _freed(device: str, reals: set[str]) -> Custom:
    """A check once DEVICE's mounts are unmounted: one that no path reached (under another mount)
    was a copy that went with them (mount propagation), or it stops the run before the wipe."""

    def run(ctx: Context) -> dict[str, Any]:
        left = _mounted_at(ctx, reals)
        if left:
            raise StepError(f"device {device} is still mounted at {left[0]}, under another mount: nothing wiped (unmount both first)")
        return {"changed": False}

    return Custom("freed", run, {"device": device}, changes=False)


def _in_use(facts: Facts, device: str) -> list[Custom]:
    """The steps that free DEVICE (any name of it) and its partitions where they are mounted (the
    innermost first) or swap; a partition's step names it."""
    reals = _reals(facts, device)

    def name(other: str) -> str:
        return device if _pv(facts, other) == _pv(facts, device) else other

    targets = sorted(((target, _device(source)) for target, source in facts.mounts.items() if _pv(facts, _device(source)) in reals), reverse=True)
    return [_free(name(source), ["umount", target], f"mounted at {target}", reals) for target, source in targets] + [
        _free(name(swap), ["swapoff", swap], "swap in use", reals) for swap in facts.swaps if _pv(facts, swap) in reals]


def _vg_steps(spec: LocalfsSpec, facts: Facts, vg: str, fstab: list[Step]) -> list[Step]:
    """Free the devices force wipes (their partitions too), then FSTAB (their lines commented out), then wipe, pvcreate, vgcreate."""
    free: list[Step] = []
    steps: list[Step] = []
    if len({_pv(facts, d) for d in spec.devices}) < len(spec.devices):
        raise PlanError(f"devices {', '.join(spec.devices)} name one device more than once")
    for device in spec.devices:
        owner = facts.pvs.get(_pv(facts, device))
        if owner:
            raise PlanError(f"device {device} ({_pv(facts, device)}) already belongs to volume group {owner}, not {vg}")
        if _pv(facts, device) in facts.pvs:
            continue  # a PV with no VG yet: vgcreate takes it
        found = facts.signatures.get(device)
        if found:
            if not spec.force:
                raise PlanError(f"device {device} holds {found}: refusing to pvcreate on it (set force: true to destroy what is there)")
            owned = [f"{part} belongs to volume group {facts.pvs[part]}" for part in facts.partitions.get(device, []) if facts.pvs.get(part)]
            if owned:  # as the device itself would: another VG's PV is never wiped
                raise PlanError(f"device {device}'s partition {owned[0]}: refusing to wipe it")
            if facts.stacked.get(device):  # in use below any mount: wipefs would fail busy after fstab changed
                raise PlanError(f"device {device} holds {', '.join(facts.stacked[device])}: refusing to wipe it (stop and remove that first)")
            freeing, reals = _in_use(facts, device), _reals(facts, device)
            hidden = [target for target, source in facts.hidden if _pv(facts, _device(source)) in reals]
            if hidden and not any(step.action == "umount" for step in freeing):  # no umount of ours can take it (umount there takes the one on top)
                raise PlanError(f"device {device} is mounted at {hidden[0]} under another mount: refusing to wipe it (unmount both first)")
            free += freeing + ([_freed(device, reals)] if hidden else [])
            steps.append(_command("wipefs", ["wipefs", "--all", device], device=device))
        steps.append(_command("pvcreate", ["pvcreate", "--yes", device], device=device))
    steps.append(_command("vgcreate", ["vgcreate", vg, *spec.devices], vg=vg))
    return free + fstab + steps


def _new_vg(spec: LocalfsSpec, facts: Facts, vg: str) -> VolumeGroup:
    """The volume group vgcreate will make of the devices (their sizes, less the PV header)."""
    unknown = [d for d in spec.devices if not facts.sizes.get(d)]
    if unknown:
        raise PlanError(f"cannot read the size of {', '.join(unknown)}: not creating volume group {vg}")
    extents = sum(max(0, facts.sizes[d] - PV_START) // NEW_EXTENT for d in spec.devices)
    return VolumeGroup(vg, NEW_EXTENT, extents, extents)


def _marks(target: str) -> tuple[str, str]:
    """The carry mark's text while TARGET's content is copied onto a volume, and once it is."""
    return f"vfarm localfs copying {target}\n", f"vfarm localfs copied {target} here\n"


def volume_root(folder: str) -> tuple[Optional[str], bool]:
    """What the root of a volume mounted at FOLDER holds: its carry mark's text (None: no mark),
    and whether anything but lost+found is there. (A test's fake mount may have no folder.)"""
    content = os.path.isdir(folder) and bool(set(os.listdir(folder)) - {"lost+found"})
    return read_text(f"{folder}/{CARRY_MARK}"), content


def copy_refused(target: str, mark: Optional[str], content: bool) -> bool:
    """Whether copying TARGET onto a volume whose root holds MARK and CONTENT is refused: it
    holds someone's files (a mark of another copy, or files and no mark), not nothing yet
    (lost+found at most) nor TARGET's copy, finished or part-way."""
    return mark not in _marks(target) and (mark is not None or content)


def _refusal(part: str, target: str) -> PlanError:
    return PlanError(f"{target} is not empty and volume {part} holds other data (a copy would overwrite it, a mount hide "
                     f"{target}'s): choose another mount point for {part} or move {target}'s files away")


def _carry(part: str, target: str, source: str, carry: str) -> Custom:
    """Copy SOURCE's content (one file system: -x) onto the filesystem mounted at CARRY if it holds
    no one's files: nothing but lost+found, or a copy of TARGET that failed part-way (redone). A
    marker at its root says, before the copy, that it started and, once the copy is on disk, that
    it finished: a finished copy is never repeated (it would put the image's old files back over
    newer ones). Other content (the user's, a copy of another mount point) is refused: a copy
    would overwrite it, a mount without one would hide TARGET's. Read through this same mount, at
    apply time; a failure or a refusal unmounts CARRY."""
    argv = ["cp", "-a", "-x", f"{source}/.", f"{carry}/"]
    mark, (started, done) = f"{carry}/{CARRY_MARK}", _marks(target)

    def run(ctx: Context) -> dict[str, Any]:
        try:
            found, content = volume_root(carry)
            if found == done:
                return {"changed": False, "skipped": "copied by an earlier run"}
            if copy_refused(target, found, content):
                raise _refusal(part, target)
            atomic_write(mark, started)
            ctx.runner.run(argv)
            ctx.runner.run(["sync", "--file-system", carry])  # the copy is on disk before its marker
            atomic_write(mark, done)
        except Exception:
            ctx.runner.run(["umount", carry], check=False)
            raise
        return {}

    return Custom("carry", run, {"part": part, "argv": argv})


def _unmount_moved(part: str, old: str) -> Custom:
    """Unmount OLD, where volume PART is still mounted after its mount point moved, once it is
    mounted at the new one (the step after that mount; a failed mount stops the run before it):
    a plain umount, never lazy nor forced. When it fails (a process works there, a mount inside
    it) the volume stays mounted there too until the next boot: the record says so
    (`left_mounted`), and the run goes on. Nothing to undo: a failed umount changed nothing.
    Not tried again: the next run finds fstab's line moved (the old place no longer known)."""
    argv = ["umount", old]

    def run(ctx: Context) -> dict[str, Any]:
        result = ctx.runner.run(argv, check=False)
        if result.returncode == 0:
            return {}
        ctx.logger.warning("volume %s stays mounted at %s until the next boot: %s", part, old, result.summary())
        return {"changed": False, "left_mounted": result.summary()}

    return Custom("umount-moved", run, {"part": part, "argv": argv})


def _fstab_place(fstab: str, names: list[str], links: dict[str, str]) -> Optional[str]:
    """Where the first line of FSTAB for a device (under any of its NAMES) mounts it, or None."""
    for fields in map(fstab_fields, fstab.split("\n")):
        if fields and fields[0] in names:
            return _place(fields[1], links)
    return None


def _is_device(facts: Facts, path: str, other: str) -> bool:
    return other == path or other in facts.aliases.get(path, [])


def _mkfs_argv(fs: str, device: str, label: Optional[str]) -> list[str]:
    labelled = ["-L", label] if label else []
    if fs == "swap":
        return ["mkswap", *labelled, device]
    if fs == "xfs":
        return ["mkfs.xfs", "-q", *labelled, device]
    return ["mkfs.ext4", "-q", *labelled, device]


_FSTAB_BLANKS = re.compile(r"[ \t]+")  # libmount splits fields at spaces and tabs


def _fstab_char(char: str) -> str:
    if char in " \t\\" or char.isspace() or unicodedata.category(char) in ("Cc", "Zl", "Zp"):
        return "".join(f"\\{byte:03o}" for byte in char.encode("utf-8"))
    return char


def fstab_field(value: str) -> str:
    """VALUE as one field of an fstab line, escaped as libmount reads it back (`\\ooo`, octal):
    space \\040, tab \\011, newline \\012, backslash \\134, any other blank or control
    character by its UTF-8 bytes, and `#` at the start \\043 (a comment there). An empty value or
    a NUL cannot be a field: UnsafeValue."""
    if not value:
        raise UnsafeValue("an fstab field cannot be empty")
    if "\0" in value:
        raise UnsafeValue("an fstab field cannot hold a NUL")
    escaped = "".join(map(_fstab_char, value))
    return "\\043" + escaped[1:] if escaped.startswith("#") else escaped


def fstab_line(entry: tuple[str, str, str, str, int, int]) -> str:
    return "\t".join(fstab_field(str(field)) for field in entry)


_REPLACED = re.compile(r"^# vfarm localfs: replaced by (\S+): (.*)$")  # a line we commented out: by what, the line as it was


def fstab_fields(line: str) -> Optional[list[str]]:
    """The fields of fstab LINE as libmount splits and reads them (files.unescape_octal); None
    for a blank line, a comment or a line of fewer than 3 fields."""
    raw = [field for field in _FSTAB_BLANKS.split(line) if field]
    if not raw or raw[0].startswith("#") or len(raw) < 3:
        return None
    return [unescape_octal(field) for field in raw]


def _fstab_lines(text: str) -> list[tuple[Optional[str], list[str]]]:
    """The fields of fstab TEXT's lines and of the lines we commented out, each with the device
    that replaced it (None: a line in force)."""
    found: list[tuple[Optional[str], list[str]]] = []
    for line in text.split("\n"):
        replaced = _REPLACED.match(line)
        fields = fstab_fields(replaced.group(2) if replaced else line)
        if fields:
            found.append((unescape_octal(replaced.group(1)) if replaced else None, fields))
    return found


def fstab_mount_points(text: str) -> list[str]:
    """The absolute mount points of fstab TEXT's lines, and of the lines we commented out."""
    return [fields[1] for _by, fields in _fstab_lines(text) if fields[1].startswith("/")]


def _released(line: str, pvs: dict[str, str], others: frozenset[str] = frozenset()) -> str:
    """fstab LINE, commented out when it names a device of PVS (any name of it -> the config's
    name), a PV of ours now or after the wipe: at boot the line would mount a PV or, without
    nofail, stop the boot. Replaced by that device, it is never put back (_put_back). Never a line
    of / nor one of OTHERS, mount points another device is mounted at now: that line is its own."""
    fields = fstab_fields(line)
    if not fields or localfs_spec.normal_path(fields[1]) in others | {"/"}:
        return line
    device = pvs.get(fields[0].replace('"', ""))  # libmount reads UUID="x" as UUID=x
    return f"# vfarm localfs: replaced by {fstab_field(device)}: {line}" if device else line


def _place(mount: str, links: dict[str, str]) -> str:
    """Where an fstab line's MOUNT point really is: normalised (`/home/` is /home) and, when it is
    a symlink on the image (LINKS: /home -> /var/home), where it leads, as mount follows it."""
    if not mount.startswith("/"):
        return mount  # swap's `none`
    path = localfs_spec.normal_path(mount)
    return links.get(path, path)


def fstab_text(current: str, entries: list[tuple[str, str, str, str, int, int]], aliases: dict[str, list[str]],
               links: Optional[dict[str, str]] = None, held: frozenset[str] = frozenset(), pvs: Optional[dict[str, str]] = None,
               others: frozenset[str] = frozenset()) -> str:
    """CURRENT with one line per device of ENTRIES (our volumes, under any of their ALIASES):
    its first line stays as it is when it says what the entry says, else it is rewritten in
    place (an older vfarm's options, a mount point moved since); a second line of it is dropped,
    a missing one added at the end. A line of another device on one of our mount points is
    commented out (it would hide ours after a reboot), and put back as it was once no line
    mounts there any more (the mount point left the config: _put_back; never one naming a device
    in HELD, ours now: a PV, the config's devices); so is a line of a device of PVS, wherever it
    mounts (_released: but at / or one of OTHERS), never put back; any other line is left as it is (a volume of
    ours the config no longer names included: see `plan`). Lines end at newlines only; fields are
    compared as libmount reads them (fstab_fields), a foreign mount point at the place mount would
    put it (_place: normalised, symlinks followed as in LINKS)."""
    links = links or {}
    lines = [_released(line, pvs or {}, others) for line in current.split("\n")]
    if lines and lines[-1] == "":
        lines.pop()
    out: list[str] = []
    present: set[int] = set()
    index_of = {name: index for index, entry in enumerate(entries) for name in (entry[0], *aliases.get(entry[0], []))}
    our_targets = {entry[1]: entry[0] for entry in entries if entry[2] != "swap"}
    for line in lines:
        fields = fstab_fields(line)
        if fields is None:
            out.append(line)
            continue
        index = index_of.get(fields[0])
        if index is None:
            device = our_targets.get(fields[1]) or our_targets.get(_place(fields[1], links))
            out.append(f"# vfarm localfs: replaced by {fstab_field(device)}: {line}" if device else line)
        elif index not in present:
            present.add(index)
            out.append(line if fields[1:] == [str(field) for field in entries[index][1:]] else fstab_line(entries[index]))
    missing = [entry for index, entry in enumerate(entries) if index not in present]
    if missing:
        if FSTAB_MARK not in out:
            out.append(FSTAB_MARK)
        out += [fstab_line(entry) for entry in missing]
    out = _put_back(out, set(index_of) | held, held - set(index_of), links)
    return "\n".join(out) + "\n" if out else ""


def _put_back(lines: list[str], ours: set[str], pvs: frozenset[str], links: dict[str, str]) -> list[str]:
    """LINES with a line we commented out restored as it was when no line of LINES mounts at its
    place any more: one per place (two there fail the boot), the one commented out last (the lowest:
    ours are added below); never one that names one of OUR devices (a volume of the config has its
    own line; a PV holds no filesystem), nor one replaced by one of PVS (it named a PV's device by
    what was on it before the wipe, UUID=...), nor one whose mount point is not absolute (edited by hand)."""
    taken = {_place(fields[1], links) for fields in map(fstab_fields, lines) if fields}
    restored = list(lines)
    for number in reversed(range(len(lines))):
        match = _REPLACED.match(lines[number])
        fields = fstab_fields(match.group(2)) if match else None
        if (match and fields and fields[1].startswith("/") and fields[0] not in ours and unescape_octal(match.group(1)) not in pvs
                and _place(fields[1], links) not in taken):
            taken.add(_place(fields[1], links))
            restored[number] = match.group(2)
    return restored


def at_boot(options: str, fs: str) -> str:
    """OPTIONS for our fstab lines, with `nofail`: a volume missing at boot (EC2 blanks the
    instance store on a stop) is given up after systemd's device timeout, not a boot stopped in
    emergency mode. A filesystem keeps the order nofail drops (mounted before local-fs.target),
    so that nothing started after that target writes under its mount point first."""
    given = options.split(",")
    wanted = ["nofail"] if fs == "swap" else ["nofail", "x-systemd.before=local-fs.target"]
    return ",".join(given + [option for option in wanted if option not in given])


def follow_links(spec: LocalfsSpec, facts: Facts) -> LocalfsSpec:
    """SPEC with each mount point that is a symlink on the image (/home -> /var/home) replaced by
    where it leads, where mount, findmnt and systemd's fstab generator put and see the volume.
    Refused: one whose path reaches a network or FUSE filesystem (or a symlink loop); and as
    validate refuses a mount point written there: /, a system folder, or one that another part
    takes too. (FACTS.links has fstab's mount points too: not the config's business.)"""
    parts = tuple(replace(part, mount=facts.links.get(part.mount, part.mount)) if part.mount else part for part in spec.parts)
    mounts = [part.mount for part in parts]
    for mount in (p.mount for p in spec.parts if p.mount in facts.unreachable):
        # A local volume there would mount before that filesystem (local-fs.target) and end up hidden under it.
        raise PlanError(f"mount point {mount}: {facts.unreachable[mount]}: choose a local one")
    for mount, real in ((p.mount, facts.links[p.mount]) for p in spec.parts if p.mount in facts.links):
        folder = "/" if real == "/" else localfs_spec.system_folder(real)
        if folder or mounts.count(real) > 1:
            why = f"system folder {folder}" if folder else "another part's mount point"
            raise PlanError(f"mount point {mount} is a symlink to {real} ({why}): choose another one")
    return replace(spec, parts=parts)


@dataclass
class LocalfsPlan(Plan):
    vg: str = ""
    create_vg: bool = False  # the volume group is made first; its volumes are planned after
    parts: list[dict[str, Any]] = field(default_factory=list)  # the resolved sizes, for the record
    rediscover: bool = False  # plan again after these steps (a new volume group)
    mounts: list[list[str]] = field(default_factory=list)  # [device, mount point or "swap"], as fstab has them
    kept: list[str] = field(default_factory=list)  # "vg/lv" of our volumes the config no longer names: left as they are
    commented_out: list[str] = field(default_factory=list)  # fstab's lines of a device that becomes a PV, as they were


def _nesting(targets: list[str]) -> dict[str, int]:
    """Each mount point of TARGETS: how many of the others hold it (`/data/scratch` in `/data`: 1)."""
    paths = {target: PurePosixPath(target) for target in targets}
    return {target: sum(1 for other, outer in paths.items() if other != target and path.is_relative_to(outer)) for target, path in paths.items()}


def plan(spec: LocalfsSpec, facts: Facts, root: str = "/") -> LocalfsPlan:
    """The steps that bring the machine to SPEC, as plain data. No steps: nothing to do.

    A volume of ours that SPEC no longer names (a part removed from the config) is kept as it is:
    its LV (its data), its mount and its fstab line, so that it still mounts where its users left
    their files; unmounted, they would write into the folder below it and find their data gone.
    The plan lists it as `kept`, not in `mounts` (the final check asks for the config's volumes
    only); its line is commented out only when a part of SPEC takes its mount point (fstab_text).
    Mounting it no more is the admin's edit of fstab; putting the part back in the config makes it
    one of the config's volumes again, data and all.

    ROOT prefixes the paths commands act on (a temp dir in tests); fstab keeps the real ones."""

    def at(path: str) -> str:
        return path if root in ("", "/") else str(under(root, path))

    spec = follow_links(spec, facts)
    vg, create = choose_vg(spec, facts)
    # The names of the devices that are PVs of VG, or become them now (not one of an existing VG
    # the config names beside them), and where other devices are mounted: their lines stay.
    pvs = {name: d for name, d in _pv_names(spec, facts).items() if create or facts.pvs.get(_pv(facts, d)) == vg}
    devices = {real for d in spec.devices for real in _reals(facts, d)}
    others = frozenset(point for point in map(localfs_spec.normal_path, fstab_mount_points(facts.fstab))
                       if (held_by := facts.mounts.get(at(point), "")).startswith("/dev/") and _pv(facts, held_by) not in devices)
    try:
        released = [_released(line, pvs, others) for line in facts.fstab.split("\n")]
    except UnsafeValue as err:
        raise PlanError(f"cannot write {FSTAB}: {err}") from None
    gone = [line for line, now in zip(facts.fstab.split("\n"), released) if now != line]
    if create:  # lines commented out before the wipe: their UUID= or LABEL= names nothing after it
        steps = _vg_steps(spec, facts, vg, [WriteFile("write-fstab", FSTAB, "\n".join(released))] if gone else [])
        projected = localfs_spec.resolve(spec, _new_vg(spec, facts, vg))  # PlanError before the VG is made
        return LocalfsPlan(steps, vg=vg, create_vg=True, parts=[p.as_dict() for p in projected], rediscover=True, commented_out=gone)
    info = facts.vgs[vg]
    for taken in (p.name for p in spec.parts if f"{vg}/{p.name}" in facts.lvs):
        if LV_TAG not in facts.lvs[f"{vg}/{taken}"]["tags"]:
            raise PlanError(f"logical volume {vg}/{taken} exists but is not vfarm's (no '{LV_TAG}' tag): refusing to use or replace it")
    own = tuple((name, facts.lvs[f"{vg}/{name}"]["size"] // info["extent_size"]) for name in _own_lvs(facts, vg) if any(p.name == name for p in spec.parts))
    resolved = localfs_spec.resolve(spec, VolumeGroup(vg, info["extent_size"], info["extents"], info["free"], own))
    creates: list[Step] = []
    mkfs: list[Step] = []
    mounts: list[tuple[Optional[str], list[Step]]] = []  # per part: its mount point (None: swap) and steps
    notes: list[str] = []
    entries: list[tuple[str, str, str, str, int, int]] = []
    aliases = dict(facts.aliases)
    ours = {at(p.spec.mount): f"/dev/{vg}/{p.spec.name}" for p in resolved if p.spec.mount and p.spec.fs != "swap"}
    # Our mount points not mounted yet; one of ours inside them is mounted again after them.
    unmounted = [PurePosixPath(t) for t, device in ours.items() if not _is_device(facts, device, facts.mounts.get(t, ""))]
    for part in resolved:
        name, fs = part.spec.name, part.spec.fs
        device = f"/dev/{vg}/{name}"
        aliases.setdefault(device, [mapper_name(vg, name)])
        lv = facts.lvs.get(f"{vg}/{name}")
        fresh = lv is None
        if lv is not None:
            have = lv["size"] // info["extent_size"]
            notes.append(f"{vg}/{name} exists ({have} extents{'' if have == part.extents else f', the plan says {part.extents}'}): left alone")
        else:
            argv = ["lvcreate", "--yes", "--wipesignatures", "y", "-n", name, "-l", str(part.extents), "--addtag", LV_TAG, vg]
            creates.append(_command("lvcreate", argv, part=name, extents=part.extents))
        found = None if fresh else facts.signatures.get(device)
        if found is None:
            mkfs.append(_command("mkswap" if fs == "swap" else "mkfs", _mkfs_argv(fs, device, part.spec.label), part=name))
        elif found != fs:
            raise PlanError(f"{device} holds {found} but the config asks for {fs}: leaving it alone")
        if fs == "swap":
            entries.append((device, "none", "swap", at_boot(part.spec.options, fs), 0, 0))
            if not any(_is_device(facts, device, s) for s in facts.swaps):
                mounts.append((None, [_command("swapon", ["swapon", device], part=name)]))
            continue
        target = part.spec.mount
        assert target is not None  # the schema checks give every filesystem part a mount point
        entries.append((device, target, fs, at_boot(part.spec.options, fs), 0, 2))
        carry = at(f"{CARRY_DIR}/{name}")
        left_mounted = _is_device(facts, device, facts.mounts.get(carry, ""))  # by a run that failed
        these: list[Step] = []
        mounts.append((target, these))
        source = facts.mounts.get(at(target))
        mounted = source is not None and _is_device(facts, device, source)
        covered = any(at(target) != str(outer) and PurePosixPath(at(target)).is_relative_to(outer) for outer in unmounted)
        # Moved: still mounted where fstab's line of it says (unless a part of ours goes there).
        old = _fstab_place(facts.fstab, [device, *aliases[device]], facts.links)
        leave: list[Step] = []
        if old is not None and old != target and at(old) not in ours and _is_device(facts, device, facts.mounts.get(at(old), "")):
            leave.append(_unmount_moved(name, at(old)))
        if mounted and not covered:
            these += [_command("carry", ["umount", carry], part=name)] if left_mounted else []
            these += leave
            continue
        if source is not None:
            notes.append(f"{target} is a mount of {source}: {device} is mounted {'again after the volume it is in' if mounted else 'over it'}")
        below = sorted(m for m in facts.mounts if m != at(target) and m not in ours and PurePosixPath(m).is_relative_to(at(target)))
        if below:
            raise PlanError(f"{', '.join(below)} mounted inside {target}: {device} would hide it (and not copy it); unmount it first")
        if target in facts.nonempty and not mounted:
            if device in facts.roots and copy_refused(target, *facts.roots[device]):
                raise _refusal(name, target)  # known now (it is mounted somewhere): before any step
            if not left_mounted:
                these += [_command("carry", ["mkdir", "-p", carry], part=name), _command("carry", ["mount", "-t", fs, device, carry], part=name)]
            these += [_carry(name, target, at(target), carry), _command("carry", ["umount", carry], part=name)]
        elif left_mounted:
            these.append(_command("carry", ["umount", carry], part=name))
        if target not in facts.existing_dirs or covered:  # on a volume mounted just now: not there yet
            these.append(_command("mkdir", ["mkdir", "-p", at(target)], part=name))
        these.append(_command("mount", ["mount", "-t", fs, "-o", part.spec.options, device, at(target)], part=name))
        if part.spec.mode:
            these.append(_command("chmod", ["chmod", part.spec.mode, at(target)], part=name))
        these += leave
    # A mount point inside another's is mounted after it (else the outer mount hides it), here and
    # at boot (fstab's order); otherwise the config's order.
    depth = _nesting([entry[1] for entry in entries if entry[2] != "swap"])
    entries.sort(key=lambda entry: depth.get(entry[1], 0) if entry[2] != "swap" else 0)
    mounts.sort(key=lambda group: depth.get(group[0], 0) if group[0] else 0)
    steps = creates + mkfs + [step for _target, group in mounts for step in group]
    # Devices ours now, by any name: a line we commented out may name one by a symlink to it.
    held = {*facts.pvs, *pvs, *(n for e in entries for n in (e[0], *aliases[e[0]]))}
    held |= {name for name, real in facts.devices.items() if real in held}
    try:
        new_fstab = fstab_text(facts.fstab, entries, aliases, facts.links, frozenset(held), pvs, others)
    except UnsafeValue as err:
        raise PlanError(f"cannot write {FSTAB}: {err}") from None
    if new_fstab != facts.fstab:
        steps.append(WriteFile("write-fstab", FSTAB, new_fstab))
    kept = [f"{vg}/{name}" for name in _own_lvs(facts, vg) if all(p.name != name for p in spec.parts)]
    notes += [f"{key} is vfarm's but no longer in the config: kept as it is (data, mount, fstab line)" for key in kept]
    return LocalfsPlan(steps, notes, vg=vg, parts=[p.as_dict() for p in resolved],
                       mounts=[[device, fs if fs == "swap" else target] for device, target, fs, *_ in entries], kept=kept, commented_out=gone)


# --- apply and record -------------------------------------------------------------------------


def work(section: dict[str, Any], ctx: Context) -> bool:
    spec = localfs_spec.parse(section)
    changed = False
    for _ in range(2):  # a second round after creating the volume group
        facts = discover(spec, ctx)
        ctx.record.step("discover", True, vgs=sorted(facts.vgs), lvs=sorted(facts.lvs))
        todo = plan(spec, facts, str(ctx.root))
        ctx.logger.info("plan on %s: %s", todo.vg, json.dumps({"create_vg": todo.create_vg, "parts": todo.parts, "steps": todo.listing()}))
        for note in todo.notes:
            ctx.logger.info("%s", note)
        ctx.record.step("plan", True, vg=todo.vg, steps=len(todo.steps), parts=[(p["name"], p["extents"]) for p in todo.parts])
        ctx.record.data["mounts"] = todo.mounts
        ctx.record.data["kept"] = todo.kept
        ctx.record.data["commented_out"] = [*ctx.record.data.get("commented_out", []), *todo.commented_out]  # both rounds'
        if not todo.steps:
            ctx.logger.info("nothing to do: the machine already matches the config")
        apply(todo, ctx)
        changed = changed or bool(todo.steps)
        if not todo.rediscover:
            break
        if ctx.dry_run:
            ctx.logger.info("dry run: volume group %s does not exist, so its volumes cannot be planned yet", todo.vg)
            break
    return changed


handle = config_module(NAME, work)
