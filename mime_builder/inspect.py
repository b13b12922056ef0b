"""Reading user-data back: the parts in the order cloud-init walks them, which handler takes each,
and what will go wrong (a part before its handler, a type nobody handles, a compressed custom
part, an unverified or plain-http include, the size against the limit).

It follows cloud-init's user_data.py (22.4 and 25.1 agree on this): gunzip the whole payload if
it is gzip; MIME only if `mime-version:` is in the first 4096 bytes; a gzip-typed part is
decompressed and its type guessed from its first line; includes are listed, never fetched.

Every step is bounded, so hostile user-data gets a one-line InspectError in about a second: at
most MAX_USERDATA bytes read, MAX_UNPACKED unpacked from gzip (the whole payload and its parts
together), MAX_CONTAINERS multipart (or message) sections, hence that nesting depth, MAX_PARTS
parts; part-handler source and config parts are analysed within their own bounds.
"""

from __future__ import annotations

import ast
import email
import email.message
import gzip
import io
import itertools
import re
import zlib
from dataclasses import asdict, dataclass, field
from typing import Any, Optional

import yaml

from ..config.loader import MAGIC as CONFIG_MAGIC
from ..config.loader import MAX_BYTES as MAX_CONFIG_BYTES
from ..config.loader import MAX_NODES as MAX_CONFIG_NODES
from ..config.sections import BY_NAME as SECTIONS
from ..files import size_text
from ..redaction import is_secret_name, redact
from .limits import EC2_LIMIT
from .mime import PART_HANDLER, type_from_payload

DECOMP_TYPES = {
    "application/gzip",
    "application/gzip-compressed",
    "application/gzipped",
    "application/x-compress",
    "application/x-compressed",
    "application/x-gunzip",
    "application/x-gzip",
    "application/x-gzip-compressed",
}
TYPE_NEEDED = ("text/plain", "text/x-not-multipart", "text/x-shellscript")
INCLUDE_TYPES = ("text/x-include-url", "text/x-include-once-url")
# Types cloud-init's own handlers take (22.4 and 25.1).
BUILTIN = {
    "text/cloud-config": "cloud-init cloud-config",
    "text/cloud-config-jsonp": "cloud-init cloud-config",
    "text/x-shellscript": "cloud-init scripts",
    "text/x-shellscript-per-boot": "cloud-init scripts (per boot)",
    "text/x-shellscript-per-instance": "cloud-init scripts (per instance)",
    "text/x-shellscript-per-once": "cloud-init scripts (once)",
    "text/cloud-boothook": "cloud-init boothook",
    "text/jinja2": "cloud-init jinja template",
    "text/cloud-config-archive": "cloud-init archive (expanded)",
}
# The bounds (see the module's doc). cloud-init itself has none; vfarm's builds stay far below
# them (EC2 takes 16 KiB, `vfarm launch local` 1 MiB by default).
MAX_USERDATA = 1024 * 1024
MAX_UNPACKED = 1024 * 1024
MAX_CONTAINERS = 4
MAX_PARTS = 100
MAX_WARNINGS = 100
MAX_HANDLER_SOURCE = 256 * 1024  # a bundled vfarm handler is some 60 KiB
MAX_CONFIG_DEPTH = 50  # as the config loader
# A header that opens a nested message (multipart or message/rfc822), folded or not.
CONTAINER = re.compile(rb"^content-type:[ \t]*(?:\r?\n[ \t]+)*(?:multipart|message)/", re.I | re.M)
HANDLER_URL = re.compile(r"/([a-z][a-z0-9_]*)_handler\.py$")
CONFIG_TYPE = re.compile(r"^text/([a-z][a-z0-9_]*)-config$")


class InspectError(Exception):
    """Not user-data cloud-init can read: one line for the user."""


