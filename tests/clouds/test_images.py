"""Fast tier for vm-images: baking into a root folder of each real cloud-init release, module
lists, the mirror lookup, the cvmfs STAND-IN's cvmfs_config. No VM here (see test_vm.py)."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.fixtures.cloudinit import Release
from vfarm.clouds import bake, cvmfs_standin, images
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
    lists = {"cloud_init_modules": ["mounts"], "cloud_config_modules": [], "cloud_final_modules": ["final-message", ["power-state-change", "always"]]}
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


def test_image_key_follows_the_baked_sources(monkeypatch: pytest.MonkeyPatch) -> None:
    key = images.image_key("bookworm")
    assert key == images.image_key("bookworm") and key != images.image_key("trixie")
    files = bake.baked_files()
    monkeypatch.setattr(bake, "baked_files", lambda: {**files, "site/vfarm/extra.py": "x = 1\n"})
    assert images.image_key("bookworm") != key


@pytest.fixture(scope="module")
def standin_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The stand-in package of the cached repository, unpacked."""
    repo = cvmfs_standin.build()
    root = tmp_path_factory.mktemp("standin")
    subprocess.run(["dpkg-deb", "-x", str(repo / "pool/main/c/cvmfs/cvmfs_2.1.14_all.deb"), str(root)], check=True)
    (root / "var/log").mkdir(parents=True)
    return root


def cvmfs_config(root: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(root / "usr/bin/cvmfs_config"), *args], env={"CVMFS_STANDIN_ROOT": str(root), "PATH": "/usr/bin:/bin"},
                          capture_output=True, text=True)


def test_standin_repository_has_both_versions() -> None:
    repo = cvmfs_standin.build()
    for suite in cvmfs_standin.SUITES:
        packages = (repo / "dists" / suite / "main/binary-amd64/Packages").read_text()
        assert [line for line in packages.splitlines() if line.startswith("Version:")] == [f"Version: {v}" for v in cvmfs_standin.VERSIONS]
        assert "SHA256:" in (repo / "dists" / suite / "Release").read_text()


@pytest.mark.integration
def test_standin_cvmfs_config_checks_the_files(standin_root: Path) -> None:
    local = standin_root / "etc/cvmfs/default.local"
    local.unlink(missing_ok=True)
    assert cvmfs_config(standin_root, "chksetup").returncode == 1
    local.write_text('CVMFS_REPOSITORIES="alice.cern.ch"\n')
    done = cvmfs_config(standin_root, "setup")
    assert done.returncode == 1 and "CVMFS_HTTP_PROXY is not set" in done.stdout
    local.write_text('CVMFS_REPOSITORIES="alice.cern.ch"\nCVMFS_HTTP_PROXY="http://p:3128\n')  # unbalanced quote
    done = cvmfs_config(standin_root, "setup")
    assert done.returncode == 1 and "not valid" in done.stdout
    local.write_text('CVMFS_REPOSITORIES="alice.cern.ch"\nCVMFS_HTTP_PROXY="http://p:3128"\n')
    assert cvmfs_config(standin_root, "chksetup").returncode == 1  # not set up yet
    assert cvmfs_config(standin_root, "setup").returncode == 0
    assert cvmfs_config(standin_root, "chksetup").stdout.strip() == "OK"
    assert "OK" in cvmfs_config(standin_root, "probe", "alice.cern.ch").stdout
    assert cvmfs_config(standin_root, "probe", "atlas.cern.ch").returncode == 1
    log = (standin_root / "var/log/cvmfs-standin.log").read_text()
    assert "cvmfs_config setup" in log and "cvmfs_config probe alice.cern.ch" in log
