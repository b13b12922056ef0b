"""The handler bundler: minification keeps the program, the import walk finds what is needed,
bundles run with vfarm NOT importable, and the same tree gives the same bytes."""

from __future__ import annotations

import ast
import hashlib
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from vfarm.cli.main import main as vfarm
from vfarm.mime_builder import bundle, checkpart

pytestmark = pytest.mark.integration  # starts processes (see tests/conftest.py)

ROOT = Path(__file__).resolve().parents[2]
# Runs FILE with vfarm made unimportable, as on an image that has only cloud-init.
ISOLATED = r"""
import runpy, sys
class _NoVfarm:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("vfarm", "fakepkg"):
            raise ModuleNotFoundError("not on this image: " + name)
sys.meta_path.insert(0, _NoVfarm())
path = sys.argv[1]
sys.argv = sys.argv[1:]
runpy.run_path(path, run_name=sys.argv.pop(1) if len(sys.argv) > 1 and sys.argv[1] == "as-module" else "__main__")
"""


def isolated(tmp_path: Path, source: str, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    script = tmp_path / "bundled.py"
    script.write_text(source)
    return subprocess.run([sys.executable, "-c", ISOLATED, str(script), *args], capture_output=True, text=True, timeout=60, cwd=tmp_path, env=env)


class _Strip(ast.NodeTransformer):
    """What minify may drop: docstrings, and annotations outside class bodies."""

    def _body(self, node: ast.AST) -> ast.AST:
        body = getattr(node, "body", [])
        if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant) and isinstance(body[0].value.value, str):
            node.body = body[1:] or [ast.Pass()]  # type: ignore[attr-defined]
        return node

    def visit_Module(self, node: ast.Module) -> ast.AST:
        self.generic_visit(node)
        return self._body(node)

    def visit_ClassDef(self, node: ast.ClassDef) -> ast.AST:
        for child in node.body:  # class-level annotations stay (dataclass fields)
            if not isinstance(child, ast.AnnAssign):
                self.visit(child)
        return self._body(node)

    def visit_FunctionDef(self, node: ast.FunctionDef) -> ast.AST:
        self.generic_visit(node)
        node.returns = None
        for arg in [*node.args.posonlyargs, *node.args.args, *node.args.kwonlyargs, node.args.vararg, node.args.kwarg]:
            if arg is not None:
                arg.annotation = None
        return self._body(node)

    visit_AsyncFunctionDef = visit_FunctionDef  # type: ignore[assignment]

    def visit_AnnAssign(self, node: ast.AnnAssign) -> ast.AST:
        if node.value is None:
            return node
        return ast.Assign(targets=[node.target], value=node.value, lineno=0)


def normalized(source: str) -> str:
    return ast.dump(_Strip().visit(ast.parse(source)), include_attributes=False)


PACKAGE_FILES = sorted(p for folder in ("src/vfarm", "config", "cc_modules", "part_handlers", "schemas", "mime_builder") for p in (ROOT / folder).glob("*.py"))


