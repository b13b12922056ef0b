"""The user-data assembler: one `#multiple-config` in, one MIME multipart (gzip when needed) out.

Order (cloud-init walks parts in order and drops a part that comes before its handler):
handlers (include list, pin loader or embedded bundles), attached part-handlers, the config parts
(localfs, cvmfs, condor, then the others in file order), the #cloud-config they need of cloud-init's
own modules (cloudconfig.py), other attachments, the final check's parts.
Compression is of the whole payload only: cloud-init cannot route a gzipped custom part.
The output depends only on the input: the boundary is a hash of the content, gzip has no date.
"""

from __future__ import annotations

import base64
import errno
import gzip
import hashlib
import inspect as pyinspect
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional
from urllib.parse import urlsplit

from .. import files
from ..config import condor as condor_spec
from ..config import sections, yamltext
from ..config.loader import Config
from ..files import read_bounded
from ..redaction import HIDDEN
from ..textsafe import control_character
from . import bundle, checkpart, cloudconfig
from .limits import EC2_LIMIT, GZIP_MODES
from .pinloader import split_userinfo

# A host name: labels of 1-63 letters, digits, inner hyphens (and underscores, which some sites' names carry).
HOST_NAME = re.compile(r"(?!-)[A-Za-z0-9_-]{1,63}(?<!-)(\.(?!-)[A-Za-z0-9_-]{1,63}(?<!-))*")

MAX_ATTACHMENT = 1024 * 1024
# Types cloud-init (22.4 and 25.1) has a handler or a special meaning for, by make-mime subtype.
CLOUD_INIT_TYPES = (
    "cloud-config",
    "cloud-config-archive",
    "cloud-config-jsonp",
    "cloud-boothook",
    "jinja2",
    "part-handler",
    "upstart-job",
    "x-include-url",
    "x-include-once-url",
    "x-shellscript",
    "x-shellscript-per-boot",
    "x-shellscript-per-instance",
    "x-shellscript-per-once",
)
# First lines cloud-init recognises (handlers.INCLUSION_TYPES_MAP), longest first.
STARTS_WITH = (
    ("#cloud-config-archive", "text/cloud-config-archive"),
    ("#cloud-config-jsonp", "text/cloud-config-jsonp"),
    ("## template: jinja", "text/jinja2"),
    ("#cloud-boothook", "text/cloud-boothook"),
    ("#include-once", "text/x-include-once-url"),
    ("#cloud-config", "text/cloud-config"),
    ("#part-handler", "text/part-handler"),
    ("#include", "text/x-include-url"),
    ("#!", "text/x-shellscript"),
)
PART_HANDLER = "text/part-handler"
CHECK_RECORD = "final-check"  # the status record the pin loader writes when the check's fetch fails
LIBRARY_FILENAME = "vfarm-library.py"


class BuildError(Exception):
    """Bad input or a result that cannot be delivered: the message is one line for the user."""


@dataclass(frozen=True)
class Attachment:
    """An extra part, as `cloud-init devel make-mime -a FILE:SUBTYPE` adds one."""

    content_type: str
    filename: str
    payload: bytes
    path: str = ""  # the file it was read from ("" when made in memory)


@dataclass(frozen=True)
class Part:
    content_type: str
    filename: str
    payload: bytes
    role: str  # handler, config, attachment, check


@dataclass(frozen=True)
class Built:
    data: bytes
    parts: tuple[Part, ...]
    plain_size: int  # the MIME before compression
    compressed: bool
    warnings: tuple[str, ...] = ()
    inputs: tuple[tuple[str, str], ...] = ()  # (path, what it is) of each file the build read


def inputs_of(config: Config, attach: Sequence[Attachment]) -> tuple[tuple[str, str], ...]:
    """The files a build of CONFIG reads: the config file, condor's token file, the attachments."""
    files = [] if config.source == "-" else [(config.source, "the config file")]
    condor = config.sections.get("condor")
    if isinstance(condor, dict) and isinstance(condor.get("token-file"), str):
        files.append((str(condor_spec.token_file_path(condor, _base_dir(config))), "condor's token file"))
    return (*files, *((a.path, "an --attach file") for a in attach if a.path))


