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
import functools
import math
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path as FilePath
from typing import Any, Callable, Optional, Union

import jsonschema
import yaml

from ..files import read_bounded, read_stdin_bounded
from ..redaction import redact
from ..schemas import load as load_schema
from ..textsafe import BIDI, C0_C1, SEPARATORS
from . import sections
from .findings import Finding

MAGIC = "#multiple-config"
MAX_BYTES = 256 * 1024
MAX_NODES = 10_000  # after alias expansion; a real config has a few hundred
MAX_DEPTH = 50  # a real config nests 5 levels
# Wider than any number a schema allows (they stop at 2**63 - 1): only stops Python's slow,
# limited conversion of huge digit strings before the schema's maximum says what fits.
MAX_INT_DIGITS = 20
# First lines that mark other kinds of user-data: such a file is not ours.
FOREIGN_MAGIC = ("#cloud-config", "#include", "#!", "#part-handler", "#cloud-boothook", "#upstart-job", "## template", "Content-Type:")

Path = tuple[Union[str, int], ...]
Mark = tuple[int, int]  # 1-based line, column

# A section's rules module (sections.rules) may also have `check_files(section, base_dir) -> list[Finding]`, for checks that
# read files the section names (relative to the config file's folder), and
# `cross_check(sections) -> list[Finding]`: its section against the other sections of the file.
CROSS_CHECKS: list[Callable[[Config], list[tuple[str, Finding]]]] = []


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
    # Plain values YAML read as other than text (`no`, `2024`, `null`), as written: for messages.
    written: dict[Path, str] = field(default_factory=dict)

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
        return {k: v for k, v in self.sections.items() if k not in sections.ADMIN_ONLY}


# Characters that break a line, hide text or reorder it on screen: refused in every key and value
# (what the instance writes from them is line-based: fstab, HTCondor and CVMFS configs).
_CONTROL_NAMES = {
    0x00: "null", 0x07: "bell", 0x08: "backspace", 0x09: "tab", 0x0A: "line feed", 0x0B: "vertical tab", 0x0C: "form feed",
    0x0D: "carriage return", 0x1B: "escape", 0x7F: "delete", 0x85: "next line", 0x2028: "line separator", 0x2029: "paragraph separator",
    0x200E: "left-to-right mark", 0x200F: "right-to-left mark", 0x202A: "left-to-right embedding", 0x202B: "right-to-left embedding",
    0x202C: "pop directional formatting", 0x202D: "left-to-right override", 0x202E: "right-to-left override",
    0x2066: "left-to-right isolate", 0x2067: "right-to-left isolate", 0x2068: "first strong isolate", 0x2069: "pop directional isolate",
}
_CONTROL = re.compile(f"[{C0_C1}{SEPARATORS}{BIDI}]")


def control_character(text: str) -> Optional[str]:
    """`control character U+000A (line feed)` for the first control character in TEXT, or None."""
    found = _CONTROL.search(text)
    if not found:
        return None
    code = ord(found.group())
    return f"control character U+{code:04X} ({_CONTROL_NAMES.get(code, 'C1 control' if code >= 0x80 else 'C0 control')})"


@functools.cache
def whole_value_pattern(pattern: str) -> re.Pattern[str]:
    """PATTERN compiled so that `$` means the end of the value, as in ECMA-262 (JSON Schema's
    regex dialect): Python's `$` also matches before a final newline, so `^/[^ ]*$` would pass
    "/home\n"."""
    out, class_start, i = [], -1, 0  # class_start: where the open character class began
    while i < len(pattern):
        char = pattern[i]
        if char == "\\":
            out.append(pattern[i : i + 2])
            i += 2
            continue
        if class_start >= 0:
            first = class_start + (2 if pattern[class_start + 1 : class_start + 2] == "^" else 1)
            if char == "]" and i > first:  # a `]` first in the class is a literal
                class_start = -1
        elif char == "[":
            class_start = i
        elif char == "$":
            char = "\\Z"
        out.append(char)
        i += 1
    return re.compile("".join(out))


