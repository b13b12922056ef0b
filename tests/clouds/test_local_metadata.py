"""The local EC2-style metadata service for `vfarm launch local` (no VM here): what it answers over
HTTP (IMDSv1 and IMDSv2 tokens), what the REAL cloud-init 22.4 and 25.1 Ec2 crawler (sources.helpers.ec2)
reads from it, and that the real qemu takes the slirp network that puts it at 169.254.169.254
(and refuses that forward in slirp's default network)."""

from __future__ import annotations

import gzip
import http.server
import json
import subprocess
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.fixtures.cloudinit import Release
from vfarm.clouds import local

USERDATA = gzip.compress(b"#cloud-config\n# the pool token would be here\n")


class MetadataServer(local.MetadataService, http.server.ThreadingHTTPServer):
    """The same service on 127.0.0.1 (a free port), for the HTTP clients of these tests (vfarm's
    guests reach theirs on a Unix socket: local.UnixMetadataServer)."""

    def __init__(self, instance_id: str, userdata: bytes, hostname: str, *, instance_type: str = "local", image_id: str = "",
                 instance_store: bool = False) -> None:
        self._init_service(instance_id, userdata, hostname, instance_type=instance_type, image_id=image_id, local_ipv4=local.METADATA_GUEST,
                           zone="local", require_token=False, instance_store=instance_store)
        super().__init__(("127.0.0.1", 0), local.MetadataHandler)
        self._start(self.serve_forever)

    @property
    def port(self) -> int:
        return int(self.server_address[1])


@pytest.fixture
def server() -> Iterator[MetadataServer]:
    running = MetadataServer("i-local-0123456789ab", USERDATA, "vfarm-456789ab", instance_type="local.2cpu.2048m", image_id="trixie-condor")
    try:
        yield running
    finally:
        running.close()


