"""The JSON Schemas: every key documented, the whole-file schema consistent with the sections."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import jsonschema
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from referencing import Registry, Resource

from vfarm import schemas
from vfarm.config.loader import Validator, load_file, whole_value_pattern

EXAMPLES = sorted((Path(__file__).resolve().parents[2] / "examples").glob("*.yaml"))


def undocumented(node: Any, path: str = "") -> list[str]:
    """Paths of properties (at any depth) that have no description, directly or behind a $ref."""
    missing = []
    if isinstance(node, dict):
        for key, sub in node.get("properties", {}).items():
            if isinstance(sub, dict) and "description" not in sub:
                missing.append(f"{path}.{key}")
        for key, sub in node.items():
            if key in ("if", "not"):  # conditions restate keys, they do not define them
                continue
            missing += undocumented(sub, f"{path}.{key}" if key not in ("properties", "$defs") else path)
    elif isinstance(node, list):
        for i, sub in enumerate(node):
            missing += undocumented(sub, f"{path}[{i}]")
    return missing


@pytest.mark.parametrize("name", ["vfarm", *schemas.names()])
def test_every_key_is_documented(name: str) -> None:
    schema = schemas.load(name)
    jsonschema.Draft202012Validator.check_schema(schema)
    assert schema.get("description")
    if name != "vfarm":  # the whole-file schema's properties are $refs to documented sections
        assert undocumented(schema) == []


def test_whole_file_schema_lists_every_section() -> None:
    assert sorted(schemas.load("vfarm")["properties"]) == schemas.names()


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.stem)
def test_whole_file_schema_accepts_the_examples(path: Path) -> None:
    # For editors (yaml-language-server) the whole-file schema refers to the section schemas.
    registry: Registry[Any] = Registry().with_resources(
        (f"{name}.schema.json", Resource.from_contents(schemas.load(name))) for name in schemas.names()
    )
    validator = jsonschema.Draft202012Validator(schemas.load("vfarm"), registry=registry)
    data = load_file(path).sections
    assert list(validator.iter_errors(data)) == []
    assert list(validator.iter_errors({**data, "localfss": {}}))


def _subschemas(node: Any) -> Any:
    if isinstance(node, dict):
        yield node
        for sub in node.values():
            yield from _subschemas(sub)
    elif isinstance(node, list):
        for sub in node:
            yield from _subschemas(sub)


def _patterns(node: Any) -> Any:
    for sub in _subschemas(node):
        if isinstance(sub.get("pattern"), str):
            yield sub["pattern"]
        yield from sub.get("patternProperties", {})


ALL_PATTERNS = sorted({p for name in schemas.names() for p in _patterns(schemas.load(name))})


@pytest.mark.parametrize("name", schemas.names())
def test_every_number_has_a_maximum(name: str) -> None:
    """What the instance computes with (timers, sizes, counts) never overflows."""
    unbounded = []
    for sub in _subschemas(schemas.load(name)):
        types = sub.get("type", [])
        types = types if isinstance(types, list) else [types]  # a `type` that is a mapping is a property called type
        types = [t for t in types if isinstance(t, str)]
        if {"integer", "number"} & set(types) and "maximum" not in sub and "exclusiveMaximum" not in sub:
            unbounded.append(sub)
    assert unbounded == []


def test_the_schemas_have_patterns_to_check() -> None:
    assert len(ALL_PATTERNS) >= 15 and all(p.endswith("$") for p in ALL_PATTERNS)


@pytest.mark.parametrize("pattern", ALL_PATTERNS)
@settings(max_examples=8, derandomize=True, deadline=None, suppress_health_check=list(HealthCheck))
@given(data=st.data())
def test_no_pattern_passes_a_trailing_newline(pattern: str, data: st.DataObject) -> None:
    """jsonschema's `pattern` searches with Python's `$`, which also matches before a final
    newline; the loader's validator makes `$` the end of the value, as JSON Schema means it."""
    value = data.draw(st.from_regex(pattern)).rstrip("\n")
    validator = Validator({"pattern": pattern})
    assert validator.is_valid(value)
    assert re.search(pattern, value + "\n")  # what plain jsonschema lets through
    assert not validator.is_valid(value + "\n")
    assert not whole_value_pattern(pattern).search(value + "\n")
