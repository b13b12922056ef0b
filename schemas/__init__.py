"""JSON Schemas of the config sections, shipped as package data and bundled into handlers."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

# A bundled handler has no package data on disk: the bundler fills this with the schema texts.
EMBEDDED: dict[str, str] = {}


def load(name: str) -> dict[str, Any]:
    """The schema called NAME (`localfs`, `cvmfs`, ..., or `vfarm` for the whole file)."""
    text = EMBEDDED.get(name)
    if text is None:
        text = (Path(__file__).parent / f"{name}.schema.json").read_text(encoding="utf-8")
    schema: dict[str, Any] = json.loads(text)
    return schema


def names() -> list[str]:
    """Every section schema shipped (the whole-file schema excluded)."""
    if EMBEDDED:
        found = list(EMBEDDED)
    else:
        found = [p.name[: -len(".schema.json")] for p in Path(__file__).parent.glob("*.schema.json")]
    return sorted(n for n in found if n != "vfarm")
