"""The locally built CernVM-FS packages, laid out as CERN's apt repository for local guests.

Set-up builds the real client and server tools from upstream's source into Debian packages in a
flat apt repository (`tests/fixtures/cvmfs_build.py`: /var/cache/vfarm/cvmfs/debian-KEY/apt/).
A guest installs them the way a site installs from CERN's repository: this module copies them
into CERN's layout (suites `{codename}-prod`, component `main`), so a cvmfs section needs only
`package-repository: {apt: http://10.0.2.100/cvmfs, trusted: true}` (unsigned, hence trusted).

Layout: dists/SUITE/Release, dists/SUITE/main/binary-amd64/Packages(.gz), pool/main/c/cvmfs/*.deb.
Cached under /var/cache/vfarm/cvmfs-local/KEY/, KEY a hash of this file and of the packages.
Two checkouts on one machine share that cache, each with its KEY (their files differ, or their
packages): a build removes only its own work folder and what is provably stale (see `_clean`).

The packages of the `debian` build variant link Debian bookworm's libraries (libcurl4, libssl3,
libprotobuf32, ...). A guest reaches no Debian mirror, so the local test images carry those
libraries already (images.CVMFS_RUNTIME, from the host's mirror at image build): the guest's
install takes only cvmfs, cvmfs-libs and cvmfs-config-default from this repository. Trixie's
libraries carry t64 names on amd64 that `Provides:` the old ones, so the same packages install there.
"""

from __future__ import annotations

import gzip
import hashlib
import os
import re
import shutil
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Optional

from . import shared_cache
from .hostcmd import CommandError, cache_base, locked, progress, run
from .shared_cache import asking, prune

SUITES = ("bookworm-prod", "trixie-prod")
VARIANT = "debian"  # the build variant guests install (tests/fixtures/cvmfs_build.py)
EPOCH = 1700000000  # fixed dates: the same packages give the same repository
PACKAGE_NAMES = ("cvmfs", "cvmfs-libs", "cvmfs-config-default")  # what a client install takes from here
USERS = shared_cache.USERS  # cache_dir()/.users/ID.json: which KEY folder a checkout asks for, with which packages
MADE = shared_cache.MADE  # in a KEY folder made by this code (one without it is left alone)


def cache_dir() -> Path:
    return cache_base() / "cvmfs-local"


def built_apt() -> Path:
    """The flat apt folder of the locally built packages (VFARM_CVMFS_APT overrides the lookup)."""
    override = os.environ.get("VFARM_CVMFS_APT")
    if override:
        if not (Path(override) / "Packages").is_file():
            raise CommandError(f"VFARM_CVMFS_APT={override}: no Packages file there (a flat apt repository of cvmfs .debs)")
        return Path(override)
    found = [p.parent / "apt" for p in (cache_base() / "cvmfs").glob(f"{VARIANT}-*/build.json") if (p.parent / "apt/Packages").is_file()]
    if not found:
        raise CommandError("no locally built CernVM-FS packages (/var/cache/vfarm/cvmfs/debian-*/apt): `tools/run setup` builds them")
    return max(found, key=lambda p: (p / "Packages").stat().st_mtime)


def stanzas(apt: Path) -> list[dict[str, str]]:
    """The Packages file of APT as one dict per package."""
    out = []
    for block in re.split(r"\n\s*\n", (apt / "Packages").read_text(encoding="utf-8")):
        fields = dict(re.findall(r"^([A-Za-z0-9-]+):\s*(.*)$", block, re.M))
        if fields.get("Package"):
            out.append(fields)
    return out


def client_version(apt: Optional[Path] = None) -> str:
    """The cvmfs package's full version (e.g. 2.12.0~1+debian12)."""
    for fields in stanzas(apt or built_apt()):
        if fields["Package"] == "cvmfs":
            return fields["Version"]
    raise CommandError(f"{apt}: no cvmfs package in the Packages file")


def dependencies(apt: Optional[Path] = None) -> set[str]:
    """Every package the client packages depend on, by the first name of each alternative,
    without versions and without the packages of this repository itself."""
    names: set[str] = set()
    for fields in stanzas(apt or built_apt()):
        if fields["Package"] not in PACKAGE_NAMES:
            continue
        for item in fields.get("Depends", "").split(","):
            name = item.split("|")[0].split("(")[0].strip()
            if name and name not in PACKAGE_NAMES and name != "cvmfs-config":
                names.add(name)
    return names


