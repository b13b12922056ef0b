"""The handler bundler: one self-contained Python file per part-handler (or per script).

An image has cloud-init (so Python 3, PyYAML and jsonschema) and nothing of vfarm. A bundle
carries the source of every package module its entry point reaches through relative imports
(found by walking the AST, never by hand), plus the JSON schemas it needs, as string literals, and
a tiny meta-path importer that serves them under a PRIVATE package name (`_vfarm_<hash>`): an
installed vfarm, or a second bundle of another version in the same cloud-init process, never
clashes. Comments and docstrings are stripped to save bytes (EC2 allows 16 KiB of user-data).
The output depends only on the sources: the same tree gives the same bytes.
"""

from __future__ import annotations

import ast
import base64
import bz2
import functools
import hashlib
import importlib
import importlib.util
import io
import json
import os
import pkgutil
import tokenize
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from ..config import sections

# The installed root package ("vfarm"); this module is <root>.mime_builder.bundle.
ROOT_PACKAGE = __name__.split(".")[0]
HANDLER_SUFFIX = "_handler"
HANDLERS_PACKAGE = "part_handlers"
SCHEMAS_PACKAGE = "schemas"
# Schema keywords that only document: dropped from the embedded copies.
DOC_KEYWORDS = ("description", "title", "$comment", "examples")
SUBSCHEMA_KEYWORDS = ("items", "additionalProperties", "not", "if", "then", "else", "propertyNames", "contains", "unevaluatedProperties", "additionalItems")
SUBSCHEMA_LISTS = ("allOf", "anyOf", "oneOf", "prefixItems")
SUBSCHEMA_MAPS = ("properties", "patternProperties", "$defs", "definitions", "dependentSchemas")


class BundleError(Exception):
    """A module cannot be bundled (an absolute import of the package, a missing module...)."""


# --- source minification -------------------------------------------------------------------
# Token- and AST-position based, never ast.unparse: the output must be the same bytes on any
# Python that builds it (the sha256 of a hosted handler is pinned at build time elsewhere).


def _char_col(line: str, byte_col: int) -> int:
    """AST columns count UTF-8 bytes; string slicing counts characters."""
    return len(line.encode("utf-8")[:byte_col].decode("utf-8", "ignore"))


def _parents(tree: ast.AST) -> dict[ast.AST, ast.AST]:
    return {child: node for node in ast.walk(tree) for child in ast.iter_child_nodes(node)}


def _annotation_cuts(tree: ast.AST, lines: list[str], tokens: list[tokenize.TokenInfo]) -> list[tuple[int, int, int]]:
    """(line, start, end) character spans of annotations that do nothing at run time: those of
    function signatures and of assignments outside class bodies (dataclass fields need theirs)."""
    cuts: list[tuple[int, int, int]] = []
    parents = _parents(tree)
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            a = node.args
            for arg in [*a.posonlyargs, *a.args, *a.kwonlyargs, *(x for x in (a.vararg, a.kwarg) if x)]:
                ann = arg.annotation
                if ann is not None and arg.lineno == ann.end_lineno:
                    text = lines[arg.lineno - 1]
                    cuts.append((arg.lineno, _char_col(text, arg.col_offset) + len(arg.arg), _char_col(text, ann.end_col_offset or 0)))
            ret = node.returns
            if ret is not None and ret.lineno == ret.end_lineno:
                ret_col = _char_col(lines[ret.lineno - 1], ret.col_offset)
                arrows = [t for t in tokens if t.type == tokenize.OP and t.string == "->" and t.start[0] == ret.lineno and t.start[1] < ret_col]
                if arrows:
                    text = lines[ret.lineno - 1]
                    start = arrows[-1].start[1]
                    start -= 1 if start and text[start - 1] == " " else 0
                    cuts.append((ret.lineno, start, _char_col(text, ret.end_col_offset or 0)))
        elif isinstance(node, ast.AnnAssign) and node.value is not None and not isinstance(parents.get(node), ast.ClassDef):
            target, ann = node.target, node.annotation
            if target.end_lineno == ann.end_lineno == target.lineno:
                text = lines[target.lineno - 1]
                cuts.append((target.lineno, _char_col(text, target.end_col_offset or 0), _char_col(text, ann.end_col_offset or 0)))
    # Only cut what is exactly `: annotation` / `-> annotation`, whatever the AST said.
    return [(n, a, b) for n, a, b in cuts if lines[n - 1][a:b].lstrip().startswith((":", "->"))]


