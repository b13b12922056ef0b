"""JSON that vfarm reads from files (summaries, snapshots), with its nesting, its numbers and its
size bounded, and errors that name the place: `instances[0].Tags: ...` or `line 3 column 7`.

Admin side only in use (no instance module imports it, so handlers do not carry it), but kept to
the instance side's rules: Python 3.9, the standard library.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterator
from typing import Any, Optional, Union

# JSON that vfarm reads (summaries, snapshots): nesting and numbers as the data ever needs them.
MAX_JSON_DEPTH = 64
MAX_JSON_NUMBER = 2**63  # a 64-bit integer, as HTCondor's ClassAds and EC2 use
_MAX_INT_DIGITS = 19
JsonPath = tuple[Union[str, int], ...]


class JsonInputError(ValueError):
    """JSON vfarm will not use; the message is one line and names the place (a JSON path, or
    the line and column)."""


def json_path(path: JsonPath) -> str:
    """('instances', 0, 'Tags') -> 'instances[0].Tags'; the top level is '(top level)'."""
    if not path:
        return "(top level)"
    out = ""
    for index, part in enumerate(path):
        if index >= 12:
            return out + f"... ({len(path)} levels)"
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


class _Unusable:
    """A number JSON can write but vfarm cannot use; replaced during parsing, reported after."""

    def __init__(self, reason: str):
        self.reason = reason


def within_bounds(value: Union[int, float]) -> bool:
    """Whether loads_bounded reads the number VALUE, written as JSON, back: finite, and at most
    MAX_JSON_NUMBER either way."""
    if isinstance(value, int):
        return abs(value) <= MAX_JSON_NUMBER
    return math.isfinite(value) and abs(value) <= MAX_JSON_NUMBER


def _parse_int(text: str) -> Any:
    if len(text.lstrip("-")) > _MAX_INT_DIGITS:
        return _Unusable(f"a number of {len(text.lstrip('-'))} digits: more than a 64-bit integer")
    value = int(text)
    return value if within_bounds(value) else _Unusable(f"{text} is more than a 64-bit integer")


def _parse_float(text: str) -> Any:
    value = float(text)
    if not within_bounds(value):
        return _Unusable(f"the number {text[:40]}{'...' if len(text) > 40 else ''} is out of range (more than 2**63)")
    return value


def _parse_constant(name: str) -> Any:
    return _Unusable(f"{name} is not a JSON number")


def _deep_place(text: str, depth: int) -> str:
    """Line and column where TEXT first nests deeper than DEPTH (strings skipped)."""
    level = 0
    for match in re.finditer(r'"(?:[^"\\]|\\.)*"|[\[\]{}]', text):
        token = match.group()
        if token in "[{":
            level += 1
            if level > depth:
                start = match.start()
                return f"line {text.count(chr(10), 0, start) + 1} column {start - text.rfind(chr(10), 0, start)}"
        elif token in "]}":
            level -= 1
    return "line 1 column 1"


def loads_bounded(text: str, max_depth: int = MAX_JSON_DEPTH, max_values: Optional[int] = None) -> Any:
    """TEXT as JSON, refusing nesting deeper than MAX_DEPTH, more than MAX_VALUES values (when
    given), integers beyond 64 bits, numbers that overflow a float (1e400), NaN and Infinity.
    Raises JsonInputError (one located line)."""
    try:
        data = json.loads(text, parse_int=_parse_int, parse_float=_parse_float, parse_constant=_parse_constant)
    except json.JSONDecodeError as err:
        raise JsonInputError(f"not JSON: {err.msg} (line {err.lineno}, column {err.colno})") from None
    except RecursionError:
        raise JsonInputError(f"nested deeper than {max_depth} levels at {_deep_place(text, max_depth)}") from None
    _check_values(data, max_depth, max_values)
    return data


def _items(value: Union[dict[str, Any], list[Any]]) -> Iterator[tuple[Union[str, int], Any]]:
    return iter(value.items()) if isinstance(value, dict) else enumerate(value)


def _check_values(data: Any, max_depth: int, max_values: Optional[int]) -> None:
    """Every value of DATA, depth first, with a stack of iterators: memory grows with the depth,
    never with the number of values (the data may nest up to the parser's own limit)."""
    if isinstance(data, _Unusable):
        raise JsonInputError(f"{json_path(())}: {data.reason}")
    if not isinstance(data, (dict, list)):
        return
    stack: list[tuple[Iterator[tuple[Union[str, int], Any]], JsonPath]] = [(_items(data), ())]
    count = 1
    while stack:
        items, path = stack[-1]
        for key, value in items:
            count += 1
            if max_values is not None and count > max_values:
                raise JsonInputError(f"{json_path(path + (key,))}: more than {max_values} values in all")
            if isinstance(value, _Unusable):
                raise JsonInputError(f"{json_path(path + (key,))}: {value.reason}")
            if isinstance(value, (dict, list)):
                if len(path) + 1 >= max_depth:
                    raise JsonInputError(f"{json_path(path + (key,))}: nested deeper than {max_depth} levels")
                stack.append((_items(value), path + (key,)))
                break
        else:
            stack.pop()
