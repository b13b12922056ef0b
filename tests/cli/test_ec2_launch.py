"""`vfarm launch ec2 FILE ...` against moto in server mode: the user-data the EC2 API hands an
instance is byte-identical to what `vfarm build` writes; --wait, --json, --dry-run; every refusal
is one line and exit 1."""

from __future__ import annotations

import base64
import hashlib
import json
import re
import shlex
import threading
from pathlib import Path

import pytest

from tests.cli.test_ec2_cli import one_line_failure, run
from tests.clouds.test_ec2 import closed_port, losing_replies
from tests.fixtures.moto import INSTANCE_LIMIT, NO_CAPACITY_TYPE, Ec2Endpoint
from vfarm.cli.main import build_parser

pytestmark = pytest.mark.integration  # starts processes (see tests/conftest.py)

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "examples" / "torino.yaml"


def build(capsys: pytest.CaptureFixture[str], tmp_path: Path, *options: str) -> bytes:
    """What `vfarm build` writes for the example."""
    out = tmp_path / "built.userdata"
    code, _, err = run(capsys, "build", str(EXAMPLE), "-o", str(out), *options)
    assert code == 0, err
    return out.read_bytes()


def launch_args(endpoint: Ec2Endpoint, *extra: str) -> list[str]:
    """A launch of the example; handlers baked (the smallest user-data) unless EXTRA says otherwise."""
    handlers = () if "--handlers" in extra else ("--handlers", "baked")
    return ["launch", "ec2", str(EXAMPLE), "--image-id", endpoint.image_id, "--instance-type", "t3.micro", "--endpoint-url", endpoint.url, *handlers, *extra]


@pytest.mark.parametrize(
    "options",
    [("--handlers", "baked"), ("--handlers", "include=https://handlers.example.org/vfarm", "--gzip", "always"), ("--handlers", "embed", "--max-size", "65535")],
    ids=["baked", "include-gzip", "embed"],
)
def test_launched_userdata_is_byte_identical_to_vfarm_build(
    ec2_endpoint: Ec2Endpoint, capsys: pytest.CaptureFixture[str], tmp_path: Path, options: tuple[str, ...]
) -> None:
    built = build(capsys, tmp_path, *options)
    code, out, err = run(capsys, *launch_args(ec2_endpoint, "--count", "2", "--tag", "vfarm:farm=torino", "--json", *options))
    assert code == 0, err
    instances = json.loads(out)
    assert len(instances) == 2
    raw = ec2_endpoint.client()  # plain boto3: what the cloud really holds, no vfarm code in between
    for instance in instances:
        attr = raw.describe_instance_attribute(InstanceId=instance["InstanceId"], Attribute="userData")
        assert base64.b64decode(attr["UserData"]["Value"]) == built
        tags = {t["Key"]: t["Value"] for t in instance["Tags"]}
        assert tags == {"vfarm:managed": "true", "vfarm:farm": "torino"}