def _docstrings(tree: ast.AST, lines: list[str]) -> list[tuple[int, int, bool]]:
    """(first line, last line, body has more statements) of every docstring on lines of its own."""
    found = []
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            body = node.body
            if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant) and isinstance(body[0].value.value, str):
                doc = body[0]
                first, last = doc.lineno, doc.end_lineno or doc.lineno
                head, tail = lines[first - 1], lines[last - 1]
                alone = _char_col(head, doc.col_offset) == len(head) - len(head.lstrip())
                after = tail[_char_col(tail, doc.end_col_offset or 0) :].strip()
                if alone and (not after or after.startswith("#")):
                    found.append((first, last, len(body) > 1))
    return found


@functools.lru_cache(maxsize=256)  # pure; the pin loader's source is minified on every build
def minify(source: str) -> str:
    """SOURCE without comments, docstrings, blank lines and run-time-inert annotations, indented
    by one space a level: the same program, in fewer bytes."""
    tree = ast.parse(source)
    lines = source.splitlines()
    tokens = list(tokenize.generate_tokens(io.StringIO(source).readline))
    verbatim: set[int] = set()  # lines inside a multi-line token (strings): never touched
    comment_at: dict[int, int] = {}
    depth_of: dict[int, int] = {}  # first line of each logical line -> indentation depth
    depth, at_start = 0, True
    for tok in tokens:
        if tok.type == tokenize.COMMENT:
            comment_at[tok.start[0]] = tok.start[1]
        if tok.start[0] != tok.end[0]:
            verbatim.update(range(tok.start[0] + 1, tok.end[0] + 1))
        if tok.type == tokenize.INDENT:
            depth += 1
        elif tok.type == tokenize.DEDENT:
            depth -= 1
        elif tok.type == tokenize.NEWLINE:
            at_start = True
        elif tok.type not in (tokenize.NL, tokenize.COMMENT, tokenize.ENDMARKER) and at_start:
            depth_of[tok.start[0]] = depth
            at_start = False
    drop: set[int] = set()
    replace: dict[int, str] = {}
    for first, last, more in _docstrings(tree, lines):
        drop.update(range(first, last + 1))
        verbatim.difference_update(range(first, last + 1))
        if not more:
            replace[first] = " " * depth_of.get(first, 1) + "pass"
    cuts: dict[int, list[tuple[int, int]]] = {}
    for line, start, end in _annotation_cuts(tree, lines, tokens):
        cuts.setdefault(line, []).append((start, end))
    out: list[str] = []
    for number, text in enumerate(lines, start=1):
        if number in replace:
            out.append(replace[number])
            continue
        if number in drop:
            continue
        if number in verbatim:
            out.append(text)
            continue
        if number in comment_at:
            text = text[: comment_at[number]]
        for start, end in sorted(cuts.get(number, []), reverse=True):
            text = text[:start] + text[end:]
        body = text.strip()
        if not body:
            continue
        out.append((" " * depth_of[number] if number in depth_of else " ") + body)
    return "\n".join(out) + "\n"


@functools.cache  # one patch of the class per process, not one per module shrunk
def _old_fstring_syntax() -> None:
    """Make python-minifier print f-strings as Python 3.11 and older parse them, whatever Python
    runs the build: on 3.12+ it may nest an f-string's own quote (PEP 701), which an instance's
    older Python refuses."""
    from python_minifier import expression_printer, f_string

    def visit_joined_str(self: Any, node: ast.JoinedStr) -> None:
        self.printer.fstring(str(f_string.OuterFString(node, pep701=False)))

    expression_printer.ExpressionPrinter.visit_JoinedStr = visit_joined_str  # type: ignore[method-assign]


