"""Small Debian cloud images for local boots: mmdebstrap -> configure -> bake vfarm -> `mkfs.ext4 -d`.

Two caches under /var/cache/vfarm/images/ (VFARM_CACHE overrides /var/cache/vfarm):
- rootfs/SUITE-KEY.tar: mmdebstrap's output, keyed by the suite, package list and hooks (a minute to
  make, so a change of vfarm's code never redoes it);
- SUITE-KEY/: disk.raw, vmlinuz, initrd.img, image.json, keyed by the rootfs key, this recipe and
  every vfarm file that gets baked (re-baking takes seconds).
The mirror is the one the host's apt uses (VFARM_MIRROR or --mirror override it), never written here.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from . import bake as baking
from . import cvmfs_local
from .hostcmd import CommandError, Stopwatch, cache_base, locked, progress, run
from .loopback import LoopbackServer

SUITES = ("bookworm", "trixie")
RECIPE_VERSION = 1
DISK_SIZE = "3G"
PRUNE_AFTER = 3600  # seconds: an older image build is removed once it is this old
HOSTNAME = "vfarm-{suite}"

# What test-vm-facts.md saw boot: a minbase system with cloud-init, lvm2, the cloud kernel, and
# what cloud-init's network and locale modules need (locales: else a clean boot logs an error).
PACKAGES = [
    "systemd-sysv", "udev", "cloud-init", "lvm2", "linux-image-cloud-amd64", "python3-yaml",
    "python3-jsonschema", "e2fsprogs", "xfsprogs", "iproute2", "ifupdown", "isc-dhcp-client", "netbase",
    "locales", "util-linux", "mount",
]
# Run inside mmdebstrap ($1 is the root): the locale cloud-init asks for on Debian must exist.
HOOKS = [
    'echo "en_US.UTF-8 UTF-8" > "$1/etc/locale.gen"',
    'chroot "$1" locale-gen',
    'echo "LANG=en_US.UTF-8" > "$1/etc/default/locale"',
]
# What the locally built CernVM-FS client needs from Debian (its packages' Depends, and autofs,
# which `cvmfs_config setup` and `probe` drive). A local guest reaches no Debian mirror, only the
# host's loopback server with the cvmfs packages themselves, so every image carries these from the
# host's mirror and a guest's install takes only cvmfs, cvmfs-libs and cvmfs-config-default
# (tests/clouds/test_cvmfs_packages.py checks this list against the built packages). Bookworm's
# library names: on trixie apt picks the t64 package that `Provides:` each. fuse3 (the client's
# `fuse3 | fuse`) here, not in the guest: its initramfs trigger takes 4-5 min under TCG.
CVMFS_RUNTIME = [
    "autofs", "fuse3", "gawk", "psmisc", "lsof", "curl", "attr", "uuid-runtime", "adduser",
    "libc-ares2", "libcurl4", "libfuse2", "libleveldb1d", "libpacparser1", "libprotobuf-lite32", "libsqlite3-0", "libssl3",
    "libuuid1", "zlib1g",
]
PACKAGES += CVMFS_RUNTIME
# Image variants (`--image SUITE-VARIANT`): extra packages baked in for a role. HTCondor is in
# Debian from trixie on (`condor` 23.9; bookworm has none).
# libnss-myhostname: HTCondor resolves its own host name, which only cloud-init's meta-data knows.
# nftables: the condor section's metadata guard (on by default) needs a packet filter tool.
# cvmfs: the client preinstalled, as image builders bake CernVM images (from the locally built
# packages, served to mmdebstrap as an extra apt source; see cvmfs_local).
VARIANTS: dict[str, list[str]] = {"condor": ["condor", "libnss-myhostname", "nftables"], "cvmfs": list(cvmfs_local.PACKAGE_NAMES)}
VARIANT_SUITES: dict[str, tuple[str, ...]] = {"condor": ("trixie",)}
LOCAL_SOURCE = {"cvmfs"}  # variants whose packages come from the locally built apt repository
DPKG_OPTS = ["path-exclude=/usr/share/doc/*", "path-exclude=/usr/share/man/*", "path-exclude=/usr/share/locale/*"]

# While this file exists the harness does not power off (a test's boot script holds it: tests only).
HARNESS_HOLD = "/run/vfarm-local-hold"
# The local backend's report-and-power-off step. Only the local test images have it: the host can
# neither run lsblk in the guest nor read /run after power-off, so the guest writes them to disk.
HARNESS_SCRIPT = """#!/bin/sh
# vfarm local test image only (not part of `vfarm image bake`): after cloud-init's last stage,
# write what the host cannot see from outside, then power off so the host can read the disk.
out=/var/log/vfarm-local
mkdir -p "$out"
# vfarm's final check runs detached from cloud-init's last stage (and powers off on failure):
# wait until no cloud-init process is left, so its summary is on disk (bounded: 5 minutes).
n=0
while [ $n -lt 600 ] && grep -qs 'cloud-[i]nit' /proc/[0-9]*/cmdline; do sleep 0.5; n=$((n+1)); done
# A test holds the power-off while this file exists (its boot script waits there for a job, which
# the worker takes only once the check has found it fit; bounded: 15 minutes).
n=0
while [ $n -lt 1800 ] && [ -e {HOLD_FILE} ]; do sleep 0.5; n=$((n+1)); done
lsblk --json --bytes -o NAME,KNAME,TYPE,SIZE,FSTYPE,LABEL,MOUNTPOINT > "$out/lsblk.json" 2>&1
swapon --show --bytes > "$out/swapon.txt" 2>&1
findmnt --json > "$out/findmnt.json" 2>&1
lvs --reportformat json --units b --nosuffix -o lv_name,vg_name,lv_size,seg_size_pe > "$out/lvs.json" 2>&1
vgs --reportformat json --units b --nosuffix -o vg_name,vg_size,vg_free,vg_extent_size,vg_extent_count,vg_free_count > "$out/vgs.json" 2>&1
ls -la --time-style=full-iso /home /tmp /var/lib/cvmfs > "$out/dirs.txt" 2>&1
cat /home/vfarm-local-marker > "$out/marker.txt" 2>&1
dpkg-query -W -f '${Package} ${Version}\\n' cvmfs > "$out/packages.txt" 2>&1
# The CernVM-FS client as it runs: per repository of default.local, the client's own parse of the
# files, the running mount's parameters, and the sha256 of every file read through the mount.
if command -v cvmfs_config >/dev/null; then
  c=$out/cvmfs
  mkdir -p "$c"
  stat -f -c '%b %S' /var/lib/cvmfs > "$c/cache-fs.txt" 2>&1
  for r in $(. /etc/cvmfs/default.local 2>/dev/null; echo "$CVMFS_REPOSITORIES" | tr ',' ' '); do
    timeout 120 cvmfs_config showconfig "$r" > "$c/showconfig-$r.txt" 2>&1
    timeout 120 cvmfs_config probe "$r" > "$c/probe-$r.txt" 2>&1
    timeout 120 cvmfs_talk -i "$r" parameters > "$c/parameters-$r.txt" 2>&1
    timeout 120 cvmfs_talk -i "$r" proxy info > "$c/proxy-$r.txt" 2>&1
    (cd "/cvmfs/$r" && timeout 300 find . -type f -printf '%P\\n' | sort | xargs -r -d '\\n' sha256sum) > "$c/sha256-$r.txt" 2>&1
    readlink "/cvmfs/$r/sw/current" > "$c/symlink-$r.txt" 2>&1
  done
  find /var/lib/cvmfs -maxdepth 3 > "$c/cache-files.txt" 2>&1