def type_from_payload(payload: bytes) -> Optional[str]:
    """The type cloud-init guesses from the first line, or None."""
    try:
        head = payload[:64].decode("utf-8", "ignore").lstrip().lower()
    except UnicodeDecodeError:
        return None
    for prefix, ctype in STARTS_WITH:
        if head.startswith(prefix):
            return ctype
    return None


def known_types() -> set[str]:
    """Every type a built user-data may carry: cloud-init's, and those of vfarm's handlers."""
    types = {f"text/{t}" for t in CLOUD_INIT_TYPES}
    for name in bundle.handler_names():
        types.update(bundle.handler_types(name))
    return types


_HEADER_SAFE = re.compile(r"[\x20-\x7e]+")  # a part's file name, quoted in its Content-Disposition header
_QUOTING = '"\\'  # escaped in that quoted name, and read back unreliably: Python's email parser (cloud-init's) drops quotes


def attachment(arg: str) -> Attachment:
    """`FILE[:TYPE]` -> Attachment. TYPE is a make-mime subtype (`x-shellscript`) or a full type
    (`text/x-shellscript`); without it the type comes from the first line, as cloud-init does.
    The file's name becomes the part's name: printable ASCII without `"` or `\\` and without
    blanks at its ends (what cloud-init reads back from the part's header as it was written)."""
    path, ctype = arg, ""
    if not Path(arg).exists() and ":" in arg:
        path, _, ctype = arg.rpartition(":")
    try:
        payload = read_bounded(path, MAX_ATTACHMENT)  # size checked before reading; FIFOs and devices bounded
    except OSError as err:
        if err.errno == errno.EFBIG:
            raise BuildError(f"--attach {arg}: {path} is larger than {MAX_ATTACHMENT // 1024} KiB: not user-data") from None
        raise BuildError(f"--attach {arg}: cannot read {path}: {err.strerror or err}") from None
    if not ctype:
        guessed = type_from_payload(payload)
        if guessed is None:
            raise BuildError(f"--attach {arg}: cannot tell the type of {path} from its first line: give it as {path}:TYPE (e.g. {path}:x-shellscript)")
        ctype = guessed
    elif "/" not in ctype:
        ctype = f"text/{ctype}"
    known = known_types()
    if ctype not in known:
        subtypes = sorted(t.split("/", 1)[1] for t in known)
        raise BuildError(f"--attach {arg}: cloud-init has no handler for type {ctype}; known: {', '.join(subtypes)}")
    name = Path(path).name
    if not _HEADER_SAFE.fullmatch(name):
        raise BuildError(f"--attach {arg}: the file's name goes into a MIME header, where only printable ASCII reads back as written: "
                         f"rename {name!r} (letters, digits, spaces and . _ - for instance)")
    if any(mark in name for mark in _QUOTING) or name != name.strip(" "):
        raise BuildError(f"--attach {arg}: the file's name is quoted in a MIME header, where quotes, backslashes and blanks at its ends do not "
                         f"read back as written (cloud-init drops quotes and those blanks): rename {name!r} (letters, digits, spaces and . _ - for instance)")
    return Attachment(ctype, name, payload, path)


@dataclass(frozen=True)
class HandlerMode:
    kind: str  # embed, include, baked
    url_base: str = ""

    def url(self, name: str) -> str:
        return self.file_url(bundle.handler_filename(name))

    def file_url(self, filename: str) -> str:
        return f"{self.url_base.rstrip('/')}/{filename}"