@dataclass
class PartInfo:
    index: int
    type: str
    filename: str
    size: int
    handler: str
    registers: list[str] = field(default_factory=list)  # types a part-handler part takes
    urls: list[str] = field(default_factory=list)  # include / pinned URLs
    content: Optional[str] = None  # a vfarm config part's section, one line, secrets hidden


@dataclass
class Report:
    size: int
    compressed: bool
    plain_size: int
    limit: int
    mime: bool
    parts: list[PartInfo]
    warnings: list[str]

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def _decoded(part: email.message.Message) -> bytes:
    payload = part.get_payload(decode=True)
    if isinstance(payload, bytes):
        return payload
    raw = part.get_payload()
    return raw.encode("utf-8", "surrogateescape") if isinstance(raw, str) else b""


class _Budget:
    """What is left of MAX_UNPACKED for gunzipping."""

    def __init__(self) -> None:
        self.left = MAX_UNPACKED

    def gunzip(self, data: bytes, what: str) -> bytes:
        """DATA unpacked (every gzip member, as cloud-init reads it), reading no more than what is
        left plus one byte: a gzip bomb costs nothing. OSError, EOFError or zlib.error when broken."""
        with gzip.GzipFile(fileobj=io.BytesIO(data)) as handle:
            out = handle.read(self.left + 1)
        if len(out) > self.left:
            raise InspectError(
                f"{what} unpacks to more than {size_text(MAX_UNPACKED)} of user-data in all: refused "
                f"(vfarm inspect's limit; a gzip bomb? {len(data)} bytes packed)"
            )
        self.left -= len(out)
        return out


def handler_types(payload: bytes) -> Optional[list[str]]:
    """The types a part-handler payload takes: from vfarm's `# vfarm-types:` line, else from a
    `list_types()` that returns a literal list; None when that cannot be told without running it
    (or the source is larger than MAX_HANDLER_SOURCE or too deeply nested to analyse)."""
    text = payload.decode("utf-8", "replace")
    for line in text.splitlines()[:5]:
        if line.startswith("# vfarm-types:"):
            return line.split(":", 1)[1].split()
        if line.startswith("# vfarm-library:"):
            return []
    if len(payload) > MAX_HANDLER_SOURCE or "list_types" not in text:
        return None
    try:
        tree = ast.parse(text)
    except (SyntaxError, ValueError, RecursionError, MemoryError):  # MemoryError: the parser's own stack limit
        return None
    for node in tree.body:
        if isinstance(node, ast.FunctionDef) and node.name == "list_types":
            for ret in (n for n in ast.walk(node) if isinstance(n, ast.Return)):
                try:
                    value = ast.literal_eval(ret.value) if ret.value is not None else None
                except (ValueError, TypeError, SyntaxError, RecursionError, MemoryError):
                    return None
                if isinstance(value, (list, tuple)) and all(isinstance(v, str) for v in value):
                    return list(value)
    return None


def hide_secrets(value: Any) -> Any:
    """VALUE with secret-named keys' values (condor's token...) and secrets inside strings hidden."""
    if isinstance(value, dict):
        return {k: "***" if is_secret_name(str(k)) else hide_secrets(v) for k, v in value.items()}
    if isinstance(value, list):
        return [hide_secrets(v) for v in value]
    return redact(value) if isinstance(value, str) else value


