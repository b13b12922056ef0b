"""What vfarm's sections need of cloud-init's own modules, said in #cloud-config parts of the
user-data (they come before the admin's attachments: an attached part setting the same key
replaces the list, as cloud-init merges cloud-config). One function per section that needs
something, in NEEDS; the others need nothing."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any, Optional

from ..config.localfs import normal_path

CONTENT_TYPE = "text/cloud-config"


def localfs_mounts(section: dict[str, Any]) -> Optional[str]:
    """cloud-init's `mounts` leaves alone the devices localfs makes LVM PVs of. On EC2 it mounts
    the instance store (ephemeral0) at /mnt by default, in the init stage right after the
    part-handlers ran: on a PV by then, that mount fails at every boot. An entry naming a device
    and no mount point drops cloud-init's default mount of that device (it compares the names it
    resolves: ephemeral0 is /dev/xvdb on a Xen instance, /dev/vdb on KVM, as the config names them).
    `[DEVICE]`, not `[DEVICE, null]`: cloud-init 25.1's schema takes strings only (a null makes
    every stage "degraded"); the mount point left out is its default, none."""
    devices = section.get("devices") or []
    if not devices:
        return None
    # As localfs reads them (/dev//xvdb/ is /dev/xvdb), and cc_mounts compares names as written.
    entries = "".join(f"  - [{json.dumps(normal_path(device))}]\n" for device in devices)  # (JSON strings: valid YAML)
    return ("#cloud-config\n"
            "# vfarm localfs: cloud-init's mounts leaves the devices of the volume group alone\n"
            "# (this list replaces the image's own `mounts`, as user-data does: add its entries here)\n"
            f"mounts:\n{entries}")


NEEDS: dict[str, tuple[str, Callable[[dict[str, Any]], Optional[str]]]] = {
    "localfs": ("localfs-mounts.cfg", localfs_mounts),
}


def parts(sections: dict[str, Any]) -> list[tuple[str, str, str]]:
    """(content type, filename, text) of the #cloud-config parts SECTIONS (name -> section as sent) need."""
    found = []
    for name, (filename, need) in NEEDS.items():
        section = sections.get(name)
        text = need(section) if isinstance(section, dict) else None
        if text:
            found.append((CONTENT_TYPE, filename, text))
    return found