def _whole_pattern(validator: Any, pattern: str, instance: Any, schema: dict[str, Any]) -> Iterator[jsonschema.ValidationError]:
    if validator.is_type(instance, "string") and not whole_value_pattern(pattern).search(instance):
        yield jsonschema.ValidationError(f"does not match {pattern!r}")  # never echoes the value: it may be a secret


# The validator of every section, here and on the instance (this module is bundled into the handlers).
Validator = jsonschema.validators.extend(jsonschema.Draft202012Validator, {"pattern": _whole_pattern})

INT_TAG, FLOAT_TAG, STR_TAG = "tag:yaml.org,2002:int", "tag:yaml.org,2002:float", "tag:yaml.org,2002:str"
BOOL_TAG, TIMESTAMP_TAG = "tag:yaml.org,2002:bool", "tag:yaml.org,2002:timestamp"
# YAML 1.1's "default value" key, which PyYAML resolves a plain `=` to and has no constructor for.
VALUE_TAG = "tag:yaml.org,2002:value"
_DECIMAL = re.compile(r"[-+]?[0-9]+\Z")
# What YAML 1.2's core schema reads as a number (PyYAML reads YAML 1.1).
YAML12_NUMBER = re.compile(r"[-+]?(0o[0-7]+|0x[0-9a-fA-F]+|(\.[0-9]+|[0-9]+(\.[0-9]*)?)([eE][-+]?[0-9]+)?)\Z")


def _number_problem(text: str, tag: str, plain: bool) -> Optional[str]:
    """Why TEXT, which YAML 1.1 reads as a number (or YAML 1.2 does and 1.1 does not), is refused.

    A site admin writes numbers in decimal: the YAML 1.1 forms that read differently from what is
    written (`1:30` is 90, `010` is 8, `1_000` is 1000) or that YAML 1.2 reads otherwise (`0x32`,
    `0o17`, `1e3`) are refused with how to write them, rather than read silently one way or the other.
    """
    fix = f'write the number in plain decimal, or quote it ("{text}") if it is text'
    body = text.lstrip("+-")
    if tag == STR_TAG:
        if plain and YAML12_NUMBER.match(text):
            return f"{text} is a number in YAML 1.2 but text in YAML 1.1: {fix}"
        return None
    if ":" in body:
        return f"{text} is a base-60 number in YAML 1.1: {fix}"
    if "_" in body:
        return f"{text} has a digit separator (_) that YAML 1.1 drops: {fix}"
    if body[:2].lower() in ("0x", "0b", "0o"):
        return f"{text} is not a decimal number: {fix}"
    if tag == INT_TAG:
        if len(body) > 1 and body.startswith("0"):
            return f"{text} is an octal number in YAML 1.1 (a leading zero): {fix}"
        if _DECIMAL.match(text) and len(body.lstrip("0")) > MAX_INT_DIGITS:
            return f"a number of {len(body)} digits is too large"
    return None


def _version_problem(version: tuple[int, int]) -> Optional[str]:
    """Why a `%YAML` directive asking for VERSION is refused, or None for 1.1.

    vfarm reads YAML 1.1 whatever the file says (PyYAML takes any 1.x directive and still reads
    1.1), and a file that asks for another version expects other meanings: in YAML 1.2 a bare
    `on`, `yes` or `no` is text, in 1.1 true or false. Such a file is refused, never misread.
    """
    if version == (1, 1):
        return None
    asked = ".".join(map(str, version))
    return (f"%YAML {asked}: vfarm reads YAML 1.1, where a bare yes, no, on or off is true or false: "
            f'remove the directive, and quote each value meant as text ("on")')


