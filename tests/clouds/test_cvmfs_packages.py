"""The locally built CernVM-FS packages against the local test images (`-m cvmfs`: needs set-up's
build). A guest reaches no Debian mirror, so an image must already hold every package the client's
packages depend on; its install then takes only cvmfs, cvmfs-libs and cvmfs-config-default."""

from __future__ import annotations

import pytest

from tests.fixtures import cvmfs_build
from vfarm.clouds import cvmfs_local, images

pytestmark = pytest.mark.cvmfs

# In every Debian system (dependencies of the essential set mmdebstrap's minbase installs).
ESSENTIAL = {"libc6", "libstdc++6", "libgcc-s1"}


def test_images_carry_every_dependency_of_the_client() -> None:
    build = cvmfs_build.cached()
    if build is None:
        pytest.fail("CernVM-FS is not built: run tools/run setup")
    needed = cvmfs_local.dependencies(build / "apt")
    assert {"libcurl4", "fuse3", "attr"} <= needed, needed  # the debian variant links Debian's libcurl
    missing = needed - set(images.CVMFS_RUNTIME) - ESSENTIAL
    assert not missing, f"add to images.CVMFS_RUNTIME: {sorted(missing)}"
    assert cvmfs_local.client_version(build / "apt").startswith("2.12.0~1+debian12")
