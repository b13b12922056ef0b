"""A STAND-IN for the CernVM-FS client, as a local apt repository (the real client cannot be
downloaded on these machines, whose only network is the Debian mirror).

The repository holds a package called `cvmfs` at two versions. Its `cvmfs_config` does not mount
anything: it checks the configuration files it finds (every file must parse as bash, and
default.local must set CVMFS_HTTP_PROXY and CVMFS_REPOSITORIES), answers chksetup/setup/probe/
showconfig the way the real one does, and records every call in /var/log/cvmfs-standin.log. The
vfarm cvmfs module installs the pinned version from it exactly as it would from CERN's repository
(an unsigned repository, hence `trusted: true` in `package-repository`).

Layout (apt's, with suites `{codename}-prod` and component `main` like CERN's):
  dists/SUITE/Release, dists/SUITE/main/binary-amd64/Packages(.gz), pool/main/c/cvmfs/*.deb
Cached under /var/cache/vfarm/cvmfs-standin/KEY/, KEY a hash of this file.
"""

from __future__ import annotations

import gzip
import hashlib
import os
import shutil
from pathlib import Path

from .hostcmd import progress, run

VERSIONS = ("2.1.14", "2.11.2")
SUITES = ("bookworm-prod", "trixie-prod")
LOG = "/var/log/cvmfs-standin.log"
EPOCH = 1700000000  # fixed dates: the same inputs give the same repository

CVMFS_CONFIG = r"""#!/bin/bash
# STAND-IN for CernVM-FS's cvmfs_config (vfarm tests, version @VERSION@): it checks the
# configuration files and records every call; it mounts nothing.
# CVMFS_STANDIN_ROOT: a folder standing for / (the host-side tests run it there).
R=${CVMFS_STANDIN_ROOT:-}
LOG=$R@LOG@
echo "$(date -u +%FT%TZ) cvmfs_config $*" >> "$LOG"
ETC=$R/etc/cvmfs

files() {
  local f
  for f in $ETC/default.conf $ETC/default.d/*.conf $ETC/default.local "$@"; do
    [ -f "$f" ] && echo "$f"
  done
}

# Every file must be valid bash; default.local must set the proxy and the repositories.
check_files() {
  local f err rc=0
  if [ ! -f $ETC/default.local ]; then echo "Error: $ETC/default.local is missing"; return 1; fi
  for f in $(files $ETC/domain.d/*.conf $ETC/domain.d/*.local $ETC/config.d/*.conf $ETC/config.d/*.local); do
    if ! err=$(bash -n "$f" 2>&1); then echo "Error: $f is not valid: $err"; rc=1; fi
    if ! err=$(bash -c 'set -e; . "$1"' _ "$f" 2>&1 >/dev/null); then echo "Error: sourcing $f failed: $err"; rc=1; fi
  done
  [ $rc = 0 ] || return $rc
  local proxy repos
  proxy=$(bash -c '. "$1"; echo "$CVMFS_HTTP_PROXY"' _ $ETC/default.local)
  repos=$(bash -c '. "$1"; echo "$CVMFS_REPOSITORIES"' _ $ETC/default.local)
  if [ -z "$proxy" ]; then echo "Error: CVMFS_HTTP_PROXY is not set in $ETC/default.local"; rc=1; fi
  if [ -z "$repos" ]; then echo "Error: CVMFS_REPOSITORIES is not set in $ETC/default.local"; rc=1; fi
  return $rc
}

# The settings for one repository, layered as the real client does.
settings() {
  local repo=$1 domain=${1#*.}
  bash -c 'set -a; for f in "$@"; do [ -f "$f" ] && . "$f"; done; set | grep "^CVMFS_"' _ \
    $(files) $ETC/domain.d/$domain.conf $ETC/domain.d/$domain.local $ETC/config.d/$repo.conf $ETC/config.d/$repo.local
}

repos() { bash -c '. "$1"; echo "$CVMFS_REPOSITORIES"' _ $ETC/default.local | tr ',' ' '; }

case "$1" in
  setup)
    check_files || exit 1
    mkdir -p $R/cvmfs $R/etc/auto.master.d
    echo "/cvmfs /etc/auto.cvmfs" > $R/etc/auto.master.d/cvmfs.autofs
    ;;
  chksetup)
    check_files || exit 1
    if [ ! -f $R/etc/auto.master.d/cvmfs.autofs ]; then echo "Warning: autofs map is not referenced (run cvmfs_config setup)"; exit 1; fi
    echo "OK"
    ;;
  probe)
    check_files || exit 1
    shift
    list=${*:-$(repos)}
    rc=0
    for r in $list; do
      case " $(repos) " in
        *" $r "*) echo "Probing /cvmfs/$r... OK (stand-in: nothing mounted)" ;;
        *) echo "Probing /cvmfs/$r... Failed! (not in CVMFS_REPOSITORIES)"; rc=1 ;;
      esac
    done
    exit $rc
    ;;
  showconfig)
    check_files || exit 1
    [ -n "$2" ] || { echo "usage: cvmfs_config showconfig REPOSITORY"; exit 1; }
    echo "CVMFS_REPOSITORY_NAME=$2"
    settings "$2"
    ;;
  reload|umount|killall) echo "stand-in: nothing to $1" ;;
  version|--version) echo "CernVM-FS stand-in @VERSION@" ;;
  *) echo "usage: cvmfs_config setup|chksetup|probe [REPO...]|showconfig REPO|reload|version"; exit 1 ;;
esac
"""

