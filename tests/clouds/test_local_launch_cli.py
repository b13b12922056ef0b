"""`vfarm launch local` and `vfarm image build` around the boot, without booting: what an error,
a refused option or a Ctrl-C leaves behind (nothing), and how they are reported (one line)."""

from __future__ import annotations

from pathlib import Path

import pytest

from vfarm.cli import main as cli
from vfarm.clouds import images, local
from vfarm.clouds.images import Image

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = str(ROOT / "examples" / "torino.yaml")
# No loopback server, no locally built cvmfs: only the instance folder is made.
QUIET = ["--handlers", "embed", "--no-local-cvmfs", "--blank-disk", "--disk", "1M"]


@pytest.fixture
def state(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The local state root (VFARM_LOCAL_DIR), with a fake image found for any name."""
    image = tmp_path / "image"
    image.mkdir()
    for name in ("disk.raw", "vmlinuz", "initrd.img"):
        (image / name).write_bytes(b"x" * 4096)
    fake = Image("bookworm", image, image / "disk.raw", image / "vmlinuz", image / "initrd.img", {"harness": True})
    monkeypatch.setattr(images, "find", lambda name: fake)
    monkeypatch.setenv("VFARM_LOCAL_DIR", str(tmp_path / "state"))
    return tmp_path / "state"


def instance_folders(state: Path) -> list[str]:
    return sorted(p.name for p in state.iterdir()) if state.is_dir() else []


@pytest.mark.integration  # cp and truncate make the disks
def test_an_error_after_prepare_leaves_no_instance_folder(state: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["launch", "local", EXAMPLE, *QUIET[:-1], "abc"]) == 1  # --disk abc: truncate refuses it
    [error] = [line for line in capsys.readouterr().err.splitlines() if line.startswith("vfarm:")]
    assert error.startswith("vfarm: launch local: ") and "truncate" in error
    assert instance_folders(state) == []


@pytest.mark.integration
def test_an_option_conflict_is_refused_before_anything_is_made(state: Path, capsys: pytest.CaptureFixture[str],
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(images, "find", lambda name: pytest.fail("the image was looked up before the options were checked"))
    assert cli.main(["launch", "local", EXAMPLE, *QUIET, "--handlers", "include", "--netns", "/proc/1/ns/net"]) == 1
    assert "cannot serve a guest in another network namespace" in capsys.readouterr().err
    assert instance_folders(state) == []


@pytest.mark.integration
def test_a_ctrl_c_during_the_boot_removes_the_instance_folder_unless_keep(state: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def interrupted(self: local.LocalInstance, timeout: float = 0) -> local.BootResult:
        assert self.folder.is_dir() and (self.folder / "seed/user-data").is_file()
        raise KeyboardInterrupt

    monkeypatch.setattr(local.LocalInstance, "boot", interrupted)
    assert cli.main(["launch", "local", EXAMPLE, *QUIET]) == 130
    assert instance_folders(state) == []
    assert cli.main(["launch", "local", EXAMPLE, *QUIET, "--keep"]) == 130
    assert len(instance_folders(state)) == 1


def test_a_plain_os_error_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "file").write_text("")
    monkeypatch.setenv("VFARM_LOCAL_DIR", str(tmp_path / "file/state"))  # below a file: an OSError, no traceback
    monkeypatch.setattr(images, "find", lambda name: Image("x", tmp_path, tmp_path, tmp_path, tmp_path, {}))
    assert cli.main(["launch", "local", EXAMPLE, *QUIET]) == 1
    err = capsys.readouterr().err
    assert err.splitlines()[-1].startswith("vfarm: launch local: [Errno 17] File exists") and "Traceback" not in err

    def denied(*args: object, **kwargs: object) -> Image:
        raise PermissionError(13, "Permission denied", "/var/cache/vfarm/images")

    monkeypatch.setattr(images, "build", denied)
    assert cli.main(["image", "build", "bookworm"]) == 1
    assert capsys.readouterr().err == "vfarm: image build: [Errno 13] Permission denied: '/var/cache/vfarm/images'\n"


@pytest.mark.parametrize("option", [["--reboot", "-1"], ["--smp", "0"], ["--timeout", "-5"], ["--timeout", "nan"], ["--smp", "two"]])
def test_counts_and_seconds_out_of_range_are_usage_errors(option: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_:
        cli.main(["launch", "local", EXAMPLE, *option])
    assert exit_.value.code == 2
    assert f"argument {option[0]}: expected a" in capsys.readouterr().err
