"""`vfarm image bake ROOT`: bake vfarm into any image root folder (Debian, EL, a CernVM-like image).

What lands in ROOT:
- the on-instance part of the vfarm package (vfarm/{config,cc_modules,part_handlers,schemas} and the root basics) in the
  folder that holds cloud-init's own `cloudinit` package (so the same Python finds it);
- a thin top-level `cc_NAME.py` per vfarm config module beside it: cloud-init finds a config
  module only as a top-level `cc_<name>`;
- the bundled, self-contained part-handlers in /var/lib/cloud/handlers/ (registered on every boot
  before the user-data is walked, so a MIME with only config parts is handled);
- /etc/cloud/cloud.cfg.d/95-vfarm.cfg with the FULL module lists of that image's cloud-init plus
  ours (a drop-in that sets a list replaces the whole list, and the lists differ between releases);
- /etc/vfarm/baked.json: what was baked, with sha256 sums.
It runs nothing inside ROOT: only files are written, so any architecture and distribution works.
"""

from __future__ import annotations

import hashlib
import importlib
import json
import sys
from pathlib import Path
from typing import Any, Optional

import yaml

from .. import __version__
from ..config import sections
from ..files import atomic_write
from .hostcmd import CommandError

DROP_IN = "etc/cloud/cloud.cfg.d/95-vfarm.cfg"
HANDLERS_DIR = "var/lib/cloud/handlers"
MANIFEST = "etc/vfarm/baked.json"
LISTS = ("cloud_init_modules", "cloud_config_modules", "cloud_final_modules")
# Where each module goes: config/sections.py's `stage` of each section, placed in the sections'
# order; anything else (the final check) runs last, before power_state_change.
PLACEMENT = {s.name: s.stage for s in sections.SECTIONS if s.stage is not None}
# The instance side: what an image carries of vfarm.
INSTANCE_PACKAGES = ("config", "cc_modules", "part_handlers", "schemas")
FINAL_BEFORE = "power_state_change"

THIN_MODULE = '''"""cloud-init config module `{name}`, baked by `vfarm image bake` (vfarm {version}).

The code is the vfarm package beside this file; cloud-init only finds top-level cc_<name> modules.
"""
import importlib as _importlib

_impl = _importlib.import_module("vfarm.cc_modules.cc_{name}")
globals().update({{k: v for k, v in vars(_impl).items() if not k.startswith("__")}})
__doc__ = _impl.__doc__
'''


def _package_dir(name: str) -> Path:
    module = importlib.import_module(f"..{name}", __package__) if name else importlib.import_module("..", __package__)
    return Path(str(module.__file__)).parent


def _package_sources() -> dict[str, str]:
    """The instance side of the package under its installed names (vfarm/...): the root's basics,
    the config language, the modules, the part-handlers and the schemas. User-data assembly, the
    clouds, the scaler and the command line stay off the image."""
    root = _package_dir("")
    files: dict[str, str] = {f"vfarm/{p.name}": p.read_text(encoding="utf-8") for p in sorted(root.glob("*.py")) if p.name != "__main__.py"}
    for sub in INSTANCE_PACKAGES:
        base = _package_dir(sub)
        for path in sorted(base.iterdir()):
            if path.is_file() and path.suffix in (".py", ".json"):
                files[f"vfarm/{sub}/{path.name}"] = path.read_text(encoding="utf-8")
    return files


def config_modules() -> list[str]:
    """vfarm's cloud-init config modules: every cc_modules/cc_NAME.py."""
    return sorted(p.stem[3:] for p in _package_dir("cc_modules").glob("cc_*.py"))


def bundled_handlers() -> dict[str, str]:
    """{filename: source} of the self-contained part-handlers (made by mime_builder/bundle.py, as for user-data)."""
    try:
        bundle = importlib.import_module("..mime_builder.bundle", __package__)
    except ImportError:
        return {}
    handlers: dict[str, str] = bundle.bundle_all()
    return {name: src for name, src in handlers.items() if name.endswith(".py")}


def baked_files() -> dict[str, str]:
    """Every source that baking copies (the image cache key depends on all of them)."""
    files = {f"site/{k}": v for k, v in _package_sources().items()}
    for name in config_modules():
        files[f"site/cc_{name}.py"] = THIN_MODULE.format(name=name, version=__version__)
    for name, src in bundled_handlers().items():
        files[f"{HANDLERS_DIR}/{name}"] = src
    return files