fi
cloud-init status --long > "$out/cloud-init-status.txt" 2>&1
echo "exit $?" >> "$out/cloud-init-status.txt"
cp /run/cloud-init/status.json /run/cloud-init/result.json "$out/" 2>/dev/null
echo "$(cat /proc/sys/kernel/random/boot_id) $(date -u +%FT%TZ)" >> "$out/boots.log"
sync
echo "vfarm-local: harness done, powering off" > /dev/console
systemctl poweroff --no-block
""".replace("{HOLD_FILE}", HARNESS_HOLD)
HARNESS_UNIT = """[Unit]
Description=vfarm local test harness: report and power off after cloud-init
After=cloud-final.service

[Service]
Type=oneshot
ExecStart=/usr/local/sbin/vfarm-local-harness

[Install]
WantedBy=cloud-init.target
"""
HARNESS_MARK = "vfarm-local: harness done"

CLOUD_CFG = """# vfarm local test image: NoCloud seed only (no probing of other clouds)
datasource_list: [NoCloud, None]
# No sshd in this image: without ssh-keygen, 25.1 would log WARNINGs (a "degraded" boot).
ssh_genkeytypes: []
"""
INTERFACES = """# cloud-init writes its network config to interfaces.d: it must be sourced.
auto lo
iface lo inet loopback

