"""The EC2 backend (clouds/ec2.py) against a real EC2 API endpoint: moto in server mode on
127.0.0.1 (tests/fixtures/moto.py), through the same boto3 calls a user's run makes."""

from __future__ import annotations

import gzip
import socket
import threading
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from tests.fixtures.moto import INSTANCE_LIMIT, NO_CAPACITY_TYPE, TEST_SECRET, Ec2Endpoint
from vfarm.clouds import ec2
from vfarm.config import scale as scale_spec
from vfarm.scaler import backends
from vfarm.scaler.apply import CloudError

pytestmark = pytest.mark.integration  # starts processes (see tests/conftest.py)


def cloud_for(endpoint: Ec2Endpoint) -> ec2.Ec2Cloud:
    return ec2.Ec2Cloud(ec2.Ec2Params.resolve(endpoint_url=endpoint.url))


def closed_port() -> int:
    """A loopback port nobody listens on (bound, then released)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
    return port


@contextmanager
def serving(handler: type[BaseHTTPRequestHandler]) -> Iterator[str]:
    """HANDLER on a free loopback port, in a thread; yields its URL."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


def answering(status: int, body: bytes, content_type: str = "text/plain") -> AbstractContextManager[str]:
    """A loopback web server that answers every request with STATUS and BODY (not an EC2 API)."""

    class Fixed(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            self.rfile.read(int(self.headers.get("Content-Length", 0)))
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    return serving(Fixed)


def losing_replies(upstream: str, marker: bytes, dropped: threading.Event) -> AbstractContextManager[str]:
    """A loopback proxy to UPSTREAM that loses the reply of each request whose body holds MARKER:
    it forwards it, reads the whole reply (the call is done upstream), sets DROPPED, then closes
    the connection unanswered. Other requests get their replies."""

    class Lossy(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
            headers = {k: v for k, v in self.headers.items() if k.lower() not in ("host", "content-length")}
            request = urllib.request.Request(upstream + self.path, data=body, method="POST", headers=headers)
            try:
                with urllib.request.urlopen(request, timeout=30) as reply:
                    status, data, kind = reply.status, reply.read(), reply.headers.get("Content-Type", "text/xml")
            except urllib.error.HTTPError as err:
                status, data, kind = err.code, err.read(), err.headers.get("Content-Type", "text/xml")
            if marker in body:
                dropped.set()
                self.close_connection = True
                return  # no status line at all: the client sees the connection closed
            self.send_response(status)
            self.send_header("Content-Type", kind)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, *args: object) -> None:
            pass

    return serving(Lossy)


# What endpoints that are not an EC2 API answer: a proxy's 503 text, a web server's welcome page
# (well-formed XHTML: botocore alone would read it as a reply with no instances), moto's HTML 500.
NGINX_WELCOME = b"""<!DOCTYPE html>
<html>
<head>
<title>Welcome to nginx!</title>
</head>
<body>
<h1>Welcome to nginx!</h1>
<p>If you see this page, the nginx web server is successfully installed and
working. Further configuration is required.<br/></p>
</body>
</html>
"""
NOT_EC2 = {
    "503-text": (503, b"Service Unavailable\n", "text/plain"),
    "nginx-welcome": (200, NGINX_WELCOME, "text/html"),
    "html-500": (500, b"<!doctype html>\n<html lang=en>\n<title>500 Internal Server Error</title>\n<h1>Internal Server Error</h1>\n", "text/html"),
}


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


@pytest.mark.parametrize("reply", NOT_EC2.values(), ids=NOT_EC2)
def test_an_endpoint_that_is_not_an_ec2_api_is_one_error(ec2_endpoint: Ec2Endpoint, reply: tuple[int, bytes, str]) -> None:
    status = reply[0]
    with answering(*reply) as url:
        cloud = ec2.Ec2Cloud(ec2.Ec2Params(endpoint_url=url))
        with pytest.raises(ec2.Ec2Error, match=rf"did not answer as an EC2 API \(HTTP status {status}\)") as info:
            cloud.instances()
        assert "\n" not in str(info.value) and "nginx" not in str(info.value)  # the page itself is left out
        # a launch whose reply is not EC2's may have started instances all the same
        with pytest.raises(ec2.Ec2UnknownOutcome, match="may have started instances.*retry with --client-token tok-9 "):
            cloud.launch(b"#cloud-config\n", ec2_endpoint.image_id, "t3.micro", client_token="tok-9")
        # the scaler's backend: a CloudError (logged, backed off), not a traceback
        farm = scale_spec.parse({"name": "x", "max-vms": 3, "cloud": {"type": "ec2", "endpoint-url": url, "image-id": "ami-1", "instance-type": "t3.micro"}})
        backend = backends.backend_for(farm, b"#cloud-config\n")
        with pytest.raises(CloudError, match=f"HTTP status {status}"):
            backend.farm_instances()


def test_terminate_with_tags_refuses_an_instance_without_them(ec2_endpoint: Ec2Endpoint) -> None:
    cloud = cloud_for(ec2_endpoint)
    a = cloud.launch(b"#cloud-config\n", ec2_endpoint.image_id, "t3.micro", tags={"vfarm:farm": "a"})[0]["InstanceId"]
    b = cloud.launch(b"#cloud-config\n", ec2_endpoint.image_id, "t3.micro", tags={"vfarm:farm": "b"})[0]["InstanceId"]
    with pytest.raises(ec2.Ec2Error, match=f"^not tagged vfarm:farm=a, nothing terminated: {b}$"):
        cloud.terminate([a, b], tags={"vfarm:farm": "a"})
    assert {i["InstanceId"]: i["State"]["Name"] for i in cloud.describe([a, b])} == {a: "running", b: "running"}
    assert [c["InstanceId"] for c in cloud.terminate([a], tags={"vfarm:farm": "a"})] == [a]


def test_the_scaler_tags_only_its_farms_instances_and_only_after_the_check(ec2_endpoint: Ec2Endpoint) -> None:
    """The scaler records why it ended a worker (tag vfarm:end) just before terminating it, and
    only once every instance asked for proved to be vfarm's and its farm's: a foreign instance, or
    another farm's, is neither tagged nor terminated, and nor is any other instance of the call."""
    cloud = cloud_for(ec2_endpoint)
    raw = ec2_endpoint.client()

    def launch(farm: str) -> str:
        return str(cloud.launch(b"#cloud-config\n", ec2_endpoint.image_id, "t3.micro", tags={"vfarm:farm": farm})[0]["InstanceId"])

    drained, lost, milano = launch("torino"), launch("torino"), launch("milano")
    foreign = raw.run_instances(ImageId=ec2_endpoint.image_id, InstanceType="t3.micro", MinCount=1, MaxCount=1)["Instances"][0]["InstanceId"]
    spec = scale_spec.parse({"name": "torino", "max-vms": 5, "cloud": {"type": "ec2", "endpoint-url": ec2_endpoint.url,
                                                                       "image-id": ec2_endpoint.image_id, "instance-type": "t3.micro"}})
    backend = backends.backend_for(spec, b"#cloud-config\n")

    def seen() -> dict[str, tuple[str, str | None]]:
        return {i["InstanceId"]: (i["State"]["Name"], ec2.tags_of(i).get("vfarm:end")) for i in cloud.describe([drained, lost, milano, foreign])}

    with pytest.raises(CloudError, match=f"^not vfarm instances \\(no tag vfarm:managed=true\\), nothing terminated: {foreign}$"):
        backend.terminate({drained: "drained", foreign: "lost"})
    assert seen() == {i: ("running", None) for i in (drained, lost, milano, foreign)}
    with pytest.raises(CloudError, match=f"^not tagged vfarm:farm=torino, nothing terminated: {milano}$"):
        backend.terminate({milano: "lost", drained: "drained"})
    assert seen() == {i: ("running", None) for i in (drained, lost, milano, foreign)}

    backend.terminate({drained: "drained", lost: "lost"})
    ended = seen()
    assert {i: ended[i][1] for i in (drained, lost)} == {drained: "drained", lost: "lost"}
    assert {ended[i][0] for i in (drained, lost)} <= {"shutting-down", "terminated"}
    assert {i: ended[i] for i in (milano, foreign)} == {milano: ("running", None), foreign: ("running", None)}


def test_a_second_terminate_keeps_the_first_ends_tag(ec2_endpoint: Ec2Endpoint) -> None:
    """How a worker ended (vfarm:end) is what the first terminate recorded: a later one (a retry
    whose reply was lost, another cycle, `vfarm terminate`) never rewrites it; it adds only tags
    the ended instance lacks. A live instance's tag is no end yet: after a terminate that tagged it
    and then failed, the retry's tag is the one the instance ends with."""
    cloud = cloud_for(ec2_endpoint)
    raw = ec2_endpoint.client()
    spec = scale_spec.parse({"name": "torino", "max-vms": 5, "cloud": {"type": "ec2", "endpoint-url": ec2_endpoint.url,
                                                                       "image-id": ec2_endpoint.image_id, "instance-type": "t3.micro"}})
    backend = backends.backend_for(spec, b"#cloud-config\n")
    ended, retried = (str(i["InstanceId"]) for i in cloud.launch(b"#cloud-config\n", ec2_endpoint.image_id, "t3.micro", count=2,
                                                                tags={"vfarm:farm": "torino"}))

    def seen() -> dict[str, tuple[str, str | None, str | None]]:
        return {i["InstanceId"]: (i["State"]["Name"], ec2.tags_of(i).get("vfarm:end"), ec2.tags_of(i).get("note"))
                for i in cloud.describe([ended, retried])}

    backend.terminate({ended: "lost"})
    assert seen()[ended][1] == "lost" and seen()[ended][0] in ("shutting-down", "terminated")
    backend.terminate({ended: "drained"})  # another cycle, the same instance: the first end stands
    assert seen()[ended][1] == "lost"
    cloud.terminate([ended], tags={"vfarm:farm": "torino"}, mark={ended: {"vfarm:end": "drained", "note": "later"}})
    assert seen()[ended][1:] == ("lost", "later")  # only what the first end left unsaid is added

    raw.create_tags(Resources=[retried], Tags=[{"Key": "vfarm:end", "Value": "lost"}])  # tagged, then the terminate failed
    backend.terminate({retried: "drained"})
    assert seen()[retried][1] == "drained"


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
    with pytest.raises(ec2.Ec2Error, match="at most 64 printable ASCII characters, got 65"):
        ec2.run_request("ami-1", "m5.large", client_token="t" * 65)
    assert ec2.run_request("ami-1", "m5.large", client_token="t" * 64)["ClientToken"] == "t" * 64
    with pytest.raises(ec2.Ec2Error, match="tag 'a' given twice, with two values"):
        ec2.parse_tags(["a=1", "b=2", "a=2"])
    assert ec2.parse_tags(["a=1", "a=1", "b"]) == {"a": "1", "b": ""}


def test_scale_cloud_section_drives_the_same_backend(ec2_endpoint: Ec2Endpoint) -> None:
    section = {"type": "ec2", "image-id": ec2_endpoint.image_id, "instance-type": "m1.large", "endpoint-url": ec2_endpoint.url,
               "security-groups": ["workers"], "tags": {"vfarm:farm": "torino"}}  # fmt: skip
    ec2_endpoint.client().create_security_group(GroupName="workers", Description="vfarm workers")
    cloud = ec2.cloud_from_section(section)
    launched = cloud.launch(b"#cloud-config\n", count=2, **ec2.launch_options(section))
    farm = cloud.instances({"vfarm:farm": "torino"}, states=("pending", "running"))
    assert sorted(i["InstanceId"] for i in farm) == sorted(i["InstanceId"] for i in launched)
    assert all(i["InstanceType"] == "m1.large" and i["SecurityGroups"][0]["GroupName"] == "workers" for i in farm)


EC2_NS = 'xmlns="http://ec2.amazonaws.com/doc/2016-11-15/"'


@pytest.fixture
def crafted(monkeypatch: pytest.MonkeyPatch) -> None:
    """Credentials and a region for an endpoint that answers crafted replies; one attempt per call
    (botocore retries throttling and 5xx with back-off otherwise)."""
    for name, value in (("AWS_ACCESS_KEY_ID", "AKIDCRAFTED"), ("AWS_SECRET_ACCESS_KEY", "crafted-secret"), ("AWS_DEFAULT_REGION", "us-east-1"),
                        ("AWS_MAX_ATTEMPTS", "1")):
        monkeypatch.setenv(name, value)
    for name in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "EC2_ACCESS_KEY", "EC2_SECRET_KEY", "EC2_URL"):
        monkeypatch.delenv(name, raising=False)


