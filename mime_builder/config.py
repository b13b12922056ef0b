"""The one way to load a vfarm `#multiple-config` file.

YAML is composed into nodes and built into plain data by hand, so that every key and value keeps
its line and column, duplicate keys and alias bombs are caught, and every problem (syntax, schema,
semantics) comes back at once as `FILE:LINE:COL: message`. Nothing acts on a config that did not
load without errors.
"""

from __future__ import annotations

import datetime
import difflib
import errno
import importlib
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path as FilePath
from typing import Any, Callable, Optional, Union

import jsonschema
import yaml

from ..cc_modules.files import read_bounded
from ..cc_modules.findings import Finding
from ..schemas import load as load_schema

MAGIC = "#multiple-config"
MAX_BYTES = 256 * 1024
MAX_NODES = 10_000  # after alias expansion; a real config has a few hundred
# First lines that mark other kinds of user-data: such a file is not ours.
FOREIGN_MAGIC = ("#cloud-config", "#include", "#!", "#part-handler", "#cloud-boothook", "#upstart-job", "## template", "Content-Type:")

Path = tuple[Union[str, int], ...]
Mark = tuple[int, int]  # 1-based line, column

# Section name -> module (in cc_modules, or "..pkg.mod") with `check(section) -> list[Finding]`, or None.
SEMANTIC_CHECKS: dict[str, Optional[str]] = {"localfs": "localfs_spec", "cvmfs": "cvmfs_spec", "check": None, "condor": "condor_spec", "scale": "..scaler.spec"}
# Such a module may also have `check_files(section, base_dir) -> list[Finding]`, for checks that
# read files the section names (relative to the config file's folder).
CROSS_CHECKS: list[Callable[[Config], list[tuple[str, Finding]]]] = []
# Sections that stay on the admin's side and are never sent to an instance.
ADMIN_ONLY: set[str] = {"scale"}


@dataclass(frozen=True)
class Problem:
    file: str
    line: int
    col: int
    message: str
    warning: bool = False

    def __str__(self) -> str:
        return f"{self.file}:{self.line}:{self.col}: {'warning: ' if self.warning else ''}{self.message}"


class ConfigError(Exception):
    def __init__(self, problems: list[Problem]):
        self.problems = sorted(problems, key=lambda p: (p.file, p.line, p.col))
        super().__init__("\n".join(map(str, self.problems)))


@dataclass
class Config:
    source: str
    sections: dict[str, Any]
    values: dict[Path, Mark] = field(default_factory=dict)  # where each value starts
    keys: dict[Path, Mark] = field(default_factory=dict)  # where the key of each mapping entry is
    warnings: list[Problem] = field(default_factory=list)
    base_dir: Optional[FilePath] = None  # the config file's folder; None for text without a file

    def where(self, path: Path, at_key: bool = False) -> Mark:
        """The position of PATH, or of its nearest ancestor that has one."""
        while True:
            table = self.keys if at_key and path in self.keys else self.values
            if path in table:
                return table[path]
            if not path:
                return (1, 1)
            path = path[:-1]

    def problem(self, path: Path, message: str, warning: bool = False, at_key: bool = False) -> Problem:
        line, col = self.where(path, at_key)
        return Problem(self.source, line, col, message, warning)

    def sent_sections(self) -> dict[str, Any]:
        """The sections that go to the instance, in file order."""
        return {k: v for k, v in self.sections.items() if k not in ADMIN_ONLY}