class _Loader(yaml.SafeLoader):
    """PyYAML's safe loader, refusing deep nesting while it composes (it recurses per level) and
    any `%YAML` directive but 1.1."""

    depth = 0

    def get_token(self) -> Any:
        token = super().get_token()
        if isinstance(token, yaml.DirectiveToken) and token.name == "YAML":
            problem = _version_problem(token.value)
            if problem:
                raise _Fatal((token.start_mark.line + 1, token.start_mark.column + 1), problem)
        return token

    def compose_node(self, parent: Optional[yaml.Node], index: Any) -> Optional[yaml.Node]:
        self.depth += 1
        try:
            if self.depth > MAX_DEPTH + 1:  # the document's root is depth 1 here, 0 for the builder
                mark = self.peek_event().start_mark
                raise _Fatal((mark.line + 1, mark.column + 1), f"nesting deeper than {MAX_DEPTH} levels")
            return super().compose_node(parent, index)
        finally:
            self.depth -= 1


class _Builder:
    """Plain data from YAML nodes, with positions, duplicate-key and alias-bomb checks, and the
    keys and values refused whatever their schema says (control characters, YAML 1.1 numbers)."""

    def __init__(self, source: str, loader: yaml.SafeLoader):
        self.config = Config(source, {})
        self.loader = loader
        self.problems: list[Problem] = []
        self.refused: set[Path] = set()  # already reported here: the schema's say on them is noise
        self.lacking: set[Path] = set()  # mappings that lost a refused key: "missing" or "empty" there is noise
        self._expanded: dict[int, int] = {}
        self._open: set[int] = set()  # nodes being built: meeting one again is a recursive alias

    def expanded_size(self, node: yaml.Node, depth: int = 0) -> int:
        # Memoised by node identity: linear in the document, exact for the expansion.
        if depth > MAX_DEPTH:  # aliases can nest deeper than the text does
            raise _Fatal(self.mark(node), f"nesting deeper than {MAX_DEPTH} levels once aliases are expanded")
        key = id(node)
        if key not in self._expanded:
            self._expanded[key] = 1  # guards against recursive aliases
            if isinstance(node, yaml.MappingNode):
                size = 1 + sum(self.expanded_size(k, depth + 1) + self.expanded_size(v, depth + 1) for k, v in node.value)
            elif isinstance(node, yaml.SequenceNode):
                size = 1 + sum(self.expanded_size(v, depth + 1) for v in node.value)
            else:
                size = 1
            self._expanded[key] = min(size, MAX_NODES + 1)
        return self._expanded[key]

    def mark(self, node: yaml.Node) -> Mark:
        return (node.start_mark.line + 1, node.start_mark.column + 1)

    def refuse(self, node: yaml.Node, path: Path, message: str, named: Optional[Path] = None) -> None:
        """Report PATH's key or value as refused; the message names NAMED (default PATH)."""
        named = path if named is None else named
        prefix = f"{_dotted(str(named[0]), named[1:])}: " if named else ""
        if named != path:  # a key: the mapping NAMED lacks it now
            self.lacking.add(named)
            if any(p.message == prefix + message for p in self.problems):
                return  # the same key twice (a duplicate): once is enough
        self.problems.append(Problem(self.config.source, *self.mark(node), prefix + message))
        self.refused.add(path)

    def build(self, node: yaml.Node, path: Path, depth: int = 0) -> Any:
        self.config.values[path] = self.mark(node)
        if depth > MAX_DEPTH:
            raise _Fatal(self.mark(node), f"nesting deeper than {MAX_DEPTH} levels")
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
                bad = control_character(key)
                if bad:  # the key is left out: every message naming it would carry the character
                    self.refuse(key_node, path + (key,), f"a key holds {bad}: not allowed", named=path)
                    continue
                if key in result:
                    first = self.config.keys[path + (key,)]
                    self.problems.append(Problem(self.config.source, *self.mark(key_node), f"duplicate key '{key}' (first defined at line {first[0]})"))
                    continue
                self.config.keys[path + (key,)] = self.mark(key_node)
                result[key] = self.build(value_node, path + (key,), depth + 1)
            return result
        if isinstance(node, yaml.SequenceNode):
            return [self.build(item, path + (i,), depth + 1) for i, item in enumerate(node.value)]
        assert isinstance(node, yaml.ScalarNode)
        return self._scalar(node, path)

    def _scalar(self, node: yaml.ScalarNode, path: Path) -> Any:
        text: str = node.value
        bad = control_character(text)
        if bad:
            self.refuse(node, path, f"{bad} is not allowed")
            return ""
        if node.tag in (INT_TAG, FLOAT_TAG, STR_TAG):
            problem = _number_problem(text, node.tag, plain=node.style is None)
            if problem:
                self.refuse(node, path, problem)
                return text
        if node.tag == TIMESTAMP_TAG or (node.tag == VALUE_TAG and text == "="):
            # JSON has no dates: keep what was written (and never build 2024-13-45); `=` is text.
            return text
        if node.style is None and node.tag != STR_TAG:
            self.config.written[path] = text
        try:
            value = self.loader.construct_object(node)
        except yaml.YAMLError:  # an unknown tag: said as PyYAML says it, with its position
            raise
        except Exception:  # an explicitly tagged value PyYAML cannot read (`!!int ''`: IndexError, `!!bool 'x'`: KeyError)
            raise _Fatal(self.mark(node), f"cannot read this value as {node.tag.rsplit(':', 1)[-1]}") from None
        if isinstance(value, (datetime.date, bytes)):
            return text
        if isinstance(value, float) and value != value:  # NaN
            raise _Fatal(self.mark(node), "not a number (.nan) is not a valid value")
        if isinstance(value, float) and not math.isfinite(value):
            self.refuse(node, path, "infinity is not a valid value" if "inf" in text.lower() else f"{text} is too large")
            return text
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


