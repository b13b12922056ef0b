"""`vfarm image build SUITE` and `vfarm image bake ROOTDIR`."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from ..clouds import bake, images
from ..clouds.hostcmd import CommandError
from .common import EXIT_OK, add_command, fail


def cmd_build(args: argparse.Namespace) -> int:
    try:
        image = images.build(args.suite, force=args.force, mirror=args.mirror, bake_vfarm=not args.plain, variant=args.variant or "")
    except (CommandError, OSError) as err:
        return fail(f"image build: {err}")
    print(image.directory)
    return EXIT_OK


def cmd_bake(args: argparse.Namespace) -> int:
    try:
        manifest = bake.bake(Path(args.root), site=Path(args.site_dir) if args.site_dir else None, log=True)
    except (CommandError, OSError) as err:
        return fail(f"image bake: {err}")
    if args.json:
        print(json.dumps(manifest, indent=2, sort_keys=True))
    else:
        for path in sorted(manifest["files"]):
            print(path)
        print(f"baked vfarm {manifest['vfarm']}: modules {', '.join(manifest['modules']) or '(none)'}; "
              f"handlers {', '.join(manifest['handlers']) or '(none)'}", file=sys.stderr)
    return EXIT_OK


def register(sub: argparse._SubParsersAction) -> None:
    p = add_command(sub, "image", "build the local test images, or bake vfarm into any image root folder",
                    description="Images with vfarm inside (--handlers baked): `build` makes the local test images, `bake` puts "
                                "vfarm's handlers into any image's root folder. `vfarm image ACTION --help` for each.",
                    exit_codes="")
    isub = p.add_subparsers(dest="image_command", metavar="ACTION", required=True)
    b = add_command(isub, "build", "build (or reuse from the cache) a Debian cloud image with vfarm baked in",
                    description="Build a Debian cloud image (mmdebstrap from the host's apt sources) with cloud-init and vfarm's "
                                "handlers baked in, for `vfarm launch local` and the tests; a current cached image is reused.",
                    examples=["vfarm image build bookworm", "vfarm image build bookworm --variant cvmfs", "vfarm image build trixie --plain"])
    b.add_argument("suite", choices=images.SUITES, help="the Debian release")
    b.add_argument("--force", action="store_true", help="rebuild even when the cached image is current")
    b.add_argument("--mirror", help="Debian mirror (default: the host's apt sources, or VFARM_MIRROR)")
    b.add_argument("--plain", action="store_true", help="do not bake vfarm in (a stock cloud image)")
    b.add_argument("--variant", choices=sorted(images.VARIANTS), help="extra packages baked in: condor (trixie only) makes an HTCondor worker image; "
                   "cvmfs has the locally built CernVM-FS client preinstalled")
    b.set_defaults(func=cmd_build)
    k = add_command(isub, "bake", "bake vfarm's handlers and config modules into an image root folder",
                    description="Install vfarm's part-handlers and cloud-init config modules into the root folder of an image you "
                                "build (a mounted image, a chroot): user-data for it is then built with --handlers baked.",
                    examples=["vfarm image bake /mnt/worker-image", "vfarm image bake /mnt/worker-image --json"])
    k.add_argument("root", metavar="ROOTDIR", help="the image's root folder")
    k.add_argument("--site-dir", help="Python folder inside ROOTDIR for the modules (default: where cloud-init's package is)")
    k.add_argument("--json", action="store_true", help="print the manifest as JSON")
    k.set_defaults(func=cmd_bake)
