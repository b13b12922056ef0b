"""A local instance prepared from a config: its user-data built as `vfarm build` builds it, its
disks and seed made, and the loopback folder its guest reaches filled (handlers, the locally built
CernVM-FS packages in CERN's apt layout)."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Optional

from ..mime_builder.limits import EC2_LIMIT
from . import cvmfs_local, images
from .hostcmd import CommandError, progress
from .local import GUEST_HTTP, NETNS_NO_HTTP, LocalInstance

HANDLER_DIR = "handlers"
CVMFS_DIR = "cvmfs"
CVMFS_URL = f"http://{GUEST_HTTP}/{CVMFS_DIR}"


def use_local_cvmfs(sections: dict[str, Any]) -> bool:
    """A cvmfs section that installs from the default (CERN's) repository cannot reach it here (no
    network but loopback): point it at the locally built CernVM-FS packages instead."""
    cvmfs = sections.get("cvmfs")
    if not isinstance(cvmfs, dict) or not cvmfs.get("install") or "package-repository" in cvmfs:
        return False
    cvmfs["package-repository"] = {"apt": CVMFS_URL, "trusted": True}
    return True


def serve_folder(folder: Path, *, handlers: bool, local_cvmfs: bool) -> Path:
    """The folder the loopback HTTP server serves: handlers/ (as `vfarm handlers` writes it) and cvmfs/."""
    from ..mime_builder import bundle

    www = folder / "www"
    www.mkdir(parents=True, exist_ok=True)
    if handlers:
        out = www / HANDLER_DIR
        out.mkdir(exist_ok=True)
        files = bundle.hosted_files()
        for name, source in files.items():
            (out / name).write_text(source, encoding="utf-8")
        sums = "".join(f"{hashlib.sha256(src.encode()).hexdigest()}  {name}\n" for name, src in sorted(files.items()))
        (out / "SHA256SUMS").write_text(sums)
    if local_cvmfs:
        link = www / CVMFS_DIR
        if not link.exists():
            link.symlink_to(cvmfs_local.build())
    return www


def make_instance(config: Any, *, image: str = "bookworm", handlers: str = "embed", gzip: str = "auto", pin: bool = False,
                  max_size: int = 1 << 20, disk: str = "8G", data_disk: str = "vg", smp: int = 2, local_cvmfs: bool = True,
                  attach: Sequence[Any] = (), folder: Optional[Path] = None, quiet: bool = False, pool_forward: Optional[str] = None,
                  netns: Optional[str] = None, metadata: bool = False, forwards: Optional[dict[int, str]] = None,
                  instance_store: bool = False) -> LocalInstance:
    """A prepared local instance for CONFIG (a loaded Config): user-data built, disks and seed made,
    the loopback HTTP folder filled. With METADATA the guest reads its user-data from an EC2-style
    metadata service instead of a seed (INSTANCE_STORE: the data disk as EC2's instance store, see
    LocalInstance); its only other route is the pool forward. FORWARDS: guest
    port -> HOST:PORT, more routes from 10.0.2.100 (e.g. 3128 to a squid). Raises CommandError, or
    the builder's BuildError; a folder it made is removed again when it fails (or is interrupted)."""
    from ..mime_builder import mime

    if local_cvmfs and use_local_cvmfs(config.sections):
        if not quiet:
            progress("local", f"cvmfs: no package-repository set: installing the locally built CernVM-FS packages from {CVMFS_URL}")
    else:
        local_cvmfs = False
    mode = handlers
    serve_handlers = handlers == "include"
    if serve_handlers:
        mode = f"include=http://{GUEST_HTTP}/{HANDLER_DIR}/"
    # Conflicting options are refused before anything is made (user-data, image, disks).
    needs_http = serve_handlers or local_cvmfs or mode.startswith(f"include=http://{GUEST_HTTP}")
    if instance_store and not metadata:
        raise CommandError("an instance store is described by the metadata service: it needs metadata")
    if needs_http and metadata:
        raise CommandError(f"a guest reading the metadata service reaches nothing at {GUEST_HTTP}: use --handlers embed or baked, "
                           "and give a cvmfs section its package-repository")
    if needs_http and netns:
        raise CommandError(NETNS_NO_HTTP + (" (and give a cvmfs section its package-repository, or --no-local-cvmfs)" if local_cvmfs else ""))
    userdata = mime.build_userdata(config, handlers=mode, gzip=gzip, pin=pin, max_size=max_size, attach=attach)
    if len(userdata) > EC2_LIMIT and not quiet:
        progress("local", f"warning: {len(userdata)} bytes of user-data: over EC2's limit of {EC2_LIMIT} (a NoCloud seed takes it)")
    instance = LocalInstance(images.find(image), userdata, disk_size=disk, data_disk=data_disk, smp=smp, folder=folder, quiet=quiet,
                             pool_forward=pool_forward, netns=netns, metadata=metadata, forwards=forwards, instance_store=instance_store)
    existed = instance.folder.exists()
    try:
        instance.make_folder()
        if needs_http:
            instance.http_root = serve_folder(instance.folder, handlers=serve_handlers, local_cvmfs=local_cvmfs)
        instance.prepare()
    except BaseException:
        if not existed:  # a half-made instance (a copy of the image, the seed with the user-data) never stays behind
            instance.remove()
        raise
    if not quiet:
        progress("local", f"{len(userdata)} bytes of user-data ({handlers}); instance folder {instance.folder}")
    return instance
