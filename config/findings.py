"""What a semantic check reports: a problem at a path inside one config section."""

from __future__ import annotations

from typing import NamedTuple, Union

Path = tuple[Union[str, int], ...]


class Finding(NamedTuple):
    path: Path  # inside the section, e.g. ("parts", "home")
    message: str
    warning: bool = False
    at_key: bool = False  # point at the key itself rather than its value
