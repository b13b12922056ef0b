"""The `meta` every vfarm config module gives cloud-init (22.4 and 25.1 both need `id`,
`distros` and a valid `frequency`, else the whole stage aborts)."""

from __future__ import annotations

from typing import Any, Optional

DISTROS = ["all"]


def module_meta(module_id: str, title: str, description: Optional[str], frequency: str) -> dict[str, Any]:
    return {
        "id": module_id,
        "name": f"vfarm {module_id.removeprefix('cc_').replace('vfarm_', '')}",
        "title": title,
        "description": description or "",
        "distros": DISTROS,
        "frequency": frequency,
        "examples": [],
        "activate_by_schema_keys": [],
    }
