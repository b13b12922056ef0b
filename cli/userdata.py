"""`vfarm build`, `vfarm inspect` and `vfarm handlers`: the user-data side of the command line."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

from ..cc_modules.table import render
from ..display import shown, shown_message
from ..files import atomic_write, read_bounded, read_stdin_bounded
from ..mime_builder import bundle, mime
from ..mime_builder.limits import EC2_LIMIT
from ..redaction import redact, redact_strings
from .common import EXIT_OK, EXIT_PROBLEM, EXIT_USAGE, add_command, add_userdata_options, build_userdata, fail, whole_number, write_userdata

SUMS = "SHA256SUMS"


def _size_report(path: str, built: mime.Built, max_size: int) -> str:
    names = ", ".join(p.filename for p in built.parts)
    how = f"gzip of {built.plain_size} bytes" if built.compressed else "not compressed"
    share = 100 * len(built.data) / max_size
    count = f"{len(built.parts)} part" + ("" if len(built.parts) == 1 else "s")
    return f"vfarm build: {path}: {len(built.data)} bytes ({how}), {share:.0f}% of the {max_size}-byte limit; {count}: {names}"


def cmd_build(args: argparse.Namespace) -> int:
    if args.output == "":
        print("vfarm build: error: -o names no file (leave -o out, or give -, for stdout)", file=sys.stderr)
        return EXIT_USAGE
    built = build_userdata(args, "build")
    if built is None:
        return EXIT_PROBLEM
    if args.output and args.output != "-":
        if not write_userdata(Path(args.output), built):
            return EXIT_PROBLEM
    elif sys.stdout is None:
        return fail("stdout is closed: write the user-data with -o FILE")
    elif built.compressed and sys.stdout.isatty():
        # as gzip does: compressed bytes on a terminal are noise, and can reprogram it
        return fail(f"the user-data is gzipped ({len(built.data)} bytes) and stdout is a terminal: write it with -o FILE or through a pipe")
    else:
        sys.stdout.buffer.write(built.data)
        sys.stdout.flush()
    print(shown_message(_size_report(args.output or "stdout", built, args.max_size)), file=sys.stderr)
    return EXIT_OK


def cmd_inspect(args: argparse.Namespace) -> int:
    from ..mime_builder import inspect as userdata  # here: `vfarm build` starts faster without it

    try:
        if args.file == "-":
            raw = read_stdin_bounded(userdata.MAX_USERDATA)
        else:
            raw = read_bounded(args.file, userdata.MAX_USERDATA)
    except OSError as err:
        return fail(f"{args.file}: cannot read: {err.strerror or err}")
    try:
        report = userdata.inspect_bytes(raw, args.max_size)
    except userdata.InspectError as err:
        return fail(f"{args.file}: {err}")
    if args.json:
        doc: dict[str, Any] = {"file": args.file, **report.as_dict()}
        print(json.dumps(redact_strings(doc), indent=2))  # ASCII: control characters come out as \uXXXX
        return EXIT_OK
    how = f"gzip, {report.plain_size} bytes unpacked" if report.compressed else "not compressed"
    kind = "MIME multipart" if report.mime else "a single part (no MIME)"
    print(f"{shown_message(args.file)}: {report.size} bytes ({how}), {kind}; limit {report.limit}")
    rows = [(p.index, p.type, p.filename, p.size, p.handler) for p in report.parts]
    print(render(("#", "TYPE", "FILENAME", "SIZE", "HANDLED BY"), rows, right=("#", "SIZE")), end="")
    for part in report.parts:
        if part.content is not None:
            print(f"part {part.index} ({shown(part.filename)}), secrets hidden: {shown(part.content)}")
    for warning in report.warnings:
        print(f"warning: {shown_message(redact(warning))}")  # as --json hides them: token= in a URL too
    return EXIT_OK


def _write_in_folder(path: Path, data: bytes) -> None:
    """A file of the hosted folder, always a regular file of the folder: a symlink (or FIFO, or
    device) in its place is replaced, never written through, so that SHA256SUMS and the handlers
    describe what is served and nothing outside the folder changes."""
    if path.is_symlink():
        print(f"vfarm handlers: warning: {path} was a symlink to {os.readlink(path)}: replaced by the file (its target is untouched)", file=sys.stderr)
    elif path.exists() and not path.is_file() and not path.is_dir():
        print(f"vfarm handlers: warning: {path} was not a regular file: replaced by the file", file=sys.stderr)
    atomic_write(path, data, 0o644, follow_symlinks=False)


def cmd_handlers(args: argparse.Namespace) -> int:
    outdir = Path(args.outdir)
    try:
        names = args.only or bundle.handler_names()
        files = {bundle.handler_filename(n): bundle.bundle_handler(n) for n in names}
        files[bundle.CHECK_FILENAME] = bundle.bundle_check()  # every include build fetches it
    except bundle.BundleError as err:
        return fail(str(err))
    sums = "".join(f"{bundle.sha256(source)}  {filename}\n" for filename, source in sorted(files.items()))
    if outdir.exists() and not outdir.is_dir():
        return fail(f"{outdir} is not a folder: name a folder (made when missing) for the handlers")
    try:
        outdir.mkdir(parents=True, exist_ok=True)
        for filename, data in [*((f, s.encode("utf-8")) for f, s in sorted(files.items())), (SUMS, sums.encode("ascii"))]:
            _write_in_folder(outdir / filename, data)
    except OSError as err:
        return fail(f"cannot write into {outdir}: {err.strerror or err}")
    written = [(str(outdir / filename), len(source.encode("utf-8")), bundle.sha256(source)) for filename, source in sorted(files.items())]
    # Handlers of an earlier run that --only left out: an older vfarm's, perhaps, and now unlisted.
    unlisted = [str(outdir / f) for f in sorted(bundle.handler_filename(n) for n in bundle.handler_names()) if f not in files and (outdir / f).exists()]
    if args.json:
        print(json.dumps({"folder": str(outdir), "sums": str(outdir / SUMS), "unlisted": unlisted,
                          "files": [{"file": path, "bytes": size, "sha256": digest} for path, size, digest in written]}, indent=2))
    else:
        for path, size, digest in written:
            print(f"{shown_message(path)}: {size} bytes, sha256 {digest}")
    for path in unlisted:
        print(f"warning: {shown_message(path)} was left as it was, now unlisted in {SUMS}: workers that fetch it run what an earlier "
              "run wrote (a --pin build refuses it at boot unless that run was this vfarm); write every handler (no --only) or remove it",
              file=sys.stderr)
    print(f"{outdir / SUMS}: check with `sha256sum -c {SUMS}`; host the folder and build with --handlers include=URL_BASE [--pin]", file=sys.stderr)
    return EXIT_OK


def register(sub: Any) -> None:
    p = add_command(sub, "build", "write the user-data (MIME, gzip when needed) of a config file",
                    description="Validate FILE, then write its user-data: one MIME message with the handlers (embedded, fetched from "
                                "--handlers include=URL_BASE, or baked into the image) and one part per section, gzipped when it "
                                "would otherwise be over --max-size (--gzip auto). Nothing is written when FILE has a problem or the result is too large.",
                    examples=["vfarm build examples/torino.yaml --handlers baked -o torino-baked.mime",
                              "vfarm build examples/torino.yaml --handlers include=https://handlers.example.org/vfarm/ --pin -o torino-pinned.mime",
                              "vfarm build examples/torino.yaml --max-size 65535 -o torino-embed.mime"])
    p.add_argument("file", metavar="FILE", help="the #multiple-config file ('-' for stdin)")
    p.add_argument("-o", "--output", metavar="OUT", help="write here (default: stdout)")
    add_userdata_options(p)
    p.set_defaults(func=cmd_build)

    p = add_command(sub, "inspect", "list the parts of a user-data file in cloud-init's order, with warnings",
                    description="List the parts of a user-data file as cloud-init walks them: type, size, which handler takes each "
                                "part, the sections carried (secrets hidden), with a warning for what cloud-init would drop or "
                                "fetch unchecked. Includes are listed, never fetched.",
                    examples=["vfarm inspect torino-pinned.mime", "vfarm inspect --json torino-embed.mime",
                              "vfarm build examples/torino.yaml --handlers baked | vfarm inspect -"])
    p.add_argument("file", metavar="FILE", help="user-data, plain or gzip ('-' for stdin)")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.add_argument("--max-size", type=whole_number(1), default=EC2_LIMIT, metavar="BYTES", help=f"the size limit to check against (default {EC2_LIMIT})")
    p.set_defaults(func=cmd_inspect)

    p = add_command(sub, "handlers", "write the bundled, self-contained handler files and SHA256SUMS for hosting",
                    description="Write one self-contained file per handler (and the final check) into OUTDIR, with SHA256SUMS: "
                                "host the folder at URL_BASE and build with --handlers include=URL_BASE [--pin].",
                    examples=["vfarm handlers site-handlers", "vfarm handlers --only localfs --only cvmfs site-handlers",
                              "vfarm handlers --json site-handlers"])
    p.add_argument("outdir", metavar="OUTDIR", help="the folder to write (created when missing)")
    p.add_argument("--only", action="append", metavar="NAME", help="only the handler of this section (repeatable)")
    p.add_argument("--json", action="store_true", help="print the files written (path, bytes, sha256) as JSON")
    p.set_defaults(func=cmd_handlers)