class _Builder:
    """Plain data from YAML nodes, with positions, duplicate-key and alias-bomb checks."""

    def __init__(self, source: str, loader: yaml.SafeLoader):
        self.config = Config(source, {})
        self.loader = loader
        self.problems: list[Problem] = []
        self._expanded: dict[int, int] = {}
        self._open: set[int] = set()  # nodes being built: meeting one again is a recursive alias

    def expanded_size(self, node: yaml.Node) -> int:
        # Memoised by node identity: linear in the document, exact for the expansion.
        key = id(node)
        if key not in self._expanded:
            self._expanded[key] = 1  # guards against recursive aliases
            if isinstance(node, yaml.MappingNode):
                size = 1 + sum(self.expanded_size(k) + self.expanded_size(v) for k, v in node.value)
            elif isinstance(node, yaml.SequenceNode):
                size = 1 + sum(self.expanded_size(v) for v in node.value)
            else:
                size = 1
            self._expanded[key] = min(size, MAX_NODES + 1)
        return self._expanded[key]

    def mark(self, node: yaml.Node) -> Mark:
        return (node.start_mark.line + 1, node.start_mark.column + 1)

    def build(self, node: yaml.Node, path: Path, depth: int = 0) -> Any:
        self.config.values[path] = self.mark(node)
        if depth > 50:
            raise _Fatal(self.mark(node), "nesting deeper than 50 levels")
        if id(node) in self._open:
            raise _Fatal(self.mark(node), "an alias refers to the collection that contains it")
        self._open.add(id(node))
        try:
            return self._build(node, path, depth)
        finally:
            self._open.discard(id(node))

    def _build(self, node: yaml.Node, path: Path, depth: int) -> Any:
        if isinstance(node, yaml.MappingNode):
            result: dict[str, Any] = {}
            for key_node, value_node in node.value:
                if not isinstance(key_node, yaml.ScalarNode):
                    raise _Fatal(self.mark(key_node), "a key must be a plain name, not a list or mapping")
                if key_node.tag == "tag:yaml.org,2002:merge":
                    raise _Fatal(self.mark(key_node), "merge keys (<<) are not supported: write the keys out")
                key = key_node.value  # as written: `yes:` stays "yes", `1:` stays "1"
                if key in result:
                    first = self.config.keys[path + (key,)]
                    self.problems.append(Problem(self.config.source, *self.mark(key_node), f"duplicate key '{key}' (first defined at line {first[0]})"))
                    continue
                self.config.keys[path + (key,)] = self.mark(key_node)
                result[key] = self.build(value_node, path + (key,), depth + 1)
            return result
        if isinstance(node, yaml.SequenceNode):
            return [self.build(item, path + (i,), depth + 1) for i, item in enumerate(node.value)]
        value = self.loader.construct_object(node)
        if isinstance(value, (datetime.date, bytes)):
            return node.value  # JSON has no dates: keep what was written
        if isinstance(value, float) and value != value:  # NaN
            raise _Fatal(self.mark(node), "not a number (.nan) is not a valid value")
        return value


class _Fatal(Exception):
    def __init__(self, mark: Mark, message: str):
        self.mark = mark
        self.message = message


JSON_TYPES = {
    "object": "a mapping",
    "array": "a list",
    "string": "a string",
    "boolean": "true or false",
    "integer": "a whole number",
    "number": "a number",
    "null": "nothing",
}
PY_TYPES = {dict: "a mapping", list: "a list", str: "a string", bool: "a boolean", int: "a number", float: "a number", type(None): "nothing"}


def _type_name(value: Any) -> str:
    return PY_TYPES.get(type(value), type(value).__name__)


def _dotted(section: str, path: Path) -> str:
    out = section
    for part in path:
        out += f"[{part}]" if isinstance(part, int) else f".{part}"
    return out


def _specific(errors: Iterable[jsonschema.ValidationError]) -> Iterator[jsonschema.ValidationError]:
    """Replace a oneOf/anyOf error by the errors of the one branch whose type fits the value:
    `fs: btrfs` inside a long-form part should say what is wrong with `fs`, not list every form."""
    for error in errors:
        if error.validator in ("oneOf", "anyOf") and error.context:
            branches: dict[Any, list[jsonschema.ValidationError]] = {}
            for sub in error.context:
                branches.setdefault(sub.relative_schema_path[0], []).append(sub)
            fitting = [errs for errs in branches.values() if not any(e.validator == "type" and not e.relative_path for e in errs)]
            all_branches: Any = error.validator_value
            if len(fitting) == 1 and len(branches) == len(all_branches):
                yield from _specific(fitting[0])
                continue
        yield error