def _tree_problem(root: yaml.Node) -> Optional[str]:
    """Why ROOT, with every alias expanded, is beyond the config loader's bounds (more than
    MAX_CONFIG_NODES nodes, deeper than MAX_CONFIG_DEPTH, an alias inside itself); None when it
    is not. Linear: sizes are memoised per node, so an alias bomb is measured, never expanded."""
    sizes: dict[int, int] = {}
    open_nodes: set[int] = set()
    found: list[str] = []

    def size(node: yaml.Node, depth: int) -> int:
        key = id(node)
        if key in open_nodes:
            found.append("an alias refers to the collection that contains it")
        elif depth > MAX_CONFIG_DEPTH:
            found.append(f"nested deeper than {MAX_CONFIG_DEPTH} levels")
        if found:
            return MAX_CONFIG_NODES + 1
        if key not in sizes:
            open_nodes.add(key)
            children: list[yaml.Node] = []
            if isinstance(node, yaml.MappingNode):
                children = [n for pair in node.value for n in pair]
            elif isinstance(node, yaml.SequenceNode):
                children = list(node.value)
            total = 1
            for child in children:
                total += size(child, depth + 1)
                if total > MAX_CONFIG_NODES:
                    break
            open_nodes.discard(key)
            sizes[key] = total
        return sizes[key]

    if size(root, 0) <= MAX_CONFIG_NODES:
        return None
    return found[0] if found else f"more than {MAX_CONFIG_NODES} values once aliases are expanded (an alias bomb?)"


class _NotShown(Exception):
    """A config part inspect will not build (not YAML, not one section of its type, too large, too deep, an alias bomb): why."""


def config_content(ctype: str, payload: bytes) -> Optional[str]:
    """A vfarm config part (`text/NAME-config` holding `NAME: ...`) as one line, secrets hidden;
    None when it is not one, or is beyond the config loader's bounds."""
    try:
        return _config_content(ctype, payload)
    except _NotShown:
        return None


def _config_content(ctype: str, payload: bytes) -> Optional[str]:
    m = CONFIG_TYPE.match(ctype)
    if not m:
        return None
    if len(payload) > MAX_CONFIG_BYTES:
        raise _NotShown(f"larger than {size_text(MAX_CONFIG_BYTES)}")
    try:
        return _section_content(m.group(1), ctype, payload)
    except _Unreadable as why:  # a vfarm section's handler would fail on it; another handler's type may hold anything
        if m.group(1) in SECTIONS:
            raise _NotShown(str(why)) from None
        return None


class _Unreadable(_NotShown):
    """A part that is not one YAML section of its type."""


def _section_content(name: str, ctype: str, payload: bytes) -> str:
    try:
        loader = yaml.SafeLoader(payload.decode("utf-8"))
    except (UnicodeDecodeError, yaml.YAMLError):
        raise _Unreadable("not UTF-8 text") from None
    try:
        node = loader.get_single_node()
        # Composing keeps an alias one node; building it would expand an alias bomb.
        problem = _tree_problem(node) if node is not None else None
        if problem:
            raise _NotShown(problem)
        doc = loader.construct_document(node) if node is not None else None
    except RecursionError:
        raise _NotShown(f"nested deeper than {MAX_CONFIG_DEPTH} levels") from None
    except yaml.MarkedYAMLError as err:  # its problem only: the rest of PyYAML's text quotes the part's lines
        mark = err.problem_mark
        raise _Unreadable(f"not YAML ({err.problem or 'a syntax error'}{f' at line {mark.line + 1}' if mark else ''})") from None
    except (yaml.YAMLError, ValueError, OverflowError):  # ValueError: PyYAML building 2001-02-30 or !!int 0x_
        raise _Unreadable("a value YAML cannot build") from None
    finally:
        loader.dispose()
    if not isinstance(doc, dict) or list(doc) != [name]:
        raise _Unreadable(f"it does not hold one '{name}:' section, as its type {ctype} says")
    text = yaml.safe_dump(hide_secrets(doc), default_flow_style=True, sort_keys=False, width=1 << 20).strip()
    return redact(text)


def _pins(payload: bytes) -> list[str]:
    return [line.split()[3] for line in payload.decode("utf-8", "replace").splitlines()[:50] if line.startswith("# vfarm-pin:") and len(line.split()) >= 4]


def _leaves(message: email.message.Message) -> list[email.message.Message]:
    """The non-multipart parts in walk() order, refusing more than MAX_PARTS of them."""
    leaves = []
    for part in message.walk():
        if part.get_content_maintype() != "multipart":
            leaves.append(part)
            if len(leaves) > MAX_PARTS:
                raise InspectError(f"more than {MAX_PARTS} parts: refused (vfarm inspect's limit; a built user-data has a handful)")
    return leaves


