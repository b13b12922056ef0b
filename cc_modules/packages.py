"""The package managers the instance side knows, named by the command that runs them."""

from __future__ import annotations

import shutil
from typing import Callable, Optional

MANAGERS = ("apt-get", "dnf", "yum")  # the first one the image has is used
APT = "apt-get"
APT_ENV = {"DEBIAN_FRONTEND": "noninteractive"}  # no debconf prompt can hold a boot


def env_for(manager: Optional[str]) -> Optional[dict[str, str]]:
    """The environment a MANAGER's install runs with (apt's: never interactive)."""
    return APT_ENV if manager == APT else None


def package_manager(which: Optional[Callable[[str], Optional[str]]] = None) -> Optional[str]:
    """The image's package manager, None when it has none of MANAGERS."""
    found = which or shutil.which
    return next((m for m in MANAGERS if found(m)), None)