source /etc/network/interfaces.d/*
"""


def cache_root() -> Path:
    return cache_base() / "images"


def host_mirror(etc: Path = Path("/etc")) -> str:
    """The Debian mirror the host's apt uses (VFARM_MIRROR overrides it), without a trailing slash:
    of the enabled `deb` sources (deb822 `*.sources` first, then `sources.list` and `*.list`), the
    first with a suite of no suffix (bookworm, not bookworm-security or -updates), else the first.
    A deb822 stanza with `Enabled: no` is skipped; comments are ignored and continuation lines
    belong to the field above. The one reader of the host's sources (the test fixtures use it)."""
    override = os.environ.get("VFARM_MIRROR")
    if override:
        return override
    found: list[tuple[str, list[str]]] = []
    sources_d = etc / "apt/sources.list.d"
    for path in sorted(sources_d.glob("*.sources")):
        for stanza in re.split(r"\n\s*\n", path.read_text(encoding="utf-8", errors="replace")):
            fields: dict[str, str] = {}
            key = ""
            for line in stanza.splitlines():
                if line.startswith("#"):
                    continue
                if line[:1].isspace() and key:  # a continuation line
                    fields[key] += " " + line.strip()
                elif ":" in line:
                    key, _, value = line.partition(":")
                    key = key.strip().lower()
                    fields[key] = value.strip()
            if fields.get("enabled", "yes").strip().lower() == "no":
                continue
            if "deb" in fields.get("types", "").split() and fields.get("uris", "").split():
                found.append((fields["uris"].split()[0], fields.get("suites", "").split()))
    for path in [etc / "apt/sources.list", *sorted(sources_d.glob("*.list"))]:
        if path.is_file():
            for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
                words = re.sub(r"\[[^]]*\]", " ", line.split("#", 1)[0]).split()
                if len(words) >= 3 and words[0] == "deb":
                    found.append((words[1], [words[2]]))
    # The main archive: a suite without -security/-updates/-backports.
    for uri, suites in found:
        if any(s and "-" not in s and "/" not in s for s in suites):
            return uri.rstrip("/")
    if found:
        return found[0][0].rstrip("/")
    raise CommandError("no Debian mirror in the host's apt sources: set VFARM_MIRROR")


def _digest(*parts: bytes) -> str:
    h = hashlib.sha256()
    for part in parts:
        h.update(hashlib.sha256(part).digest())
    return h.hexdigest()[:16]


def rootfs_key(suite: str, variant: str = "") -> str:
    recipe: dict[str, object] = {"suite": suite, "variant": "minbase", "packages": PACKAGES, "hooks": HOOKS, "dpkg": DPKG_OPTS}
    if variant:
        recipe["extra"] = VARIANTS[variant]
    if variant in LOCAL_SOURCE:
        recipe["local"] = hashlib.sha256((cvmfs_local.built_apt() / "Packages").read_bytes()).hexdigest()
    return _digest(json.dumps(recipe, sort_keys=True).encode())


def image_key(suite: str, variant: str = "") -> str:
    """Changes with the rootfs, this recipe, the bake step and every vfarm file that gets baked."""
    parts = [rootfs_key(suite, variant).encode(), Path(__file__).read_bytes()]
    for _dest, source in sorted(baking.baked_files().items()):
        parts.append(source.encode())
    return _digest(*parts)


def plain_key(suite: str, variant: str = "") -> str:
    """Changes with the rootfs and this recipe (the harness among it), not with vfarm's code."""
    return _digest(rootfs_key(suite, variant).encode(), Path(__file__).read_bytes())


def rootfs_tar(suite: str, mirror: Optional[str] = None, variant: str = "") -> Path:
    """mmdebstrap's tar of SUITE (plus a VARIANT's packages), made once per recipe."""
    if suite not in SUITES:
        raise CommandError(f"unknown suite {suite!r}: one of {', '.join(SUITES)}")
    packages = PACKAGES + (VARIANTS[variant] if variant else [])
    label = f"{suite}+{variant}" if variant else suite  # `+`: the plain suite's clean-up glob spares it
    target = cache_root() / "rootfs" / f"{label}-{rootfs_key(suite, variant)}.tar"
    if target.is_file():
        return target
    with locked(cache_root() / f".rootfs-{label}.lock"):
        if target.is_file():
            return target
        target.parent.mkdir(parents=True, exist_ok=True)
        mirror = mirror or host_mirror()
        progress("image", f"{label}: mmdebstrap from {mirror} (about a minute) ...")
        watch = Stopwatch()
        partial = target.with_suffix(".partial.tar")
        argv = ["mmdebstrap", "--quiet", "--mode=root", "--variant=minbase", f"--include={','.join(packages)}"]
        argv += [f"--dpkgopt={opt}" for opt in DPKG_OPTS]
        argv += [f"--customize-hook={hook}" for hook in HOOKS]
        if variant in LOCAL_SOURCE:
            # The locally built packages, served on loopback for the build only: their line goes.
            argv.append("--customize-hook=sed -i '/127\\.0\\.0\\.1/d' \"$1/etc/apt/sources.list\"")
            with LoopbackServer(cvmfs_local.built_apt()) as server:
                url = server.url
                run(argv + [suite, str(partial), f"deb {mirror} {suite} main", f"deb [trusted=yes] {url} ./"], timeout=1800)
        else:
            run(argv + [suite, str(partial), mirror], timeout=1800)
        partial.rename(target)
        for old in target.parent.glob(f"{label}-*.tar"):
            if old != target:
                old.unlink()
        progress("image", f"{label}: rootfs {target.stat().st_size >> 20} MB in {watch():.0f} s")
    return target


@dataclass
class Image:
    name: str
    directory: Path
    disk: Path
    kernel: Path
    initrd: Path
    info: dict[str, object]

    @property
    def has_harness(self) -> bool:
        return bool(self.info.get("harness"))


def load_image(directory: Path) -> Image:
    directory = Path(directory)
    info_path = directory / "image.json"
    info: dict[str, object] = json.loads(info_path.read_text()) if info_path.is_file() else {}
    image = Image(str(info.get("suite", directory.name)), directory, directory / "disk.raw",
                  directory / "vmlinuz", directory / "initrd.img", info)
    for need in (image.disk, image.kernel, image.initrd):
        if not need.is_file():
            raise CommandError(f"{directory}: not an image folder (no {need.name}); `vfarm image build` makes one")
    return image


def _package_version(root: Path, package: str) -> str:
    status = (root / "var/lib/dpkg/status").read_text(encoding="utf-8", errors="replace")
    for stanza in status.split("\n\n"):
        if re.search(rf"^Package: {re.escape(package)}$", stanza, re.M):
            m = re.search(r"^Version: (.+)$", stanza, re.M)
            if m:
                return m.group(1)
    return "?"


def configure(root: Path, suite: str) -> None:
    """What turns mmdebstrap's folder into a bootable local cloud image (test-vm-facts.md)."""
    (root / "etc/hostname").write_text(HOSTNAME.format(suite=suite) + "\n")
    (root / "etc/hosts").write_text("127.0.0.1 localhost\n::1 localhost ip6-localhost ip6-loopback\n")
    (root / "etc/fstab").write_text("LABEL=root / ext4 defaults 0 1\n")
    (root / "etc/network").mkdir(parents=True, exist_ok=True)
    (root / "etc/network/interfaces.d").mkdir(exist_ok=True)
    (root / "etc/network/interfaces").write_text(INTERFACES)
    (root / "etc/cloud/cloud.cfg.d/90-vfarm-local.cfg").write_text(CLOUD_CFG)
    # A fresh machine-id per boot of a fresh copy: systemd makes one when the file is empty.
    (root / "etc/machine-id").write_text("")
    script = root / "usr/local/sbin/vfarm-local-harness"
    script.parent.mkdir(parents=True, exist_ok=True)
    script.write_text(HARNESS_SCRIPT)
    script.chmod(0o755)
    (root / "etc/systemd/system/vfarm-local-harness.service").write_text(HARNESS_UNIT)
    wants = root / "etc/systemd/system/cloud-init.target.wants"
    wants.mkdir(parents=True, exist_ok=True)
    link = wants / "vfarm-local-harness.service"
    if not link.is_symlink():
        link.symlink_to("/etc/systemd/system/vfarm-local-harness.service")


def _newest(paths: list[Path]) -> Path:
    if not paths:
        raise CommandError("the image has no kernel/initrd in /boot")
    return sorted(paths, key=lambda p: [int(x) if x.isdigit() else x for x in re.split(r"(\d+)", p.name)])[-1]


def build(suite: str, *, force: bool = False, mirror: Optional[str] = None, bake_vfarm: bool = True, variant: str = "") -> Image:
    """The cached image of SUITE, built (or re-baked from the cached rootfs) when its inputs changed."""
    if suite not in SUITES:
        raise CommandError(f"unknown image {suite!r}: one of {', '.join(SUITES)}, or a folder made by `vfarm image build`")
    if variant and (variant not in VARIANTS or suite not in VARIANT_SUITES.get(variant, SUITES)):
        raise CommandError(f"no image {suite}-{variant}: variants are " + ", ".join(f"{s}-{v}" for v in VARIANTS for s in VARIANT_SUITES.get(v, SUITES)))
    key = image_key(suite, variant) if bake_vfarm else plain_key(suite, variant)
    name = (f"{suite}-{variant}" if variant else suite) + ("" if bake_vfarm else "-plain")
    final = cache_root() / f"{name}-{key}"
    if (final / "image.json").is_file() and not force:
        return load_image(final)
    tar = rootfs_tar(suite, mirror, variant)
    with locked(cache_root() / f".image-{name}.lock"):
        if (final / "image.json").is_file() and not force:
            return load_image(final)
        watch = Stopwatch()
        work = cache_root() / f".build-{name}-{os.getpid()}"
        shutil.rmtree(work, ignore_errors=True)
        root = work / "root"
        root.mkdir(parents=True)
        try:
            progress("image", f"{name}: unpacking {tar.name}")
            run(["tar", "--numeric-owner", "-xpf", tar, "-C", root], timeout=600)
            configure(root, suite)
            # mmdebstrap leaves the build host's resolver here, unreachable from the guest
            # (restrict=on): every lookup would wait for its timeouts. None: lookups fail at once.
            (root / "etc/resolv.conf").unlink(missing_ok=True)
            (root / "etc/resolv.conf").write_text("# vfarm local test image: no DNS (the guest reaches only 10.0.2.100)\n")
            manifest: dict[str, object] = {}
            if bake_vfarm:
                progress("image", f"{name}: baking vfarm")
                manifest = baking.bake(root)
            kernel = _newest(list(root.glob("boot/vmlinuz-*")))
            initrd = _newest(list(root.glob("boot/initrd.img-*")))
            shutil.copyfile(kernel, work / "vmlinuz")
            shutil.copyfile(initrd, work / "initrd.img")
            progress("image", f"{name}: mkfs.ext4 -d ({DISK_SIZE})")
            run(["mkfs.ext4", "-q", "-F", "-L", "root", "-d", root, work / "disk.raw", DISK_SIZE], timeout=600)
            info = {
                "suite": suite, "name": name, "key": key, "recipe_version": RECIPE_VERSION, "variant": variant,
                "cloud_init": _package_version(root, "cloud-init"), "kernel": kernel.name,
                "harness": True, "baked": manifest, "built": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            }
            (work / "image.json").write_text(json.dumps(info, indent=2) + "\n")
            shutil.rmtree(root)
            if final.exists():
                shutil.rmtree(final)
            work.rename(final)
        finally:
            shutil.rmtree(work, ignore_errors=True)
        # Older builds go, but not while a boot may still be copying one (another process's key).
        for old in cache_root().glob(f"{name}-*"):
            if (old != final and old.is_dir() and re.fullmatch(rf"{re.escape(name)}-[0-9a-f]{{16}}(-plain)?", old.name)
                    and time.time() - old.stat().st_mtime > PRUNE_AFTER):
                shutil.rmtree(old, ignore_errors=True)
        progress("image", f"{name}: ready in {watch():.0f} s: {final} (cloud-init {info['cloud_init']})")
    return load_image(final)


def find(name_or_path: str) -> Image:
    """An image by suite name (built when missing or stale) or by folder."""
    if name_or_path in SUITES:
        return build(name_or_path)
    if name_or_path.endswith("-plain") and name_or_path[: -len("-plain")] in SUITES:
        return build(name_or_path[: -len("-plain")], bake_vfarm=False)
    suite, _, variant = name_or_path.partition("-")
    if suite in SUITES and variant in VARIANTS:
        return build(suite, variant=variant)
    path = Path(name_or_path)
    if path.is_dir():
        return load_image(path)
    raise CommandError(f"--image {name_or_path}: not one of {', '.join(SUITES)} nor an image folder")
