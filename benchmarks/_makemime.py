"""cloud-init's own `devel make-mime`, run from Debian's packages (tests/fixtures/cloudinit.py
fetches and unpacks them under /var/cache/vfarm/cloud-init/), on the parts vfarm builds."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from _common import REPO


def releases() -> list[Any]:
    """The real cloud-init releases (22.4.2 bookworm, 25.1.4 trixie), fetched once and cached."""
    sys.path.insert(0, str(REPO))
    from tests.fixtures import cloudinit

    return cloudinit.releases()


def write_parts(built: Any, folder: Path) -> list[str]:
    """Each part's payload as a file in FOLDER; returns make-mime's `-a FILE:SUBTYPE` arguments,
    in vfarm's order."""
    folder.mkdir(parents=True, exist_ok=True)
    args: list[str] = []
    for part in built.parts:
        path = folder / part.filename
        path.write_bytes(part.payload)
        args += ["-a", f"{path}:{part.content_type.split('/', 1)[1]}"]
    return args


def argv(attach: list[str]) -> list[str]:
    """make-mime as `cloud-init devel make-mime` runs it (its console script is
    cloudinit.cmd.main:main); --force: vfarm's own types are unknown to cloud-init."""
    return [sys.executable, "-m", "cloudinit.cmd.main", "devel", "make-mime", "--force", *attach]


def env(release: Any) -> dict[str, str]:
    out = dict(os.environ)
    out["PYTHONPATH"] = str(release.pythonpath)
    return out


def make_mime(release: Any, attach: list[str]) -> bytes:
    done = subprocess.run(argv(attach), env=env(release), capture_output=True, timeout=120)
    if done.returncode != 0:
        raise RuntimeError(f"make-mime ({release.version}) failed: {done.stderr.decode(errors='replace').strip()[-500:]}")
    return done.stdout
