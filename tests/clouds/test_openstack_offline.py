"""The OpenStack backend without the real control plane, in the fast tier: `vfarm launch openstack
--dry-run` (no API call), the `scale` section's `cloud: {type: openstack}`, Nova servers in EC2's
shape; and, against an in-memory Nova (FakeCompute), the failures the real one cannot be made to
show on cue: a launch failing part-way, a 400 quoting the user-data, a server deleted meanwhile."""

from __future__ import annotations

import base64
import json
import re
import shlex
import uuid
from pathlib import Path
from types import SimpleNamespace
from typing import Any, NoReturn, Optional

import pytest

from tests.cli.test_ec2_cli import EXAMPLE, one_line_failure, run
from vfarm.cli.main import main
from vfarm.clouds import openstack
from vfarm.config import scale as scale_spec
from vfarm.scaler import plan as planner


def test_dry_run_writes_the_built_userdata_and_prints_the_openstack_line(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OS_PASSWORD", "never-printed-password-77")
    monkeypatch.setenv("OS_CLIENT_CONFIG_FILE", str(tmp_path / "absent.yaml"))  # nothing is read: no API call
    out_file, built = tmp_path / "w.userdata", tmp_path / "b.userdata"
    code, out, err = run(capsys, "launch", "openstack", str(EXAMPLE), "--handlers", "include=https://h.example.org/v1", "--image", "alma9",
                         "--flavor", "m1.large", "--network", "workers", "--key-name", "site", "--count", "3",
                         "--property", "vfarm:farm=torino", "--os-cloud", "cern", "--os-region", "RegionTwo", "--dry-run", "-o", str(out_file),
                         "--wait")
    assert code == 0, err
    # the same bytes as `vfarm build` with the same options and the limit Nova takes
    assert main(["build", str(EXAMPLE), "--handlers", "include=https://h.example.org/v1", "--max-size", "49149", "-o", str(built)]) == 0
    assert out_file.read_bytes() == built.read_bytes()
    assert shlex.split(out) == ["openstack", "--os-cloud", "cern", "--os-region-name", "RegionTwo", "server", "create",
                                "--image", "alma9", "--flavor", "m1.large",
                                "--network", "workers", "--key-name", "site", "--user-data", str(out_file),
                                "--property", "vfarm:farm=torino", "--property", "vfarm:managed=true",
                                "--min", "3", "--max", "3", "--wait", "vfarm-worker"]
    assert "never-printed-password-77" not in out + err
    code, as_json, err = run(capsys, "launch", "openstack", str(EXAMPLE), "--handlers", "include=https://h.example.org/v1", "--image", "alma9",
                             "--flavor", "m1.large", "--network", "workers", "--key-name", "site", "--count", "3",
                             "--property", "vfarm:farm=torino", "--os-cloud", "cern", "--os-region", "RegionTwo", "--dry-run", "-o", str(out_file),
                             "--wait", "--json")
    assert code == 0, err
    assert json.loads(as_json) == {"userdata": str(out_file), "commands": [out.strip()]}


@pytest.mark.parametrize(("extra", "expected"), [
    (["--property", "vfarm:token=x"], "property vfarm:token is vfarm's own"),
    (["--property", "novalue"], "bad property 'novalue': expected KEY=VALUE"),
    (["--property", "site=a", "--property", "site=b"], "property 'site' given twice, with two values: give it once"),
    (["--handlers", "embed", "--max-size", "20000"], "over the limit of 20000"),
])
def test_dry_run_refusals(tmp_path: Path, capsys: pytest.CaptureFixture[str], extra: list[str], expected: str) -> None:
    argv = ["launch", "openstack", str(EXAMPLE), "--handlers", "baked", "--image", "i", "--flavor", "f", "--dry-run",
            "-o", str(tmp_path / "u"), *extra]
    err = one_line_failure(*run(capsys, *argv))
    assert expected in err, err


def test_output_without_dry_run_is_a_usage_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """-o names --dry-run's file: without --dry-run it would be ignored (nothing built, nothing called)."""
    for argv in (["launch", "openstack", str(EXAMPLE), "--image", "i", "--flavor", "f"],
                 ["launch", "ec2", str(EXAMPLE), "--image-id", "ami-1", "--instance-type", "m1.small"]):
        code, out, err = run(capsys, *argv, "-o", str(tmp_path / "u"))
        assert (code, out) == (2, "")
        assert err == f"vfarm {' '.join(argv[:2])}: error: -o/--output is where --dry-run writes the user-data: add --dry-run, or leave -o out\n"
        assert not (tmp_path / "u").exists()


def test_scale_section_openstack_validates(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    farm = tmp_path / "farm.yaml"
    good = ("#multiple-config\nscale:\n  name: torino\n  max-vms: 3\n"
            "  cloud: {type: openstack, cloud: cern, image: alma9, flavor: m1.large, network: workers, properties: {site: to}}\n")
    farm.write_text(good)
    assert run(capsys, "validate", str(farm))[0] == 0
    spec = scale_spec.parse({"name": "t", "max-vms": 1, "cloud": {"type": "openstack", "image": "i", "flavor": "f"}})
    assert openstack.launch_options(spec.cloud) == {"image": "i", "flavor": "f", "network": None, "key_name": None, "properties": {}}
    farm.write_text(good.replace("flavor: m1.large, ", "").replace("site: to", "vfarm:farm: x"))
    code, out, err = run(capsys, "validate", str(farm))
    assert code == 1 and out == ""
    assert all(line.startswith(f"{farm}:5:") for line in err.splitlines()), err
    assert "flavor" in err and "vfarm:farm" in err


def test_servers_in_ec2_shape_for_the_planner() -> None:
    server = {"id": "5f1c", "name": "vfarm-torino-1", "status": "ACTIVE", "created_at": "2026-12-02T03:00:00Z",
              "flavor": {"original_name": "m1.tiny"}, "image": {"id": "img"},
              "addresses": {"private": [{"addr": "127.100.0.7", "OS-EXT-IPS:type": "fixed"},
                                        {"addr": "192.0.2.9", "OS-EXT-IPS:type": "floating"}]},
              "metadata": {"vfarm:managed": "true", "vfarm:farm": "torino", "vfarm:token": "vfarm-x"}}
    d = openstack.describe(server)
    assert d["InstanceId"] == "5f1c" and d["State"] == {"Name": "running"} and d["InstanceType"] == "m1.tiny"
    assert (d["PrivateIpAddress"], d["PublicIpAddress"]) == ("127.100.0.7", "192.0.2.9")
    assert planner.epoch(d["LaunchTime"]) == 1796180400.0
    assert planner.farm_instances([d], "torino") == [d]
    failed = openstack.describe({**server, "status": "ERROR", "fault": {"code": 500, "message": "No valid host was found. "}})
    assert failed["State"]["Name"] == "stopped" and failed["StateReason"]["Message"].startswith("No valid host")
    assert planner.farm_instances([failed], "torino") == []  # neither counted as a worker nor drained
    assert openstack.describe({**server, "status": "BUILD"})["State"]["Name"] == "pending"


def test_the_verdict_is_read_from_novas_console_log() -> None:
    """The console Nova returns ({"output": ...}) holds the final check's line among the boot's
    own: it is found and read as the check wrote it."""
    from types import SimpleNamespace

    from vfarm.cc_modules.check import verdict_line

    summary = {"result": "failed", "instance_id": "5f1c", "vfarm_version": "0.1.0", "decision": {"action": "poweroff", "reason": "a handler failed"},
               "handlers": [{"name": "condor", "status": "failed", "failed": True, "reason": "not joined within 300 s"}]}
    console = f"[  1.0] kernel\n{verdict_line(summary)}\n[ 60.0] reboot: Power down\n"
    compute = SimpleNamespace(get_server_console_output=lambda server_id: {"output": console if server_id == "5f1c" else ""})
    cloud = openstack.OpenStackCloud("cern", connection=SimpleNamespace(compute=compute))
    verdict = cloud.verdict("5f1c")
    assert verdict is not None and verdict.result == "failed" and verdict.action == "poweroff", verdict
    assert "condor" in verdict.text() and "not joined within 300 s" in verdict.text(), verdict.text()
    assert cloud.verdict("other") is None


# --- against an in-memory Nova: failures the real control plane cannot be made to show on cue ---


def http_error(kind: str, status: int, message: str, details: Optional[str] = None) -> Exception:
    """openstacksdk's exception for an HTTP reply of STATUS (as it makes it: from the response)."""
    import requests
    from openstack import exceptions as ox

    response = requests.Response()
    response.status_code = status
    error: Exception = getattr(ox, kind)(message=message, response=response, details=details)
    return error


class FakeCompute:
    """Nova's compute API as openstacksdk shows it, in memory: servers are ACTIVE at once; QUOTA
    servers at most (403 past it); FAIL_ON: the Nth create call raises that exception instead."""

    def __init__(self, quota: int = 100, fail_on: Optional[dict[int, Exception]] = None) -> None:
        self.servers_: dict[str, dict[str, Any]] = {}
        self.quota = quota
        self.fail_on = dict(fail_on or {})
        self.creates = 0

    def servers(self, details: bool = True) -> list[dict[str, Any]]:
        return [dict(s) for s in self.servers_.values()]

    def create_server(self, **kwargs: Any) -> SimpleNamespace:
        self.creates += 1
        if self.creates in self.fail_on:
            raise self.fail_on[self.creates]
        if len(self.servers_) >= self.quota:
            raise http_error("ForbiddenException", 403, f"Quota exceeded for instances: Requested 1, but already used {len(self.servers_)} "
                                                        f"of {self.quota} instances")
        sid = str(uuid.UUID(int=len(self.servers_) + 1000 * self.creates))
        self.servers_[sid] = {"id": sid, "name": kwargs["name"], "status": "ACTIVE", "metadata": dict(kwargs["metadata"]),
                              "created_at": f"2026-12-03T00:00:{self.creates:02d}Z", "flavor": {"original_name": "m1"}}
        return SimpleNamespace(id=sid)

    def add(self, sid: str, metadata: dict[str, str]) -> str:
        self.servers_[sid] = {"id": sid, "name": sid, "status": "ACTIVE", "metadata": dict(metadata), "created_at": "2026-12-03T00:00:00Z"}
        return sid

    def find_server(self, name_or_id: str, ignore_missing: bool = True) -> Optional[SimpleNamespace]:
        return SimpleNamespace(id=name_or_id) if name_or_id in self.servers_ else None

    def get_server(self, sid: str) -> dict[str, Any]:
        if sid not in self.servers_:
            raise http_error("NotFoundException", 404, f"No Server found for {sid}")
        return dict(self.servers_[sid])

    def delete_server(self, sid: str) -> None:
        self.servers_.pop(sid, None)

    def set_server_metadata(self, sid: str, **metadata: str) -> None:
        self.get_server(sid)
        self.servers_[sid]["metadata"].update(metadata)

    def find_flavor(self, name: str, ignore_missing: bool = True) -> SimpleNamespace:
        return SimpleNamespace(id=f"flavor-{name}")


def fake_conn(compute: FakeCompute) -> SimpleNamespace:
    return SimpleNamespace(compute=compute, image=SimpleNamespace(find_image=lambda name, ignore_missing=True: SimpleNamespace(id=f"image-{name}")),
                           network=SimpleNamespace(find_network=lambda name, ignore_missing=True: SimpleNamespace(id=f"net-{name}")),
                           config=SimpleNamespace(get_auth_args=lambda: {"auth_url": "http://127.0.0.1:5000/v3", "password": PASSWORD}))


PASSWORD = "fake-nova-password-never-shown-31"
MANAGED = {openstack.MANAGED_KEY: "true"}


@pytest.fixture
def nova(monkeypatch: pytest.MonkeyPatch) -> FakeCompute:
    """The in-memory Nova every OpenStackCloud made here talks to (also the command line's)."""
    compute = FakeCompute()
    conn = fake_conn(compute)
    monkeypatch.setattr(openstack.OpenStackCloud, "_connect", lambda self: conn)
    return compute


def fake_cloud() -> openstack.OpenStackCloud:
    return openstack.OpenStackCloud("x")


LAUNCH = ("launch", "openstack", str(EXAMPLE), "--handlers", "baked", "--image", "alma9", "--flavor", "m1", "--os-cloud", "x")


@pytest.mark.parametrize("dry_run", [True, False])
def test_max_size_over_novas_limit_is_refused_before_building(nova: FakeCompute, tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                               dry_run: bool) -> None:
    """Nova's limit is fixed (65535 characters of base64): a larger --max-size could only end in
    Nova's 400 (or a dry-run line that fails), so it is refused up front."""
    over = str(openstack.USERDATA_LIMIT + 1)
    argv = [*LAUNCH, "--max-size", over, *(["--dry-run", "-o", str(tmp_path / "u")] if dry_run else [])]
    err = one_line_failure(*run(capsys, *argv))
    assert f"--max-size {over} is over what Nova takes: {openstack.USERDATA_LIMIT} bytes (65535 characters of base64)" in err, err
    assert nova.creates == 0 and not (tmp_path / "u").exists()
    code, out, err = run(capsys, *LAUNCH, "--max-size", str(openstack.USERDATA_LIMIT))  # the limit itself is Nova's: taken
    assert code == 0 and nova.creates == 1, err


def test_novas_answer_is_quoted_short_and_without_the_userdata(nova: FakeCompute, capsys: pytest.CaptureFixture[str]) -> None:
    """Nova's validator quotes a refused user_data in full, twice (200 KB of base64 with the pool's
    token inside): the error quotes Nova's words without any long base64 run, at most 300 characters."""
    secret = b"IDTOKEN-of-the-pool-never-on-stderr-9f3c"

    def refuse(**kwargs: Any) -> NoReturn:
        value = base64.b64encode(base64.b64decode(kwargs["user_data"]) + secret).decode()
        raise http_error("BadRequestException", 400, "BadRequestException: 400: Client Error for url: http://127.0.0.1:8774/v2.1/servers",
                         f"Invalid input for field/attribute user_data. Value: {value}. '{value}' is too long")

    nova.create_server = refuse  # type: ignore[method-assign]
    err = one_line_failure(*run(capsys, *LAUNCH), PASSWORD)
    assert len(err) < 600, err
    assert not re.search(r"[A-Za-z0-9+/]{65}", err), err
    assert "create a server refused (400: Invalid input for field/attribute user_data. Value: [" in err, err
    assert "characters left out]" in err and "is too long" in err, err
    # any long answer: at most 300 characters of it
    long_words = " ".join(["no"] * 2000)
    with pytest.raises(openstack.OpenStackError) as caught:
        fake_cloud()._guard("create a server", lambda: (_ for _ in ()).throw(http_error("HttpException", 409, "x", long_words)))
    quoted = str(caught.value).split("(409: ", 1)[1]
    assert len(quoted) < 340 and quoted.startswith("no no") and quoted.endswith("... [5699 more characters left out])"), quoted


def test_a_launch_failing_part_way_names_what_runs_and_the_token(nova: FakeCompute, capsys: pytest.CaptureFixture[str]) -> None:
    """Servers start one create at a time: when the third is refused (quota), the two before it run
    on. The one line names them and the launch token that starts only the rest."""
    nova.quota = 2
    err = one_line_failure(*run(capsys, *LAUNCH, "--count", "5"), PASSWORD)
    running = sorted(nova.servers_)
    token = next(iter(nova.servers_.values()))["metadata"][openstack.TOKEN_KEY]
    assert "the cloud refused to create a server (quota: Quota exceeded" in err, err
    assert f"; started 2 of 5: {' '.join(running)}; retry with --client-token {token} to start only the rest" in err, err
    nova.quota = 10
    code, out, err = run(capsys, *LAUNCH, "--count", "5", "--client-token", token)
    assert code == 0, err
    assert len(nova.servers_) == 5 and set(running) < set(nova.servers_)  # three more, not five

    # the class of the failure stays (a quota refusal is one for the scaler), with what started
    nova.servers_.clear()
    nova.quota = 1
    with pytest.raises(openstack.OpenStackQuotaError) as caught:
        fake_cloud().launch(b"#cloud-config\n", "alma9", "m1", count=3, client_token="vfarm-t1")
    assert caught.value.started == sorted(nova.servers_) and caught.value.token == "vfarm-t1"
    # refused at the first create, nothing started: no token to retry with
    nova.servers_.clear()
    nova.quota = 0
    with pytest.raises(openstack.OpenStackQuotaError) as caught:
        fake_cloud().launch(b"#cloud-config\n", "alma9", "m1", count=3)
    assert caught.value.token is None and "started" not in str(caught.value)


def test_a_lost_reply_part_way_and_the_scaler(nova: FakeCompute) -> None:
    """The second create's reply is lost three times: the first server runs, and the error says so.
    The scaler's backend raises CloudError (the applier keeps the launch as an intent of unknown
    outcome, EC2's rule), and the same token then starts only what is missing; a quota refusal
    part-way is a CapacityError with the servers started before it (the fallback takes the rest)."""
    from keystoneauth1.exceptions.connection import ConnectFailure

    from vfarm.scaler.apply import CapacityError, CloudError
    from vfarm.scaler.backends import OpenStackBackend

    lost = ConnectFailure("Unable to establish connection: connection reset by peer")
    nova.fail_on = {2: lost, 3: lost, 4: lost}
    spec = scale_spec.parse({"name": "torino", "max-vms": 5, "cloud": {"type": "openstack", "image": "i", "flavor": "f"}})
    backend = OpenStackBackend(spec, b"#cloud-config\n", cloud=fake_cloud())
    worker = spec.worker_type(spec.placements[0].kind)
    with pytest.raises(CloudError) as caught:
        backend.launch(3, "vfarm-torino-1", worker)
    assert not isinstance(caught.value, CapacityError)
    [first] = nova.servers_
    assert f"endpoint not answering (create a server): Unable to establish connection: connection reset by peer; started 1 of 3: {first}" \
        in str(caught.value)
    again = backend.launch(3, "vfarm-torino-1", worker)  # the intent's retry: same token, same count
    assert len(again) == 3 and first in again and len(nova.servers_) == 3

    nova.quota = 4
    with pytest.raises(CapacityError) as refused:
        backend.launch(3, "vfarm-torino-2", worker)
    assert len(refused.value.started) == 1 and "started 1 of 3" in str(refused.value)


def test_terminate_skips_a_server_already_deleted(nova: FakeCompute, capsys: pytest.CaptureFixture[str]) -> None:
    """A server deleted by someone else between the listing and the terminate is already where the
    terminate puts it: skipped (and said), the others are deleted; the scaler's end of its farm's
    workers and its reap go on the same way."""
    from vfarm.scaler.backends import OpenStackBackend

    gone, live = "11111111-0000-0000-0000-000000000001", nova.add("11111111-0000-0000-0000-000000000002", MANAGED)
    code, out, err = run(capsys, "terminate", "--os-cloud", "x", gone, live)
    assert code == 0, err
    assert f"vfarm: already deleted (Nova has no such server): {gone}" in err
    assert [line.split() for line in out.splitlines()[1:]] == [[gone, "terminated", "terminated"], [live, "running", "shutting-down"]]
    assert nova.servers_ == {}

    farm = {**MANAGED, "vfarm:farm": "torino"}
    ids = [nova.add(f"22222222-0000-0000-0000-00000000000{n}", farm) for n in range(3)]
    spec = scale_spec.parse({"name": "torino", "max-vms": 5, "cloud": {"type": "openstack", "image": "i", "flavor": "f"}})
    backend = OpenStackBackend(spec, b"#cloud-config\n", cloud=fake_cloud())
    listed = [i["InstanceId"] for i in backend.farm_instances()]
    nova.delete_server(ids[0])
    backend.terminate({i: "drained" for i in listed})
    assert nova.servers_ == {}

    dead = [nova.add(f"33333333-0000-0000-0000-00000000000{n}", farm) for n in range(2)]
    for sid in dead:
        nova.servers_[sid]["status"] = "ERROR"
    real_servers = nova.servers

    def listed_then_one_deleted(details: bool = True) -> list[dict[str, Any]]:
        found = real_servers(details)
        nova.servers_.pop(dead[0], None)  # deleted by someone else right after Nova listed it
        return found

    nova.servers = listed_then_one_deleted  # type: ignore[method-assign]
    assert backend.reap() == dead
    assert nova.servers_ == {}


@pytest.mark.parametrize(("failure", "expected"), [
    ("endpoint", "endpoint not answering (show a server)"),
    ("401", "credentials refused (401"),
])
def test_terminate_reports_a_failed_lookup_as_itself(nova: FakeCompute, capsys: pytest.CaptureFixture[str], failure: str, expected: str) -> None:
    """A lookup that fails (endpoint down, credentials refused) is that failure, never "not vfarm
    servers"; and a server that exists without vfarm's metadata is refused with nothing deleted."""
    from keystoneauth1 import exceptions as ka

    ours = nova.add("44444444-0000-0000-0000-000000000001", MANAGED)
    foreign = nova.add("44444444-0000-0000-0000-000000000002", {"vfarm:farm": "torino"})
    err = one_line_failure(*run(capsys, "terminate", "--os-cloud", "x", ours, foreign), PASSWORD)
    assert f"not vfarm servers (no metadata vfarm:managed=true), nothing deleted: {foreign}" in err, err
    assert sorted(nova.servers_) == [ours, foreign]

    def broken(*args: Any, **kwargs: Any) -> None:
        if failure == "endpoint":
            raise ka.connection.ConnectFailure("Unable to establish connection to http://127.0.0.1:8774/v2.1/servers")
        raise ka.http.Unauthorized("The request you have made requires authentication.", http_status=401)

    nova.find_server = broken  # type: ignore[method-assign]
    err = one_line_failure(*run(capsys, "terminate", "--os-cloud", "x", ours), PASSWORD)
    assert expected in err and "not vfarm servers" not in err, err
    assert sorted(nova.servers_) == [ours, foreign]


def test_terminate_ids_checks_every_tag(nova: FakeCompute, capsys: pytest.CaptureFixture[str]) -> None:
    """`vfarm terminate --cloud openstack ID... --tag K=V`: each server must hold every K=V as
    metadata, or nothing is deleted (exit 1, naming those that do not)."""
    from vfarm.cli.main import build_parser

    torino = nova.add("55555555-0000-0000-0000-000000000001", {**MANAGED, "vfarm:farm": "torino"})
    milano = nova.add("55555555-0000-0000-0000-000000000002", {**MANAGED, "vfarm:farm": "milano"})

    def terminate(*argv: str) -> tuple[int, str, str]:
        full = ["terminate", "--cloud", "openstack", "--os-cloud", "x", *argv]
        parsed = build_parser(full).parse_args(full)
        code = parsed.func(parsed)  # as `vfarm terminate` dispatches it
        return (code, *capsys.readouterr())

    err = one_line_failure(*terminate(torino, milano, "--tag", "vfarm:farm=torino"), PASSWORD)
    assert f"not tagged vfarm:farm=torino (metadata), nothing deleted: {milano}" in err, err
    assert sorted(nova.servers_) == [torino, milano]
    err = one_line_failure(*terminate(torino, "--tag", "vfarm:farm=torino", "--tag", "site=to"), PASSWORD)
    assert f"not tagged site=to vfarm:farm=torino (metadata), nothing deleted: {torino}" in err, err
    code, out, err = terminate(torino, "--tag", "vfarm:farm=torino")
    assert code == 0 and out.split()[3:] == [torino, "running", "shutting-down"], (out, err)
    assert list(nova.servers_) == [milano]


def test_the_scaler_tags_only_its_farms_servers_and_only_after_the_check(nova: FakeCompute) -> None:
    """The scaler records why it ended a worker (metadata vfarm:end) just before deleting it, and
    only once every server asked for proved to be vfarm's and its farm's: a foreign server, or
    another farm's, is neither tagged nor deleted, and nor is any other server of the same call."""
    from vfarm.scaler.apply import CloudError
    from vfarm.scaler.backends import OpenStackBackend

    ours = nova.add("66666666-0000-0000-0000-000000000001", {**MANAGED, "vfarm:farm": "torino"})
    building = nova.add("66666666-0000-0000-0000-000000000002", {**MANAGED, "vfarm:farm": "torino"})
    foreign = nova.add("66666666-0000-0000-0000-000000000003", {"owner": "someone"})
    milano = nova.add("66666666-0000-0000-0000-000000000004", {**MANAGED, "vfarm:farm": "milano"})
    before = {sid: dict(server["metadata"]) for sid, server in nova.servers_.items()}
    calls: list[tuple[str, str]] = []
    ended: dict[str, dict[str, str]] = {}  # the metadata each deleted server ended with
    set_metadata, delete = nova.set_server_metadata, nova.delete_server

    def recorded_set(sid: str, **metadata: str) -> None:
        calls.append(("set metadata", sid))
        if sid == building:  # Nova refuses metadata on a server still building
            raise http_error("ConflictException", 409, "Cannot 'update_metadata' instance while it is in vm_state building")
        set_metadata(sid, **metadata)

    def recorded_delete(sid: str) -> None:
        calls.append(("delete", sid))
        ended[sid] = dict(nova.servers_[sid]["metadata"])
        delete(sid)

    nova.set_server_metadata = recorded_set  # type: ignore[method-assign]
    nova.delete_server = recorded_delete  # type: ignore[method-assign]
    spec = scale_spec.parse({"name": "torino", "max-vms": 5, "cloud": {"type": "openstack", "image": "i", "flavor": "f"}})
    backend = OpenStackBackend(spec, b"#cloud-config\n", cloud=fake_cloud())

    with pytest.raises(CloudError, match=f"not vfarm servers \\(no metadata vfarm:managed=true\\), nothing deleted: {foreign}$"):
        backend.terminate({ours: "drained", foreign: "lost"})
    with pytest.raises(CloudError, match=f"not tagged vfarm:farm=torino \\(metadata\\), nothing deleted: {milano}$"):
        backend.terminate({milano: "lost", ours: "drained"})
    assert calls == []
    assert {sid: server["metadata"] for sid, server in nova.servers_.items()} == before

    # Its own: tagged, then deleted; one that refuses the tag is deleted all the same.
    backend.terminate({ours: "drained", building: "lost"})
    assert calls == [("set metadata", ours), ("delete", ours), ("set metadata", building), ("delete", building)]
    assert ended[ours]["vfarm:end"] == "drained" and "vfarm:end" not in ended[building]
    assert sorted(nova.servers_) == [foreign, milano]


def test_a_listing_that_lags_behind_the_creates_never_starts_more_than_count(nova: FakeCompute) -> None:
    """Nova took every create, yet its listing shows none of them (a lagging or partial listing):
    one launch makes COUNT creates at most, then fails naming the token to retry with."""
    nova.servers = lambda details=True: []  # type: ignore[method-assign]
    with pytest.raises(openstack.OpenStackError, match=r"2 server\(s\) created, yet the listing by token shows 0") as info:
        fake_cloud().launch(b"#cloud-config\n", "alma9", "m1", count=2, client_token="tok-lag")
    assert nova.creates == 2 and len(nova.servers_) == 2 and info.value.token == "tok-lag"


def test_replies_outside_novas_shape_are_read_or_one_line(nova: FakeCompute, capsys: pytest.CaptureFixture[str]) -> None:
    """A server's addresses, flavor or fault that are not objects read as none; a console reply
    that is not one is one line, never a traceback."""
    sid = nova.add("5f1c", dict(MANAGED))
    nova.servers_[sid].update(addresses={"private": ["10.0.0.5", {"addr": "10.0.0.6"}], "odd": "x"}, flavor="m1", fault=["x"])
    [listed] = fake_cloud().instances()
    assert (listed["InstanceId"], listed["PrivateIpAddress"], listed["InstanceType"]) == (sid, "10.0.0.6", "?")
    nova.get_server_console_output = lambda server_id: "console text"  # type: ignore[attr-defined]
    with pytest.raises(openstack.OpenStackError, match=f"the console output of {sid} is not in Nova's shape$"):
        fake_cloud().console_output(sid)
