"""`vfarm summary FILE`: a collected /var/log/vfarm/summary.json as a table.

Exit 0 when the instance's check found everything ok (or only warnings), 1 when it failed or
the file is not a summary.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from ..cc_modules import check
from ..cc_modules.display import shown_message
from ..cc_modules.redaction import redact_strings


def _problem(message: str) -> int:
    print(f"vfarm: {shown_message(message)}", file=sys.stderr)
    return 1


def load(path: str) -> dict[str, Any]:
    """The summary in PATH; ValueError with one clear line when it is not one."""
    try:
        with open(path, encoding="utf-8") as handle:
            doc = json.load(handle)
    except OSError as err:
        raise ValueError(f"{path}: cannot read: {err.strerror or err}") from err
    except ValueError as err:
        raise ValueError(f"{path}: not JSON: {err}") from err
    if not isinstance(doc, dict) or "result" not in doc or not isinstance(doc.get("handlers", []), list):
        raise ValueError(f"{path}: not a vfarm summary.json (no 'result' and 'handlers')")
    return doc


def cmd_summary(args: argparse.Namespace) -> int:
    try:
        doc = load(args.file)
        if args.json:
            print(json.dumps(redact_strings(doc), indent=2, sort_keys=True))  # ASCII: control characters as \uXXXX
        else:
            print(check.render(doc), end="")
    except (ValueError, TypeError, KeyError, AttributeError) as err:
        return _problem(str(err) if isinstance(err, ValueError) else f"{args.file}: malformed summary ({err!r})")
    return 1 if doc.get("result") == "failed" else 0


def register(subparsers: Any) -> None:
    p = subparsers.add_parser("summary", help="show an instance's /var/log/vfarm/summary.json as a table (exit 1 when it failed)")
    p.add_argument("file", metavar="FILE", help="a summary.json collected from an instance")
    p.add_argument("--json", action="store_true", help="print the summary as JSON")
    p.set_defaults(func=cmd_summary)