@pytest.mark.parametrize("path", PACKAGE_FILES, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_minify_keeps_the_program(path: Path) -> None:
    source = path.read_text()
    small = bundle.minify(source)
    assert normalized(small) == normalized(source)
    assert "\n\n" not in small and len(small) <= len(source)


def test_minify_tricky_source(tmp_path: Path) -> None:
    source = '''"""Module doc."""
from __future__ import annotations
from typing import Any

TEXT = """keep
  # not a comment

blank line above"""  # a comment


def only_doc(x: int) -> None:
    """Nothing else."""


def f(a: int, *args: Any, b: "str" = "#", **kw: dict[str, int]) -> dict[str, Any]:  # why
    """Doc."""
    total: int = a + len(args)  # annotated local
    return {"total": total, "b": b, "kw": kw, "text": TEXT, "none": only_doc(1)}


class C:
    """Doc."""
    field: int = 3

print(f(1, 2, b="x#y", k=1), C.__annotations__)
'''
    small = bundle.minify(source)
    assert "annotated local" not in small and "Doc." not in small and "->" not in small
    assert "  # not a comment\n\nblank line above" in small  # strings untouched
    run = lambda code: subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout  # noqa: E731
    assert run(small) == run(source)


@pytest.fixture()
def fakepkg(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A small package with every kind of import the walker must follow."""
    root = tmp_path / "src" / "fakepkg"
    (root / "sub").mkdir(parents=True)
    (root / "__init__.py").write_text('__version__ = "9"\n')
    (root / "sub" / "__init__.py").write_text("")
    (root / "sub" / "util.py").write_text("def double(x):\n    return 2 * x\n")
    (root / "sub" / "a_spec.py").write_text("NAME = 'a'\n")
    (root / "sub" / "b_spec.py").write_text("NAME = 'b'\n")
    (root / "sub" / "unused.py").write_text("raise RuntimeError('never bundled')\n")
    (root / "entry.py").write_text(
        "import importlib\n"
        "from . import __version__\n"
        "from .sub import util\n"
        "TABLE = {'a': 'a_spec', 'b': 'b_spec'}\n"
        "def main():\n"
        "    from .sub.util import double  # a nested import\n"
        "    names = [importlib.import_module(f'.sub.{m}', __package__).NAME for m in TABLE.values()]\n"
        "    print(__version__, util.double(2), double(3), names)\n"
        "    return 3\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path / "src"))
    yield root
    for name in [n for n in sys.modules if n.split(".")[0] == "fakepkg"]:
        del sys.modules[name]  # the next test's fakepkg lives in another folder


def test_walk_follows_relative_nested_and_table_imports(fakepkg: Path) -> None:
    graph = bundle.collect(["entry"], root="fakepkg")
    assert sorted(graph.modules) == ["", "entry", "sub", "sub.a_spec", "sub.b_spec", "sub.util"]
    assert sorted(bundle.collect(["entry"], root="fakepkg", keys={"a"}).modules) == ["", "entry", "sub", "sub.a_spec", "sub.util"]


def test_library_runs_without_the_package(fakepkg: Path, tmp_path: Path) -> None:
    lib = bundle.library(["entry"], root="fakepkg")
    assert lib.package.startswith("_fakepkg_")
    script = lib.source + f"raise SystemExit(__import__('importlib').import_module({lib.package + '.entry'!r}).main())\n"
    done = isolated(tmp_path, script)
    assert done.returncode == 3, done.stderr
    assert done.stdout == "9 4 6 ['a', 'b']\n"


def test_packed_library_runs_and_carries_the_same_modules(fakepkg: Path, tmp_path: Path) -> None:
    plain = bundle.library(["entry"], root="fakepkg")
    packed = bundle.library(["entry"], root="fakepkg", packed=True)
    assert packed.package == plain.package and packed.source.isascii() and "_M = {" not in packed.source
    (line,) = [x for x in packed.source.splitlines() if x.startswith("_Z = ")]
    modules, data = bundle.unpack(ast.literal_eval(line[len("_Z = ") :]))
    graph = bundle.collect(["entry"], root="fakepkg")
    assert modules == {n: (m.is_package, bundle.shrink(m.source)) for n, m in graph.modules.items()} and data == {}
    script = packed.source + f"raise SystemExit(__import__('importlib').import_module({packed.package + '.entry'!r}).main())\n"
    done = isolated(tmp_path, script)
    assert done.returncode == 3, done.stderr
    assert done.stdout == "9 4 6 ['a', 'b']\n"


def test_absolute_import_of_the_package_is_refused(fakepkg: Path) -> None:
    (fakepkg / "bad.py").write_text("import fakepkg.sub.util\n")
    with pytest.raises(bundle.BundleError, match="absolute import of fakepkg.sub.util"):
        bundle.collect(["bad"], root="fakepkg")


def test_every_handler_bundle_is_self_contained(tmp_path: Path) -> None:
    """Each file of `vfarm handlers`, loaded like cloud-init loads a part-handler, with vfarm
    unimportable; the localfs and cvmfs bundles side by side in one process."""
    files = bundle.bundle_all()
    assert {"localfs_handler.py", "cvmfs_handler.py"} <= files.keys()
    for filename, source in files.items():
        (tmp_path / filename).write_text(source)
        assert source.startswith("#part-handler\n") and source.isascii()
    code = (
        "import importlib, json, sys\n"
        f"sys.path.insert(0, {str(tmp_path)!r})\n"
        f"names = {sorted(f[:-3] for f in files)!r}\n"
        "mods = [importlib.import_module(n) for n in names]\n"
        "print(json.dumps({n: [m.list_types(), m.handler_version] for n, m in zip(names, mods)}))\n"
        "print(len({m._P for m in mods}))\n"
    )
    done = isolated(tmp_path, code)
    assert done.returncode == 0, done.stderr
    types, packages = done.stdout.splitlines()
    assert json.loads(types)["localfs_handler"] == [["text/localfs-config"], 3]
    assert json.loads(types)["cvmfs_handler"] == [["text/cvmfs-config"], 3]
    assert int(packages) == len(files)  # private packages: different content, different names


def test_bundled_handler_records_a_bad_part(tmp_path: Path) -> None:
    """The bundled config loader and schemas work on the image: a bad section is a recorded failure."""
    (tmp_path / "localfs_handler.py").write_text(bundle.bundle_handler("localfs"))
    code = (
        f"import sys; sys.path.insert(0, {str(tmp_path)!r})\n"
        "import localfs_handler as h\n"
        "try:\n"
        "    h.handle_part(None, 'text/localfs-config', 'localfs-config.ccfg', 'localfs:\\n  parts:\\n    home: 140\\n', 'once-per-instance', {})\n"
        "except Exception as err:\n"
        "    print(type(err).__name__)\n"
    )
    # A dry run: its record is NAME.dry-run.json (never in place of a real run's).
    env = {"VFARM_LOG_DIR": str(tmp_path / "log"), "VFARM_ROOT": str(tmp_path), "VFARM_DRY_RUN": "1", "PATH": "/usr/bin:/bin"}
    done = isolated(tmp_path, code, env=env)
    assert done.returncode == 0, done.stderr
    record = json.loads((tmp_path / "log/localfs.dry-run.json").read_text())
    assert record["status"] == "failed" and "localfs-config.ccfg:" in record["reason"], record
    assert "ModuleNotFound" not in record["reason"]


def test_hosted_check_is_a_part_handler_that_installs_itself_and_a_script(tmp_path: Path) -> None:
    source = bundle.bundle_check()
    assert source.startswith("#part-handler\n") and source.isascii() and "# vfarm-library: " in source
    (tmp_path / "vfarm_check.py").write_text(source)
    code = (
        f"import sys; sys.path.insert(0, {str(tmp_path)!r})\n"
        "import vfarm_check as h\n"
        "assert h.list_types() == []\n"
        "h.handle_part(None, '__begin__', None, None, 'once-per-instance', {})\n"
    )
    done = isolated(tmp_path, code, env={"VFARM_ROOT": str(tmp_path / "root"), "PATH": "/usr/bin:/bin"})
    assert done.returncode == 0, done.stderr
    installed = tmp_path / "root" / checkpart.CHECK_PATH.lstrip("/")
    assert installed.read_text() == source and installed.stat().st_mode & 0o777 == 0o700
    done = isolated(tmp_path, source, "--help")
    assert done.returncode == 0 and "usage:" in done.stdout, done.stderr


def test_bundle_module_is_a_script(tmp_path: Path) -> None:
    done = isolated(tmp_path, bundle.bundle_module("cc_modules.check"), "--help")
    assert done.returncode == 0, done.stderr
    assert "usage:" in done.stdout
    with pytest.raises(bundle.BundleError, match="no main"):
        bundle.bundle_module("config.sizes")


def test_same_tree_same_bytes() -> None:
    assert bundle.bundle_all() == bundle.bundle_all()
    assert bundle.bundle_library(["localfs", "cvmfs"]) == bundle.bundle_library(["localfs", "cvmfs"])


def test_unknown_handler() -> None:
    with pytest.raises(bundle.BundleError, match="no part-handler for 'nope'"):
        bundle.bundle_handler("nope")


def test_handlers_command_writes_files_and_sums(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "www"
    assert vfarm(["handlers", str(out)]) == 0
    sums = (out / "SHA256SUMS").read_text().splitlines()
    assert len(sums) == len(bundle.handler_names()) + 1  # and the final check, which every include build fetches
    assert (out / bundle.CHECK_FILENAME).read_text() == bundle.bundle_check()
    for line in sums:
        digest, filename = line.split("  ")
        assert hashlib.sha256((out / filename).read_bytes()).hexdigest() == digest
    check = subprocess.run(["sha256sum", "-c", "SHA256SUMS"], cwd=out, capture_output=True, text=True)
    assert check.returncode == 0, check.stdout + check.stderr
    capsys.readouterr()
    assert vfarm(["handlers", "--json", str(out)]) == 0
    listed = json.loads(capsys.readouterr().out)
    assert listed["sums"] == str(out / "SHA256SUMS")
    assert [(Path(f["file"]).name, f["sha256"]) for f in listed["files"]] == [tuple(reversed(line.split("  "))) for line in sums]
    assert all(f["bytes"] == (out / Path(f["file"]).name).stat().st_size for f in listed["files"])
    assert vfarm(["handlers", str(tmp_path / "x"), "--only", "nope"]) == 1
    assert capsys.readouterr().err == "vfarm: no part-handler for 'nope' (known: check, condor, cvmfs, localfs)\n"


def test_shrunk_fstrings_parse_on_older_pythons_whatever_python_builds(monkeypatch: pytest.MonkeyPatch) -> None:
    """On Python 3.12+ python-minifier may nest an f-string's own quote (PEP 701), which the 3.11
    of a Debian 12 instance refuses. Made to behave as on 3.12 here (its version check and a
    parser that accepts the nested quote), shrink must still print what this 3.11 parses."""
    from python_minifier import expression_printer, f_string

    monkeypatch.setattr(expression_printer, "sys", SimpleNamespace(version_info=(3, 12, 0)))
    monkeypatch.setattr(f_string.FString, "is_correct_ast", lambda self, code: True)
    source = "def show(record):\n    return f\"{record['name']}: {record['state']!r}\"\n"
    shrunk = bundle.shrink(source)
    namespace: dict[str, Any] = {}
    exec(compile(shrunk, "<shrunk>", "exec"), namespace)
    assert namespace["show"]({"name": "cvmfs", "state": "ok"}) == "cvmfs: 'ok'"
    assert len(shrunk) < len(bundle.minify(source))


def test_embed_bytes_do_not_depend_on_the_process(tmp_path: Path) -> None:
    """Same config, same user-data: two builds in processes with other string hashing (the order
    of a set of names is the usual way a minifier's renaming drifts) and no bundle cache."""
    outputs = []
    for seed in ("1", "2"):
        out = tmp_path / f"user-data-{seed}"
        env = {**os.environ, "PYTHONHASHSEED": seed, "VFARM_BUNDLE_CACHE": ""}
        done = subprocess.run([sys.executable, "-m", "vfarm", "build", str(ROOT / "examples/condor.yaml"), "-o", str(out), "--gzip", "never",
                               "--max-size", "1000000"], capture_output=True, text=True, timeout=120, env=env, cwd=ROOT / "examples")
        assert done.returncode == 0, done.stderr
        outputs.append(out.read_bytes())
    assert outputs[0] == outputs[1]
    assert b"vfarm-library" in outputs[0]
