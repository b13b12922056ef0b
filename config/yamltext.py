"""YAML as vfarm writes it for its own loader to read back (a section's part, a section re-checked
on the instance): PyYAML's safe dumper, quoting the strings YAML 1.2 reads as numbers (`1e3`,
`0o17`). PyYAML (YAML 1.1) leaves them plain, and the loader refuses a plain one as ambiguous:
the string was quoted where the admin wrote it, so it stays quoted."""

from __future__ import annotations

from typing import Any

import yaml

from .loader import YAML12_NUMBER


class Dumper(yaml.SafeDumper):
    """The safe dumper with such strings quoted."""


def _string(dumper: yaml.SafeDumper, value: str) -> yaml.ScalarNode:
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style='"' if YAML12_NUMBER.match(value) else None)


Dumper.add_representer(str, _string)


def dump(data: Any, **options: Any) -> str:
    """DATA as YAML text the loader reads back as DATA (OPTIONS: yaml.dump's)."""
    text: str = yaml.dump(data, Dumper=Dumper, **options)
    return text
