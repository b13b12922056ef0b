"""Shared test set-up. Fixtures of each area live in tests/fixtures/ and are listed here.

The tiers are markers: `unit` (the default: no subprocess, enforced here), `integration` (real
cloud-init releases, moto, the linters, vfarm as a process), `pool`, `cvmfs`, `openstack` and `vm`.
The folders are laid out like the code (tests/config/ tests config/, ...), tests/project/ the
whole project."""

from __future__ import annotations

import os
import subprocess
import tempfile
from collections.abc import Iterator
from typing import Any

import pytest

from tests.fixtures import cvmfs_build

pytest_plugins: list[str] = [
    "tests.fixtures.cloudinit",
    "tests.fixtures.check",
    "tests.fixtures.moto",
    "tests.fixtures.openstack",
    "tests.fixtures.condor_pool",
    "tests.fixtures.vm",
    "tests.fixtures.logs",
]

# The builder's disk cache stays off in tests (and in the vfarm processes they start): a test sees
# the bundles its own code makes, never ones a developer's earlier run left in ~/.cache.
os.environ["VFARM_BUNDLE_CACHE"] = ""
# vfarm scale's farm locks (scaler/runlock.py) in a folder of this run's own: CI's pytest runs side
# by side run farms of the same names, and a developer's own scaler may hold /run/vfarm's.
_RUN_DIR = tempfile.TemporaryDirectory(prefix="vfarm-run-")
os.environ["VFARM_RUN_DIR"] = _RUN_DIR.name
# This checkout's CernVM-FS build, the one its images were made with: other checkouts' builds share
# the cache, and cvmfs_local.built_apt alone would take the newest.
if "VFARM_CVMFS_APT" not in os.environ:
    try:
        _built = cvmfs_build.cached()
    except (cvmfs_build.BuildError, OSError):  # no source (or its sums) beside the checkout: the tests needing it say so
        _built = None
    if _built is not None:
        os.environ["VFARM_CVMFS_APT"] = str(_built / "apt")

TIERS = ("integration", "pool", "cvmfs", "openstack", "vm")
# Fixtures that start processes: a test using one is at least an integration test.
PROCESS_FIXTURES = {"moto_server", "ec2_endpoint", "cloudinit_release", "condor_pool", "boot_vm", "openstack_cloud", "openstack_env"}


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if any(item.get_closest_marker(tier) for tier in TIERS):
            continue
        if PROCESS_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.integration)
        else:
            item.add_marker(pytest.mark.unit)


@pytest.fixture(autouse=True)
def _a_unit_test_starts_no_process(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    if request.node.get_closest_marker("unit"):
        def refuse(self: Any, *args: Any, **kwargs: Any) -> None:
            raise AssertionError("a unit test starts no process: mark it pytest.mark.integration (tests/conftest.py)")

        monkeypatch.setattr(subprocess.Popen, "__init__", refuse)
    yield
