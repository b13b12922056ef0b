"""`vfarm summary FILE`: a collected /var/log/vfarm/summary.json as a table.

Exit 0 when the instance's check found everything ok (or only warnings), 1 when it failed or
the file is not a summary.
"""

from __future__ import annotations

import argparse
import json
from typing import Any

from ..cc_modules import check
from ..files import read_bounded, read_stdin_bounded
from ..jsonbounds import JsonInputError, JsonPath, json_path, loads_bounded
from ..redaction import redact_strings
from .common import EXIT_OK, EXIT_PROBLEM, add_command, fail

# A summary is a few KiB: a handful of handlers, cloud-init's stages and their errors.
MAX_SUMMARY = 1024 * 1024
MAX_VALUES = 100_000
MAX_ROWS = 1000  # items of any list the table shows
# The shape the table is drawn from: key -> (JSON type of the value, of each item if a list).
SHAPE: dict[str, tuple[type, type]] = {
    "handlers": (list, dict),
    "unhandled_parts": (list, dict),
    "problems": (list, object),
    "warnings": (list, object),
    "decision": (dict, object),
    "cloud_init": (dict, object),
}
RESULTS = ("ok", "degraded", "failed")  # what the final check writes
JSON_NAMES = {dict: "an object", list: "a list", str: "a string", int: "a number", float: "a number", bool: "true or false", type(None): "null"}


def _expect(value: Any, wanted: type, path: JsonPath) -> None:
    if not isinstance(value, wanted):
        raise ValueError(f"{json_path(path)}: expected {JSON_NAMES.get(wanted, wanted.__name__)}, got {JSON_NAMES.get(type(value), type(value).__name__)}")
    if isinstance(value, list) and len(value) > MAX_ROWS:
        raise ValueError(f"{json_path(path)}: more than {MAX_ROWS} items: not an instance's summary")


def check_shape(doc: Any) -> None:
    """ValueError (JSON path: what is wrong) unless DOC has the shape `check.render` reads."""
    if not isinstance(doc, dict) or "result" not in doc:
        raise ValueError("not a vfarm summary.json (no 'result' and 'handlers')")
    if doc["result"] not in RESULTS:
        raise ValueError(f"result: expected one of {', '.join(RESULTS)}, got {JSON_NAMES.get(type(doc['result']), 'a value')}")
    for key, (kind, item_kind) in SHAPE.items():
        value = doc.get(key)
        if not value:  # absent, null or empty: the table says "none"
            continue
        _expect(value, kind, (key,))
        if isinstance(value, list):
            for index, item in enumerate(value):
                _expect(item, item_kind, (key, index))
    stages = (doc.get("cloud_init") or {}).get("stages")
    if stages:
        _expect(stages, list, ("cloud_init", "stages"))
        for index, stage in enumerate(stages):
            _expect(stage, dict, ("cloud_init", "stages", index))
            errors = stage.get("errors")
            if errors:
                _expect(errors, list, ("cloud_init", "stages", index, "errors"))
                for number, error in enumerate(errors):
                    _expect(error, str, ("cloud_init", "stages", index, "errors", number))


def load(path: str) -> dict[str, Any]:
    """The summary in PATH (`-`: standard input); ValueError with one clear line (file, and the place in it) when it is
    not one. At most MAX_SUMMARY bytes and MAX_VALUES values, nesting and numbers bounded
    (files.loads_bounded), lists the table shows at most MAX_ROWS long."""
    try:
        text = (read_stdin_bounded(MAX_SUMMARY) if path == "-" else read_bounded(path, MAX_SUMMARY)).decode("utf-8")
    except OSError as err:
        raise ValueError(f"{path}: cannot read: {err.strerror or err}") from err
    except UnicodeDecodeError as err:
        raise ValueError(f"{path}: not UTF-8 text (byte {err.start})") from None
    try:
        doc = loads_bounded(text, max_values=MAX_VALUES)
        check_shape(doc)
    except JsonInputError as err:
        raise ValueError(f"{path}: {err}") from None
    except ValueError as err:
        raise ValueError(f"{path}: {err}") from None
    result: dict[str, Any] = doc
    return result


def cmd_summary(args: argparse.Namespace) -> int:
    try:
        doc = load(args.file)
        if args.json:
            print(json.dumps(redact_strings(doc), indent=2, sort_keys=True))  # ASCII: control characters as \uXXXX
        else:
            print(check.render(doc), end="")
    except (ValueError, TypeError, KeyError, AttributeError) as err:
        return fail(str(err) if isinstance(err, ValueError) else f"{args.file}: malformed summary ({err!r})")
    return EXIT_PROBLEM if doc.get("result") == "failed" else EXIT_OK


def register(subparsers: Any) -> None:
    p = add_command(subparsers, "summary", "show an instance's /var/log/vfarm/summary.json as a table (exit 1 when it failed)",
                    description="Show the final check's summary.json of an instance (collected with `vfarm launch local --collect`, or "
                                "copied from /var/log/vfarm/) as tables: each handler, cloud-init's stages, problems and the verdict.",
                    examples=["vfarm summary torino-boot/var/log/vfarm/summary.json", "vfarm summary --json torino-boot/var/log/vfarm/summary.json"],
                    exit_codes="exit codes: 0 the instance's result was ok or degraded, 1 it failed or the file is not a summary, 2 usage error")
    p.add_argument("file", metavar="FILE", help="a summary.json collected from an instance ('-' for stdin)")
    p.add_argument("--json", action="store_true", help="print the summary as JSON")
    p.set_defaults(func=cmd_summary)