def parse_handlers(value: str) -> HandlerMode:
    """`embed`, `baked` or `include=URL_BASE`. URL_BASE is an http(s) URL without blanks or
    control characters, and without a query or fragment (each handler's file name is added at its
    end): its userinfo is read as the pin loader reads it (`pinloader.split_userinfo`: a password
    may hold `?` and `#`), the rest as urllib reads a URL. No refusal shows a password."""
    if value in ("embed", "baked"):
        return HandlerMode(value)
    if value.startswith("include="):
        base = value[len("include=") :]
        shown = password_hidden(base)
        bare = split_userinfo(base)[0]
        try:
            parts = urlsplit(bare)
        except ValueError:  # an unclosed [ of an IPv6 host
            parts = urlsplit("")
        if parts.scheme not in ("http", "https") or not parts.netloc or any(c.isspace() for c in base) or control_character(base):
            raise BuildError(f"--handlers include=URL_BASE: {shown!r} is not an http(s) URL (like https://example.org/vfarm/handlers)")
        # Past the userinfo a `?` or `#` starts a query or fragment, an empty one too (which
        # urlsplit reads as none): either would swallow the file names added after it.
        if parts.query or parts.fragment or any(mark in bare for mark in "?#"):
            raise BuildError(f"--handlers include=URL_BASE: {shown!r} has a query or fragment (? or #): the base is a folder, "
                             "each handler's file name is added to it (like https://example.org/vfarm/handlers)")
        where = _fetch_problem(parts)
        if where:
            # A fetch that fails makes cloud-init drop the whole user-data: no handler, no power-off.
            raise BuildError(f"--handlers include=URL_BASE: {shown!r}: {where} (like https://example.org/vfarm/handlers)")
        return HandlerMode("include", base)
    raise BuildError(f"--handlers: expected embed, baked or include=URL_BASE, got {password_hidden(value)!r}")


def _fetch_problem(parts: Any) -> Optional[str]:
    """Why no instance could ever fetch from the URL of PARTS (urlsplit's), or None: a port out of
    range or not a number, no host, a host name with an empty or malformed label, a bad IP address."""
    try:
        bad_port = parts.port == 0
    except ValueError:  # out of range, or not a number
        bad_port = True
    if bad_port:
        return "its port is not a number from 1 to 65535"
    host = parts.hostname or ""
    if not host:
        return "it names no host"
    bracketed = parts.netloc.rpartition("@")[2].startswith("[")
    if bracketed or ":" in host or re.fullmatch(r"[\d.]+", host):
        problem = condor_spec.host_problem(host, bracketed)
        return f"its host: {problem}" if problem else None
    if not HOST_NAME.fullmatch(host.rstrip(".")) or len(host) > condor_spec.MAX_HOST_NAME:
        return f"{host!r} is not a host name (dot-separated labels of letters, digits and inner hyphens)"
    return None


def _sets_power_state(part: Attachment) -> bool:
    """Whether an attached #cloud-config sets power_state (which the final check's part overrides)."""
    if part.content_type != "text/cloud-config":
        return False
    import yaml  # only for an attached cloud-config: the builder starts cold without it

    try:
        data = yaml.safe_load(part.payload)
    except (yaml.YAMLError, ValueError, TypeError, RecursionError):  # a bad date, say: cloud-init's to refuse
        return False
    return isinstance(data, dict) and "power_state" in data


def password_hidden(url: str) -> str:
    """URL (as the user gave it: blanks and all, maybe no URL at all) with whatever may be its
    password hidden: from the first `:` after `://` (or after the start, without one) to the last
    `@`, or that whole userinfo when it has no `:`. An `@` after a path with no `:` before it
    (`https://h.example.org/a@b`) ends no userinfo. This hides more than any reading of the URL
    takes for a password (a password may hold `/ ? # @` and blanks), never less."""
    head, sep, rest = url.partition("://")
    if not sep:
        head, rest = "", url
    at = rest.rfind("@")
    if at < 0:
        return url
    user, colon, _ = rest[:at].partition(":")
    if not colon and any(mark in user for mark in "/?#"):
        return url
    return f"{head}{sep}{user + colon if colon else ''}{HIDDEN}{rest[at:]}"


def section_payload(name: str, section: Any) -> bytes:
    """The part of one section: a one-section YAML document, as the user wrote it (order kept)."""
    # Strings YAML 1.2 reads as numbers stay quoted: the instance's loader refuses them plain.
    text = yamltext.dump({name: section}, default_flow_style=False, sort_keys=False, allow_unicode=False, width=1000)
    return text.encode("ascii")


