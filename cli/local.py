"""`vfarm launch local FILE`: boot a config's user-data in a local qemu VM and show its summary.

Steps: validate and build the user-data (as `vfarm build` would), boot a fresh copy of the image
with a data disk carrying an empty volume group, wait for power-off, read the instance's
/var/log/vfarm/summary.json from the disk, print it as a table. Exit 0 only when it says ok.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any, Optional, TextIO

from ..clouds.hostcmd import CommandError, progress
from ..clouds.local import DEFAULT_TIMEOUT
from ..clouds.local_launch import make_instance
from ..mime_builder.mime import BuildError
from .common import EXIT_OK, EXIT_PROBLEM, add_command, add_userdata_options, fail, load_or_report, whole_number


def print_summary(summary: Optional[dict[str, Any]], out: TextIO = sys.stdout) -> bool:
    """The instance's summary as a table on OUT; whether it says ok."""
    if summary is None:
        print("vfarm: the instance wrote no /var/log/vfarm/summary.json: the final check did not run", file=sys.stderr)
        return False
    from ..cc_modules import check

    print(check.render(summary), end="", file=out)
    return summary.get("result") == "ok"


def cmd_launch_local(args: argparse.Namespace) -> int:
    from ..mime_builder import mime

    config = load_or_report(args.file)
    if config is None:
        return EXIT_PROBLEM
    try:
        instance = make_instance(config, image=args.image, handlers=args.handlers, gzip=args.gzip, pin=args.pin, max_size=args.max_size,
                                 disk=args.disk, data_disk="blank" if args.blank_disk else "vg", smp=args.smp, local_cvmfs=not args.no_local_cvmfs,
                                 pool_forward=args.pool_forward, netns=args.netns, metadata=args.metadata, forwards=dict(args.forward),
                                 attach=[mime.attachment(a) for a in args.attach])
    except (CommandError, OSError) as err:
        return fail(f"launch local: {err}")
    except BuildError as err:
        return fail(f"{args.file}: {err}")
    # From here the instance folder exists (a copy of the image, the seed with the user-data and
    # any token in it): it goes on every way out, errors and Ctrl-C too, unless --keep.
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
        ok = print_summary(summary, sys.stderr if args.json else sys.stdout) and ok  # --json: stdout is JSON alone
        if args.json and summary is not None:
            print(json.dumps(summary, indent=2, sort_keys=True))
    except (CommandError, OSError) as err:
        return fail(f"launch local: {err}")
    finally:
        if args.keep:
            progress("local", f"kept {instance.folder} (boot it again: same disk, same instance-id)")
        else:
            instance.remove()
    return EXIT_OK if ok else EXIT_PROBLEM


def _host_port(text: str) -> str:
    host, _, port = text.rpartition(":")
    if not host or not port.isdigit() or not 0 < int(port) < 65536 or any(c in host for c in " ,"):
        raise argparse.ArgumentTypeError(f"expected HOST:PORT, got {text!r}")
    return text


def _forward(text: str) -> tuple[int, str]:
    port, sep, target = text.partition("=")
    try:
        if not sep or not port.isdigit() or not 0 < int(port) < 65536 or int(port) in (80, 9618):
            raise argparse.ArgumentTypeError(text)
        return int(port), _host_port(target)
    except argparse.ArgumentTypeError:
        raise argparse.ArgumentTypeError(f"expected GUESTPORT=HOST:PORT (not port 80 or 9618), got {text!r}") from None


def register(sub: argparse._SubParsersAction) -> None:
    from .cloud import launch_targets

    p = add_command(
        launch_targets(sub), "local", "boot the config's user-data in a local qemu VM (TCG), wait for it, print its summary",
        examples=["vfarm launch local examples/torino.yaml --collect torino-boot",
                  "vfarm launch local examples/torino.yaml --image trixie --handlers include --reboot 1"],
        exit_codes="exit codes: 0 the instance's summary is ok, 1 it is not (or the boot failed), 2 usage error",
        description="Boot FILE's user-data in a throw-away local VM: a fresh copy of a Debian cloud image with vfarm baked in, "
                    "a data disk carrying an empty volume group vg_local, the guest's only network a loopback HTTP server "
                    "(handlers for include mode, the locally built CernVM-FS packages as an apt repository).")
    p.add_argument("file", metavar="FILE", help="the #multiple-config file ('-' for stdin)")
    p.add_argument("--image", default="bookworm", help="bookworm, trixie (built and cached when missing), X-cvmfs (CernVM-FS client preinstalled), "
                                                        "X-plain (nothing baked), or an image folder")
    p.add_argument("--disk", default="8G", metavar="SIZE", help="size of the data disk (default 8G)")
    p.add_argument("--blank-disk", action="store_true", help="a blank data disk (for configs that create the VG from `devices`)")
    add_userdata_options(p, handlers_help="embed (default), baked, include (served from this machine's loopback) or include=URL_BASE",
                         max_size=1 << 20,
                         max_size_help="largest user-data to build (default 1 MiB: a NoCloud seed has no 16 KiB limit; a warning says when EC2 would not)")
    p.add_argument("--no-local-cvmfs", action="store_true",
                   help="do not point a cvmfs section without package-repository at the locally built CernVM-FS packages")
    p.add_argument("--collect", metavar="DIR", help="copy summary, logs, cloud-init status, lsblk/swapon, fstab, /etc/cvmfs into DIR")
    p.add_argument("--keep", action="store_true", help="keep the instance folder (disks, seed, console logs)")
    p.add_argument("--reboot", type=whole_number(0), default=0, metavar="N", help="boot the same instance N more times after the first power-off")
    p.add_argument("--timeout", type="seconds", default=DEFAULT_TIMEOUT, metavar="S", help=f"seconds per boot before giving up (default {DEFAULT_TIMEOUT:.0f})")
    p.add_argument("--smp", type=whole_number(1), default=2, help="vCPUs (default 2: faster under TCG)")
    p.add_argument("--pool-forward", metavar="HOST:PORT", type=_host_port,
                   help="give the guest a route to an HTCondor pool: its 10.0.2.100:9618 reaches HOST:PORT (write central-manager: 10.0.2.100; "
                        "with --metadata 169.254.0.100)")
    p.add_argument("--forward", action="append", default=[], type=_forward, metavar="GUESTPORT=HOST:PORT",
                   help="another route for the guest: its 10.0.2.100:GUESTPORT (169.254.0.100 with --metadata) reaches HOST:PORT on this "
                        "host (e.g. 3128=127.0.0.1:PORT for a squid); repeatable")
    p.add_argument("--metadata", action="store_true",
                   help="give the guest its user-data as a cloud does: an EC2-style metadata service at 169.254.169.254 "
                        "(cloud-init's Ec2 datasource), no seed disk; the guest's network is then 169.254.0.0/16")
    p.add_argument("--netns", metavar="PATH",
                   help="run qemu inside this network namespace (/run/netns/NAME or /proc/PID/ns/net), e.g. the one the pool listens in")
    p.add_argument("--json", action="store_true", help="print summary.json on stdout (the table then goes to stderr)")
    p.set_defaults(func=cmd_launch_local)
