"""`vfarm launch local --pool-forward HOST:PORT [--netns PATH]`: the guest's one route to a pool
(qemu's slirp with restrict=on, a socat per connection), qemu started inside a given network
namespace. The real boot is tests/test_condor_vm.py."""

from __future__ import annotations

from pathlib import Path

import pytest

from vfarm.cli.main import main as vfarm
from vfarm.clouds import local
from vfarm.clouds.images import Image

pytestmark = pytest.mark.integration  # starts processes (see tests/conftest.py)


@pytest.fixture
def instance(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> local.LocalInstance:
    monkeypatch.setattr(local, "kvm_works", lambda kernel=None: False)
    image = Image("trixie-condor", tmp_path, tmp_path / "disk.raw", tmp_path / "vmlinuz", tmp_path / "initrd.img", {})
    return local.LocalInstance(image, b"", folder=tmp_path / "vm", pool_forward="10.0.2.100:9618", netns="/proc/1234/ns/net")


def netdev(argv: list[str]) -> str:
    return argv[argv.index("-netdev") + 1]


def test_pool_forward_is_the_only_route(instance: local.LocalInstance) -> None:
    assert netdev(instance.qemu_argv(None)) == "user,id=n0,restrict=on,guestfwd=tcp:10.0.2.100:9618-cmd:socat - TCP:10.0.2.100:9618"


def test_pool_forward_beside_the_http_forward(instance: local.LocalInstance) -> None:
    parts = netdev(instance.qemu_argv(8080, "pc")).split(",")
    assert parts[:3] == ["user", "id=n0", "restrict=on"]
    assert parts[3:] == ["guestfwd=tcp:10.0.2.100:80-cmd:socat - TCP:127.0.0.1:8080", "guestfwd=tcp:10.0.2.100:9618-cmd:socat - TCP:10.0.2.100:9618"]


def test_no_network_without_forwards(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(local, "kvm_works", lambda kernel=None: False)
    image = Image("trixie", tmp_path, tmp_path / "disk.raw", tmp_path / "vmlinuz", tmp_path / "initrd.img", {})
    assert "-netdev" not in local.LocalInstance(image, b"", folder=tmp_path / "vm").qemu_argv(None)


def test_qemu_runs_inside_the_namespace(instance: local.LocalInstance, monkeypatch: pytest.MonkeyPatch) -> None:
    started: list[list[str]] = []

    def popen(argv: list[str], **kwargs: object) -> object:
        started.append(argv)
        raise FileNotFoundError(argv[0])

    monkeypatch.setattr(local.subprocess, "Popen", popen)
    with pytest.raises(local.CommandError):
        instance._run_qemu(instance.qemu_argv(None), instance.folder / "console.log", 5, 1)
    assert started[0][:3] == ["nsenter", "--net=/proc/1234/ns/net", "--"] and started[0][3] == "qemu-system-x86_64"


def test_the_http_server_cannot_serve_another_namespace(instance: local.LocalInstance, tmp_path: Path) -> None:
    instance.http_root = tmp_path
    with pytest.raises(local.CommandError, match="another network namespace"):
        instance.boot(5)


@pytest.mark.parametrize("bad", ["10.0.2.100", "10.0.2.100:0", "10.0.2.100:99999", ":9618", "a b:9618"])
def test_a_bad_pool_forward_is_one_line(bad: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        vfarm(["launch", "local", "examples/condor.yaml", "--pool-forward", bad])
    assert exit_info.value.code == 2
    assert "expected HOST:PORT" in capsys.readouterr().err


def test_more_forwards_beside_the_http_and_pool_ones(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """`--forward 3128=127.0.0.1:PORT`: the guest's 10.0.2.100:3128 reaches a squid on this host."""
    monkeypatch.setattr(local, "kvm_works", lambda kernel=None: False)
    image = Image("bookworm", tmp_path, tmp_path / "disk.raw", tmp_path / "vmlinuz", tmp_path / "initrd.img", {})
    instance = local.LocalInstance(image, b"", folder=tmp_path / "vm", forwards={3128: "127.0.0.1:4321"})
    assert netdev(instance.qemu_argv(None)).split(",")[3:] == ["guestfwd=tcp:10.0.2.100:3128-cmd:socat - TCP:127.0.0.1:4321"]
    both = netdev(instance.qemu_argv(8080)).split(",")[3:]
    assert both == ["guestfwd=tcp:10.0.2.100:80-cmd:socat - TCP:127.0.0.1:8080", "guestfwd=tcp:10.0.2.100:3128-cmd:socat - TCP:127.0.0.1:4321"]
    for port in (80, 9618):
        with pytest.raises(local.CommandError, match="forward another port"):
            local.LocalInstance(image, b"", folder=tmp_path / "vm", forwards={port: "127.0.0.1:4321"})


@pytest.mark.parametrize("bad", ["3128", "3128=", "80=127.0.0.1:1", "9618=127.0.0.1:1", "x=127.0.0.1:1", "3128=127.0.0.1"])
def test_a_bad_forward_is_one_line(bad: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        vfarm(["launch", "local", "examples/torino.yaml", "--forward", bad])
    assert exit_info.value.code == 2
    assert "expected GUESTPORT=HOST:PORT" in capsys.readouterr().err