def key(apt: Path) -> str:
    return hashlib.sha256(Path(__file__).read_bytes() + (apt / "Packages").read_bytes()).hexdigest()[:16]


def _release(suite: str, files: dict[str, bytes]) -> str:
    lines = [
        "Origin: vfarm", "Label: CernVM-FS built locally from upstream's source", f"Suite: {suite}", f"Codename: {suite}",
        "Date: Tue, 14 Nov 2023 22:13:20 UTC", "Architectures: amd64 all", "Components: main",
        "Description: CernVM-FS packages built by vfarm's set-up, laid out as CERN's repository", "SHA256:",
    ]
    lines += [f" {hashlib.sha256(data).hexdigest()} {len(data)} {name}" for name, data in sorted(files.items())]
    return "\n".join(lines) + "\n"


def build(apt: Optional[Path] = None) -> Path:
    """The CERN-shaped repository folder of the built packages (made once per set of packages,
    by one set-up at a time)."""
    apt = apt or built_apt()
    final = cache_dir() / key(apt)
    with _asking(apt, final):  # a clean-up from now on keeps FINAL; one before it took a stale FINAL
        if (final / "dists").is_dir():
            return final
    # Two set-ups on one machine (two checkouts) share the cache: one builds, the other waits and says so.
    with locked(cache_dir() / ".lock", f"another set-up is building in {cache_dir()}: waiting for it", area="cvmfs"):
        if (final / "dists").is_dir():  # built by the set-up this one waited for
            return final
        _build(apt, final)
        _clean(final)
    progress("cvmfs", f"CernVM-FS {client_version(apt)} (built locally) as CERN's apt layout in {final}")
    return final


def _asking(apt: Path, final: Path) -> AbstractContextManager[None]:
    """Note that this checkout (this module's file) asks for FINAL, the repository of APT's
    packages, while the block looks for it: another checkout's clean-up keeps FINAL while this
    file and APT's Packages are as now (the two decide KEY). One record per (this file, APT);
    see shared_cache.asking."""
    module, packages = Path(__file__).resolve(), (apt / "Packages").resolve()
    return asking(cache_dir(), final.name, (str(module), str(packages)), {"module": module, "packages": packages})


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process
        return True
    return True


def _clean(final: Path) -> None:
    """Remove what is provably stale, never what another checkout may use (the caller holds the
    lock): KEY folders made by this code (MADE) that no USERS record asks for any more
    (shared_cache.prune), and the work folders of builds whose process is gone (killed mid-build)."""
    for old in cache_dir().iterdir():
        work = re.fullmatch(r"\.build-([0-9]+)", old.name)
        if work and not _alive(int(work[1])):
            shutil.rmtree(old, ignore_errors=True)
    prune(cache_dir(), [old for old in cache_dir().iterdir() if re.fullmatch(r"[0-9a-f]{16}", old.name)], final.name)


def _build(apt: Path, final: Path) -> None:
    """The repository of APT's packages as FINAL (the caller holds the lock)."""
    work = cache_dir() / f".build-{os.getpid()}"
    shutil.rmtree(work, ignore_errors=True)
    repo = work / "repo"
    pool = repo / "pool/main/c/cvmfs"
    pool.mkdir(parents=True)
    for deb in sorted(apt.glob("*.deb")):
        shutil.copyfile(deb, pool / deb.name)
    packages = run(["dpkg-scanpackages", "--multiversion", "pool", "/dev/null"], timeout=120, cwd=repo).stdout.encode()
    packages_gz = gzip.compress(packages, mtime=EPOCH)
    for suite in SUITES:
        binary = repo / "dists" / suite / "main/binary-amd64"
        binary.mkdir(parents=True)
        (binary / "Packages").write_bytes(packages)
        (binary / "Packages.gz").write_bytes(packages_gz)
        files = {"main/binary-amd64/Packages": packages, "main/binary-amd64/Packages.gz": packages_gz}
        (repo / "dists" / suite / "Release").write_text(_release(suite, files))
    (repo / MADE).write_text("")
    final.parent.mkdir(parents=True, exist_ok=True)
    shutil.rmtree(final, ignore_errors=True)
    repo.rename(final)
    shutil.rmtree(work, ignore_errors=True)