def inspect_bytes(raw: bytes, limit: int = EC2_LIMIT) -> Report:
    """The report on user-data RAW (LIMIT: the size to warn above). InspectError (one line) for
    what cloud-init cannot read and for what exceeds the module's bounds."""
    warnings: list[str] = []
    budget = _Budget()
    data, compressed = raw, False
    if raw[:2] == b"\x1f\x8b":
        try:
            data = budget.gunzip(raw, "gzip data that")
        except (OSError, EOFError, zlib.error) as err:
            raise InspectError(f"gzip data that does not decompress: {err}") from None
        compressed = True
    is_mime = b"mime-version:" in data[:4096].lower()
    found = _mime_parts(data) if is_mime else [("text/x-not-multipart", "", data)]
    if not is_mime and b"mime-version:" in data.lower():
        warnings.append("'MIME-Version:' is not in the first 4096 bytes: cloud-init takes the whole file as one plain part")
    if not is_mime and data.lstrip().startswith(CONFIG_MAGIC.encode()):
        warnings.append(f"this is a vfarm config file ({CONFIG_MAGIC}), not user-data: `vfarm build FILE` makes its user-data")
    handlers: dict[str, int] = {}  # type -> index of the part that registers it
    parts = [_read_part(number, *part, budget, handlers, warnings) for number, part in enumerate(found, start=1)]
    _route(parts, handlers, warnings)
    if len(raw) > limit:
        warnings.append(f"{len(raw)} bytes: {len(raw) - limit} over the limit of {limit} bytes")
    if len(warnings) > MAX_WARNINGS:
        warnings[MAX_WARNINGS:] = [f"... and {len(warnings) - MAX_WARNINGS} more warnings"]
    return Report(len(raw), compressed, len(data), limit, is_mime, parts, warnings)


def _mime_parts(data: bytes) -> list[tuple[str, str, bytes]]:
    """(type, file name, payload) of each part of the MIME message DATA, in walk() order."""
    # The parser checks every line against every open multipart's boundary, and nests a
    # generator per section: count the sections before parsing.
    containers = sum(1 for _ in itertools.islice(CONTAINER.finditer(data), MAX_CONTAINERS + 1))
    if containers > MAX_CONTAINERS:
        raise InspectError(
            f"more than {MAX_CONTAINERS} multipart (or message/) sections: refused (vfarm inspect's limit on MIME nesting; "
            "a built user-data has one)"
        )
    try:
        message = email.message_from_string(data.decode("utf-8"))
    except UnicodeDecodeError:
        raise InspectError("a MIME message that is not UTF-8 text") from None
    except RecursionError:
        raise InspectError("MIME parts nested too deeply") from None
    leaves = _leaves(message)
    if not leaves:
        raise InspectError("a MIME message without any part")
    return [(p.get_content_type(), p.get_filename() or "", _decoded(p)) for p in leaves]


