"""The EC2 backend (clouds/ec2.py) against a real EC2 API endpoint: moto in server mode on
127.0.0.1 (tests/fixtures/moto.py), through the same boto3 calls a user's run makes."""

from __future__ import annotations

import gzip
import socket

import pytest

from tests.fixtures.moto import INSTANCE_LIMIT, NO_CAPACITY_TYPE, TEST_SECRET, Ec2Endpoint
from vfarm.clouds import ec2

pytestmark = pytest.mark.integration  # starts processes (see tests/conftest.py)


def cloud_for(endpoint: Ec2Endpoint) -> ec2.Ec2Cloud:
    return ec2.Ec2Cloud(ec2.Ec2Params.resolve(endpoint_url=endpoint.url))


def closed_port() -> int:
    """A loopback port nobody listens on (bound, then released)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
    return port


def test_launch_tags_shutdown_behaviour_and_userdata(ec2_endpoint: Ec2Endpoint) -> None:
    cloud = cloud_for(ec2_endpoint)
    userdata = gzip.compress(b"Content-Type: multipart/mixed\n\nbinary \x00\xff payload", mtime=0)
    launched = cloud.launch(userdata, ec2_endpoint.image_id, "t3.micro", count=2, tags={"vfarm:farm": "torino"}, client_token="tok-1")
    assert len(launched) == 2
    ids = [i["InstanceId"] for i in launched]
    raw = ec2_endpoint.client()
    for instance in cloud.describe(ids):
        tags = ec2.tags_of(instance)
        assert tags[ec2.MANAGED_TAG] == "true" and tags["vfarm:farm"] == "torino"
        assert instance["ImageId"] == ec2_endpoint.image_id and instance["InstanceType"] == "t3.micro"
        assert instance["ClientToken"] == "tok-1"
        attr = raw.describe_instance_attribute(InstanceId=instance["InstanceId"], Attribute="instanceInitiatedShutdownBehavior")
        assert attr["InstanceInitiatedShutdownBehavior"]["Value"] == "terminate"
        # what the cloud hands the instance is exactly what was given, binary and all
        assert cloud.userdata(instance["InstanceId"]) == userdata


def test_instances_lists_only_vfarm_ones_and_filters(ec2_endpoint: Ec2Endpoint) -> None:
    cloud = cloud_for(ec2_endpoint)
    raw = ec2_endpoint.client()
    foreign = raw.run_instances(ImageId=ec2_endpoint.image_id, InstanceType="t3.micro", MinCount=1, MaxCount=1)["Instances"][0]["InstanceId"]
    a = [i["InstanceId"] for i in cloud.launch(b"#cloud-config\n", ec2_endpoint.image_id, "t3.micro", tags={"vfarm:farm": "a"})]
    b = [i["InstanceId"] for i in cloud.launch(b"#cloud-config\n", ec2_endpoint.image_id, "t3.micro", count=2, tags={"vfarm:farm": "b"})]
    listed = [i["InstanceId"] for i in cloud.instances()]
    assert sorted(listed) == sorted(a + b) and foreign not in listed
    assert sorted(i["InstanceId"] for i in cloud.instances({"vfarm:farm": "b"})) == sorted(b)
    cloud.terminate(a)
    assert sorted(i["InstanceId"] for i in cloud.instances()) == sorted(b)
    assert a[0] in [i["InstanceId"] for i in cloud.instances(states=None)]


def test_terminate_refuses_foreign_instances_and_touches_nothing(ec2_endpoint: Ec2Endpoint) -> None:
    cloud = cloud_for(ec2_endpoint)
    raw = ec2_endpoint.client()
    foreign = raw.run_instances(ImageId=ec2_endpoint.image_id, InstanceType="t3.micro", MinCount=1, MaxCount=1)["Instances"][0]["InstanceId"]
    ours = cloud.launch(b"#cloud-config\n", ec2_endpoint.image_id, "t3.micro")[0]["InstanceId"]
    with pytest.raises(ec2.Ec2Error, match=f"not vfarm instances.*{foreign}"):
        cloud.terminate([ours, foreign])
    states = {i["InstanceId"]: i["State"]["Name"] for i in cloud.describe([ours, foreign])}
    assert states == {ours: "running", foreign: "running"}
    changes = cloud.terminate([ours])
    assert [(c["InstanceId"], c["CurrentState"]["Name"]) for c in changes] == [(ours, "shutting-down")]


def test_wait_running_reports_progress_and_fails_when_an_instance_goes_away(ec2_endpoint: Ec2Endpoint) -> None:
    cloud = cloud_for(ec2_endpoint)
    ids = [i["InstanceId"] for i in cloud.launch(b"#cloud-config\n", ec2_endpoint.image_id, "t3.micro", count=2)]
    seen: list[list[str]] = []
    running = cloud.wait_running(ids, timeout=30, interval=0.01, progress=lambda cur: seen.append([i["State"]["Name"] for i in cur]))
    assert sorted(i["InstanceId"] for i in running) == sorted(ids) and seen[-1] == ["running", "running"]
    cloud.terminate(ids[:1])
    with pytest.raises(ec2.Ec2Error, match=f"went away.*{ids[0]}"):
        cloud.wait_running(ids, timeout=30, interval=0.01)


def test_wait_running_times_out_with_the_laggards_named() -> None:
    class Slow(ec2.Ec2Cloud):
        def describe(self, ids: object) -> list[dict[str, object]]:
            return [{"InstanceId": "i-1", "State": {"Name": "running"}}, {"InstanceId": "i-2", "State": {"Name": "pending"}}]

    now = [0.0]

    def sleep(s: float) -> None:
        now[0] += s

    with pytest.raises(ec2.Ec2Error, match=r"not running after 60 s: i-2 pending$"):
        Slow().wait_running(["i-1", "i-2"], timeout=60, interval=5, sleep=sleep, clock=lambda: now[0])


# --- errors: one line each, nothing secret in it ------------------------------------------------


def test_userdata_over_the_limit_is_refused_before_any_call() -> None:
    cloud = ec2.Ec2Cloud(ec2.Ec2Params(endpoint_url=f"http://127.0.0.1:{closed_port()}"))
    with pytest.raises(ec2.Ec2Error, match="16385 bytes, over the limit of 16384"):
        cloud.launch(b"x" * 16385, "ami-12345678", "t3.micro")


def test_endpoint_not_answering(ec2_endpoint: Ec2Endpoint) -> None:
    url = f"http://127.0.0.1:{closed_port()}"
    with pytest.raises(ec2.Ec2Error, match=f"EC2 endpoint {url}/? not answering") as info:
        ec2.Ec2Cloud(ec2.Ec2Params(endpoint_url=url)).instances()
    assert "\n" not in str(info.value) and TEST_SECRET not in str(info.value)


def test_credentials_refused_and_accepted_by_a_checking_endpoint(ec2_endpoint: Ec2Endpoint, monkeypatch: pytest.MonkeyPatch) -> None:
    with ec2_endpoint.server.enforce_auth() as (key_id, secret):
        good = ec2.Ec2Cloud(ec2.Ec2Params(endpoint_url=ec2_endpoint.url, access_key=key_id, secret_key=secret))
        assert good.instances() == []
        for bad_key, bad_secret in ((key_id, "wrong-secret-0123456789"), ("AKIANOTKNOWN00000000", secret)):
            cloud = ec2.Ec2Cloud(ec2.Ec2Params(endpoint_url=ec2_endpoint.url, access_key=bad_key, secret_key=bad_secret))
            with pytest.raises(ec2.Ec2Error, match="credentials refused") as info:
                cloud.launch(b"#cloud-config\n", ec2_endpoint.image_id, "t3.micro")
            assert bad_secret not in str(info.value) and secret not in str(info.value)


def test_unknown_image(ec2_endpoint: Ec2Endpoint) -> None:
    with pytest.raises(ec2.Ec2Error, match=r"unknown image ami-0123456789abcdef0 \(InvalidAMIID.NotFound"):
        cloud_for(ec2_endpoint).launch(b"#cloud-config\n", "ami-0123456789abcdef0", "t3.micro")


def test_quota_and_capacity_errors(ec2_endpoint: Ec2Endpoint) -> None:
    cloud = cloud_for(ec2_endpoint)
    cloud.launch(b"#cloud-config\n", ec2_endpoint.image_id, "t3.micro", count=INSTANCE_LIMIT - 1)
    with pytest.raises(ec2.Ec2Error, match=r"refused 2 x t3.micro \(quota or capacity: InstanceLimitExceeded: .*limit of 20"):
        cloud.launch(b"#cloud-config\n", ec2_endpoint.image_id, "t3.micro", count=2)
    with pytest.raises(ec2.Ec2Error, match=f"quota or capacity: InsufficientInstanceCapacity: .*{NO_CAPACITY_TYPE}"):
        cloud.launch(b"#cloud-config\n", ec2_endpoint.image_id, NO_CAPACITY_TYPE)
    assert len(cloud.instances()) == INSTANCE_LIMIT - 1  # neither refused launch started anything


def test_no_region_and_no_credentials(ec2_endpoint: Ec2Endpoint, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("AWS_DEFAULT_REGION")
    with pytest.raises(ec2.Ec2Error, match="no region"):
        ec2.Ec2Cloud(ec2.Ec2Params()).instances()
    monkeypatch.delenv("AWS_ACCESS_KEY_ID")
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")
    with pytest.raises(ec2.Ec2Error, match="no credentials"):
        ec2.Ec2Cloud(ec2.Ec2Params(endpoint_url=ec2_endpoint.url)).instances()


# --- pure parts ---------------------------------------------------------------------------------


def test_params_follow_euca2ools_variables_where_boto3_has_nothing() -> None:
    env = {"EC2_URL": "http://cloud.example:8773/services/Cloud", "EC2_ACCESS_KEY": "AK", "EC2_SECRET_KEY": "SK"}
    p = ec2.Ec2Params.resolve(environ=env)
    assert (p.endpoint_url, p.access_key, p.secret_key) == (env["EC2_URL"], "AK", "SK")
    assert "SK" not in repr(p) and "AK" not in repr(p)
    # explicit options and boto3's own variables win
    p = ec2.Ec2Params.resolve(endpoint_url="http://other", environ={**env, "AWS_ACCESS_KEY_ID": "X"})
    assert (p.endpoint_url, p.access_key) == ("http://other", None)
    assert ec2.Ec2Params.resolve(profile="site", environ=env).access_key is None
    with pytest.raises(ec2.Ec2Error, match="EC2_SECRET_KEY is not set"):
        ec2.Ec2Params.resolve(environ={"EC2_ACCESS_KEY": "AK"})


def test_run_request_groups_tags_and_refusals() -> None:
    r = ec2.run_request("ami-1", "m5.large", 3, {"site": "to"}, "key", ["sg-123", "workers"], None, "tok")
    assert r["MinCount"] == r["MaxCount"] == 3 and r["InstanceInitiatedShutdownBehavior"] == "terminate"
    assert r["SecurityGroupIds"] == ["sg-123"] and r["SecurityGroups"] == ["workers"]
    assert r["TagSpecifications"] == [{"ResourceType": "instance", "Tags": [{"Key": "site", "Value": "to"}, {"Key": ec2.MANAGED_TAG, "Value": "true"}]}]
    assert (r["KeyName"], r["ClientToken"]) == ("key", "tok")
    with pytest.raises(ec2.Ec2Error, match="by ID.*workers"):
        ec2.run_request("ami-1", "m5.large", security_groups=["workers"], subnet="subnet-1")
    with pytest.raises(ec2.Ec2Error, match="at least 1"):
        ec2.run_request("ami-1", "m5.large", count=0)
    with pytest.raises(ec2.Ec2Error, match="vfarm's own"):
        ec2.run_request("ami-1", "m5.large", tags={ec2.MANAGED_TAG: "false"})
    with pytest.raises(ec2.Ec2Error, match="KEY=VALUE"):
        ec2.parse_tags(["=x"])


def test_scale_cloud_section_drives_the_same_backend(ec2_endpoint: Ec2Endpoint) -> None:
    section = {"type": "ec2", "image-id": ec2_endpoint.image_id, "instance-type": "m1.large", "endpoint-url": ec2_endpoint.url,
               "security-groups": ["workers"], "tags": {"vfarm:farm": "torino"}}  # fmt: skip
    ec2_endpoint.client().create_security_group(GroupName="workers", Description="vfarm workers")
    cloud = ec2.cloud_from_section(section)
    launched = cloud.launch(b"#cloud-config\n", count=2, **ec2.launch_options(section))
    farm = cloud.instances({"vfarm:farm": "torino"}, states=("pending", "running"))
    assert sorted(i["InstanceId"] for i in farm) == sorted(i["InstanceId"] for i in launched)
    assert all(i["InstanceType"] == "m1.large" and i["SecurityGroups"][0]["GroupName"] == "workers" for i in farm)