CVMFS2 = """#!/bin/sh
# STAND-IN for the cvmfs2 binary (vfarm tests).
echo "$(date -u +%FT%TZ) cvmfs2 $*" >> @LOG@
echo "CernVM-FS version @VERSION@ (vfarm stand-in, not the real client)"
"""

DEFAULT_CONF = """# STAND-IN default.conf (vfarm tests): the real package ships many more defaults.
CVMFS_CACHE_BASE=/var/lib/cvmfs
CVMFS_QUOTA_LIMIT=4000
CVMFS_USER=root
"""


def cache_dir() -> Path:
    return Path(os.environ.get("VFARM_CACHE", "/var/cache/vfarm")) / "cvmfs-standin"


def key() -> str:
    return hashlib.sha256(Path(__file__).read_bytes()).hexdigest()[:16]


def _fill(text: str, version: str) -> str:
    return text.replace("@VERSION@", version).replace("@LOG@", LOG)


def _package(work: Path, version: str, out: Path) -> None:
    root = work / f"cvmfs-{version}"
    for rel, text, mode in (
        ("usr/bin/cvmfs_config", _fill(CVMFS_CONFIG, version), 0o755),
        ("usr/bin/cvmfs2", _fill(CVMFS2, version), 0o755),
        ("etc/cvmfs/default.conf", DEFAULT_CONF, 0o644),
        ("usr/share/doc/cvmfs/README.stand-in", "This is NOT CernVM-FS: a stand-in made by vfarm's tests.\n", 0o644),
    ):
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        path.chmod(mode)
        os.utime(path, (EPOCH, EPOCH))
    for sub in ("etc/cvmfs/default.d", "etc/cvmfs/domain.d", "etc/cvmfs/config.d", "DEBIAN"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    (root / "DEBIAN/control").write_text(
        f"Package: cvmfs\nVersion: {version}\nArchitecture: all\nMaintainer: vfarm tests <root@localhost>\n"
        "Section: utils\nPriority: optional\n"
        "Description: STAND-IN for the CernVM-FS client (vfarm tests)\n"
        " Checks the configuration files and records every cvmfs_config call; mounts nothing.\n")
    (root / "DEBIAN/conffiles").write_text("/etc/cvmfs/default.conf\n")
    run(["dpkg-deb", "--root-owner-group", "-Zgzip", "--build", root, out])


def _release(suite: str, files: dict[str, bytes]) -> str:
    lines = [
        "Origin: vfarm-standin", "Label: vfarm cvmfs stand-in (not CernVM-FS)", f"Suite: {suite}", f"Codename: {suite}",
        "Date: Tue, 14 Nov 2023 22:13:20 UTC", "Architectures: amd64 all", "Components: main",
        "Description: STAND-IN cvmfs packages for vfarm's tests", "SHA256:",
    ]
    lines += [f" {hashlib.sha256(data).hexdigest()} {len(data)} {name}" for name, data in sorted(files.items())]
    return "\n".join(lines) + "\n"


def build() -> Path:
    """The repository folder (built once per version of this file)."""
    final = cache_dir() / key()
    if (final / "dists").is_dir():
        return final
    work = cache_dir() / f".build-{os.getpid()}"
    shutil.rmtree(work, ignore_errors=True)
    pool = work / "repo/pool/main/c/cvmfs"
    pool.mkdir(parents=True)
    env_epoch = os.environ.get("SOURCE_DATE_EPOCH")
    os.environ["SOURCE_DATE_EPOCH"] = str(EPOCH)
    try:
        for version in VERSIONS:
            _package(work, version, pool / f"cvmfs_{version}_all.deb")
    finally:
        if env_epoch is None:
            os.environ.pop("SOURCE_DATE_EPOCH", None)
        else:
            os.environ["SOURCE_DATE_EPOCH"] = env_epoch
    packages = run(["dpkg-scanpackages", "--multiversion", "pool", "/dev/null"], timeout=120, cwd=work / "repo").stdout
    packages_bytes = packages.encode()
    packages_gz = gzip.compress(packages_bytes, mtime=EPOCH)
    repo = work / "repo"
    for suite in SUITES:
        binary = repo / "dists" / suite / "main/binary-amd64"
        binary.mkdir(parents=True)
        (binary / "Packages").write_bytes(packages_bytes)
        (binary / "Packages.gz").write_bytes(packages_gz)
        files = {"main/binary-amd64/Packages": packages_bytes, "main/binary-amd64/Packages.gz": packages_gz}
        (repo / "dists" / suite / "Release").write_text(_release(suite, files))
    final.parent.mkdir(parents=True, exist_ok=True)
    shutil.rmtree(final, ignore_errors=True)
    repo.rename(final)
    shutil.rmtree(work, ignore_errors=True)
    progress("cvmfs", f"stand-in repository (cvmfs {', '.join(VERSIONS)}; NOT the real client) in {final}")
    return final