def sent_section(config: Config, name: str) -> Any:
    """Section NAME as it travels to the instance: condor's token-file read in (relative to the
    config file's folder), so the instance needs no file of the admin's machine."""
    section = config.sections[name]
    if name != "condor" or not isinstance(section, dict) or "token-file" not in section:
        return section
    base = _base_dir(config)
    problems = condor_spec.check_files(section, base)
    if problems:
        raise BuildError(f"condor.token-file: {problems[0].message}")
    return condor_spec.for_instance(section, base)


def _base_dir(config: Config) -> Path:
    """Where the files CONFIG names are found: its own folder (the current one for a text)."""
    return config.base_dir if config.base_dir is not None else Path.cwd()


def ordered_sections(config: Config) -> list[str]:
    return sections.in_order(list(config.sent_sections()))


def pin_loader(mode: HandlerMode, names: Sequence[str]) -> str:
    """The loader part-handler that fetches and verifies the handlers of NAMES."""
    pinned = []
    for name in names:
        source = bundle.bundle_handler(name)
        types, frequency = bundle.handler_types(name), bundle.handler_frequency(name)
        pinned.append({"name": name, "url": mode.url(name), "sha256": bundle.sha256(source), "types": types, "frequency": frequency})
    # The final check: verified like a handler, then written to its place rather than run; on
    # later boots (frequency always) the loader starts the check written there.
    check = bundle.bundle_check()
    pinned.append({"name": CHECK_RECORD, "url": mode.file_url(bundle.CHECK_FILENAME), "sha256": bundle.sha256(check), "types": [],
                   "frequency": "always", "install": files.CHECK_SCRIPT})
    frequency = "always" if any(p["frequency"] == "always" for p in pinned) else "once-per-instance"
    from ..cc_modules import record
    from . import pinloader

    code = bundle.minify(pyinspect.getsource(pinloader))
    for old, new in (("PINNED = []", f"PINNED = {pinned!a}"), ('FREQUENCY = "once-per-instance"', f"FREQUENCY = {frequency!a}"),
                     ("from ..cc_modules.record import document", bundle.minify(pyinspect.getsource(record.document)).strip()),
                     ("from ..files import DEFAULT_LOG_DIR", f"DEFAULT_LOG_DIR = {files.DEFAULT_LOG_DIR!a}")):
        if code.count(f"\n{old}\n") != 1:
            raise BuildError(f"internal: the pin loader has no single line {old!r}")
        code = code.replace(f"\n{old}\n", f"\n{new}\n")
    header = ["#part-handler", "# vfarm pin loader: fetches each handler (and the final check), uses it only if its sha256 matches. Generated by vfarm build."]
    header.append(f"# vfarm-types: {' '.join(sorted({t for p in pinned for t in p['types']}))}")
    header += [f"# vfarm-pin: {p['sha256']} {p['url']}" for p in pinned]
    return "\n".join(header) + "\n" + code


