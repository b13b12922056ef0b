"""`vfarm image build SUITE` and `vfarm image bake ROOTDIR`."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from ..clouds import bake, images
from ..clouds.hostcmd import CommandError
from .common import EXIT_OK, fail


def cmd_build(args: argparse.Namespace) -> int:
    try:
        image = images.build(args.suite, force=args.force, mirror=args.mirror, bake_vfarm=not args.plain, variant=args.variant or "")
    except CommandError as err:
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
    p = sub.add_parser("image", help="build the local test images, or bake vfarm into any image root folder")
    isub = p.add_subparsers(dest="image_command", metavar="ACTION", required=True)
    b = isub.add_parser("build", help="build (or reuse from the cache) a Debian cloud image with vfarm baked in")
    b.add_argument("suite", choices=images.SUITES)
    b.add_argument("--force", action="store_true", help="rebuild even when the cached image is current")
    b.add_argument("--mirror", help="Debian mirror (default: the host's apt sources, or VFARM_MIRROR)")
    b.add_argument("--plain", action="store_true", help="do not bake vfarm in (a stock cloud image)")
    b.add_argument("--variant", choices=sorted(images.VARIANTS), help="extra packages baked in: condor (trixie only) makes an HTCondor worker image; "
                   "cvmfs has the locally built CernVM-FS client preinstalled")
    b.set_defaults(func=cmd_build)
    k = isub.add_parser("bake", help="bake vfarm's handlers and config modules into an image root folder")
    k.add_argument("root", metavar="ROOTDIR")
    k.add_argument("--site-dir", help="Python folder inside ROOTDIR for the modules (default: where cloud-init's package is)")
    k.add_argument("--json", action="store_true", help="print the manifest as JSON")
    k.set_defaults(func=cmd_bake)
