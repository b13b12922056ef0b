"""Fast tier for vm-images: baking into a root folder of each real cloud-init release, module
lists, the mirror lookup, the locally built CernVM-FS packages as CERN's apt layout. No VM here
(see test_vm.py)."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.fixtures.cloudinit import Release
from vfarm.clouds import bake, cvmfs_local, images
from vfarm.clouds.hostcmd import CommandError


def fake_root(tmp_path: Path, release: Release) -> Path:
    """An image root with that release's cloud.cfg and its cloudinit package folder (empty)."""
    root = tmp_path / "root"
    (root / "etc/cloud/cloud.cfg.d").mkdir(parents=True)
    shutil.copyfile(release.root / "etc/cloud/cloud.cfg", root / "etc/cloud/cloud.cfg")
    (root / "usr/lib/python3/dist-packages/cloudinit").mkdir(parents=True)
    return root


def names(entries: list[object]) -> list[str]:
    return [bake._name(e) for e in entries]


def test_bake_keeps_the_release_lists_and_adds_ours(tmp_path: Path, cloudinit_release: Release) -> None:
    root = fake_root(tmp_path, cloudinit_release)
    original = yaml.safe_load((root / "etc/cloud/cloud.cfg").read_text())
    manifest = bake.bake(root)
    drop_in = yaml.safe_load((root / bake.DROP_IN).read_text())
    ours = bake.config_modules()
    assert {"localfs", "cvmfs", "vfarm_check"} <= set(ours)
    for key in bake.LISTS:
        # The full list of THIS release, in its order, plus ours: a drop-in replaces the whole list.
        assert [n for n in names(drop_in[key]) if n not in ours] == names(original[key])
    init, config, final = (names(drop_in[k]) for k in bake.LISTS)
    assert init.index("localfs") == init.index("mounts") + 1
    assert config[-2:] == ["cvmfs", "condor"]
    assert final.index("vfarm_check") == final.index("power_state_change") - 1
    # Handlers where cloud-init registers them on every boot, thin modules beside cloudinit/.
    handlers = sorted(p.name for p in (root / bake.HANDLERS_DIR).glob("*.py"))
    assert handlers == manifest["handlers"] and "localfs_handler.py" in handlers
    assert (root / "usr/lib/python3/dist-packages/cc_localfs.py").is_file()
    # Baking twice gives the same files (an image build may re-run it).
    first = (root / bake.DROP_IN).read_text()
    bake.bake(root)
    assert (root / bake.DROP_IN).read_text() == first


@pytest.mark.integration
def test_baked_modules_import_the_baked_copy_with_the_release(tmp_path: Path, cloudinit_release: Release) -> None:
    root = fake_root(tmp_path, cloudinit_release)
    bake.bake(root)
    site = root / "usr/lib/python3/dist-packages"
    code = (
        f"import sys; sys.path.insert(0, {str(site)!r})\n"
        "import cc_localfs, cc_cvmfs, cc_vfarm_check, vfarm\n"
        f"assert vfarm.__file__.startswith({str(site)!r}), vfarm.__file__\n"
        "for m in (cc_localfs, cc_cvmfs, cc_vfarm_check):\n"
        "    assert callable(m.handle) and m.meta['frequency'] and m.meta['distros'] == ['all'], m\n"
        "print('ok')\n"
    )
    done = cloudinit_release.run(code)
    assert done.stdout.strip() == "ok", done.stderr


def test_bake_refuses_a_folder_without_cloud_init(tmp_path: Path) -> None:
    (tmp_path / "etc/cloud").mkdir(parents=True)
    with pytest.raises(CommandError, match="no cloud-init found"):
        bake.bake(tmp_path)


@pytest.mark.integration
def test_bake_cli_one_line_error(tmp_path: Path) -> None:
    done = subprocess.run([sys.executable, "-m", "vfarm", "image", "bake", str(tmp_path / "nothing")], capture_output=True, text=True)
    assert done.returncode == 1
    assert done.stderr.count("\n") == 1 and "not an image root folder" in done.stderr


def test_placement_of_an_unknown_module_is_before_power_state() -> None:
    lists: dict[str, list[Any]] = {"cloud_init_modules": ["mounts"], "cloud_config_modules": [],
                                   "cloud_final_modules": ["final-message", ["power-state-change", "always"]]}
    result = bake.with_ours(lists, ["localfs", "other"])
    assert result["cloud_init_modules"] == ["mounts", "localfs"]
    assert result["cloud_final_modules"] == ["final-message", "other", ["power-state-change", "always"]]