def _shown(config: Config, path: Path, instance: Any, secret: bool = False, text_expected: bool = False) -> str:
    """INSTANCE as a message shows it: never a secret, a collection by its kind, null and a boolean
    as written; a number as written, and where text was expected (TEXT_EXPECTED) with how to write
    it as text."""
    if secret:
        return "(a secret: not shown)"
    if isinstance(instance, (dict, list)):
        return _type_name(instance)
    written = config.written.get(path)
    if instance is None:
        return written or "nothing"  # `null`, `~`, or an empty value
    if isinstance(instance, bool) and written is not None:
        return f'{written} (YAML reads a bare {written} as {str(instance).lower()}: quote it, "{written}", if it is text)'
    if isinstance(instance, (int, float)) and written is not None and text_expected:
        return f'{written} (YAML reads a bare {written} as a number: quote it, "{written}", if it is text)'
    return redact(repr(instance))


def _name_rule(error: jsonschema.ValidationError) -> str:
    """What a key must be, for a propertyNames schema without x-expected (never jsonschema's wording,
    which quotes the whole schema)."""
    value: Any = error.validator_value
    if error.validator == "maxLength":
        return f"a name of at most {value} characters"
    if error.validator == "pattern":
        return f"a name matching {value}"
    return "a name allowed here"


def _under(path: Path, tops: set[Path]) -> bool:
    return any(path[: len(top)] == top for top in tops)


