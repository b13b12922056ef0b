"""The system commands the handlers run, as PATH stubs for the real-cloud-init tests: an empty
volume group `vg_local` and nothing else on the machine. Every call is appended to $STUB_LOG."""

from __future__ import annotations

from pathlib import Path

# /bin/sh rather than Python: a stub starts in a millisecond, and a boot runs ~40 commands.
STUB = r"""#!/bin/sh
name=$(basename "$0")
echo "$name $*" >> "$STUB_LOG"
case "$name $1" in
  "lvm fullreport") echo '{"report": [{"vg": [{"vg_name": "vg_local", "vg_extent_size": "4194304",'\
    ' "vg_extent_count": "5000", "vg_free_count": "5000"}], "pv": [], "lv": []}]}' ;;
  "blkid "*) exit 2 ;;
  "findmnt "*) echo '{"filesystems": []}' ;;
  "dpkg-query "*) printf 'install ok installed\t2.11.5~1+debian12' ;;
  "cvmfs_config chksetup") echo OK ;;
esac
exit 0
"""
STUBBED = ("lvm", "blkid", "findmnt", "swapon", "lvcreate", "pvcreate", "vgcreate", "wipefs", "mkfs.ext4", "mkfs.xfs",
           "mkswap", "mount", "umount", "dpkg-query", "dpkg", "apt-get", "apt-cache", "cvmfs_config")


def install(directory: Path, extra: tuple[str, ...] = ()) -> Path:
    """Write the stubs into DIRECTORY (put it first on PATH); returns DIRECTORY. EXTRA stubs more
    commands (`cp`, when a test does not want content carried for real)."""
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "fake-tool").write_text(STUB)
    (directory / "fake-tool").chmod(0o755)
    for name in STUBBED + extra:
        (directory / name).symlink_to("fake-tool")
    return directory
