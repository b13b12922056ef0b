"""`vfarm launch local FILE`: boot a config's user-data in a local qemu VM and show its summary.

Steps: validate and build the user-data (as `vfarm build` would), boot a fresh copy of the image
with a data disk carrying an empty volume group, wait for power-off, read the instance's
/var/log/vfarm/summary.json from the disk, print it as a table. Exit 0 only when it says ok.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Optional

from . import cvmfs_standin, images
from .hostcmd import CommandError, progress
from .local import DEFAULT_TIMEOUT, GUEST_HTTP, LocalInstance

HANDLER_DIR = "handlers"
STANDIN_DIR = "cvmfs"
STANDIN_URL = f"http://{GUEST_HTTP}/{STANDIN_DIR}"


def use_standin(sections: dict[str, Any]) -> bool:
    """A cvmfs section that installs from the default (CERN's) repository cannot work here (no
    network but loopback): point it at the local STAND-IN repository instead."""
    cvmfs = sections.get("cvmfs")
    if not isinstance(cvmfs, dict) or not cvmfs.get("install") or "package-repository" in cvmfs:
        return False
    cvmfs["package-repository"] = {"apt": STANDIN_URL, "trusted": True}
    return True


def serve_folder(folder: Path, *, handlers: bool, standin: bool) -> Path:
    """The folder the loopback HTTP server serves: handlers/ (as `vfarm handlers` writes it) and cvmfs/."""
    from ..mime_builder import bundle

    www = folder / "www"
    www.mkdir(parents=True, exist_ok=True)
    if handlers:
        out = www / HANDLER_DIR
        out.mkdir(exist_ok=True)
        files = bundle.bundle_all()
        for name, source in files.items():
            (out / name).write_text(source, encoding="utf-8")
        sums = "".join(f"{hashlib.sha256(src.encode()).hexdigest()}  {name}\n" for name, src in sorted(files.items()))
        (out / "SHA256SUMS").write_text(sums)
    if standin:
        link = www / STANDIN_DIR
        if not link.exists():
            link.symlink_to(cvmfs_standin.build())
    return www


def print_summary(summary: Optional[dict[str, Any]]) -> bool:
    if summary is None:
        print("vfarm: the instance wrote no /var/log/vfarm/summary.json: the final check did not run", file=sys.stderr)
        return False
    from ..cc_modules import check

    print(check.render(summary), end="")
    return summary.get("result") == "ok"


def make_instance(config: Any, *, image: str = "bookworm", handlers: str = "embed", gzip: str = "auto", pin: bool = False,
                  max_size: int = 1 << 20, disk: str = "8G", data_disk: str = "vg", smp: int = 2, standin: bool = True,
                  attach: Sequence[Any] = (), folder: Optional[Path] = None, quiet: bool = False, pool_forward: Optional[str] = None,
                  netns: Optional[str] = None) -> LocalInstance:
    """A prepared local instance for CONFIG (a loaded Config): user-data built, disks and seed made,
    the loopback HTTP folder filled. Raises CommandError, or the builder's BuildError."""
    from ..mime_builder import mime

    if standin and use_standin(config.sections):
        if not quiet:
            progress("local", f"cvmfs: no package-repository set: using the local STAND-IN repository {STANDIN_URL} (not CernVM-FS)")
    else:
        standin = False
    mode = handlers
    serve_handlers = handlers == "include"
    if serve_handlers:
        mode = f"include=http://{GUEST_HTTP}/{HANDLER_DIR}/"
    userdata = mime.build_userdata(config, handlers=mode, gzip=gzip, pin=pin, max_size=max_size, attach=attach)
    if len(userdata) > mime.EC2_LIMIT and not quiet:
        progress("local", f"warning: {len(userdata)} bytes of user-data: over EC2's limit of {mime.EC2_LIMIT} (a NoCloud seed takes it)")
    instance = LocalInstance(images.find(image), userdata, disk_size=disk, data_disk=data_disk, smp=smp, folder=folder, quiet=quiet,
                             pool_forward=pool_forward, netns=netns)
    instance.folder.mkdir(parents=True, exist_ok=True)
    if serve_handlers or standin or mode.startswith(f"include=http://{GUEST_HTTP}"):
        instance.http_root = serve_folder(instance.folder, handlers=serve_handlers, standin=standin)
    instance.prepare()
    if not quiet:
        progress("local", f"{len(userdata)} bytes of user-data ({handlers}); instance folder {instance.folder}")
    return instance


