"""The OpenStack backend, `vfarm launch openstack`, `vfarm instances/terminate --cloud openstack`
and the scaler's OpenStack backend against a real OpenStack control plane on 127.0.0.1
(tests/fixtures/openstack.py: keystone, glance, placement, neutron, nova with the fake driver),
run in-process through the command line's own entry point."""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.cli.test_ec2_cli import EXAMPLE, one_line_failure, run
from tests.clouds.test_ec2 import closed_port
from tests.fixtures.condor_pool import wait_for
from tests.fixtures.openstack import PASSWORD, OpenStackCloud
from vfarm.cli.main import main
from vfarm.clouds import openstack
from vfarm.config import scale as scale_spec
from vfarm.scaler.apply import CloudError
from vfarm.scaler.backends import OpenStackBackend, userdata_for

pytestmark = pytest.mark.openstack

BUILD = ("--handlers", "baked")  # small user-data: the example with the handlers in the image


def built_userdata(tmp_path: Path) -> bytes:
    out = tmp_path / "built.userdata"
    assert main(["build", str(EXAMPLE), *BUILD, "-o", str(out)]) == 0
    return out.read_bytes()


def foreign_server(cloud: OpenStackCloud, name: str = "not-vfarm") -> str:
    """A server of the same project that vfarm did not start (no metadata of ours)."""
    demo = cloud.connect("os-demo")
    image = demo.image.find_image(cloud.image, ignore_missing=False)
    flavor = demo.compute.find_flavor(cloud.flavor, ignore_missing=False)
    server = demo.compute.create_server(name=name, image_id=image.id, flavor_id=flavor.id, networks="auto",
                                        metadata={"vfarm:farm": "torino"})  # the farm's name alone does not make it ours
    demo.compute.wait_for_server(server, interval=0.3, wait=120)
    return str(server.id)


def server_ids(cloud: OpenStackCloud) -> set[str]:
    return {s.id for s in cloud.connect().compute.servers(all_projects=True)}


def wait_gone(cloud: OpenStackCloud, ids: list[str]) -> None:
    """Until Nova neither shows nor lists the servers: a server deleted while still in BUILD can
    come back in the listing for a moment (the conductor maps it into its cell after the API
    deleted its build request, then deletes it), so a GET's 404 alone is not the end."""
    admin = cloud.connect()
    for server_id in ids:
        server = admin.compute.find_server(server_id, all_projects=True)
        if server is not None:
            admin.compute.wait_for_delete(server, interval=0.3, wait=600)
    wait_for(lambda: not set(ids) & server_ids(cloud), 600, f"servers {' '.join(ids)} gone from the listing", interval=0.5)


def launch_args(*extra: str) -> list[str]:
    return ["launch", "openstack", str(EXAMPLE), *BUILD, "--image", "tiny", "--flavor", "m1.tiny", *extra]