def test_mirror_from_deb822_and_one_line_sources(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("VFARM_MIRROR", raising=False)
    d = tmp_path / "apt/sources.list.d"
    d.mkdir(parents=True)
    (d / "debian.sources").write_text(
        "Types: deb\nURIs: http://security.example/debian-security\nSuites: bookworm-security\nComponents: main\n\n"
        "Types: deb\nURIs: http://mirror.example/debian\nSuites: bookworm bookworm-updates\nComponents: main\n")
    assert images.host_mirror(tmp_path) == "http://mirror.example/debian"
    (d / "debian.sources").unlink()
    (tmp_path / "apt/sources.list").write_text("deb [arch=amd64] http://other.example/debian bookworm main\n")
    assert images.host_mirror(tmp_path) == "http://other.example/debian"
    monkeypatch.setenv("VFARM_MIRROR", "http://override.example/debian")
    assert images.host_mirror(tmp_path) == "http://override.example/debian"


def test_mirror_skips_disabled_stanzas_and_reads_continuation_lines(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("VFARM_MIRROR", raising=False)
    d = tmp_path / "apt/sources.list.d"
    d.mkdir(parents=True)
    (d / "a-old.sources").write_text("Types: deb\nURIs: http://dead.example/debian/\nSuites: bookworm\nComponents: main\nEnabled: no\n")
    (d / "debian.sources").write_text(
        "Types: deb\n# http://snapshot.debian.org/archive/debian/20250520T000000Z\nURIs: http://mirror.example/debian/\n"
        "Suites:\n bookworm\n bookworm-updates\nComponents: main\n")
    assert images.host_mirror(tmp_path) == "http://mirror.example/debian"


def test_the_fixtures_read_the_host_mirror_through_images(monkeypatch: pytest.MonkeyPatch) -> None:
    from tests.fixtures import cloudinit, condor_rootfs

    monkeypatch.setenv("VFARM_MIRROR", "http://one-reader.example/debian")
    assert cloudinit.mirror_uri() == condor_rootfs.host_mirror() == "http://one-reader.example/debian"


def test_image_key_follows_the_baked_sources(monkeypatch: pytest.MonkeyPatch) -> None:
    key = images.image_key("bookworm")
    assert key == images.image_key("bookworm") and key != images.image_key("trixie")
    files = bake.baked_files()
    monkeypatch.setattr(bake, "baked_files", lambda: {**files, "site/vfarm/extra.py": "x = 1\n"})
    assert images.image_key("bookworm") != key


PACKAGES_FILE = """Package: cvmfs-libs
Version: 2.12.0~1+debian12
Depends: libc6 (>= 2.34), libcurl4 (>= 7.16.2), libssl3 (>= 3.0.0)
Filename: ./cvmfs-libs_2.12.0~1+debian12_amd64.deb

Package: cvmfs
Version: 2.12.0~1+debian12
Depends: cvmfs-config-default | cvmfs-config, cvmfs-libs (= 2.12.0~1+debian12), fuse3 | fuse, gawk, libfuse2 (>= 2.8)
Filename: ./cvmfs_2.12.0~1+debian12_amd64.deb

Package: cvmfs-server
Version: 2.12.0~1+debian12
Depends: cvmfs-libs (= 2.12.0~1+debian12), rsync, jq
Filename: ./cvmfs-server_2.12.0~1+debian12_amd64.deb
"""


def test_client_dependencies_from_the_packages_file(tmp_path: Path) -> None:
    (tmp_path / "Packages").write_text(PACKAGES_FILE)
    assert cvmfs_local.client_version(tmp_path) == "2.12.0~1+debian12"
    # The client's packages only (not the server's), first alternative, no versions, not our own.
    assert cvmfs_local.dependencies(tmp_path) == {"libc6", "libcurl4", "libssl3", "fuse3", "gawk", "libfuse2"}


def test_built_apt_is_found_under_the_cache_or_named(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("VFARM_CVMFS_APT", raising=False)
    monkeypatch.setenv("VFARM_CACHE", str(tmp_path))
    with pytest.raises(CommandError, match="tools/run setup"):
        cvmfs_local.built_apt()
    apt = tmp_path / "cvmfs/debian-0123/apt"
    apt.mkdir(parents=True)
    (apt / "Packages").write_text(PACKAGES_FILE)
    with pytest.raises(CommandError):  # no build.json: an unfinished build
        cvmfs_local.built_apt()
    (apt.parent / "build.json").write_text("{}")
    assert cvmfs_local.built_apt() == apt
    monkeypatch.setenv("VFARM_CVMFS_APT", str(tmp_path / "nowhere"))
    with pytest.raises(CommandError, match="no Packages file"):
        cvmfs_local.built_apt()


def test_image_recipe_has_the_client_runtime_and_a_preinstalled_variant() -> None:
    assert set(images.CVMFS_RUNTIME) <= set(images.PACKAGES)
    assert {"autofs", "fuse3"} <= set(images.CVMFS_RUNTIME)
    assert images.VARIANTS["cvmfs"] == ["cvmfs", "cvmfs-libs", "cvmfs-config-default"]
    assert images.VARIANT_SUITES.get("cvmfs", images.SUITES) == images.SUITES


@pytest.mark.integration
def test_cern_layout_of_the_built_packages(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The local packages as CERN's repository: {codename}-prod suites, main, pool/, hashes in Release."""
    monkeypatch.setenv("VFARM_CACHE", str(tmp_path / "cache"))
    apt = tmp_path / "apt"
    for name, version in (("cvmfs", "2.12.0~1+debian12"), ("cvmfs-libs", "2.12.0~1+debian12")):
        root = tmp_path / name
        (root / "DEBIAN").mkdir(parents=True)
        (root / "DEBIAN/control").write_text(f"Package: {name}\nVersion: {version}\nArchitecture: amd64\nMaintainer: t <t@t>\n"
                                             "Description: test\n test\n")
        apt.mkdir(exist_ok=True)
        subprocess.run(["dpkg-deb", "--root-owner-group", "--build", str(root), str(apt / f"{name}_{version}_amd64.deb")],
                       check=True, capture_output=True)
    (apt / "Packages").write_text(PACKAGES_FILE)
    repo = cvmfs_local.build(apt)
    assert repo == cvmfs_local.build(apt), "cached"
    for suite in cvmfs_local.SUITES:
        packages = (repo / "dists" / suite / "main/binary-amd64/Packages").read_text()
        assert "Filename: pool/main/c/cvmfs/cvmfs_2.12.0~1+debian12_amd64.deb" in packages
        assert packages.count("Package: ") == 2
        release = (repo / "dists" / suite / "Release").read_text()
        assert f"Suite: {suite}" in release and "main/binary-amd64/Packages.gz" in release
    assert sorted(p.name for p in (repo / "pool/main/c/cvmfs").iterdir()) == sorted(p.name for p in apt.glob("*.deb"))