def test_launch_table_and_wait_with_progress(ec2_endpoint: Ec2Endpoint, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run(capsys, *launch_args(ec2_endpoint, "--count", "2", "--wait", "--wait-interval", "0.05"))
    assert code == 0, err
    assert "vfarm: launched 2 instance(s)" in err
    assert "waiting: 2/2 running (" in err
    rows = [line.split() for line in out.splitlines()[1:]]
    assert len(rows) == 2 and all(r[0].startswith("i-") and r[1] == "running" and r[2] == "t3.micro" for r in rows)
    assert all(r[3].count(".") == 3 for r in rows)  # a private address


def test_dry_run_writes_the_userdata_and_calls_nothing(capsys: pytest.CaptureFixture[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    built = build(capsys, tmp_path, "--handlers", "baked")
    monkeypatch.chdir(tmp_path)
    url = f"http://127.0.0.1:{closed_port()}"  # nothing listens: any API call would fail
    argv = ["launch", "ec2", str(EXAMPLE), "--image-id", "ami-0123abcd", "--instance-type", "m5.large", "--count", "3"]
    argv += ["--security-group", "workers", "--key-name", "site", "--tag", "vfarm:farm=torino", "--endpoint-url", url, "--handlers", "baked", "--dry-run"]
    code, out, err = run(capsys, *argv)
    assert code == 0, err
    written = tmp_path / "torino.userdata"
    assert written.read_bytes() == built
    assert written.stat().st_mode & 0o777 == 0o600  # may carry proxy credentials or a pool token
    assert f"wrote {len(built)} bytes" in err and "nothing launched" in err
    euca, tag_note, aws = out.splitlines()
    assert shlex.split(euca) == [
        "euca-run-instances", "ami-0123abcd", "-t", "m5.large", "-n", "3", "-g", "workers", "-k", "site",
        "--instance-initiated-shutdown-behavior", "terminate", "-f", "torino.userdata", "-U", url,
    ]  # fmt: skip
    assert tag_note == "# then: euca-create-tags INSTANCE_ID... --tag vfarm:farm=torino --tag vfarm:managed=true"
    words = shlex.split(aws)
    assert words[:3] == ["aws", "ec2", "run-instances"]
    scheme = "fileb" if built[:2] == b"\x1f\x8b" else "file"
    assert words[words.index("--user-data") + 1] == f"{scheme}://torino.userdata"
    assert words[words.index("--endpoint-url") + 1] == url
    tag_spec = json.loads(words[words.index("--tag-specifications") + 1])
    assert tag_spec[0]["Tags"] == [{"Key": "vfarm:farm", "Value": "torino"}, {"Key": "vfarm:managed", "Value": "true"}]
    for flag, value in (("--image-id", "ami-0123abcd"), ("--count", "3"), ("--security-groups", "workers"), ("--key-name", "site")):
        assert words[words.index(flag) + 1] == value
    # --json: the same, as JSON alone on stdout
    code, out, err = run(capsys, *argv, "--json")
    assert code == 0, err
    assert json.loads(out) == {"userdata": "torino.userdata", "commands": [euca, tag_note, aws]}


def test_launch_refusals_are_one_line(ec2_endpoint: Ec2Endpoint, capsys: pytest.CaptureFixture[str]) -> None:
    err = one_line_failure(*run(capsys, *launch_args(ec2_endpoint)[:3], "--image-id", "ami-0000000000000dead", "--instance-type", "t3.micro",
                                "--endpoint-url", ec2_endpoint.url, "--handlers", "baked"))  # fmt: skip
    assert "unknown image ami-0000000000000dead (InvalidAMIID.NotFound" in err
    err = one_line_failure(*run(capsys, *launch_args(ec2_endpoint, "--count", str(INSTANCE_LIMIT + 1))))
    assert f"refused {INSTANCE_LIMIT + 1} x t3.micro (quota or capacity: InstanceLimitExceeded" in err
    args = launch_args(ec2_endpoint)
    args[args.index("t3.micro")] = NO_CAPACITY_TYPE
    assert "quota or capacity: InsufficientInstanceCapacity" in one_line_failure(*run(capsys, *args))
    url = f"http://127.0.0.1:{closed_port()}"
    args[args.index(ec2_endpoint.url)] = url
    assert f"EC2 endpoint {url}" in one_line_failure(*run(capsys, *args))
    code, out, _ = run(capsys, "instances", "--endpoint-url", ec2_endpoint.url, "--json")
    assert (code, json.loads(out)) == (0, [])  # nothing was started by any refused launch


def test_userdata_over_16384_bytes_is_refused_before_any_call(ec2_endpoint: Ec2Endpoint, capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    # raw CVMFS_* keys with incompressible values: over EC2's limit even gzip-compressed
    values = "\n".join(f"    CVMFS_VFARM_TEST_{i}: {hashlib.sha256(str(i).encode()).hexdigest() * 2}" for i in range(400))
    big = tmp_path / "big.yaml"
    big.write_text(f"#multiple-config\ncvmfs:\n  local:\n    repositories: alice.cern.ch\n    http-proxy: DIRECT\n{values}\n")
    args = launch_args(ec2_endpoint)
    args[2] = str(big)
    err = one_line_failure(*run(capsys, *args))
    assert f"{big}: gzipped user-data is " in err and "over the limit of 16384" in err
    code, out, _ = run(capsys, "instances", "--endpoint-url", ec2_endpoint.url, "--json")
    assert (code, json.loads(out)) == (0, [])


def test_bad_config_is_reported_with_its_position(ec2_endpoint: Ec2Endpoint, capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("#multiple-config\nlocalfs:\n  parts:\n    home: lots\n")
    args = launch_args(ec2_endpoint)
    args[2] = str(bad)
    code, out, err = run(capsys, *args)
    assert code == 1 and out == "" and err.startswith(f"{bad}:4:")


def test_a_lost_reply_names_the_token_that_retries_it(ec2_endpoint: Ec2Endpoint, capsys: pytest.CaptureFixture[str]) -> None:
    dropped = threading.Event()
    with losing_replies(ec2_endpoint.url, b"Action=RunInstances", dropped) as proxy:
        args = launch_args(ec2_endpoint, "--count", "2", "--tag", "vfarm:farm=torino")
        args[args.index(ec2_endpoint.url)] = proxy
        err = one_line_failure(*run(capsys, *args))
    assert dropped.wait(10)
    assert "the launch may have started instances: `vfarm instances --tag vfarm:farm=torino` shows them" in err
    found = re.search(r"retry with --client-token (\S+) to start none twice$", err.strip())
    assert found, err
    code, out, _ = run(capsys, "instances", "--endpoint-url", ec2_endpoint.url, "--json")
    started = sorted(i["InstanceId"] for i in json.loads(out))
    assert code == 0 and len(started) == 2  # the call was carried out: only its reply was lost
    # the retry with that token gets the same reservation (EC2's idempotency; moto's here: see the fixture)
    code, out, err = run(capsys, *launch_args(ec2_endpoint, "--count", "2", "--tag", "vfarm:farm=torino", "--client-token", found.group(1), "--json"))
    assert code == 0 and sorted(i["InstanceId"] for i in json.loads(out)) == started, err
    code, out, _ = run(capsys, "instances", "--endpoint-url", ec2_endpoint.url, "--json")
    assert sorted(i["InstanceId"] for i in json.loads(out)) == started


LAUNCHES = {
    "ec2": ["launch", "ec2", "f.yaml", "--image-id", "ami-1", "--instance-type", "t3.micro"],
    "openstack": ["launch", "openstack", "f.yaml", "--image", "debian-12", "--flavor", "m1.large"],
}


@pytest.mark.parametrize("command", LAUNCHES)
@pytest.mark.parametrize("option", ["--wait-timeout", "--wait-interval"])
@pytest.mark.parametrize("value", ["nan", "inf", "-inf", "-5", "0", "soon"])
def test_wait_durations_must_be_finite_and_positive(command: str, option: str, value: str, capsys: pytest.CaptureFixture[str]) -> None:
    argv = [*LAUNCHES[command], f"{option}={value}"]
    with pytest.raises(SystemExit) as info:
        build_parser(argv).parse_args(argv)
    assert info.value.code == 2
    assert f"{option}: expected a" in capsys.readouterr().err


@pytest.mark.parametrize("command", LAUNCHES)
def test_wait_durations_that_are_accepted(command: str) -> None:
    argv = [*LAUNCHES[command], "--wait-timeout", "1e3", "--wait-interval", "0.25"]
    args = build_parser(argv).parse_args(argv)
    assert (args.wait_timeout, args.wait_interval) == (1000.0, 0.25)
    default = build_parser(LAUNCHES[command]).parse_args(LAUNCHES[command])
    assert default.wait_timeout == 900.0
