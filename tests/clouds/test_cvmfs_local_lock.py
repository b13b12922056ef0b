"""Two set-ups on one machine (two checkouts) share the cache of the CERN-shaped CernVM-FS
repository: one builds it while the other waits (and says so), then finds it built. The packages
and dpkg-scanpackages are stand-ins: nothing is really built."""

from __future__ import annotations

import threading
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from vfarm.clouds import cvmfs_local, hostcmd

PACKAGES = "Package: cvmfs\nVersion: 2.12.0~1+debian12\n\nPackage: cvmfs-libs\nVersion: 2.12.0~1+debian12\n"


def test_two_builds_at_once_take_turns(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VFARM_CACHE", str(tmp_path / "cache"))
    apt = tmp_path / "apt"
    apt.mkdir()
    (apt / "Packages").write_text(PACKAGES)
    (apt / "cvmfs_2.12.0~1+debian12_amd64.deb").write_bytes(b"not really a package")

    said: list[str] = []
    waiting = threading.Event()  # the second build said it waits for the first
    guard = threading.Lock()
    scanning = {"now": 0, "most": 0, "runs": 0}

    def progress(area: str, message: str) -> None:
        said.append(message)
        if "waiting" in message:
            waiting.set()

    def scan(argv: list[str], **kwargs: Any) -> SimpleNamespace:
        """dpkg-scanpackages, slow enough for the other build to arrive while this one runs."""
        with guard:
            scanning["now"] += 1
            scanning["runs"] += 1
            scanning["most"] = max(scanning["most"], scanning["now"])
        waiting.wait(timeout=5)  # without a lock nobody waits: both scan at once
        with guard:
            scanning["now"] -= 1
        return SimpleNamespace(stdout=PACKAGES)

    monkeypatch.setattr(cvmfs_local, "progress", progress)
    monkeypatch.setattr(hostcmd, "progress", progress)  # the lock's waiting message
    monkeypatch.setattr(cvmfs_local, "run", scan)
    start = threading.Barrier(2)
    built: list[Path] = []
    failed: list[BaseException] = []

    def one_setup() -> None:
        start.wait()
        try:
            built.append(cvmfs_local.build(apt))
        except BaseException as err:  # reported below, not lost in the thread
            failed.append(err)

    setups = [threading.Thread(target=one_setup) for _ in range(2)]
    for setup in setups:
        setup.start()
    for setup in setups:
        setup.join(timeout=30)
    assert not failed, failed
    assert scanning == {"now": 0, "most": 1, "runs": 1}, scanning  # one build, never two at once
    final = cvmfs_local.cache_dir() / cvmfs_local.key(apt)
    assert built == [final, final]
    assert said[0] == f"another set-up is building in {cvmfs_local.cache_dir()}: waiting for it", said
    assert said[1:] == [f"CernVM-FS 2.12.0~1+debian12 (built locally) as CERN's apt layout in {final}"]
    for suite in cvmfs_local.SUITES:
        assert (final / "dists" / suite / "main/binary-amd64/Packages").read_text() == PACKAGES
    assert sorted(p.name for p in cvmfs_local.cache_dir().iterdir()) == [".lock", ".users", final.name]  # no work folder left