def ec2_error(code: str, message: str) -> bytes:
    return (f"<?xml version='1.0'?><Response><Errors><Error><Code>{code}</Code><Message>{message}</Message></Error></Errors>"
            f"<RequestID>r-1</RequestID></Response>").encode()


@pytest.mark.parametrize("status", [400, 503])
def test_throttling_is_no_quota_or_capacity_refusal(crafted: None, status: int) -> None:
    """EC2's rate limit (RequestLimitExceeded: "Limit" in the name) is not a refusal for quota or
    capacity: the scaler would launch another type or cloud in the same cycle instead of backing off."""
    with answering(status, ec2_error("RequestLimitExceeded", "Request limit exceeded."), "text/xml") as url:
        with pytest.raises(ec2.Ec2Error) as info:
            ec2.Ec2Cloud(ec2.Ec2Params(endpoint_url=url)).launch(b"#cloud-config\n", "ami-1", "t3.micro", client_token="tok-1")
    assert not isinstance(info.value, ec2.Ec2CapacityError) and "quota or capacity" not in str(info.value)
    assert isinstance(info.value, ec2.Ec2UnknownOutcome) == (status >= 500)
    assert [code for code in ("RequestLimitExceeded", "Throttling", "InstanceLimitExceeded", "VcpuLimitExceeded") if ec2.is_capacity(code)] == [
        "InstanceLimitExceeded", "VcpuLimitExceeded"]