def _read_part(number: int, ctype: str, filename: str, payload: bytes, budget: _Budget, handlers: dict[str, int],
               warnings: list[str]) -> PartInfo:
    """Part NUMBER as cloud-init types it (gzip parts unpacked, plain ones typed by their first
    line), the types it registers (into HANDLERS, the first part for each type) and its URLs."""
    if ctype in DECOMP_TYPES:
        try:
            payload = budget.gunzip(payload, f"part {number} ({filename or ctype}): gzip data that")
        except (OSError, EOFError, zlib.error):
            warnings.append(f"part {number} ({filename or ctype}) is typed {ctype} but does not decompress: cloud-init aborts the user-data")
            return PartInfo(number, ctype, filename, len(payload), "none (broken gzip)")
        was_compressed, ctype = True, "text/plain"
    else:
        was_compressed = False
    if ctype in TYPE_NEEDED:
        ctype = type_from_payload(payload) or ctype
    info = PartInfo(number, ctype, filename or f"part-{number:03d}", len(payload), "")
    try:
        info.content = _config_content(ctype, payload)
    except _NotShown as why:
        warnings.append(f"part {number} ({info.filename}) is a config part vfarm's loader refuses: {why}")
    if was_compressed:
        info.handler = "compressed"
        if ctype == "text/plain":
            warnings.append(
                f"part {number} ({info.filename}) is a gzip-compressed part: cloud-init cannot route it to a custom handler "
                "(its type is lost); compress the whole user-data instead (vfarm build --gzip)"
            )
    if ctype == PART_HANDLER:
        types = handler_types(payload)
        info.registers = types if types is not None else ["?"]
        info.urls = _pins(payload)
        for t in types or []:
            handlers.setdefault(t, number)
        if types is None:
            warnings.append(f"part {number} ({info.filename}) is a part-handler whose types cannot be read without running it")
    elif ctype in INCLUDE_TYPES:
        for line in payload.decode("utf-8", "replace").splitlines():
            url = re.sub(r"^#include(-once)?", "", line.strip(), flags=re.I).strip()
            if not url or url.startswith("#"):
                continue
            info.urls.append(url)
            named = HANDLER_URL.search(url)
            if named:
                t = f"text/{named.group(1)}-config"
                info.registers.append(t)
                handlers.setdefault(t, number)
    return info


def _route(parts: list[PartInfo], handlers: dict[str, int], warnings: list[str]) -> None:
    """Who takes each part (its `handler`), with the warnings: a part before its handler, a type
    nobody handles, an include or pinned URL that is not https or not pinned."""
    unhandled: list[PartInfo] = []
    for info in parts:
        ctype = info.type
        if info.handler:
            pass
        elif ctype == PART_HANDLER:
            info.handler = f"registers {' '.join(info.registers) or 'no type (a library)'}"
        elif ctype in INCLUDE_TYPES:
            info.handler = "cloud-init include (fetched at boot)"
            for url in info.urls:
                if not url.lower().startswith("https://"):
                    warnings.append(f"part {info.index}: include URL {url} is not https: anyone on the path can change what runs as root")
                warnings.append(
                    f"part {info.index}: include URL {url} is not pinned: cloud-init runs whatever it fetches, and a failed fetch drops the whole "
                    "user-data (vfarm build --pin checks a sha256 and records a failure instead)"
                )
        elif ctype in BUILTIN:
            info.handler = BUILTIN[ctype]
        elif ctype in handlers:
            owner = handlers[ctype]
            if owner < info.index:
                info.handler = f"part {owner} ({parts[owner - 1].filename})"
            else:
                info.handler = "none: its handler comes later"
                warnings.append(f"part {info.index} ({info.filename}, {ctype}) comes before its handler (part {owner}): cloud-init drops it")
        else:
            info.handler = "none in this user-data"
            unhandled.append(info)
        if info.type == PART_HANDLER:
            for url in info.urls:
                if not url.lower().startswith("https://"):
                    warnings.append(f"part {info.index}: pinned URL {url} is not https: its sha256 is checked, but the file travels in clear")
    for info in unhandled:
        if re.fullmatch(r"text/[a-z][a-z0-9_]*-config", info.type):
            warnings.append(
                f"part {info.index} ({info.filename}): nobody in this user-data handles {info.type}: only an image with that handler baked in "
                "(/var/lib/cloud/handlers) takes it"
            )
        elif info.type == "text/x-not-multipart":
            warnings.append(f"part {info.index}: cloud-init does not recognise this user-data (no MIME, no known first line): nothing handles it")
        else:
            warnings.append(f"part {info.index} ({info.filename}): nobody handles {info.type}: cloud-init drops it")
