"""`vfarm launch ec2`, `vfarm instances`, `vfarm terminate` against moto in server mode (a real
EC2 API endpoint on 127.0.0.1), run in-process through the command line's own entry point."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.clouds.test_ec2 import answering, closed_port
from tests.fixtures.moto import TEST_SECRET, Ec2Endpoint
from vfarm.cli.main import main
from vfarm.clouds import ec2

pytestmark = pytest.mark.integration  # starts processes (see tests/conftest.py)

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "examples" / "torino.yaml"


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def one_line_failure(code: int, out: str, err: str, *secrets: str) -> str:
    """Exit 1, nothing on stdout, exactly one line on stderr, no traceback, no secret."""
    assert code == 1, (out, err)
    assert out == ""
    assert len(err.splitlines()) == 1 and err.startswith("vfarm: "), err
    for secret in (TEST_SECRET, *secrets):
        assert secret not in err
    return err


def launch_some(endpoint: Ec2Endpoint, count: int, **tags: str) -> list[str]:
    cloud = ec2.Ec2Cloud(ec2.Ec2Params(endpoint_url=endpoint.url))
    return [i["InstanceId"] for i in cloud.launch(b"#cloud-config\n", endpoint.image_id, "t3.micro", count=count, tags=tags)]


def test_instances_table_json_and_terminate(ec2_endpoint: Ec2Endpoint, capsys: pytest.CaptureFixture[str]) -> None:
    url = ec2_endpoint.url
    foreign = ec2_endpoint.client().run_instances(ImageId=ec2_endpoint.image_id, InstanceType="t3.micro", MinCount=1, MaxCount=1)
    foreign_id = foreign["Instances"][0]["InstanceId"]
    a = launch_some(ec2_endpoint, 2, **{"vfarm:farm": "a"})
    b = launch_some(ec2_endpoint, 1, **{"vfarm:farm": "b"})

    code, out, err = run(capsys, "instances", "--endpoint-url", url)
    assert code == 0, err
    lines = out.splitlines()
    assert lines[0].split() == ["ID", "STATE", "TYPE", "PRIVATE", "IP", "PUBLIC", "IP", "LAUNCHED", "TAGS"]
    assert sorted(line.split()[0] for line in lines[1:]) == sorted(a + b)
    assert all(" running " in line and "vfarm:farm=" in line for line in lines[1:])

    code, out, _ = run(capsys, "instances", "--endpoint-url", url, "--tag", "vfarm:farm=a", "--json")
    assert code == 0 and sorted(i["InstanceId"] for i in json.loads(out)) == sorted(a)

    err = one_line_failure(*run(capsys, "terminate", "--endpoint-url", url, b[0], foreign_id))
    assert f"not vfarm instances (no tag vfarm:managed=true), nothing terminated: {foreign_id}" in err

    code, out, err = run(capsys, "terminate", "--endpoint-url", url, "--all", "--tag", "vfarm:farm=a")
    assert code == 0, err
    assert sorted(line.split()[0] for line in out.splitlines()[1:]) == sorted(a)
    assert all(line.split()[1:] == ["running", "shutting-down"] for line in out.splitlines()[1:])

    code, out, _ = run(capsys, "instances", "--endpoint-url", url, "--json")
    assert [i["InstanceId"] for i in json.loads(out)] == b
    code, out, err = run(capsys, "terminate", "--endpoint-url", url)  # a usage error: exit 2, as --help says
    assert code == 2 and out == "" and err.startswith("vfarm: terminate: give instance IDs or --all") and len(err.splitlines()) == 1, err


def test_euca2ools_variables_against_a_checking_endpoint(
    ec2_endpoint: Ec2Endpoint, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("AWS_ACCESS_KEY_ID")
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")
    monkeypatch.delenv("AWS_DEFAULT_REGION")  # an EC2_URL cloud has no AWS region
    monkeypatch.setenv("EC2_URL", ec2_endpoint.url)
    with ec2_endpoint.server.enforce_auth() as (key_id, secret):
        monkeypatch.setenv("EC2_ACCESS_KEY", key_id)
        monkeypatch.setenv("EC2_SECRET_KEY", secret)
        code, out, err = run(capsys, "instances")
        assert (code, out) == (0, ""), err
        monkeypatch.setenv("EC2_SECRET_KEY", "not-the-secret-0123456789")
        err = one_line_failure(*run(capsys, "instances"), secret, "not-the-secret-0123456789")
        assert "credentials refused (AuthFailure" in err


def test_endpoint_not_answering(ec2_endpoint: Ec2Endpoint, capsys: pytest.CaptureFixture[str]) -> None:
    url = f"http://127.0.0.1:{closed_port()}"
    err = one_line_failure(*run(capsys, "instances", "--endpoint-url", url))
    assert f"EC2 endpoint {url}" in err and "not answering" in err


def test_endpoint_that_is_not_an_ec2_api(ec2_endpoint: Ec2Endpoint, capsys: pytest.CaptureFixture[str]) -> None:
    with answering(503, b"Service Unavailable\n") as url:
        err = one_line_failure(*run(capsys, "instances", "--endpoint-url", url))
    assert err == f"vfarm: EC2 endpoint {url} (describe instances): the endpoint did not answer as an EC2 API (HTTP status 503)\n"


def test_terminate_ids_with_tags_checks_them_first(ec2_endpoint: Ec2Endpoint, capsys: pytest.CaptureFixture[str]) -> None:
    url = ec2_endpoint.url
    a = launch_some(ec2_endpoint, 1, **{"vfarm:farm": "a"})
    b = launch_some(ec2_endpoint, 1, **{"vfarm:farm": "b"})
    # b belongs to another farm: refused, and a is not terminated either
    err = one_line_failure(*run(capsys, "terminate", "--endpoint-url", url, a[0], b[0], "--tag", "vfarm:farm=a"))
    assert err == f"vfarm: not tagged vfarm:farm=a, nothing terminated: {b[0]}\n"
    code, out, _ = run(capsys, "instances", "--endpoint-url", url, "--json")
    assert sorted(i["InstanceId"] for i in json.loads(out) if i["State"]["Name"] == "running") == sorted(a + b)
    code, out, err = run(capsys, "terminate", "--endpoint-url", url, a[0], "--tag", "vfarm:farm=a", "--tag", "vfarm:managed=true")
    assert code == 0 and [line.split()[0] for line in out.splitlines()[1:]] == a, err


def test_unknown_profile_and_partial_euca_keys(ec2_endpoint: Ec2Endpoint, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    err = one_line_failure(*run(capsys, "instances", "--profile", "nosuchprofile"))
    assert "nosuchprofile" in err
    monkeypatch.delenv("AWS_ACCESS_KEY_ID")
    monkeypatch.setenv("EC2_ACCESS_KEY", "AKIAONLYKEY")
    assert "EC2_SECRET_KEY is not set" in one_line_failure(*run(capsys, "instances", "--endpoint-url", ec2_endpoint.url))



def test_launch_targets_are_shared_by_every_module_that_registers_one() -> None:
    import argparse

    from vfarm.cli.cloud import launch_targets

    parser = argparse.ArgumentParser(prog="vfarm")
    sub = parser.add_subparsers(dest="command", required=True)
    launch_targets(sub).add_parser("local").add_argument("file")
    launch_targets(sub).add_parser("ec2").add_argument("file")
    assert parser.parse_args(["launch", "local", "a.yaml"]).launch_target == "local"
    assert parser.parse_args(["launch", "ec2", "b.yaml"]).launch_target == "ec2"