# What a user-data's packed library adds to `minify` (python-minifier, pinned in setup.cfg: the
# same vfarm gives the same bytes): locals renamed, literal statements dropped, literals not hoisted
# (that cost bytes after bz2); 7-8 % fewer gzip bytes of embed. Readable bundles (baked images,
# hosted handlers) keep `minify` alone.
@functools.lru_cache(maxsize=256)
def shrink(source: str) -> str:
    """SOURCE as a user-data's packed library carries it: `minify`, then python-minifier."""
    import python_minifier

    _old_fstring_syntax()
    return python_minifier.minify(minify(source), remove_literal_statements=True, hoist_literals=False) + "\n"


def shrinker_origin() -> list[str]:
    """The file `shrink` depends on besides the sources (a cache of its output must see it change)."""
    spec = importlib.util.find_spec("python_minifier")
    return [spec.origin] if spec and spec.origin else []


def minify_schema(schema: Any) -> Any:
    """A copy of a JSON Schema without its documentation keywords (descriptions, titles...)."""
    if not isinstance(schema, dict):
        return schema
    result: dict[str, Any] = {}
    for key, value in schema.items():
        if key in DOC_KEYWORDS and not isinstance(value, (dict, list)) or key == "examples":
            continue
        if key in SUBSCHEMA_KEYWORDS:
            result[key] = minify_schema(value)
        elif key in SUBSCHEMA_LISTS and isinstance(value, list):
            result[key] = [minify_schema(v) for v in value]
        elif key in SUBSCHEMA_MAPS and isinstance(value, dict):
            result[key] = {k: minify_schema(v) for k, v in value.items()}
        else:
            result[key] = value
    return result


# --- the import graph ----------------------------------------------------------------------


@dataclass
class Module:
    name: str  # relative to the root package: "" is the root, "cc_modules.sizes"
    is_package: bool
    source: str


@dataclass
class Graph:
    root: str
    modules: dict[str, Module] = field(default_factory=dict)
    # Sections the bundle serves: a `{section: module}` table of a dynamic import contributes
    # only their entries (the localfs handler never semantic-checks a condor section).
    keys: Optional[set[str]] = None
    # Every file and folder the walk read or listed: what a cached bundle depends on.
    origins: set[str] = field(default_factory=set)

    def full(self, relative: str) -> str:
        return f"{self.root}.{relative}" if relative else self.root

    def relative(self, full: str) -> str:
        return full[len(self.root) + 1 :] if full != self.root else ""


def _spec(full: str) -> Optional[Any]:
    try:
        return importlib.util.find_spec(full)
    except (ImportError, ValueError):
        return None


def _is_module(full: str) -> bool:
    return _spec(full) is not None


def _is_package(full: str) -> bool:
    spec = _spec(full)
    return spec is not None and spec.submodule_search_locations is not None


def _read(graph: Graph, relative: str) -> Module:
    full = graph.full(relative)
    spec = _spec(full)
    if spec is None or not spec.origin or not Path(spec.origin).is_file():
        raise BundleError(f"module {full} not found")
    source = Path(spec.origin).read_text(encoding="utf-8")
    graph.origins.update((spec.origin, str(Path(spec.origin).parent)))
    return Module(relative, spec.submodule_search_locations is not None, source)


def _resolve(graph: Graph, module: Module, level: int, name: Optional[str]) -> str:
    package = graph.full(module.name) if module.is_package else graph.full(module.name).rpartition(".")[0]
    base = importlib.util.resolve_name("." * level + (name or ""), package)
    if base != graph.root and not base.startswith(graph.root + "."):
        raise BundleError(f"{graph.full(module.name)}: relative import leaves the package: {base}")
    return base


