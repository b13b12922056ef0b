"""The sections a config file may hold: one row each, the one place that lists them.

A row says whether the section goes to the instance, whether `config/<name>.py` checks it beyond
its schema (`schemas/<name>.schema.json`), and where a baked image runs its cloud-init module. The
order of the rows is the order the instance applies them: localfs first (the others' folders may
lie on its mounts), then cvmfs, then condor (jobs may need CVMFS), and the final check last.
A section's part-handler is `part_handlers/<name>_handler.py` (its content type and frequency are
read here, so that `vfarm build` need not import it), its module `cc_modules/cc_<name>.py`.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from types import ModuleType
from typing import Optional


@dataclass(frozen=True)
class Section:
    name: str
    checked: bool  # config/<name>.py has `check(section)` (and maybe `check_files(section, base)`)
    sent: bool = True  # False: stays on the admin's side, never in user-data
    # Baked images: (cloud-init module list, insert after this module or None for the end);
    # None: the end of cloud_final_modules, before power_state_change.
    stage: Optional[tuple[str, Optional[str]]] = None

    @property
    def content_type(self) -> str:
        """The MIME type of the section's user-data part, the one its part-handler takes."""
        return f"text/{self.name}-config"


# How often cloud-init calls vfarm's part-handlers: once per instance (a reboot re-runs nothing).
HANDLER_FREQUENCY = "once-per-instance"

SECTIONS: tuple[Section, ...] = (
    Section("localfs", checked=True, stage=("cloud_init_modules", "mounts")),
    Section("cvmfs", checked=True, stage=("cloud_config_modules", None)),
    Section("condor", checked=True, stage=("cloud_config_modules", None)),
    Section("check", checked=False),
    Section("scale", checked=True, sent=False),
)
BY_NAME: dict[str, Section] = {s.name: s for s in SECTIONS}
ORDER: tuple[str, ...] = tuple(s.name for s in SECTIONS)
ADMIN_ONLY: frozenset[str] = frozenset(s.name for s in SECTIONS if not s.sent)


def rules(name: str) -> Optional[ModuleType]:
    """The module with the section's own checks, or None when its schema says everything."""
    section = BY_NAME.get(name)
    if section is None or not section.checked:
        return None
    return importlib.import_module(f".{section.name}", __package__)


def in_order(names: list[str]) -> list[str]:
    """NAMES in the order the instance applies them; unknown names last, as given."""
    return [n for n in ORDER if n in names] + [n for n in names if n not in ORDER]