def cmd_launch_local(args: argparse.Namespace) -> int:
    from ..mime_builder import config as configuration

    try:
        config = configuration.load_file(args.file)
    except configuration.ConfigError as err:
        for problem in err.problems:
            print(problem, file=sys.stderr)
        return 1
    except OSError as err:
        print(f"vfarm: {args.file}: {err.strerror or err}", file=sys.stderr)
        return 1
    try:
        instance = make_instance(config, image=args.image, handlers=args.handlers, gzip=args.gzip, pin=args.pin, max_size=args.max_size,
                                 disk=args.disk, data_disk="blank" if args.blank_disk else "vg", smp=args.smp, standin=not args.no_standin,
                                 pool_forward=args.pool_forward, netns=args.netns)
    except CommandError as err:
        print(f"vfarm: launch local: {err}", file=sys.stderr)
        return 1
    except Exception as err:  # the builder's BuildError: one line
        print(f"vfarm: {args.file}: {err}", file=sys.stderr)
        return 1
    try:
        ok = True
        for number in range(1 + args.reboot):
            result = instance.boot(timeout=args.timeout)
            if not result.powered_off:
                print(f"vfarm: boot {number + 1}: {result.outcome} after {result.seconds:.0f} s; console: {result.console}", file=sys.stderr)
                ok = False
                break
        if args.collect:
            found = instance.collect(Path(args.collect))
            progress("local", f"collected {len(found)} item(s) into {args.collect}")
        summary = instance.summary()
        ok = print_summary(summary) and ok
        if args.json and summary is not None:
            print(json.dumps(summary, indent=2, sort_keys=True))
    except CommandError as err:
        print(f"vfarm: launch local: {err}", file=sys.stderr)
        return 1
    if args.keep:
        progress("local", f"kept {instance.folder} (boot it again: same disk, same instance-id)")
    else:
        instance.remove()
    return 0 if ok else 1


def _host_port(text: str) -> str:
    host, _, port = text.rpartition(":")
    if not host or not port.isdigit() or not 0 < int(port) < 65536 or any(c in host for c in " ,"):
        raise argparse.ArgumentTypeError(f"expected HOST:PORT, got {text!r}")
    return text


def register(sub: argparse._SubParsersAction) -> None:
    from .commands import launch_targets

    p = launch_targets(sub).add_parser(
        "local", help="boot the config's user-data in a local qemu VM (TCG), wait for it, print its summary",
        description="Boot FILE's user-data in a throw-away local VM: a fresh copy of a Debian cloud image with vfarm baked in, "
                    "a data disk carrying an empty volume group vg_local, the guest's only network a loopback HTTP server "
                    "(handlers for include mode, a STAND-IN cvmfs apt repository). Exit 0 only when the instance's summary is ok.")
    p.add_argument("file", metavar="FILE")
    p.add_argument("--image", default="bookworm", help="bookworm, trixie (built and cached when missing), X-plain (nothing baked), or an image folder")
    p.add_argument("--disk", default="8G", metavar="SIZE", help="size of the data disk (default 8G)")
    p.add_argument("--blank-disk", action="store_true", help="a blank data disk (for configs that create the VG from `devices`)")
    p.add_argument("--handlers", default="embed", help="embed (default), baked, include (served from this machine's loopback) or include=URL_BASE")
    p.add_argument("--gzip", default="auto", choices=("auto", "always", "never"))
    p.add_argument("--pin", action="store_true", help="with include: vfarm's pinned loader (a failed fetch becomes a recorded failure)")
    p.add_argument("--max-size", type=int, default=1 << 20, metavar="BYTES",
                   help="largest user-data to build (default 1 MiB: a NoCloud seed has no 16 KiB limit; a warning says when EC2 would refuse it)")
    p.add_argument("--no-standin", action="store_true", help="do not point a cvmfs section without package-repository at the local stand-in")
    p.add_argument("--collect", metavar="DIR", help="copy summary, logs, cloud-init status, lsblk/swapon, fstab, /etc/cvmfs into DIR")
    p.add_argument("--keep", action="store_true", help="keep the instance folder (disks, seed, console logs)")
    p.add_argument("--reboot", type=int, default=0, metavar="N", help="boot the same instance N more times after the first power-off")
    p.add_argument("--timeout", type=float, default=DEFAULT_TIMEOUT, metavar="S", help=f"seconds per boot before giving up (default {DEFAULT_TIMEOUT:.0f})")
    p.add_argument("--smp", type=int, default=2, help="vCPUs (default 2: faster under TCG)")
    p.add_argument("--pool-forward", metavar="HOST:PORT", type=_host_port,
                   help="give the guest a route to an HTCondor pool: its 10.0.2.100:9618 reaches HOST:PORT (write central-manager: 10.0.2.100)")
    p.add_argument("--netns", metavar="PATH",
                   help="run qemu inside this network namespace (/run/netns/NAME or /proc/PID/ns/net), e.g. the one the pool listens in")
    p.add_argument("--json", action="store_true", help="also print summary.json")
    p.set_defaults(func=cmd_launch_local)