def _imports(graph: Graph, module: Module) -> list[str]:
    """The package modules (full names) MODULE imports, relatively or dynamically."""
    tree = ast.parse(module.source)
    found: list[str] = []
    strings: set[str] = set()
    for table in (n for n in ast.walk(tree) if isinstance(n, ast.Dict)):
        for key, value in zip(table.keys, table.values):
            if isinstance(key, ast.Constant) and isinstance(value, ast.Constant) and isinstance(value.value, str):
                if graph.keys is None or key.value in graph.keys:
                    strings.add(value.value)
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            if node.level == 0:
                if node.module and (node.module == graph.root or node.module.startswith(graph.root + ".")):
                    raise BundleError(f"{graph.full(module.name)}:{node.lineno}: absolute import of {node.module}: use a relative import")
                continue
            base = _resolve(graph, module, node.level, node.module)
            found.append(base)
            if not _is_package(base):  # its names are attributes (asking would import it: run its code)
                continue
            for alias in node.names:
                if alias.name != "*" and _is_module(f"{base}.{alias.name}"):
                    found.append(f"{base}.{alias.name}")
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name == graph.root or alias.name.startswith(graph.root + "."):
                    raise BundleError(f"{graph.full(module.name)}:{node.lineno}: absolute import of {alias.name}: use a relative import")
        elif isinstance(node, ast.Call) and getattr(node.func, "attr", getattr(node.func, "id", None)) == "import_module" and node.args:
            found += _dynamic(graph, module, node.args[0], strings)
    return found


def _dynamic(graph: Graph, module: Module, arg: ast.expr, strings: set[str]) -> list[str]:
    """`importlib.import_module("..pkg.name", __package__)`, or with an f-string whose fixed
    prefix names a package: then every module of that package that a `{"localfs": "localfs_spec"}`
    table of the importing module names is taken (only the entries of `graph.keys`, if set)."""
    if isinstance(arg, ast.IfExp):
        return _dynamic(graph, module, arg.body, strings) + _dynamic(graph, module, arg.orelse, strings)
    if isinstance(arg, ast.Constant) and isinstance(arg.value, str) and arg.value.startswith("."):
        level = len(arg.value) - len(arg.value.lstrip("."))
        return [_resolve(graph, module, level, arg.value[level:] or None)]
    if isinstance(arg, ast.JoinedStr) and arg.values and isinstance(arg.values[0], ast.Constant):
        prefix = str(arg.values[0].value)
        if prefix.startswith(".") and prefix.endswith("."):
            level = len(prefix) - len(prefix.lstrip("."))
            package = _resolve(graph, module, level, prefix[level:-1] or None)
            spec = _spec(package)
            if spec is None or not spec.submodule_search_locations:
                return []
            graph.origins.update(spec.submodule_search_locations)
            names = {m.name for m in pkgutil.iter_modules(spec.submodule_search_locations)}
            return [f"{package}.{n}" for n in sorted(names & strings)]
    return []


def collect(entries: Sequence[str], root: str = ROOT_PACKAGE, keys: Optional[set[str]] = None) -> Graph:
    """Every module the ENTRIES (relative to ROOT, e.g. "part_handlers.localfs_handler") need."""
    graph = Graph(root, keys=keys)
    importlib.invalidate_caches()  # a module written since the last import must be seen
    todo = [graph.full(entry) for entry in entries]
    while todo:
        full = todo.pop()
        relative = graph.relative(full)
        if relative in graph.modules:
            continue
        module = _read(graph, relative)
        graph.modules[relative] = module
        # Parents first: importing a.b.c runs a/__init__ and a/b/__init__.
        parts = relative.split(".") if relative else []
        todo += [graph.full(".".join(parts[:i])) for i in range(len(parts))]
        todo += _imports(graph, module)
    return graph


# --- the bundle ----------------------------------------------------------------------------

# The importer every bundle carries (kept small and stdlib-only; runs on Python 3.9+).
LOADER = r'''import importlib as _i, importlib.abc as _a, importlib.util as _u, linecache as _l, sys as _s
class _F(_a.MetaPathFinder, _a.Loader):
    def find_spec(self, name, path=None, target=None):
        key = name[len(_P) + 1:]
        if (name == _P or name.startswith(_P + '.')) and key in _M:
            return _u.spec_from_loader(name, self, is_package=_M[key][0])
        return None
    def create_module(self, spec):
        return None
    def exec_module(self, module):
        key = module.__name__[len(_P) + 1:]
        fn = module.__file__ = '<%s/%s.py>' % (_P, key.replace('.', '/') or '__init__')
        src = _M[key][1]
        _l.cache[fn] = (len(src), None, src.splitlines(True), fn)
        exec(compile(src, fn, 'exec'), module.__dict__)
        for attr, value in _D.get(key, {}).items():
            getattr(module, attr).update(value)
if not any(getattr(f, 'vfarm_package', None) == _P for f in _s.meta_path):
    _f = _F()
    _f.vfarm_package = _P
    _s.meta_path.insert(0, _f)
'''
# The attributes cloud-init reads from a part-handler module.
HANDLER_ATTRIBUTES = ("handler_version", "frequency", "list_types", "handle_part")