def _schema_problems(config: Config, name: str, data: Any, skip: Optional[set[Path]] = None,
                     lacking: Optional[set[Path]] = None) -> tuple[list[Problem], set[str]]:
    """Every schema problem of one section, and the section's top-level keys they lie in.
    Problems at or under a path in SKIP (relative to the section) were reported already; a
    mapping in LACKING lost a refused key, so its "missing key" and "empty" problems are noise."""
    schema = load_schema(name)
    validator = Validator(schema)
    skip = skip or set()
    problems = []
    bad_keys: set[str] = {str(p[0]) for p in skip if p}
    for error in _specific(validator.iter_errors(data)):
        # jsonschema types these as "maybe unset"; for an error they are always set.
        instance: Any = error.instance
        value: Any = error.validator_value
        path: Path = (name,) + tuple(error.absolute_path)
        if _under(path[1:], skip):
            continue
        if path[1:] in (lacking or set()) and error.validator in ("required", "minProperties", "dependentRequired"):
            continue
        if error.absolute_path:
            bad_keys.add(str(error.absolute_path[0]))
        where = _dotted(name, tuple(error.absolute_path))
        sub = error.schema if isinstance(error.schema, dict) else {}
        expected = _expected(error)
        secret = bool(sub.get("x-secret"))
        types = value if isinstance(value, list) else [value]
        text_expected = error.validator == "type" and "string" in types  # a number or null where text was expected
        at_key = False
        if "propertyNames" in error.absolute_schema_path:
            path += (instance,)
            at_key = True
            message = f"{_dotted(name, path[1:])}: bad name: expected {expected or _name_rule(error)}"
        elif error.validator == "additionalProperties":
            known = sorted(sub.get("properties", {}))
            patterns = sub.get("patternProperties", {})
            for extra in instance:
                if extra in known or any(whole_value_pattern(p).search(extra) for p in patterns):
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
            message = f"{where}: expected {expected}, got {_shown(config, path, instance, secret, text_expected)}"
        elif error.validator == "type":
            got = _type_name(instance)
            if instance is None or (path in config.written and (text_expected or isinstance(instance, bool))):
                got = _shown(config, path, instance, text_expected=text_expected)
            elif isinstance(instance, float) and "integer" in types:
                got = f"{instance!r}"
            message = f"{where}: expected {' or '.join(JSON_TYPES.get(str(t), str(t)) for t in types)}, got {got}"
        elif error.validator == "enum":
            message = f"{where}: expected one of {', '.join(map(str, value))}, got {_shown(config, path, instance, secret)}"
        elif error.validator in ("minimum", "exclusiveMinimum", "maximum", "exclusiveMaximum"):
            relation = {"minimum": ">=", "exclusiveMinimum": ">", "maximum": "<=", "exclusiveMaximum": "<"}[str(error.validator)]
            message = f"{where}: must be {relation} {value}, got {instance!r}"
        elif error.validator == "minProperties" or error.validator == "minItems" or (error.validator == "minLength" and value == 1):
            message = f"{where}: must not be empty"
        elif error.validator in ("maxProperties", "maxItems"):  # jsonschema's wording would print them all
            message = f"{where}: must have at most {value} entries, got {len(instance)}"
        elif error.validator == "maxLength":
            message = f"{where}: longer than {value} characters"
        elif error.validator == "uniqueItems":
            message = f"{where}: lists the same item twice"
        elif error.validator == "pattern":
            message = f"{where}: expected text matching {value}, got {_shown(config, path, instance, secret)}"
        else:
            # jsonschema's own wording quotes the value: shown only when it cannot be a secret.
            message = f"{where}: {error.message if not secret else 'not valid (a secret: not shown)'}"
            message = redact(message)
        problems.append(config.problem(path, message, at_key=at_key))
    return problems, bad_keys


def _expected(error: jsonschema.ValidationError) -> Optional[str]:
    """The x-expected of ERROR's schema; for a pattern without one, that of the nearest schema
    around it (a oneOf's string branch: `4GB` for "a memory size in MB, or like 4G"), never the
    regular expression itself."""
    own = error.schema.get("x-expected") if isinstance(error.schema, dict) else None
    around = error.parent if error.validator == "pattern" else None
    while own is None and around is not None:
        own = around.schema.get("x-expected") if isinstance(around.schema, dict) else None
        around = around.parent
    return None if own is None else str(own)


def _schema_at(schema: Any, path: Path) -> Optional[dict[str, Any]]:
    """The plain subschema that validates the value at PATH (None where it is not one)."""
    for key in path:
        if not isinstance(schema, dict):
            return None
        if isinstance(key, int):
            schema = schema.get("items")
        else:
            named = schema.get("properties", {})
            schema = named[key] if key in named else schema.get("additionalProperties")
    return schema if isinstance(schema, dict) else None