def site_dir(root: Path) -> Path:
    """The folder holding cloud-init's `cloudinit` package inside ROOT."""
    patterns = [
        "usr/lib/python3/dist-packages/cloudinit", "usr/lib/python3*/site-packages/cloudinit",
        "usr/lib64/python3*/site-packages/cloudinit", "usr/local/lib/python3*/dist-packages/cloudinit",
        "usr/local/lib/python3*/site-packages/cloudinit", "opt/*/lib/python3*/site-packages/cloudinit",
    ]
    for pattern in patterns:
        found = sorted(root.glob(pattern))
        if found:
            return found[-1].parent
    raise CommandError(f"{root}: no cloud-init found (looked for a cloudinit package under usr/lib*/python3*)")


def _name(entry: Any) -> str:
    """A module list entry is `name` or `[name, frequency, ...]`; - and _ are the same."""
    first = entry[0] if isinstance(entry, list) and entry else entry
    return str(first).replace("-", "_")


def current_lists(root: Path) -> dict[str, list[Any]]:
    """The module lists cloud-init would use: cloud.cfg, then each cloud.cfg.d drop-in in order (ours excluded)."""
    lists: dict[str, list[Any]] = {}
    sources = [root / "etc/cloud/cloud.cfg"] + sorted((root / "etc/cloud/cloud.cfg.d").glob("*.cfg"))
    for path in sources:
        if not path.is_file() or path == root / DROP_IN:
            continue
        try:
            doc = yaml.safe_load(path.read_text(encoding="utf-8"))
        except yaml.YAMLError as err:
            raise CommandError(f"{path}: not YAML: {err}") from err
        if isinstance(doc, dict):
            for key in LISTS:
                if isinstance(doc.get(key), list):
                    lists[key] = list(doc[key])
    missing = [key for key in LISTS if key not in lists]
    if missing:
        raise CommandError(f"{root}/etc/cloud/cloud.cfg: has no {', '.join(missing)}")
    return lists


def with_ours(lists: dict[str, list[Any]], modules: list[str]) -> dict[str, list[Any]]:
    """The full lists with vfarm's modules added once each, where PLACEMENT says."""
    result = {key: [e for e in entries if _name(e) not in modules] for key, entries in lists.items()}
    for module in sorted(modules, key=lambda m: list(PLACEMENT).index(m) if m in PLACEMENT else len(PLACEMENT)):
        key, after = PLACEMENT.get(module, ("cloud_final_modules", None))
        entries = result[key]
        names = [_name(e) for e in entries]
        if after and after in names:
            entries.insert(names.index(after) + 1, module)
        elif key == "cloud_final_modules" and FINAL_BEFORE in names:
            entries.insert(names.index(FINAL_BEFORE), module)
        else:
            entries.append(module)
    return result


def _write(path: Path, text: str, mode: int = 0o644) -> str:
    atomic_write(path, text, mode)
    return hashlib.sha256(text.encode()).hexdigest()


def bake(root: Path, *, site: Optional[Path] = None, log: bool = False) -> dict[str, Any]:
    """Bake vfarm into the image folder ROOT; returns the manifest (also written to ROOT/etc/vfarm/baked.json)."""
    root = Path(root)
    if not (root / "etc").is_dir():
        raise CommandError(f"{root}: not an image root folder (no etc/)")
    site = Path(site) if site else site_dir(root)
    if not site.is_relative_to(root):
        site = root / str(site).lstrip("/")
    modules = config_modules()
    lists = with_ours(current_lists(root), modules)
    written: dict[str, str] = {}
    for rel, text in sorted(baked_files().items()):
        if rel.startswith("site/"):
            dest = site / rel[len("site/"):]
        else:
            dest = root / rel
        written["/" + str(dest.relative_to(root))] = _write(dest, text)
    handlers = [k for k in written if k.startswith("/" + HANDLERS_DIR + "/")]
    if not handlers and log:
        print("[vfarm bake] warning: no bundled handlers available (mime_builder.bundle missing): "
              "only the config modules were baked", file=sys.stderr)
    drop_in = ("# Written by `vfarm image bake`: cloud-init's full module lists for this image plus vfarm's\n"
               "# (a drop-in that sets a list replaces the whole list).\n")
    drop_in += yaml.safe_dump(lists, default_flow_style=False, sort_keys=False)
    written["/" + DROP_IN] = _write(root / DROP_IN, drop_in)
    manifest: dict[str, Any] = {"vfarm": __version__, "modules": modules, "handlers": sorted(Path(h).name for h in handlers),
                                "site": "/" + str(site.relative_to(root)), "files": written}
    _write(root / MANIFEST, json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    return manifest