@dataclass(frozen=True)
class Library:
    """Modules (and data) under one private package name, as Python source that installs them."""

    package: str
    source: str  # defines _P, _M, _D and installs the importer; imports nothing of them yet


def _literal(value: Any) -> str:
    """A deterministic, ASCII-only Python literal (the file travels as 7-bit text)."""
    return ascii(value)


def _schema_data(names: Sequence[str]) -> dict[str, str]:
    from .. import schemas

    return {name: json.dumps(minify_schema(schemas.load(name)), separators=(",", ":"), ensure_ascii=True) for name in names}


# A packed library carries its module table and data as bz2-compressed JSON in base64, on one
# line: 14 % fewer gzip bytes of user-data than the sources as literals (bz2 beats gzip's deflate
# on source text, and the user-data's own gzip takes base64 back to about its bytes; wrapped
# lines would cost 1.5 % more). bz2, not lzma: its output has not changed across libbz2 releases
# in decades, and it compressed this text better.
UNPACK = "_M, _D = __import__('json').loads(__import__('bz2').decompress(__import__('base64').b64decode(_Z)))"
PACKED_NOTE = "# Its modules are packed in _Z: base64 of bz2 of JSON [{module: [is_package, source]}, data]; tracebacks show their lines."


def pack(modules: dict[str, tuple[bool, str]], data: dict[str, Any]) -> str:
    """MODULES ({name: (is_package, source)}) and DATA as the base64 text of a packed library."""
    text = json.dumps([modules, data], sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    return base64.b64encode(bz2.compress(text.encode("ascii"), 9)).decode("ascii")


def unpack(text: str) -> tuple[dict[str, tuple[bool, str]], dict[str, Any]]:
    """The module table and data of a packed library's base64 TEXT."""
    table, data = json.loads(bz2.decompress(base64.b64decode(text)))
    return {str(name): (bool(entry[0]), str(entry[1])) for name, entry in table.items()}, data


# One process may build user-data for many instances (`vfarm scale`, a launch of many; bundling is
# about 99% of an embed build). A bundle depends only on files, so it is kept per call and reused while none of
# the files and folders it was made from changed (stat: mtime, ctime, size, inode; a stricter
# rule than Python's own for .pyc files). Only the installed package is cached.
_LIBRARIES: dict[tuple[Any, ...], tuple[tuple[tuple[Any, ...], ...], Library]] = {}


def _fingerprint(paths: Sequence[str]) -> tuple[tuple[Any, ...], ...]:
    out: list[tuple[Any, ...]] = []
    for path in paths:
        try:
            st = os.stat(path)
        except OSError:
            out.append((path, None))
            continue
        out.append((path, st.st_mtime_ns, st.st_ctime_ns, st.st_size, st.st_ino))
    return tuple(out)


def library(entries: Sequence[str], schemas: Optional[Sequence[str]] = None, root: str = ROOT_PACKAGE, keys: Optional[set[str]] = None,
            packed: bool = False) -> Library:
    """The modules ENTRIES need, with SCHEMAS (default: all) embedded when schemas is among them.
    The private package name is a hash of the content: equal content, equal name. PACKED: the
    module table travels compressed (`pack`), for user-data; otherwise as readable literals."""
    key = (tuple(entries), None if schemas is None else tuple(schemas), root, None if keys is None else tuple(sorted(keys)), packed)
    if root != ROOT_PACKAGE:
        return _make_library(entries, schemas, root, keys, packed)[1]
    cached = _LIBRARIES.get(key) or _read_disk_cache(key)
    if cached is not None and _fingerprint([entry[0] for entry in cached[0]]) == cached[0]:
        _LIBRARIES[key] = cached
        return cached[1]
    made = _make_library(entries, schemas, root, keys, packed)
    made = (made[0] + _fingerprint([__file__]), made[1])  # a changed bundler makes other bytes
    _LIBRARIES[key] = made
    _write_disk_cache(key, made)
    return made[1]


# A fresh `vfarm build` process has an empty in-process cache, so bundles are also kept on disk,
# under the same stat rule: one JSON file per key in the user's own cache folder. The folder and
# its files must be the user's and writable by nobody else (what is read there ends up as code in
# user-data). VFARM_BUNDLE_CACHE names another folder; empty turns the disk cache off.
DISK_CACHE_FORMAT = 1


def disk_cache_dir() -> Optional[Path]:
    explicit = os.environ.get("VFARM_BUNDLE_CACHE")
    if explicit is not None:
        return Path(explicit) if explicit else None
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "vfarm" / "bundles"


def _disk_cache_path(key: tuple[Any, ...]) -> Optional[Path]:
    folder = disk_cache_dir()
    if folder is None:
        return None
    name = hashlib.sha256(json.dumps([DISK_CACHE_FORMAT, *key]).encode()).hexdigest()[:32]
    return folder / f"{name}.json"


def _private(path: Path) -> bool:
    try:
        st = os.lstat(path)
    except OSError:
        return False
    return st.st_uid == os.getuid() and not st.st_mode & 0o022


def _read_disk_cache(key: tuple[Any, ...]) -> Optional[tuple[tuple[tuple[Any, ...], ...], Library]]:
    path = _disk_cache_path(key)
    if path is None or not (_private(path.parent) and _private(path)):
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        depends = tuple(tuple(entry) for entry in data["depends"])
        return depends, Library(str(data["package"]), str(data["source"]))
    except (OSError, ValueError, KeyError, TypeError):
        return None  # unreadable or from another format: made again and rewritten


def _write_disk_cache(key: tuple[Any, ...], made: tuple[tuple[tuple[Any, ...], ...], Library]) -> None:
    path = _disk_cache_path(key)
    if path is None:
        return
    try:
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        if not _private(path.parent):
            return
        tmp = path.with_name(f".{path.name}.{os.getpid()}")
        tmp.write_text(json.dumps({"depends": made[0], "package": made[1].package, "source": made[1].source}), encoding="utf-8")
        os.chmod(tmp, 0o600)
        os.replace(tmp, path)
    except OSError:
        pass  # a cache that cannot be written only costs time


def _make_library(entries: Sequence[str], schemas: Optional[Sequence[str]], root: str,
                  keys: Optional[set[str]], packed: bool = False) -> tuple[tuple[tuple[Any, ...], ...], Library]:
    graph = collect(entries, root, keys)
    # Stat right after reading (as Python's importer does for .pyc files), the schemas before.
    depends = _fingerprint(sorted(graph.origins))
    modules = {name: (m.is_package, minify(m.source)) for name, m in sorted(graph.modules.items())}
    if packed:
        depends += _fingerprint(shrinker_origin())
    data: dict[str, Any] = {}
    if SCHEMAS_PACKAGE in graph.modules and root == ROOT_PACKAGE:
        from .. import schemas as schemas_package

        folder = Path(schemas_package.__file__).parent
        wanted = sorted(schemas if schemas is not None else _all_schemas())
        depends += _fingerprint([str(folder), *(str(folder / f"{name}.schema.json") for name in wanted)])
        data[SCHEMAS_PACKAGE] = {"EMBEDDED": _schema_data(wanted)}
    digest = hashlib.sha256(json.dumps([modules, data], sort_keys=True).encode()).hexdigest()
    package = f"_{root}_{digest[:10]}"
    lines = [f"_P = {_literal(package)}"]
    if packed:
        shrunk = {name: (m.is_package, shrink(m.source)) for name, m in sorted(graph.modules.items())}
        lines += [f"_Z = {_literal(pack(shrunk, data))}", UNPACK]
    else:
        lines += ["_M = {", *(f" {_literal(name)}: ({is_package}, {_literal(src)})," for name, (is_package, src) in modules.items()), "}"]
        lines.append(f"_D = {_literal(data)}")
    lines.append(LOADER.rstrip("\n"))
    return depends, Library(package, "\n".join(lines) + "\n")


def _all_schemas() -> list[str]:
    from .. import schemas

    return schemas.names()


_HANDLER_NAMES: dict[tuple[tuple[Any, ...], ...], list[str]] = {}


def handler_names() -> list[str]:
    """Sections that have a part-handler (`part_handlers/<name>_handler.py`), sorted."""
    package = importlib.import_module(f"..{HANDLERS_PACKAGE}", __package__)
    # A build asks a dozen times; listing the folder again only when it changed saves ~2 ms.
    stamp = _fingerprint(list(package.__path__))
    names = _HANDLER_NAMES.get(stamp)
    if names is None:
        names = sorted(m.name[: -len(HANDLER_SUFFIX)] for m in pkgutil.iter_modules(package.__path__) if m.name.endswith(HANDLER_SUFFIX))
        _HANDLER_NAMES.clear()
        _HANDLER_NAMES[stamp] = names
    return list(names)


def _known_handler(name: str) -> sections.Section:
    """The registry row of section NAME, which has a part-handler; BundleError when it has none.
    The handler module itself is never imported here: a build bundles its source only."""
    if name not in handler_names() or name not in sections.BY_NAME:
        raise BundleError(f"no part-handler for '{name}' (known: {', '.join(handler_names()) or 'none'})")
    return sections.BY_NAME[name]


def handler_types(name: str) -> list[str]:
    return [_known_handler(name).content_type]


def handler_frequency(name: str) -> str:
    _known_handler(name)
    return sections.HANDLER_FREQUENCY


def handler_filename(name: str) -> str:
    """The file name of a bundled handler, as `vfarm handlers` writes it and URLs name it."""
    return f"{name}{HANDLER_SUFFIX}.py"


def _entry(name: str) -> str:
    return f"{HANDLERS_PACKAGE}.{name}{HANDLER_SUFFIX}"


def _version() -> str:
    from .. import __version__

    return str(__version__)


def _handler_header(name: str, how: str) -> list[str]:
    return [
        "#part-handler",
        f"# vfarm {_version()}: the {name} part-handler, {how}. Generated by vfarm; do not edit.",
        f"# vfarm-types: {' '.join(handler_types(name))}",
    ]


def _handler_tail(name: str, package: str) -> str:
    lines = [f"_h = __import__('importlib').import_module({_literal(package + '.' + _entry(name))})"]
    return "\n".join(lines + [f"{a} = _h.{a}" for a in HANDLER_ATTRIBUTES]) + "\n"


def bundle_handler(name: str) -> str:
    """The self-contained source of the part-handler for section NAME (for a URL or a file in
    /var/lib/cloud/handlers): needs nothing but the stdlib, PyYAML and jsonschema."""
    _known_handler(name)
    lib = library([_entry(name)], [name] if name in _all_schemas() else [], keys={name})
    return "\n".join(_handler_header(name, "bundled with its modules")) + "\n" + lib.source + _handler_tail(name, lib.package)


CHECK_ENTRY = "cc_modules.check"
CHECK_START_ENTRY = "cc_modules.cc_vfarm_check"
CHECK_ENTRIES = [CHECK_ENTRY, CHECK_START_ENTRY]
# The library part's own part-handler interface: it takes no type. With the final check on
# board it is called at every boot (frequency always; cloud-init's __begin__ call, in the init
# stage): on the first (frequency once-per-instance) it writes the part itself to the check's
# place, for power_state's condition; on later boots, where that condition does not run (it is
# once per instance), it starts the check detached, as a baked image's cc_vfarm_check does, so a
# worker that failed cannot come back unchecked after a restart. Run as a script it is the check.
LIBRARY_TAIL = "def list_types():\n    return []\ndef handle_part(*args):\n    pass\n"
CHECK_LIBRARY_TAIL = f"""frequency = 'always'
handler_version = 2
def list_types():
    return []
def handle_part(data, ctype, filename, payload, frequency=None, *rest):
    if ctype == '__begin__':
        try:
            if frequency == 'always':
                _i.import_module(_P + '.{CHECK_START_ENTRY}').start()
            else:
                _i.import_module(_P + '.{CHECK_ENTRY}').install(__file__)
        except Exception:
            __import__('logging').getLogger('vfarm').exception('vfarm: cannot write or start the final check')
if __name__ == '__main__':
    raise SystemExit(_i.import_module(_P + '.{CHECK_ENTRY}').main())
"""


def bundle_library(names: Sequence[str], with_check: bool = False) -> Library:
    """One library part for the handlers of NAMES (embed mode: the modules travel once).
    WITH_CHECK: it also carries the final check and installs itself as the check's script."""
    for name in names:
        _known_handler(name)
    entries = [_entry(n) for n in names] + (CHECK_ENTRIES if with_check else [])
    lib = library(entries, [n for n in names if n in _all_schemas()], keys=set(names), packed=True)
    what = "part-handler(s) that follow" + (" and of the final check" if with_check else "")
    header = [
        "#part-handler",
        f"# vfarm {_version()}: the modules of the {', '.join(names)} {what}. Generated by vfarm; do not edit.",
        f"# vfarm-library: {lib.package}",
        PACKED_NOTE,
    ]
    return Library(lib.package, "\n".join(header) + "\n" + lib.source + (CHECK_LIBRARY_TAIL if with_check else LIBRARY_TAIL))


def thin_handler(name: str, package: str) -> str:
    """The part-handler of NAME whose modules come from the library part PACKAGE before it."""
    return "\n".join(_handler_header(name, f"its modules from the library part {package} before it")) + "\n" + _handler_tail(name, package)


def bundle_module(module_name: str) -> str:
    """A self-contained script of any package module with a `main()` (e.g. "cc_modules.check"):
    `python3 FILE ARGS...` exits with what main() returns."""
    entry = module_name[len(ROOT_PACKAGE) + 1 :] if module_name.startswith(ROOT_PACKAGE + ".") else module_name
    try:
        module = importlib.import_module(f"..{entry}", __package__)
    except ImportError as err:
        raise BundleError(f"cannot bundle {module_name}: {err}") from None
    if not callable(getattr(module, "main", None)):
        raise BundleError(f"{ROOT_PACKAGE}.{entry} has no main(): cannot make a script of it")
    lib = library([entry])
    header = ["#!/usr/bin/env python3", f"# vfarm {_version()}: {entry}, bundled with its modules. Generated by vfarm; do not edit."]
    tail = f"if __name__ == '__main__':\n    raise SystemExit(__import__('importlib').import_module({_literal(lib.package + '.' + entry)}).main())\n"
    return "\n".join(header) + "\n" + lib.source + tail


def bundle_all() -> dict[str, str]:
    """filename -> source of every part-handler (what a baked image registers)."""
    return {handler_filename(name): bundle_handler(name) for name in handler_names()}


# The hosted final check: fetched with the handlers (`include`, `--pin`), so the user-data
# carries only its power_state part, as in `embed`.
CHECK_FILENAME = "vfarm-check.py"


def bundle_check() -> str:
    """The final check as a hosted file: a part-handler that takes no type and, registered,
    writes itself to the check's place; run as a script, it is the check."""
    lib = library(CHECK_ENTRIES)
    header = [
        "#part-handler",
        f"# vfarm {_version()}: the final check; registered, it writes itself to its place. Generated by vfarm; do not edit.",
        f"# vfarm-library: {lib.package}",
    ]
    return "\n".join(header) + "\n" + lib.source + CHECK_LIBRARY_TAIL


def hosted_files() -> dict[str, str]:
    """filename -> source of every file `vfarm handlers` writes: the part-handlers and the check."""
    return {**bundle_all(), CHECK_FILENAME: bundle_check()}


def sha256(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()