def plan_parts(config: Config, handlers: str = "embed", attach: Sequence[Attachment] = (), pin: bool = False) -> tuple[list[Part], list[str]]:
    """The parts in walk order, and warnings for the user."""
    mode = parse_handlers(handlers)
    if pin and mode.kind != "include":
        raise BuildError("--pin needs --handlers include=URL_BASE (it pins the URLs of the handlers)")
    warnings: list[str] = []
    if mode.kind == "include" and not mode.url_base.lower().startswith("https://"):
        shown = password_hidden(mode.url_base)
        warnings.append(f"--handlers include={shown} is not https: the handlers travel in clear "
                        + ("(--pin checks their sha256)" if pin else "and anyone on the path can change what runs as root (--pin checks a sha256)"))
    sections = ordered_sections(config)
    if not sections:
        raise BuildError("no section to send to an instance (localfs, cvmfs, condor...)")
    available = set(bundle.handler_names())
    names = [n for n in sections if n in available]
    for name in sections:
        if name not in available and mode.kind != "baked":
            warnings.append(f"no vfarm part-handler for section '{name}': its part is sent, but only an image with a handler for text/{name}-config takes it")
    parts: list[Part] = []
    try:
        # include: the final check is fetched with the handlers (bundle.bundle_check), so the
        # user-data carries only its power_state part, as in embed.
        if mode.kind == "include" and pin:
            parts.append(Part(PART_HANDLER, "vfarm-pin-loader.py", pin_loader(mode, names).encode("ascii"), "handler"))
        elif mode.kind == "include":
            urls = "".join(f"{u}\n" for u in [*(mode.url(n) for n in names), mode.file_url(bundle.CHECK_FILENAME)])
            parts.append(Part("text/x-include-url", "vfarm-handlers.txt", urls.encode("ascii"), "handler"))
        elif mode.kind == "embed" and names:
            lib = bundle.bundle_library(names, with_check=True)
            parts.append(Part(PART_HANDLER, LIBRARY_FILENAME, lib.source.encode("ascii"), "handler"))
            parts += [Part(PART_HANDLER, bundle.handler_filename(n), bundle.thin_handler(n, lib.package).encode("ascii"), "handler") for n in names]
    except bundle.BundleError as err:
        raise BuildError(f"cannot bundle the handlers: {err}") from None
    parts += [Part(a.content_type, a.filename, a.payload, "attachment") for a in attach if a.content_type == PART_HANDLER]
    parts += [Part(f"text/{n}-config", f"{n}-config.ccfg", section_payload(n, sent_section(config, n)), "config") for n in sections]
    needs = cloudconfig.parts({n: config.sections[n] for n in sections})
    parts += [Part(ctype, filename, text.encode("ascii"), "config") for ctype, filename, text in needs]
    parts += [Part(a.content_type, a.filename, a.payload, "attachment") for a in attach if a.content_type != PART_HANDLER]
    check_mode = "include" if mode.kind == "include" else mode.kind
    # The check script travels in the library part (embed) or is fetched (include).
    from_library = mode.kind == "include" or any(p.filename == LIBRARY_FILENAME for p in parts)
    parts += [Part(ctype, filename, payload.encode("utf-8"), "check") for ctype, filename, payload in checkpart.check_parts(config, check_mode, from_library)]
    checked_by_part = any(p.role == "check" for p in parts)
    for a in attach:
        if _sets_power_state(a):
            warnings.append(f"--attach {a.path or a.filename}: its power_state is not used: the final check's part sets power_state too and "
                            "comes after it (cloud-init keeps the last part's)" if checked_by_part else
                            f"--attach {a.path or a.filename}: its power_state acts when cloud-init ends, maybe before the image's final check "
                            "(run detached) has written its verdict or powered a failed instance off")
    # By the names cloud-init reads back: a part named like another overwrites its file there.
    seen: dict[str, str] = {}
    for part in parts:
        name = read_back_filename(part.filename)
        if name in seen:
            also = "" if seen[name] == part.filename else f" (as cloud-init reads {seen[name]!r} and {part.filename!r})"
            raise BuildError(f"two parts are named {name}{also}: rename the attached file")
        seen[name] = part.filename
    return parts, warnings


def _header_value(text: str) -> str:
    return text.replace("\\", "\\\\").replace('"', '\\"')


def _disposition(filename: str) -> str:
    """The Content-Disposition header of a part named FILENAME."""
    return f'Content-Disposition: attachment; filename="{_header_value(filename)}"'


# A name the email parser reads back as written (tests/mime_builder/test_build_imports.py): every
# part vfarm names itself. Asking the parser costs a build ~4 ms of imports (email.parser, ...).
_PLAIN_NAME = re.compile(r"[A-Za-z0-9._+-]+")


def read_back_filename(filename: str) -> str:
    """The name a part named FILENAME has for cloud-init: what Python's email parser (which
    cloud-init uses) reads back from the part's header ("" for none)."""
    if _PLAIN_NAME.fullmatch(filename):
        return filename
    import email  # only for other names (attachments): see _PLAIN_NAME

    return email.message_from_string(_disposition(filename) + "\n\n").get_filename() or ""


