"""The layers of the code, enforced: a package imports only packages below it.

Lowest first: the root's basics (vfarm/*.py) and the schemas; the config language; the instance
side (cc_modules, then part_handlers); user-data assembly (mime_builder); the cloud backends; the
scaler; the command line. So the instance side never reaches the admin side, and no circle can
form between top-level packages. Every import counts, also one inside a function and one made by
`importlib.import_module` with a literal name.
"""

from __future__ import annotations

import ast
import configparser
import re
from pathlib import Path
from typing import Optional

import pytest

ROOT = Path(__file__).resolve().parents[2]
LAYERS: tuple[frozenset[str], ...] = (
    frozenset({"", "schemas"}),
    frozenset({"config"}),
    frozenset({"cc_modules"}),
    frozenset({"part_handlers"}),
    frozenset({"mime_builder"}),
    frozenset({"clouds"}),
    frozenset({"scaler"}),
    frozenset({"cli"}),
)
INSTANCE_SIDE = frozenset({"", "schemas", "config", "cc_modules", "part_handlers"})
RANK = {package: rank for rank, layer in enumerate(LAYERS) for package in layer}
ENTRY_POINT = "__main__"  # `python -m vfarm` runs the command line: the one root module above it


def folders() -> dict[str, Path]:
    """Top-level package (as in vfarm.<name>; "" is the root) -> its folder, from setup.cfg."""
    cfg = configparser.ConfigParser()
    cfg.read(ROOT / "setup.cfg")
    result = {}
    for line in cfg["options"]["package_dir"].splitlines():
        if "=" in line:
            package, folder = (x.strip() for x in line.split("="))
            result["" if package == "vfarm" else package.split(".", 1)[1]] = ROOT / folder
    return result


def imported(package: str, path: Path) -> list[tuple[int, str]]:
    """(line, top-level vfarm package) for every import of vfarm code in PATH."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    here = ["vfarm"] + ([package] if package else [])
    found: list[tuple[int, Optional[str]]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = here[: len(here) - node.level + 1] + (node.module.split(".") if node.module else [])
                names = [base] if node.module or len(base) > 1 else [base + [a.name] for a in node.names]
            else:
                names = [(node.module or "").split(".")]
            found += [(node.lineno, _top(n)) for n in names]
        elif isinstance(node, ast.Import):
            found += [(node.lineno, _top(a.name.split("."))) for a in node.names]
        elif isinstance(node, ast.Call) and getattr(node.func, "attr", None) == "import_module" and node.args:
            arg = node.args[0]
            if isinstance(arg, ast.Constant) and isinstance(arg.value, str):
                name = arg.value
                level = len(name) - len(name.lstrip("."))
                parts = here[: len(here) - level + 1] + name[level:].split(".") if level else name.split(".")
                found.append((node.lineno, _top(parts)))
    return [(line, top) for line, top in found if top is not None]


def _top(parts: list[str]) -> Optional[str]:
    if not parts or parts[0] != "vfarm":
        return None
    if len(parts) == 1 or parts[1] not in RANK:
        return ""  # the root package or one of its basics
    return parts[1]


def violations() -> list[str]:
    found = []
    for package, folder in folders().items():
        assert package in RANK, f"{package or 'the root'}: not in any layer of tests/test_layers.py"
        for path in sorted(folder.glob("*.py")):
            if package == "" and path.stem == ENTRY_POINT:
                continue
            for line, target in imported(package, path):
                if target != package and RANK[target] > RANK[package]:
                    found.append(f"{path.relative_to(ROOT)}:{line}: {package or 'the root'} imports {target or 'the root'}, a higher layer")
                if package in INSTANCE_SIDE and target not in INSTANCE_SIDE:
                    found.append(f"{path.relative_to(ROOT)}:{line}: the instance side imports {target}")
    return found


def test_every_import_goes_down_the_layers() -> None:
    assert violations() == []


@pytest.mark.parametrize(
    ("package", "source", "expected"),
    [
        ("cc_modules", "from ..mime_builder import bundle\n", "cc_modules imports mime_builder"),
        ("config", "def f():\n    from ..cli import main\n", "config imports cli"),
        ("clouds", "import importlib\nimportlib.import_module('..scaler.plan', __package__)\n", "clouds imports scaler"),
        ("", "from .cc_modules import check\n", "the root imports cc_modules"),
        ("part_handlers", "from vfarm.clouds import ec2\n", "part_handlers imports clouds"),
    ],
)
def test_an_upward_import_is_caught(tmp_path: Path, package: str, source: str, expected: str) -> None:
    path = tmp_path / "new_module.py"
    path.write_text(source, encoding="utf-8")
    targets = {t for _, t in imported(package, path)}
    assert any(RANK[t] > RANK[package] for t in targets), expected


def test_a_downward_import_is_allowed(tmp_path: Path) -> None:
    path = tmp_path / "new_module.py"
    path.write_text("from ..config import sections\nfrom .. import files\nfrom ..cc_modules import check\n", encoding="utf-8")
    assert {t for _, t in imported("mime_builder", path)} == {"config", "", "cc_modules"}


ISSUE_NUMBER = re.compile(r"\bissue\s+#?\d+", re.IGNORECASE)


def test_product_code_states_rules_not_issue_numbers() -> None:
    """Docstrings and comments say what holds and why; which issue asked for it is git's to tell."""
    found = [f"{path.relative_to(ROOT)}:{number}: {line.strip()}"
             for folder in folders().values() for path in sorted(folder.rglob("*.py"))
             for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1) if ISSUE_NUMBER.search(line)]
    assert found == [], "\n".join(found)