def test_launch_wait_list_and_terminate_only_ours(openstack_env: OpenStackCloud, capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    foreign = foreign_server(openstack_env)
    code, out, err = run(capsys, *launch_args("--network", "private", "--count", "2", "--property", "vfarm:farm=torino",
                                              "--wait", "--json"))
    assert code == 0, err
    servers = json.loads(out)
    ids = sorted(s["InstanceId"] for s in servers)
    assert len(ids) == 2 and all(s["Status"] == "ACTIVE" and s["State"]["Name"] == "running" for s in servers)
    assert all(s["PrivateIpAddress"].startswith("127.100.0.") for s in servers)  # a port on the network asked for
    for s in servers:
        meta = openstack.metadata_of(s)
        assert meta["vfarm:managed"] == "true" and meta["vfarm:farm"] == "torino" and meta["vfarm:token"].startswith("vfarm-")

    # The user-data Nova holds is exactly what `vfarm build` writes with the same options.
    admin = openstack_env.connect()
    held = base64.b64decode(admin.compute.get_server(ids[0]).user_data)
    assert held == built_userdata(tmp_path)

    code, out, err = run(capsys, "instances", "--cloud", "openstack")
    assert code == 0, err
    rows = out.splitlines()
    assert rows[0].split()[:3] == ["ID", "STATUS", "FLAVOR"]
    assert sorted(r.split()[0] for r in rows[1:]) == ids  # never the foreign server
    assert all(" ACTIVE " in r and "vfarm:farm=torino" in r for r in rows[1:])

    err = one_line_failure(*run(capsys, "terminate", "--os-cloud", "os-demo", ids[0], foreign), PASSWORD)
    assert f"not vfarm servers (no metadata vfarm:managed=true), nothing deleted: {foreign}" in err
    assert set(ids) | {foreign} <= server_ids(openstack_env)

    code, out, err = run(capsys, "terminate", "--cloud", "openstack", "--all", "--tag", "vfarm:farm=torino")
    assert code == 0, err
    assert sorted(line.split()[0] for line in out.splitlines()[1:]) == ids
    wait_gone(openstack_env, ids)
    assert server_ids(openstack_env) == {foreign}


def test_same_token_never_starts_twice_even_after_a_lost_reply(openstack_env: OpenStackCloud, monkeypatch: pytest.MonkeyPatch) -> None:
    from keystoneauth1.exceptions.connection import ConnectFailure

    cloud = openstack.OpenStackCloud()
    real_create = cloud.conn.compute.create_server
    calls: list[str] = []

    def reply_lost_once(**kwargs: Any) -> Any:
        server = real_create(**kwargs)  # Nova got the request and started the server ...
        calls.append(server.id)
        if len(calls) == 1:
            raise ConnectFailure("Unable to establish connection: connection reset by peer")  # ... the reply never came
        return server

    monkeypatch.setattr(cloud.conn.compute, "create_server", reply_lost_once)
    first = cloud.launch(b"#cloud-config\n", "tiny", "m1.tiny", count=2, client_token="vfarm-token-a")
    assert len(first) == 2 and len(calls) == 2  # the lost one was found by its token, not created again
    again = cloud.launch(b"#cloud-config\n", "tiny", "m1.tiny", count=2, client_token="vfarm-token-a")
    assert sorted(s["InstanceId"] for s in again) == sorted(s["InstanceId"] for s in first) == sorted(calls)
    assert len(server_ids(openstack_env)) == 2


def test_userdata_limit_is_novas(openstack_env: OpenStackCloud) -> None:
    cloud = openstack.OpenStackCloud()
    fits = b"#!/bin/sh\n" + b"#" * (openstack.USERDATA_LIMIT - 11) + b"\n"
    assert len(fits) == openstack.USERDATA_LIMIT
    [server] = cloud.launch(fits, "tiny", "m1.tiny")
    assert openstack.OpenStackCloud("os-admin").userdata(server["InstanceId"]) == fits  # Nova shows it to admins
    # three bytes more are four more characters of base64: Nova itself refuses them
    with pytest.raises(openstack.OpenStackError, match=r"create a server refused \(400: .*user_data"):
        cloud.launch(fits + b"###", "tiny", "m1.tiny", max_userdata=10**6)
    # and vfarm refuses them before asking
    with pytest.raises(openstack.OpenStackError, match=f"over the limit of {openstack.USERDATA_LIMIT}"):
        cloud.launch(fits + b"###", "tiny", "m1.tiny")


def write_clouds_yaml(path: Path, auth_url: str, password: str) -> Path:
    entry = {"auth": {"auth_url": auth_url, "username": "demo", "password": password, "project_name": "demo",
                      "user_domain_name": "Default", "project_domain_name": "Default"}, "region_name": "RegionOne"}
    path.write_text(yaml.safe_dump({"clouds": {"site": entry}}))
    return path


@pytest.mark.parametrize("case", ["wrong password", "keystone not answering"])
def test_credentials_refused_and_endpoint_down(openstack_env: OpenStackCloud, monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
                                               capsys: pytest.CaptureFixture[str], case: str) -> None:
    secret = "wrong-secret-never-printed-42"
    url = openstack_env.auth_url if case == "wrong password" else f"http://127.0.0.1:{closed_port()}/v3"
    monkeypatch.setenv("OS_CLIENT_CONFIG_FILE", str(write_clouds_yaml(tmp_path / "clouds.yaml", url, secret)))
    monkeypatch.setenv("OS_CLOUD", "site")
    for argv in (launch_args(), ["instances", "--cloud", "openstack"], ["terminate", "--cloud", "openstack", "--all"]):
        err = one_line_failure(*run(capsys, *argv), secret, PASSWORD)
        if case == "wrong password":
            assert "credentials refused (401" in err, err
        else:
            assert "endpoint not answering" in err, err
    assert server_ids(openstack_env) == set()


def test_quota_refused_with_403(openstack_env: OpenStackCloud, capsys: pytest.CaptureFixture[str]) -> None:
    admin = openstack_env.connect()
    demo_project = admin.identity.find_project("demo", ignore_missing=False)
    admin.compute.update_quota_set(demo_project.id, instances=1)
    # The one slot taken and recorded first: a create Nova's API accepts before its conductor has
    # recorded the one before it passes the quota check (the race of the next test), so a single
    # launch of two is not refused reliably.
    code, out, err = run(capsys, *launch_args("--wait"))
    assert code == 0, err
    err = one_line_failure(*run(capsys, *launch_args()), PASSWORD)
    assert "the cloud refused to create a server (quota: Quota exceeded for instances" in err, err
    assert len(server_ids(openstack_env)) == 1


def test_quota_race_lost_after_202_is_one_line(openstack_env: OpenStackCloud) -> None:
    """One slot left, two launches before Nova's conductor has recorded either (it is paused, as
    a busy one is): the API accepts both (202), the conductor's re-check of the quota puts a loser
    in ERROR; waiting for it is one line naming the quota. When the conductor creates both before
    it re-checks either, both lose (nova.conf's recheck_quota help says so), so one winner is not
    promised."""
    admin = openstack_env.connect()
    demo_project = admin.identity.find_project("demo", ignore_missing=False)
    admin.compute.update_quota_set(demo_project.id, instances=1)
    cloud = openstack.OpenStackCloud()
    cloud.resolve("tiny", "m1.tiny", None)  # connected and looked up before the pause
    with openstack_env.plane.paused("nova-conductor"):
        first = cloud.launch(b"#cloud-config\n", "tiny", "m1.tiny")
        second = cloud.launch(b"#cloud-config\n", "tiny", "m1.tiny")  # accepted too: no instance recorded yet
    ids = [first[0]["InstanceId"], second[0]["InstanceId"]]
    outcomes: list[str] = []
    for server_id in ids:
        try:
            cloud.wait_running([server_id], interval=0.3, timeout=180)
            outcomes.append("ACTIVE")
        except openstack.OpenStackError as err:
            outcomes.append(str(err))
    losers = [o for o in outcomes if o != "ACTIVE"]
    assert len(losers) in (1, 2), outcomes
    for loser in losers:
        assert "\n" not in loser and PASSWORD not in loser
        assert " ERROR (Quota exceeded for instances" in loser, loser


def test_no_valid_host_after_202(openstack_env: OpenStackCloud, capsys: pytest.CaptureFixture[str]) -> None:
    admin = openstack_env.connect()
    huge = admin.compute.create_flavor(name="vfarm.huge", ram=512, vcpus=1, disk=700000, is_public=True)
    try:
        code, out, err = run(capsys, *launch_args("--flavor", "vfarm.huge", "--wait"))
        # --wait: the launch line and the progress lines, then the failure as the one last line
        assert code == 1 and out == "" and all(line.startswith("vfarm: ") for line in err.splitlines()), err
        assert "Traceback" not in err and PASSWORD not in err
        last = err.splitlines()[-1]
        assert "server(s) failed:" in last and " ERROR (No valid host was found." in last, err
    finally:
        openstack_env.clean()
        admin.compute.delete_flavor(huge)


def test_a_powered_off_server_is_listed_with_its_verdict(openstack_env: OpenStackCloud, capsys: pytest.CaptureFixture[str]) -> None:
    """A vfarm server that powered itself off (SHUTOFF) is listed (--all-states) with what its
    console says. Nova's fake driver keeps a console of three fixed lines, no verdict among them."""
    code, out, err = run(capsys, *launch_args("--network", "private", "--wait", "--json"))
    assert code == 0, err
    [server] = json.loads(out)
    admin = openstack_env.connect()
    admin.compute.stop_server(server["InstanceId"])
    admin.compute.wait_for_server(admin.compute.get_server(server["InstanceId"]), status="SHUTOFF", interval=0.3, wait=600)
    assert "FAKE CONSOLE OUTPUT" in openstack.OpenStackCloud("os-demo").console_output(server["InstanceId"])
    code, out, err = run(capsys, "instances", "--cloud", "openstack", "--all-states")
    assert code == 0, err
    header, row = out.splitlines()
    assert header.split()[-1] == "VERDICT" and row.split()[:2] == [server["InstanceId"], "SHUTOFF"]
    assert row.endswith("none on the console (the check did not finish)"), row
    code, out, err = run(capsys, "instances", "--cloud", "openstack", "--all-states", "--json")
    assert code == 0 and json.loads(out)[0]["VfarmVerdict"] is None
    code, out, err = run(capsys, "instances", "--cloud", "openstack")  # a live listing: no SHUTOFF server, no verdict read
    assert code == 0 and out == ""


@pytest.mark.parametrize(("option", "value", "expected"), [
    ("--image", "no-such-image", "unknown image 'no-such-image'"),
    ("--flavor", "no-such-flavor", "unknown flavor 'no-such-flavor'"),
    ("--network", "no-such-net", "unknown network 'no-such-net'"),
])
def test_unknown_image_flavor_network(openstack_env: OpenStackCloud, capsys: pytest.CaptureFixture[str], option: str, value: str,
                                      expected: str) -> None:
    err = one_line_failure(*run(capsys, *launch_args(option, value)), PASSWORD)
    assert expected in err, err
    assert server_ids(openstack_env) == set()


def test_image_nova_refuses(openstack_env: OpenStackCloud, capsys: pytest.CaptureFixture[str]) -> None:
    """An image Glance lists but Nova cannot boot (no data uploaded: status queued): Nova's 400."""
    admin = openstack_env.connect()
    empty = admin.image.create_image(name="vfarm-empty", disk_format="raw", container_format="bare", visibility="public")
    try:
        err = one_line_failure(*run(capsys, *launch_args("--image", empty.id)), PASSWORD)
        assert "create a server refused (400:" in err and "not active" in err.lower(), err
    finally:
        admin.image.delete_image(empty)


def scale_section(**cloud: Any) -> dict[str, Any]:
    return {"name": "torino", "max-vms": 4, "cloud": {"type": "openstack", "cloud": "os-demo", "image": "tiny", "flavor": "m1.tiny",
                                                      "network": "private", **cloud}}


def test_scaler_backend_counts_and_touches_only_its_farm(openstack_env: OpenStackCloud) -> None:
    foreign = foreign_server(openstack_env)
    other_farm = OpenStackBackend(scale_spec.parse({**scale_section(), "name": "milano"}), b"#cloud-config\n")
    [milano] = other_farm.launch(1, "vfarm-milano-token", other_farm.spec.types[0])
    backend = OpenStackBackend(scale_spec.parse(scale_section(properties={"site": "to"})), b"#cloud-config\n")
    ids = backend.launch(2, "vfarm-torino-token", backend.spec.types[0])
    assert backend.launch(2, "vfarm-torino-token", backend.spec.types[0]) == ids  # the same intent again: the same servers
    listed = backend.farm_instances()
    assert sorted(i["InstanceId"] for i in listed) == sorted(ids)
    assert all(json.dumps(i) and {"Key": "vfarm:farm", "Value": "torino"} in i["Tags"] and {"Key": "site", "Value": "to"} in i["Tags"]
               for i in listed)
    backend.terminate({ids[0]: "drained"})
    wait_gone(openstack_env, ids[:1])
    assert [i["InstanceId"] for i in backend.farm_instances()] == ids[1:]
    with pytest.raises(CloudError, match="not vfarm servers"):
        backend.terminate({foreign: "lost"})
    assert {foreign, milano, ids[1]} <= server_ids(openstack_env)


def test_scaler_backend_reaps_failed_servers_before_launching(openstack_env: OpenStackCloud) -> None:
    admin = openstack_env.connect()
    huge = admin.compute.create_flavor(name="vfarm.huge2", ram=512, vcpus=1, disk=700000, is_public=True)
    try:
        failing = OpenStackBackend(scale_spec.parse(scale_section(flavor="vfarm.huge2")), b"#cloud-config\n")
        # A farm server that failed after its launch was over (started through the cloud layer: the
        # backend's own launch would see it fail when Nova is quick, and delete it at once).
        [started] = failing.cloud.launch(b"#cloud-config\n", "tiny", "vfarm.huge2", network="private", properties={"vfarm:farm": "torino"})
        dead = started["InstanceId"]
        with pytest.raises(openstack.OpenStackError, match="No valid host"):
            failing.cloud.wait_running([dead], interval=0.3, timeout=120)
        assert [i["State"]["Name"] for i in failing.farm_instances()] == ["stopped"]
        backend = OpenStackBackend(scale_spec.parse(scale_section()), b"#cloud-config\n")
        [fresh] = backend.launch(1, "vfarm-t-2", backend.spec.types[0])
        wait_gone(openstack_env, [dead])
        remaining = {i["InstanceId"] for i in backend.farm_instances()}
        assert remaining == {fresh}  # the ERROR server was deleted: it held quota
    finally:
        openstack_env.clean()
        admin.compute.delete_flavor(huge)


class NoDrain:
    def drain(self, instance_id: str, slots: list[dict[str, Any]], reason: str) -> None:
        raise AssertionError(f"nothing to drain here: {instance_id}")


def test_scaler_cycles_launch_then_end_lost_workers_on_openstack(openstack_env: OpenStackCloud, tmp_path: Path,
                                                                  caplog: pytest.LogCaptureFixture) -> None:
    """`cloud: {type: openstack}` end to end through the scaler's own cycle (the pool answers from
    memory): queued jobs start workers carrying the farm's metadata and the built user-data; a
    second cycle starts none more; past boot-timeout, never having joined, they are deleted."""
    import logging
    import time

    from vfarm.cli.scale import load_spec, make_backend
    from vfarm.scaler import loop

    foreign = foreign_server(openstack_env)
    farm = tmp_path / "farm.yaml"
    farm.write_text(EXAMPLE.read_text() + "\nscale:\n  name: torino\n  max-vms: 2\n  cpus-per-vm: 1\n  boot-timeout: 600\n"
                    "  waiting-time: 0\n  cloud: {type: openstack, cloud: os-demo, image: tiny, flavor: m1.tiny, network: private, "
                    "handlers: baked}\n")
    spec = load_spec(str(farm))  # validated by the schema, as `vfarm scale` reads it
    assert spec is not None
    backend = make_backend(spec, str(farm), build=True)
    assert isinstance(backend, OpenStackBackend)
    offset = [0.0]
    jobs = [{"ClusterId": n, "ProcId": 0, "JobStatus": 1, "EnteredCurrentStatus": time.time() - 100, "RequestCpus": 1} for n in range(5)]
    scaler = loop.Scaler(spec, backend, NoDrain(), logging.getLogger("vfarm.test"), clock=lambda: time.time() + offset[0],
                         pool=lambda: {"jobs": jobs, "slots": [], "collector": []})
    caplog.set_level(logging.INFO, logger="vfarm.test")

    scaler.cycle()
    workers = {i["InstanceId"] for i in backend.farm_instances()}
    assert len(workers) == 2
    admin = openstack_env.connect()
    userdata = base64.b64decode(admin.compute.get_server(sorted(workers)[0]).user_data)
    assert userdata == userdata_for(backend.userdata, spec.types[0]) and b"Content-Type: multipart/mixed" in userdata[:200]

    scaler.cycle()
    assert {i["InstanceId"] for i in backend.farm_instances()} == workers  # booting workers count

    offset[0] = 700.0  # past boot-timeout, never seen in the pool: lost
    scaler.cycle()
    wait_gone(openstack_env, sorted(workers))
    assert not {i["InstanceId"] for i in backend.farm_instances()} & workers
    assert foreign in server_ids(openstack_env)
    assert "terminate" in caplog.text and "lost" in caplog.text
    # Nova's console was read (the fake driver's holds no verdict), not given up on as unreadable.
    assert "no verdict on its console" in caplog.text and "console could not be read" not in caplog.text, caplog.text[-2000:]