def assemble(parts: Sequence[Part]) -> bytes:
    """The MIME multipart of PARTS. ASCII text travels as it is (small, and gzip compresses it
    well); anything else as base64. The boundary is a hash of the content."""
    digest = hashlib.sha256()
    for part in parts:
        for field in (part.content_type.encode(), part.filename.encode(), part.payload):
            digest.update(len(field).to_bytes(8, "big") + field)
    boundary = f"vfarm-{digest.hexdigest()[:40]}"
    out = [f'Content-Type: multipart/mixed; boundary="{boundary}"', "MIME-Version: 1.0", ""]
    for part in parts:
        try:
            text = part.payload.decode("ascii")
            plain = "\r" not in text and not any(line.startswith("--" + boundary) for line in text.split("\n"))
        except UnicodeDecodeError:
            plain = False
        out.append(f"--{boundary}")
        maintype = part.content_type.split("/", 1)[0]
        charset = '; charset="utf-8"' if maintype == "text" else ""
        out.append(f"Content-Type: {part.content_type}{charset}")
        out.append("MIME-Version: 1.0")
        out.append(f"Content-Transfer-Encoding: {'7bit' if plain else 'base64'}")
        out.append(_disposition(part.filename))
        out.append("")
        if plain:
            out.append(text)
        else:
            encoded = base64.encodebytes(part.payload).decode("ascii")
            out.append(encoded.rstrip("\n"))
    out.append(f"--{boundary}--")
    return ("\n".join(out) + "\n").encode("ascii")


def compress(data: bytes) -> bytes:
    """Deterministic gzip: no name, no date."""
    return gzip.compress(data, compresslevel=9, mtime=0)


def _too_big(config: Config, size: int, max_size: int, gzipped: bool, plain: bytes, handlers: str,
             attach: Sequence[Attachment], pin: bool) -> BuildError:
    """The refusal, with what each other choice would make of the same config (measured)."""
    over = size - max_size
    what = "gzipped user-data" if gzipped else "user-data"
    helps: list[str] = []
    if not gzipped:
        helps.append(f"--gzip auto would make it {len(compress(plain))} bytes")
    # each alternative with where its handlers then come from: an admin reading this has neither yet
    for option, mode, needs in (("--handlers include=URL_BASE --pin", "include=https://example.invalid/vfarm",
                                 "hosting what `vfarm handlers DIR` writes at URL_BASE"),
                                ("--handlers baked", "baked", "an image made with `vfarm image bake`")):
        if handlers.split("=")[0] != mode.split("=")[0]:
            other = assemble(plan_parts(config, mode, attach, mode != "baked")[0])
            helps.append(f"{option} would make it {len(compress(other))} bytes ({needs})")
    helps.append("--max-size if your cloud takes more")
    return BuildError(f"{what} is {size} bytes, {over} over the limit of {max_size}; what helps: {'; '.join(helps)}")


def build(
    config: Config,
    *,
    handlers: str = "embed",
    gzip: str = "auto",
    max_size: int = EC2_LIMIT,
    attach: Sequence[Attachment] = (),
    pin: bool = False,
) -> Built:
    """The user-data of CONFIG, with what the size report needs."""
    if gzip not in GZIP_MODES:
        raise BuildError(f"--gzip: expected one of {', '.join(GZIP_MODES)}, got {gzip!r}")
    if max_size <= 0:
        raise BuildError(f"--max-size must be a positive number of bytes, got {max_size}")
    parts, warnings = plan_parts(config, handlers, attach, pin)
    plain = assemble(parts)
    compressed = gzip == "always" or (gzip == "auto" and len(plain) > max_size)
    data = compress(plain) if compressed else plain
    if len(data) > max_size:
        raise _too_big(config, len(data), max_size, compressed, plain, handlers, attach, pin)
    return Built(data, tuple(parts), len(plain), compressed, tuple(warnings), inputs_of(config, attach))


def build_userdata(
    config: Config,
    *,
    handlers: str = "embed",
    gzip: str = "auto",
    max_size: int = EC2_LIMIT,
    attach: Sequence[Attachment] = (),
    pin: bool = False,
) -> bytes:
    """The user-data of CONFIG (see `build`); raises BuildError with a one-line message."""
    return build(config, handlers=handlers, gzip=gzip, max_size=max_size, attach=attach, pin=pin).data