def _schema_problems(config: Config, name: str, data: Any) -> tuple[list[Problem], set[str]]:
    """Every schema problem of one section, and the section's top-level keys they lie in."""
    schema = load_schema(name)
    validator = jsonschema.Draft202012Validator(schema)
    problems = []
    bad_keys: set[str] = set()
    for error in _specific(validator.iter_errors(data)):
        # jsonschema types these as "maybe unset"; for an error they are always set.
        instance: Any = error.instance
        value: Any = error.validator_value
        path: Path = (name,) + tuple(error.absolute_path)
        if error.absolute_path:
            bad_keys.add(str(error.absolute_path[0]))
        where = _dotted(name, tuple(error.absolute_path))
        sub = error.schema if isinstance(error.schema, dict) else {}
        expected = sub.get("x-expected")
        at_key = False
        if "propertyNames" in error.absolute_schema_path:
            path += (instance,)
            at_key = True
            message = f"{_dotted(name, path[1:])}: bad name: expected {expected or error.message}"
        elif error.validator == "additionalProperties":
            known = sorted(sub.get("properties", {}))
            patterns = sub.get("patternProperties", {})
            for extra in instance:
                if extra in known or any(re.search(p, extra) for p in patterns):
                    continue
                hint = difflib.get_close_matches(extra, known, n=1)
                suggestion = f" (did you mean '{hint[0]}'?)" if hint else ""
                message = f"{where}: unknown key '{extra}'{suggestion}; expected one of: {', '.join(known)}"
                problems.append(config.problem(path + (extra,), message, at_key=True))
            continue
        elif error.validator == "required":
            missing = error.message.split("'")[1] if "'" in error.message else error.message
            message = f"{where}: missing required key '{missing}'"
        elif expected:
            got = _type_name(instance) if isinstance(instance, (dict, list)) else repr(instance)
            if sub.get("x-secret"):
                got = "(a secret: not shown)"
            message = f"{where}: expected {expected}, got {got}"
        elif error.validator == "type":
            types = value if isinstance(value, list) else [value]
            message = f"{where}: expected {' or '.join(JSON_TYPES.get(str(t), str(t)) for t in types)}, got {_type_name(instance)}"
        elif error.validator == "enum":
            message = f"{where}: expected one of {', '.join(map(str, value))}, got {instance!r}"
        elif error.validator in ("minimum", "exclusiveMinimum", "maximum", "exclusiveMaximum"):
            relation = {"minimum": ">=", "exclusiveMinimum": ">", "maximum": "<=", "exclusiveMaximum": "<"}[str(error.validator)]
            message = f"{where}: must be {relation} {value}, got {instance!r}"
        elif error.validator == "minProperties" or error.validator == "minItems":
            message = f"{where}: must not be empty"
        elif error.validator == "uniqueItems":
            message = f"{where}: lists the same item twice"
        else:
            message = f"{where}: {error.message}"
        problems.append(config.problem(path, message, at_key=at_key))
    return problems, bad_keys


def _semantic_problems(config: Config, name: str, data: Any, partial: bool = False) -> list[Problem]:
    """Problems the section's model finds. `partial`: DATA lacks keys that failed the schema, so
    findings about the section as a whole (which may stem from those keys) are left out."""
    module_name = SEMANTIC_CHECKS.get(name)
    if not module_name:
        return []
    # A name starting with ".." is a module outside cc_modules (admin-side sections).
    module = importlib.import_module(module_name if module_name.startswith("..") else f"..cc_modules.{module_name}", __package__)
    findings: list[Finding] = module.check(data)
    if hasattr(module, "check_files") and config.base_dir is not None:
        findings += module.check_files(data, config.base_dir)
    return [config.problem((name,) + f.path, f"{name}: {f.message}", f.warning, f.at_key) for f in findings if f.path or not partial]


def _cvmfs_cache_under_localfs(config: Config) -> list[tuple[str, Finding]]:
    localfs, cvmfs = config.sections.get("localfs"), config.sections.get("cvmfs")
    if not localfs or not cvmfs:
        return []
    from ..cc_modules import cvmfs_spec, localfs_spec

    spec = localfs_spec.parse(localfs)
    if "cvmfs" not in {p.name for p in spec.parts}:
        return []
    base = cvmfs_spec.cache_base(cvmfs).rstrip("/") or "/"
    mounts = [p.mount for p in spec.parts if p.mount]
    if any(base == m or base.startswith(m.rstrip("/") + "/") for m in mounts):
        return []
    key = next((k for k in cvmfs.get("local", {}) if cvmfs_spec.variable(k) == "CVMFS_CACHE_BASE"), None)
    path: Path = ("local", key) if key else ()
    message = f"cvmfs: cache-base {base} is on none of the localfs parts ({', '.join(mounts)}): the cvmfs part would go unused"
    return [("cvmfs", Finding(path, message, warning=True, at_key=key is None))]


CROSS_CHECKS.append(_cvmfs_cache_under_localfs)


def _syntax_problem(source: str, err: yaml.MarkedYAMLError) -> Problem:
    mark = err.problem_mark or err.context_mark
    line, col = (mark.line + 1, mark.column + 1) if mark else (1, 1)
    message = err.problem or err.context or "cannot parse"
    if err.context and err.problem:
        if err.problem.startswith("but "):
            message = f"{err.context}, {err.problem}"
        elif err.context_mark and err.context_mark.line != (mark.line if mark else -1):
            message += f" ({err.context} that starts at line {err.context_mark.line + 1}, column {err.context_mark.column + 1})"
    return Problem(source, line, col, f"YAML syntax: {message}")