def get(server: MetadataServer, path: str, headers: dict[str, str] | None = None) -> tuple[int, bytes]:
    request = urllib.request.Request(f"http://127.0.0.1:{server.port}{path}", headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as err:
        return err.code, err.read()


def put_token(server: MetadataServer, ttl: str = "21600") -> tuple[int, bytes]:
    request = urllib.request.Request(f"http://127.0.0.1:{server.port}/latest/api/token", method="PUT", headers={local.TOKEN_TTL_HEADER: ttl})
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as err:
        return err.code, err.read()


def test_it_answers_as_ec2s_metadata_service(server: MetadataServer) -> None:
    assert get(server, "/latest/meta-data/instance-id") == (200, b"i-local-0123456789ab")
    assert get(server, "/2009-04-04/meta-data/local-hostname") == (200, b"vfarm-456789ab")
    assert get(server, "/2016-09-02/meta-data/placement/availability-zone") == (200, b"local")
    status, index = get(server, "/latest/meta-data/")
    assert status == 200 and "instance-id" in index.decode().split("\n") and "placement/" in index.decode().split("\n")
    assert get(server, "/latest/user-data") == (200, USERDATA)  # bytes as given: gzip stays gzip
    identity = json.loads(get(server, "/latest/dynamic/instance-identity/document")[1])
    assert identity["instanceId"] == "i-local-0123456789ab" and identity["instanceType"] == "local.2cpu.2048m"
    assert b"latest" in get(server, "/")[1].split(b"\n")
    for missing in ("/latest/meta-data/nothing", "/latest/meta-data/instance-id/x", "/1999-01-01/meta-data/", "/latest/elsewhere"):
        assert get(server, missing)[0] == 404, missing
    assert any(r.startswith("GET /latest/user-data") for r in server.requests)


def test_an_instance_store_is_described_as_ec2_describes_it() -> None:
    """With an instance store, the block-device-mapping EC2 serves for one (ephemeral0 as sdb, which
    cloud-init maps to the guest's vdb, the data disk); without, none (cloud-init mounts nothing)."""
    for store, expected in ((True, (200, b"ami\nephemeral0\nroot")), (False, (404, b""))):
        running = MetadataServer("i-local-0123456789ab", USERDATA, "vfarm-456789ab", instance_store=store)
        try:
            assert get(running, "/latest/meta-data/block-device-mapping/")[0] == expected[0]
            if store:
                assert get(running, "/latest/meta-data/block-device-mapping/") == expected
                assert get(running, "/latest/meta-data/block-device-mapping/ephemeral0") == (200, b"sdb")
        finally:
            running.close()


def test_imdsv2_tokens(server: MetadataServer) -> None:
    assert put_token(server, "0")[0] == 400 and put_token(server, "x")[0] == 400
    status, token = put_token(server)
    assert status == 200 and token
    assert get(server, "/latest/meta-data/instance-id", {local.TOKEN_HEADER: token.decode()})[0] == 200
    assert get(server, "/latest/meta-data/instance-id", {local.TOKEN_HEADER: "forged"})[0] == 401
    server.require_token = True  # IMDSv2 only, as a hardened EC2 instance
    assert get(server, "/latest/user-data")[0] == 401
    assert get(server, "/latest/user-data", {local.TOKEN_HEADER: token.decode()}) == (200, USERDATA)


CRAWL = """
import base64, json, sys, urllib.request
from cloudinit.sources.helpers import ec2 as ec2_utils
url, version = sys.argv[1], sys.argv[2]
request = urllib.request.Request(url + "/latest/api/token", method="PUT", headers={"X-aws-ec2-metadata-token-ttl-seconds": "300"})
token = urllib.request.urlopen(request, timeout=10).read().decode()
headers = lambda _url: {"X-aws-ec2-metadata-token": token}
meta = ec2_utils.get_instance_metadata(version, metadata_address=url, headers_cb=headers, retries=0)
user = ec2_utils.get_instance_userdata(version, metadata_address=url, headers_cb=headers, retries=0)
user = user if isinstance(user, bytes) else user.encode("latin-1")
# How cloud-init raises the NIC from that metadata (its converter; 25.1 also takes the distro).
import inspect, types
from cloudinit.sources import DataSourceEc2
convert = DataSourceEc2.convert_ec2_metadata_network_config
extra = {"distro": types.SimpleNamespace(network_renderer=None)} if "distro" in inspect.signature(convert).parameters else {}
network = convert(meta["network"], macs_to_nics={meta["mac"]: "eth0"}, fallback_nic="eth0", **extra)
print(json.dumps({"meta": meta, "user": base64.b64encode(user).decode(), "network": network}))
"""


def test_real_cloud_inits_ec2_crawler_reads_it(server: MetadataServer, cloudinit_release: Release) -> None:
    server.require_token = True
    done = cloudinit_release.run(f"import runpy, sys; sys.argv = ['crawl', 'http://127.0.0.1:{server.port}', '2016-09-02']; exec({CRAWL!r})")
    assert done.returncode == 0, done.stderr[-2000:]
    got = json.loads(done.stdout.strip().splitlines()[-1])
    assert got["meta"]["instance-id"] == "i-local-0123456789ab" and got["meta"]["local-hostname"] == "vfarm-456789ab"
    assert got["meta"]["placement"] == {"availability-zone": "local"}
    # DHCPv4 only (slirp never answers DHCPv6: a fallback config asking for it hangs ifup).
    assert got["network"]["ethernets"]["eth0"]["dhcp4"] is True and got["network"]["ethernets"]["eth0"]["dhcp6"] is False, got["network"]
    assert got["network"]["ethernets"]["eth0"]["match"] == {"macaddress": local.GUEST_MAC}
    import base64

    assert base64.b64decode(got["user"]) == USERDATA


def qemu_takes(netdev: str) -> tuple[bool, str]:
    """Whether the real qemu starts with NETDEV (machine none: nothing boots); its error if not.
    Waits for QMP's greeting (qemu has parsed every option by then), then asks it to quit."""
    proc = subprocess.Popen(["qemu-system-x86_64", "-M", "none", "-nodefaults", "-display", "none", "-qmp", "stdio", "-netdev", netdev],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert proc.stdin is not None and proc.stdout is not None
    greeting = proc.stdout.readline()
    if greeting:
        proc.stdin.write('{"execute": "qmp_capabilities"}\n{"execute": "quit"}\n')
        proc.stdin.flush()
    _out, err = proc.communicate(timeout=60)
    return '"QMP"' in greeting, err.strip()


@pytest.mark.integration
def test_qemu_takes_the_metadata_network_and_refuses_the_forward_elsewhere() -> None:
    ok, err = qemu_takes(local.metadata_netdev("TCP:127.0.0.1:8775", "127.0.0.1:9618", {3128: "127.0.0.1:4321"}))
    assert ok, err
    refused, err = qemu_takes(f"user,id=n0,restrict=on,guestfwd=tcp:{local.METADATA_ADDRESS}:80-cmd:socat - TCP:127.0.0.1:8775")
    assert not refused and "guest forwarding rule" in err


def test_a_metadata_instance_has_no_seed_and_the_ec2_datasource(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from tests.clouds.test_local import fake_image

    monkeypatch.setattr(local, "_KVM", False)
    instance = local.LocalInstance(fake_image(tmp_path), USERDATA, folder=tmp_path / "i", metadata=True, pool_forward="127.0.0.1:9618",
                                   forwards={3128: "127.0.0.1:4321"})
    argv = instance.qemu_argv(None, metadata="TCP:127.0.0.1:8775")
    netdev = argv[argv.index("-netdev") + 1]
    assert netdev == local.metadata_netdev("TCP:127.0.0.1:8775", "127.0.0.1:9618", {3128: "127.0.0.1:4321"})
    assert f"guestfwd=tcp:{local.METADATA_POOL}:3128-cmd:socat - TCP:127.0.0.1:4321" in netdev.split(",")
    assert argv[argv.index("-append") + 1].endswith(" " + local.metadata_cmdline(""))
    assert local.metadata_cmdline("").startswith("ci.ds=Ec2 ") and local.metadata_cmdline("22.4.2-1+deb12u3").startswith("ci.ds=Ec2 ")
    assert local.metadata_cmdline("25.1.4-1").startswith("ds=Ec2 ") and local.metadata_cmdline("23.2").startswith("ds=Ec2 ")
    assert not any("seed.iso" in a for a in argv)
    assert "ci.ds=Ec2" not in " ".join(instance.qemu_argv(None))  # the seed's way stays as it was


@pytest.mark.integration
def test_the_unix_socket_service_answers_a_socat_in_another_network_namespace() -> None:
    """What qemu's guestfwd does for a guest beside a pool in a namespace: a socat started in a
    network namespace of its own (no route anywhere) reaches the service through its socket file."""
    service = local.UnixMetadataServer("i-local-0123456789ab", USERDATA, "vfarm-456789ab")
    try:
        request = "GET /latest/meta-data/instance-id HTTP/1.0\r\nHost: 169.254.169.254\r\n\r\n"
        reply = subprocess.run(["unshare", "--net", "socat", "-", service.socat_target], input=request, capture_output=True, text=True,
                               timeout=60, check=True).stdout
        assert reply.startswith("HTTP/1.0 200") and reply.endswith("\n\ni-local-0123456789ab"), reply
        assert service.requests == ["GET /latest/meta-data/instance-id 200"]
        socket_file = Path(service.socat_target.split(":", 1)[1])
        assert socket_file.exists() and len(str(socket_file)) < 108
    finally:
        service.close()
    assert not socket_file.parent.exists()


def test_real_cloud_init_reads_the_guests_network_and_config_from_the_kernel_command_line(cloudinit_release: Release) -> None:
    """The kernel command line of a metadata guest, as cloud-init 22.4 and 25.1 read it: its NIC
    gets the static address in the metadata network (no DHCP at all), the Ec2 datasource is not
    strict about the platform, and the network stage does not raise the NIC again."""
    cmdline = f"root=LABEL=root console=ttyS0 rw {local.metadata_cmdline(cloudinit_release.version)}"
    done = cloudinit_release.run("import json, sys; from cloudinit import util; from cloudinit.net import cmdline; "
                                 f"print(json.dumps([cmdline.read_kernel_cmdline_config(cmdline={cmdline!r}), "
                                 f"util.read_conf_from_cmdline(cmdline={cmdline!r})]))")
    assert done.returncode == 0, done.stderr[-2000:]
    config, system = json.loads(done.stdout.strip().splitlines()[-1])
    assert system == {"datasource": {"Ec2": {"strict_id": False}}, "disable_network_activation": True}
    assert config["ethernets"]["eth0"]["addresses"] == [f"{local.METADATA_GUEST}/16"]
    assert config["ethernets"]["eth0"]["match"] == {"macaddress": local.GUEST_MAC}
    assert not any(key.startswith("dhcp") for key in config["ethernets"]["eth0"])
