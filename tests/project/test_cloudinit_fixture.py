"""The real-cloud-init fixture gives each release in its own interpreter."""

from __future__ import annotations

import pytest

from tests.fixtures.cloudinit import Release, mirror_uri

pytestmark = pytest.mark.integration  # starts processes (see tests/conftest.py)


def test_release_imports_its_own_cloudinit(cloudinit_release: Release) -> None:
    done = cloudinit_release.run(
        "import cloudinit, cloudinit.version, vfarm.config.localfs\n"
        "print(cloudinit.version.version_string(), cloudinit.__file__)"
    )
    assert done.returncode == 0, done.stderr
    version, path = done.stdout.split()
    assert version == cloudinit_release.version
    assert path.startswith(str(cloudinit_release.pythonpath))


def test_mirror_comes_from_host_apt_sources() -> None:
    assert mirror_uri().startswith(("http://", "https://", "file:/"))