def _ambiguous_booleans(config: Config, name: str) -> list[Problem]:
    """A bare yes, no, on or off where the value may be text or a boolean: YAML 1.1 reads a boolean
    (`Country: NO` is false), which no schema can tell from one meant. Where only a boolean fits,
    `install: yes` is plain, and where only text fits the schema's message says how to quote it.
    Values behind a $ref are left alone: cvmfs's settings, written back as yes/no, which CernVM-FS
    reads as the same boolean."""
    problems = []
    schema = load_schema(name)
    for path, written in config.written.items():
        if path[:1] != (name,) or written.lower() not in ("yes", "no", "on", "off"):
            continue
        types = (_schema_at(schema, path[1:]) or {}).get("type")
        if isinstance(types, list) and "string" in types and "boolean" in types:
            meaning = "true" if written.lower() in ("yes", "on") else "false"
            problems.append(config.problem(path, f'{_dotted(name, path[1:])}: {written} is {meaning} in YAML 1.1 (a bare yes, no, on or '
                                                 f'off is a boolean): write {meaning}, or quote it ("{written}") if it is text'))
    return problems


def _semantic_problems(config: Config, name: str, data: Any, partial: bool = False) -> list[Problem]:
    """Problems the section's model finds. `partial`: DATA lacks keys that failed the schema, so
    findings about the section as a whole (which may stem from those keys) are left out."""
    module = sections.rules(name)
    if module is None:
        return []
    findings: list[Finding] = module.check(data)
    if hasattr(module, "check_files") and config.base_dir is not None:
        findings += module.check_files(data, config.base_dir)
    return [config.problem((name,) + f.path, f"{name}: {f.message}", f.warning, f.at_key) for f in findings if f.path or not partial]


def _cross_problems(config: Config) -> list[Problem]:
    """What each section's `cross_check(sections)` finds against the other sections of the file
    (only the sections present are imported: a handler's part holds one section)."""
    problems = []
    for name in config.sections:
        check = getattr(sections.rules(name), "cross_check", None)
        for finding in check(config.sections) if check else []:
            problems.append(config.problem((name,) + finding.path, finding.message, finding.warning, finding.at_key))
    return problems


def _syntax_problem(source: str, err: yaml.MarkedYAMLError) -> Problem:
    mark = err.problem_mark or err.context_mark
    line, col = (mark.line + 1, mark.column + 1) if mark else (1, 1)
    message = err.problem or err.context or "cannot parse"
    if err.context and err.problem:
        if err.problem.startswith("but "):
            message = f"{err.context}, {err.problem}"
        elif err.context_mark and err.context_mark.line != (mark.line if mark else -1):
            message += f" ({err.context} that starts at line {err.context_mark.line + 1}, column {err.context_mark.column + 1})"
    if err.problem == "found character '\\t' that cannot start any token":
        message = "a tab where YAML expects indentation or a value: indent with spaces, never tabs"
    return Problem(source, line, col, f"YAML syntax: {message}")