def load_text(text: str, source: str = "<string>", sections: Optional[set[str]] = None, base_dir: Optional[FilePath] = None) -> Config:
    """Load and validate a config. Raises ConfigError listing every problem.

    `sections` limits the known top-level sections (a handler reading its own part).
    """
    problems: list[Problem] = []
    if len(text.encode("utf-8", "replace")) > MAX_BYTES:
        raise ConfigError([Problem(source, 1, 1, f"file is larger than {MAX_BYTES // 1024} KiB: not a vfarm config")])
    first = text.lstrip("\ufeff").split("\n", 1)[0].strip()
    if first.startswith(FOREIGN_MAGIC) or first.lower().startswith(("content-type:", "mime-version:")):
        raise ConfigError([Problem(source, 1, 1, f"not a #multiple-config file: it starts with {first[:40]!r} (that is other cloud-init user-data)")])
    loader = yaml.SafeLoader(text)
    builder = _Builder(source, loader)
    config = builder.config
    config.base_dir = base_dir
    try:
        node = loader.get_single_node()
        if node is None:
            raise _Fatal((1, 1), "the file holds no sections: expected a mapping like 'localfs: ...'")
        if builder.expanded_size(node) > MAX_NODES:
            raise _Fatal(builder.mark(node), f"more than {MAX_NODES} values once aliases are expanded: refusing an alias bomb")
        if not isinstance(node, yaml.MappingNode):
            got = _type_name(loader.construct_object(node, deep=True))
            raise _Fatal(builder.mark(node), f"expected a mapping of sections (like 'localfs: ...'), got {got}")
        data = builder.build(node, ())
    except yaml.MarkedYAMLError as err:
        raise ConfigError([_syntax_problem(source, err)]) from None
    except yaml.YAMLError as err:
        raise ConfigError([Problem(source, 1, 1, f"YAML: {err}")]) from None
    except _Fatal as err:
        raise ConfigError(builder.problems + [Problem(source, *err.mark, err.message)]) from None
    finally:
        loader.dispose()
    problems += builder.problems
    config.sections = data
    known = sorted(sections if sections is not None else load_schema("vfarm")["properties"])
    for name, value in data.items():
        if name not in known:
            hint = difflib.get_close_matches(name, known, n=1)
            suggestion = f" (did you mean '{hint[0]}'?)" if hint else ""
            problems.append(config.problem((name,), f"unknown section '{name}'{suggestion}; expected one of: {', '.join(known)}", at_key=True))
            continue
        section_problems, bad_keys = _schema_problems(config, name, value)
        if not section_problems:
            section_problems = _semantic_problems(config, name, value)
        elif isinstance(value, dict) and bad_keys:
            # Check the rest too (every problem at once); what depends on a bad key is skipped.
            try:
                section_problems += _semantic_problems(config, name, {k: v for k, v in value.items() if k not in bad_keys}, partial=True)
            except (KeyError, TypeError, ValueError):
                pass
        problems += section_problems
    if not any(not p.warning for p in problems):
        for check in CROSS_CHECKS:
            for name, finding in check(config):
                problems.append(config.problem((name,) + finding.path, finding.message, finding.warning, finding.at_key))
    errors = [p for p in problems if not p.warning]
    config.warnings = sorted((p for p in problems if p.warning), key=lambda p: (p.line, p.col))
    if errors:
        raise ConfigError(problems)
    return config


def load_file(path: Union[str, FilePath], sections: Optional[set[str]] = None) -> Config:
    source = str(path)
    try:
        raw = read_bounded(path, MAX_BYTES)  # size checked before reading; FIFOs and devices bounded
    except OSError as err:
        if err.errno == errno.EFBIG:
            raise ConfigError([Problem(source, 1, 1, f"file is larger than {MAX_BYTES // 1024} KiB: not a vfarm config")]) from None
        raise ConfigError([Problem(source, 1, 1, f"cannot read: {err.strerror or err}")]) from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as err:
        line = raw[: err.start].count(b"\n") + 1
        raise ConfigError([Problem(source, line, 1, "not UTF-8 text")]) from None
    return load_text(text, source, sections, base_dir=FilePath(path).parent)