DESCRIBED = (f'<?xml version="1.0"?><DescribeInstancesResponse {EC2_NS}><requestId>r</requestId><reservationSet><item>'
             "<reservationId>r-1</reservationId><instancesSet><item>{id}<instanceState><code>16</code><name>running</name></instanceState>"
             "<instanceType>t3.micro</instanceType><tagSet><item><key>vfarm:managed</key><value>true</value></item>{tag}</tagSet>"
             "</item></instancesSet></item></reservationSet></DescribeInstancesResponse>")


def test_a_reply_of_another_shape_is_one_line_and_a_keyless_tag_is_none(crafted: None, capsys: pytest.CaptureFixture[str],
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """botocore parses what it is given: an instance without its id is no EC2 API's reply (one
    line, the outcome unknown), a tag without a key is no tag (the rest reads on)."""
    from vfarm.cli import cloud as cli_cloud
    from vfarm.cli.main import main

    no_id = DESCRIBED.format(id="", tag="").encode()
    with answering(200, no_id, "text/xml") as url:
        with pytest.raises(ec2.Ec2UnknownOutcome, match=r"\(describe instances\): the reply lists an instance without an InstanceId$"):
            ec2.Ec2Cloud(ec2.Ec2Params(endpoint_url=url)).instances()
        monkeypatch.setattr(cli_cloud, "_cloud", lambda args: ec2.Ec2Cloud(ec2.Ec2Params(endpoint_url=url)))
        assert main(["instances"]) == 1
        out, err = capsys.readouterr()
        assert out == "" and len(err.splitlines()) == 1 and "without an InstanceId" in err
    keyless = DESCRIBED.format(id="<instanceId>i-1</instanceId>", tag="<item><value>x</value></item>").encode()
    with answering(200, keyless, "text/xml") as url:
        listed = ec2.Ec2Cloud(ec2.Ec2Params(endpoint_url=url)).instances()
    assert [(i["InstanceId"], ec2.tags_of(i)) for i in listed] == [("i-1", {"vfarm:managed": "true"})]


def test_a_clouds_error_quoting_the_userdata_is_cut_short(crafted: None) -> None:
    """An EC2-compatible cloud may quote a refused parameter whole (OpenStack's ec2-api passes on
    Nova's validator, which quotes user_data): base64 runs are left out of the line, and it is
    bounded, as for OpenStack."""
    import base64

    from vfarm.clouds.quoted import QUOTED_LIMIT

    userdata = b"#cloud-config\nwrite_files: [{path: /etc/condor/tokens.d/pool, content: eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJ3In0.c2ln}]\n"
    quoted = base64.b64encode(userdata * 40).decode()
    with answering(400, ec2_error("InvalidParameterValue", f"Invalid input for field/attribute user_data. Value: {quoted}. {'x ' * 400}"),
                   "text/xml") as url:
        with pytest.raises(ec2.Ec2Error) as info:
            ec2.Ec2Cloud(ec2.Ec2Params(endpoint_url=url)).launch(userdata, "ami-1", "t3.micro")
    shown = str(info.value)
    assert quoted[:65] not in shown and f"[{len(quoted)} characters left out]" in shown
    assert shown.endswith("more characters left out])") and len(shown) < QUOTED_LIMIT + 200, shown