def _reader_problem(source: str, text: str, err: yaml.reader.ReaderError) -> Problem:
    """PyYAML refuses some characters anywhere in the text before parsing: say where."""
    position = max(0, min(err.position, len(text)))
    line = text.count("\n", 0, position) + 1
    col = position - (text.rfind("\n", 0, position) + 1) + 1
    character = chr(err.character) if isinstance(err.character, int) else str(err.character)
    what = control_character(character) or f"character U+{ord(character[:1] or chr(0)):04X}"
    return Problem(source, line, col, f"{what} is not allowed in a config file")


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
    loader: Optional[_Loader] = None
    builder = _Builder(source, yaml.SafeLoader(""))
    try:
        loader = builder.loader = _Loader(text)  # PyYAML's reader checks the characters here
        node = loader.get_single_node()
        if node is None:
            raise _Fatal((1, 1), "the file holds no sections: expected a mapping like 'localfs: ...'")
        if builder.expanded_size(node) > MAX_NODES:
            raise _Fatal(builder.mark(node), f"more than {MAX_NODES} values once aliases are expanded: refusing an alias bomb")
        if not isinstance(node, yaml.MappingNode):
            got = _type_name(builder.build(node, ()))
            if builder.problems:
                raise ConfigError(builder.problems)
            raise _Fatal(builder.mark(node), f"expected a mapping of sections (like 'localfs: ...'), got {got}")
        data = builder.build(node, ())
    except yaml.reader.ReaderError as err:
        raise ConfigError([_reader_problem(source, text, err)]) from None
    except yaml.MarkedYAMLError as err:
        raise ConfigError([_syntax_problem(source, err)]) from None
    except yaml.YAMLError as err:
        raise ConfigError([Problem(source, 1, 1, f"YAML: {redact(str(err).splitlines()[0] if str(err) else type(err).__name__)}")]) from None
    except _Fatal as err:
        raise ConfigError(builder.problems + [Problem(source, *err.mark, err.message)]) from None
    finally:
        if loader is not None:
            loader.dispose()
    config = builder.config
    config.base_dir = base_dir
    problems += builder.problems
    config.sections = data
    known = sorted(sections if sections is not None else load_schema("vfarm")["properties"])
    for name, value in data.items():
        if name not in known:
            hint = difflib.get_close_matches(name, known, n=1)
            suggestion = f" (did you mean '{hint[0]}'?)" if hint else ""
            problems.append(config.problem((name,), f"unknown section '{name}'{suggestion}; expected one of: {', '.join(known)}", at_key=True))
            continue
        refused = {p[1:] for p in builder.refused if p[:1] == (name,)}
        if () in refused:  # the whole section's value was refused
            continue
        lacking = {p[1:] for p in builder.lacking if p[:1] == (name,)}
        section_problems, bad_keys = _schema_problems(config, name, value, refused, lacking)
        if not section_problems and not bad_keys:
            section_problems = _semantic_problems(config, name, value)
        elif isinstance(value, dict) and bad_keys:
            # Check the rest too (every problem at once); what depends on a bad key is skipped.
            try:
                section_problems += _semantic_problems(config, name, {k: v for k, v in value.items() if k not in bad_keys}, partial=True)
            except (KeyError, TypeError, ValueError):
                pass
        problems += section_problems + _ambiguous_booleans(config, name)
    if not any(not p.warning for p in problems):
        problems += _cross_problems(config)
        for check in CROSS_CHECKS:
            for name, finding in check(config):
                problems.append(config.problem((name,) + finding.path, finding.message, finding.warning, finding.at_key))
    errors = [p for p in problems if not p.warning]
    config.warnings = sorted((p for p in problems if p.warning), key=lambda p: (p.line, p.col))
    if errors:
        raise ConfigError(problems)
    return config


def load_file(path: Union[str, FilePath], sections: Optional[set[str]] = None) -> Config:
    """The config in the file at PATH; `-` is standard input (the files it names are then read
    from the current folder)."""
    source = str(path)
    stdin = source == "-"
    try:
        # size checked before reading; FIFOs and devices bounded
        raw = read_stdin_bounded(MAX_BYTES) if stdin else read_bounded(path, MAX_BYTES)
    except OSError as err:
        if err.errno == errno.EFBIG:
            raise ConfigError([Problem(source, 1, 1, f"file is larger than {MAX_BYTES // 1024} KiB: not a vfarm config")]) from None
        raise ConfigError([Problem(source, 1, 1, f"cannot read: {err.strerror or err}")]) from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as err:
        line_start = raw.rfind(b"\n", 0, err.start) + 1
        line, column = raw[: err.start].count(b"\n") + 1, len(raw[line_start : err.start].decode("utf-8", "replace")) + 1
        raise ConfigError([Problem(source, line, column, "not UTF-8 text")]) from None
    return load_text(text, source, sections, base_dir=FilePath.cwd() if stdin else FilePath(path).parent)
