"""EC2 backend (boto3): launch, list, wait for and terminate vfarm's instances.

Used by `vfarm launch ec2`, `vfarm instances`, `vfarm terminate` and the scaler. Admin side only:
nothing here runs on an instance, so boto3 is imported here and nowhere in the on-instance code.

Credentials and endpoint, in order:
- endpoint: `endpoint_url` (--endpoint-url), then euca2ools' `EC2_URL`, then boto3's own
  (`AWS_ENDPOINT_URL_EC2`, `AWS_ENDPOINT_URL`, the profile's `endpoint_url`, AWS itself);
- credentials: `--profile`, then boto3's environment (`AWS_ACCESS_KEY_ID`...), then euca2ools'
  `EC2_ACCESS_KEY`/`EC2_SECRET_KEY`, then the rest of boto3's chain (shared files, SSO, ...);
- region: `--region`, then boto3's (`AWS_REGION`, `AWS_DEFAULT_REGION`, profile); with an
  endpoint of its own and no region at all, `us-east-1` is only the name requests are signed
  with (EC2-compatible private clouds accept it).
Every failure becomes an `Ec2Error` with one line for the user; key material never appears in it.
"""

from __future__ import annotations

import base64
import json
import os
import re
import shlex
import time
import uuid
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Callable, Optional

from .. import __version__
from ..mime_builder.limits import EC2_LIMIT
from ..redaction import hide_credentials
from .quoted import cloud_words
from .verdict import Verdict, parse_console

MANAGED_TAG = "vfarm:managed"
SIGNING_REGION_FALLBACK = "us-east-1"
LIVE_STATES = ("pending", "running", "stopping", "stopped", "shutting-down")
GONE_STATES = ("shutting-down", "terminated", "stopping", "stopped")
# Ended for good: a terminate's mark on such an instance adds only the tags it lacks (the first end's stand).
ENDED_STATES = ("shutting-down", "terminated")

# EC2 error codes, grouped by what the user has to do about them.
CREDENTIAL_CODES = {
    "AuthFailure",
    "InvalidClientTokenId",
    "SignatureDoesNotMatch",
    "UnrecognizedClientException",
    "InvalidAccessKeyId",
    "IncompleteSignature",
    "MissingAuthenticationToken",
    "ExpiredToken",
    "RequestExpired",
}
IMAGE_CODES = {"InvalidAMIID.NotFound", "InvalidAMIID.Malformed", "InvalidAMIID.Unavailable"}
QUOTA_CODES = {
    "InstanceLimitExceeded",
    "VcpuLimitExceeded",
    "InsufficientInstanceCapacity",
    "InsufficientCapacity",
    "InsufficientHostCapacity",
    "InsufficientReservedInstanceCapacity",
    "InsufficientAddressCapacity",
    "MaxSpotInstanceCountExceeded",
    "ResourceLimitExceeded",
    "TooManyInstances",  # OpenStack's ec2-api
    "QuotaExceeded",
}
NOT_FOUND_CODES = {"InvalidInstanceID.NotFound", "InvalidInstanceID.Malformed"}
# The API's rate limit ("Limit" in the name, yet no quota): the same call later may well succeed.
THROTTLE_CODES = {"RequestLimitExceeded", "Throttling", "ThrottlingException", "RequestThrottled", "TooManyRequestsException"}


class Ec2Error(Exception):
    """A failure to report to the user in one line (no traceback)."""


class Ec2CapacityError(Ec2Error):
    """The cloud refused a launch for quota or capacity (another instance type may still start)."""


class Ec2UnknownOutcome(Ec2Error):
    """A call whose effect is unknown: the request may have been carried out though no usable
    reply came back (a transport failure, an HTTP 5xx, a reply that is not EC2's)."""


def is_capacity(code: str) -> bool:
    return code not in THROTTLE_CODES and (code in QUOTA_CODES or "Limit" in code or "Insufficient" in code)


@dataclass(frozen=True)
class Ec2Params:
    """Where and as whom to talk to EC2. Secrets are kept out of repr()."""

    endpoint_url: Optional[str] = None
    region: Optional[str] = None
    profile: Optional[str] = None
    access_key: Optional[str] = field(default=None, repr=False)
    secret_key: Optional[str] = field(default=None, repr=False)
    connect_timeout: float = 10.0
    read_timeout: float = 60.0

    @classmethod
    def resolve(
        cls,
        endpoint_url: Optional[str] = None,
        region: Optional[str] = None,
        profile: Optional[str] = None,
        environ: Optional[Mapping[str, str]] = None,
    ) -> Ec2Params:
        """Apply the euca2ools variables where boto3's own settings leave a gap."""
        env = os.environ if environ is None else environ
        endpoint = endpoint_url or env.get("EC2_URL") or None
        access_key = secret_key = None
        euca_key, euca_secret = env.get("EC2_ACCESS_KEY"), env.get("EC2_SECRET_KEY")
        if not profile and not env.get("AWS_ACCESS_KEY_ID") and (euca_key or euca_secret):
            if not (euca_key and euca_secret):
                missing = "EC2_SECRET_KEY" if euca_key else "EC2_ACCESS_KEY"
                raise Ec2Error(f"{missing} is not set (EC2_ACCESS_KEY and EC2_SECRET_KEY go together)")
            access_key, secret_key = euca_key, euca_secret
        return cls(endpoint_url=endpoint, region=region, profile=profile, access_key=access_key, secret_key=secret_key)


def _as_list(response: Mapping[str, Any]) -> list[Any]:
    return [inst for res in response.get("Reservations") or [] for inst in res.get("Instances") or []]


def tags_of(instance: Mapping[str, Any]) -> dict[str, str]:
    """The instance's tags; an entry that is no tag (no Key) is none."""
    return {t["Key"]: t.get("Value", "") for t in instance.get("Tags") or [] if isinstance(t, dict) and isinstance(t.get("Key"), str)}


def parse_tags(items: Iterable[str]) -> dict[str, str]:
    """`K=V` strings (from --tag) to a dict; a bare `K` is an empty value, as EC2 allows. One key
    with two values is refused (one of them would be dropped without a word)."""
    tags: dict[str, str] = {}
    for item in items:
        key, _, value = item.partition("=")
        key = key.strip()
        if not key:
            raise Ec2Error(f"bad tag {item!r}: expected KEY=VALUE")
        if tags.get(key, value) != value:
            raise Ec2Error(f"tag {key!r} given twice, with two values: give it once")
        tags[key] = value
    return tags


# EC2's limit on a RunInstances ClientToken.
CLIENT_TOKEN_MAX = 64


def run_request(
    image_id: str,
    instance_type: str,
    count: int = 1,
    tags: Optional[Mapping[str, str]] = None,
    key_name: Optional[str] = None,
    security_groups: Sequence[str] = (),
    subnet: Optional[str] = None,
    client_token: Optional[str] = None,
) -> dict[str, Any]:
    """The RunInstances parameters (plain data, user-data apart): what a launch sends and what a
    dry run prints. Groups named `sg-...` are IDs, others names; in a subnet (VPC) only IDs work."""
    if count < 1:
        raise Ec2Error(f"--count must be at least 1, not {count}")
    all_tags = dict(tags or {})
    if all_tags.get(MANAGED_TAG, "true") != "true":
        raise Ec2Error(f"tag {MANAGED_TAG} is vfarm's own (always 'true')")
    for key in all_tags:
        if key.lower().startswith("aws:"):
            raise Ec2Error(f"tag {key}: keys starting with 'aws:' are reserved by EC2")
    all_tags[MANAGED_TAG] = "true"
    request: dict[str, Any] = {
        "ImageId": image_id,
        "InstanceType": instance_type,
        "MinCount": count,
        "MaxCount": count,
        # a worker that powers itself off (failed check, retirement) must not linger as "stopped"
        "InstanceInitiatedShutdownBehavior": "terminate",
        "TagSpecifications": [{"ResourceType": "instance", "Tags": [{"Key": k, "Value": v} for k, v in sorted(all_tags.items())]}],
    }
    ids = [g for g in security_groups if g.startswith("sg-")]
    names = [g for g in security_groups if not g.startswith("sg-")]
    if subnet and names:
        raise Ec2Error(f"security groups must be given by ID (sg-...) with --subnet: {', '.join(names)}")
    if ids:
        request["SecurityGroupIds"] = ids
    if names:
        request["SecurityGroups"] = names
    if key_name:
        request["KeyName"] = key_name
    if subnet:
        request["SubnetId"] = subnet
    if client_token:
        if len(client_token) > CLIENT_TOKEN_MAX or not client_token.isascii() or not client_token.isprintable():
            raise Ec2Error(f"--client-token: EC2 takes at most {CLIENT_TOKEN_MAX} printable ASCII characters, got {len(client_token)} characters")
        request["ClientToken"] = client_token
    return request


def cli_equivalents(request: Mapping[str, Any], userdata_file: str, userdata: bytes, params: Ec2Params) -> list[str]:
    """The euca2ools and AWS CLI lines that make the same RunInstances call (no secrets in them:
    both tools find the keys in the same variables vfarm reads)."""
    tags = {t["Key"]: t["Value"] for t in request["TagSpecifications"][0]["Tags"]}
    euca = ["euca-run-instances", request["ImageId"], "-t", request["InstanceType"], "-n", str(request["MinCount"])]
    for group in request.get("SecurityGroupIds", []) + request.get("SecurityGroups", []):
        euca += ["-g", group]
    if "KeyName" in request:
        euca += ["-k", request["KeyName"]]
    if "SubnetId" in request:
        euca += ["-s", request["SubnetId"]]
    if "ClientToken" in request:
        euca += ["--client-token", request["ClientToken"]]
    euca += ["--instance-initiated-shutdown-behavior", "terminate", "-f", userdata_file]
    # The endpoint URL may carry credentials (http://KEY:SECRET@host): shown hidden, as everywhere.
    endpoint = hide_credentials(params.endpoint_url) if params.endpoint_url else None
    if endpoint:
        euca += ["-U", endpoint]
    # euca-run-instances cannot tag at launch: euca-create-tags does it afterwards
    euca_tags = ["euca-create-tags", "INSTANCE_ID..."] + [a for k, v in sorted(tags.items()) for a in ("--tag", f"{k}={v}")]

    aws = ["aws", "ec2", "run-instances", "--image-id", request["ImageId"], "--instance-type", request["InstanceType"]]
    aws += ["--count", str(request["MinCount"])]
    if "SecurityGroupIds" in request:
        aws += ["--security-group-ids", *request["SecurityGroupIds"]]
    if "SecurityGroups" in request:
        aws += ["--security-groups", *request["SecurityGroups"]]
    if "KeyName" in request:
        aws += ["--key-name", request["KeyName"]]
    if "SubnetId" in request:
        aws += ["--subnet-id", request["SubnetId"]]
    if "ClientToken" in request:
        aws += ["--client-token", request["ClientToken"]]
    aws += ["--instance-initiated-shutdown-behavior", "terminate"]
    aws += ["--tag-specifications", json.dumps(request["TagSpecifications"], separators=(",", ":"))]
    # file:// reads text; gzip-compressed user-data is binary and needs fileb://
    scheme = "file" if _is_text(userdata) else "fileb"
    aws += ["--user-data", f"{scheme}://{userdata_file}"]
    if endpoint:
        aws += ["--endpoint-url", endpoint]
    if params.region:
        aws += ["--region", params.region]
    if params.profile:
        aws += ["--profile", params.profile]
    return [shlex.join(euca), "# then: " + shlex.join(euca_tags), shlex.join(aws)]


def _is_text(data: bytes) -> bool:
    try:
        data.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


_LOADER: list[Any] = []
# The root element of an XML reply (after the declaration and comments): its local name.
_ROOT = re.compile(rb"\s*(?:<\?xml[^>]*\?>\s*)?(?:<!--.*?-->\s*)*<(?:[\w.-]+:)?([\w.-]+)[\s/>]", re.DOTALL)


def _shared_loader() -> Any:
    """botocore parses EC2's service model (~1 MB) once per session, 0.1-0.2 s each: the scaler
    and the tests make many clients, so one loader (and its cache) serves them all."""
    if not _LOADER:
        from botocore.loaders import create_loader

        _LOADER.append(create_loader())
    return _LOADER[0]


class Ec2Cloud:
    """One EC2 endpoint and account. Every method raises `Ec2Error` (one line) on failure."""

    def __init__(self, params: Optional[Ec2Params] = None, *, session: Any = None, client: Any = None) -> None:
        self.params = params or Ec2Params()
        self._session = session
        self._client = client
        self._status: Optional[int] = None  # the HTTP status of the last reply (see _check_reply)

    # --- connection -------------------------------------------------------------------------

    @property
    def client(self) -> Any:
        if self._client is None:
            self._client = self._guard("connect", self._make_client)
        return self._client

    @property
    def endpoint(self) -> str:
        if self._client is not None:
            return str(self._client.meta.endpoint_url)
        return self.params.endpoint_url or "EC2"

    def _make_client(self) -> Any:
        import boto3
        from botocore.config import Config

        p = self.params
        if self._session is None:
            self._session = boto3.session.Session(
                profile_name=p.profile, aws_access_key_id=p.access_key, aws_secret_access_key=p.secret_key, region_name=p.region
            )
            self._session._session.register_component("data_loader", _shared_loader())
        session = self._session
        region = p.region or session.region_name
        if region is None and p.endpoint_url:
            region = SIGNING_REGION_FALLBACK
        if region is None:
            raise Ec2Error("no region: use --region or set AWS_DEFAULT_REGION (or an endpoint with --endpoint-url / EC2_URL)")
        if session.get_credentials() is None:
            raise Ec2Error("no credentials: set EC2_ACCESS_KEY and EC2_SECRET_KEY, AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or use --profile")
        # standard retries (3 attempts, short back-off) unless the user's AWS settings say otherwise
        retries = {"mode": os.environ.get("AWS_RETRY_MODE", "standard")}
        config = Config(
            connect_timeout=p.connect_timeout, read_timeout=p.read_timeout, retries=retries, user_agent_extra=f"vfarm/{__version__}"
        )
        client = session.client("ec2", region_name=region, endpoint_url=p.endpoint_url, config=config)
        client.meta.events.register("before-parse.ec2", self._check_reply)
        return client

    def _check_reply(self, response_dict: Mapping[str, Any], operation_model: Any = None, **_: Any) -> None:
        """botocore's hook just before parsing a reply. Notes its HTTP status (botocore's parse
        errors do not carry it), and refuses a success whose document is not EC2's reply to the
        call (`<RunInstancesResponse ...>`): botocore would read a web server's XHTML page (a
        welcome page, a portal) as an EC2 reply with nothing in it, i.e. no instances at all."""
        from botocore.parsers import ResponseParserError

        self._status = response_dict.get("status_code")
        if self._status is None or not 200 <= int(self._status) < 300 or operation_model is None:
            return
        root = _ROOT.match(response_dict.get("body") or b"")
        if root is None or root.group(1).decode("ascii") != f"{operation_model.name}Response":
            raise ResponseParserError("not an EC2 API reply")

    def _secrets(self) -> list[str]:
        found = [s for s in (self.params.secret_key, self.params.access_key) if s]
        session = self._session
        try:
            creds = session.get_credentials() if session is not None else None
            frozen = creds.get_frozen_credentials() if creds is not None else None
        except Exception:  # noqa: BLE001 - scrubbing must never fail the error path
            frozen = None
        if frozen is not None:
            found += [s for s in (frozen.secret_key, frozen.access_key, frozen.token) if s]
        found += [os.environ[v] for v in ("EC2_SECRET_KEY", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN") if os.environ.get(v)]
        return sorted(set(found), key=len, reverse=True)

    def _scrub(self, text: str) -> str:
        """TEXT without the keys in use, nor credentials in URLs (botocore's errors quote the
        endpoint URL, userinfo and all), on one line."""
        for secret in self._secrets():
            text = text.replace(secret, "***")
        return hide_credentials(" ".join(text.split()))

    def _guard(self, what: str, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        """Call FN, turning boto3's exceptions into one-line `Ec2Error`s: `Ec2UnknownOutcome`
        when the request may have been carried out all the same (transport failure after
        connecting, or not knowing whether an earlier attempt got through; HTTP 5xx; a reply that
        is not an EC2 API's), `Ec2CapacityError` for quota or capacity."""
        from botocore import exceptions as bx
        from botocore.parsers import ResponseParserError

        self._status = None
        try:
            return fn(*args, **kwargs)
        except Ec2Error:
            raise
        except bx.ClientError as err:
            code = str(err.response.get("Error", {}).get("Code", ""))
            status = err.response.get("ResponseMetadata", {}).get("HTTPStatusCode") or 0
            kind = Ec2CapacityError if is_capacity(code) else Ec2UnknownOutcome if int(status) >= 500 else Ec2Error
            raise kind(self._scrub(self._explain(what, err, kwargs))) from None
        except ResponseParserError:
            # not a BotoCoreError; its text quotes the whole body (an HTML page): left out
            status = f" (HTTP status {self._status})" if self._status else ""
            raise Ec2UnknownOutcome(self._scrub(f"EC2 endpoint {self.endpoint} ({what}): the endpoint did not answer as an EC2 API{status}")) from None
        except (bx.EndpointConnectionError, bx.ConnectTimeoutError) as err:
            # unknown too: with retries on, an earlier attempt may have got through
            raise Ec2UnknownOutcome(self._scrub(f"EC2 endpoint {self.endpoint} not answering ({what}): {err}")) from None
        except bx.ReadTimeoutError as err:
            raise Ec2UnknownOutcome(self._scrub(f"EC2 endpoint {self.endpoint} did not reply in time ({what}): {err}")) from None
        except bx.HTTPClientError as err:  # ConnectionClosedError and the like: the request was sent
            raise Ec2UnknownOutcome(self._scrub(f"EC2 endpoint {self.endpoint} gave no reply ({what}): {err}")) from None
        except (bx.NoCredentialsError, bx.PartialCredentialsError) as err:
            raise Ec2Error(
                self._scrub(f"no usable credentials ({err}): set EC2_ACCESS_KEY/EC2_SECRET_KEY or AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, or use --profile")
            ) from None
        except bx.ProfileNotFound as err:
            raise Ec2Error(self._scrub(str(err))) from None
        except bx.ParamValidationError as err:
            raise Ec2Error(self._scrub(f"invalid request ({what}): {err}")) from None
        except bx.BotoCoreError as err:
            raise Ec2Error(self._scrub(f"EC2 {what} failed: {err}")) from None
        except ValueError as err:  # botocore: "Invalid endpoint: ...", urllib: "Port could not be cast ... as 'PASS'"
            endpoint = self.params.endpoint_url or ""
            if hide_credentials(endpoint) != endpoint:  # credentials in it: the error may quote a piece of them
                raise Ec2Error(f"EC2 {what}: the endpoint URL {hide_credentials(endpoint)} does not parse ({type(err).__name__})") from None
            raise Ec2Error(self._scrub(f"EC2 {what}: {err}")) from None

    def _explain(self, what: str, err: Any, kwargs: Mapping[str, Any]) -> str:
        error = err.response.get("Error", {})
        code, message = error.get("Code", "Error"), cloud_words(str(error.get("Message", "")))
        where = self.endpoint
        if code in CREDENTIAL_CODES:
            return f"{where}: credentials refused ({code}: {message}); check EC2_ACCESS_KEY/EC2_SECRET_KEY, AWS_* or --profile"
        if code == "UnauthorizedOperation":
            return f"{where}: not allowed to {what} ({code}: {message})"
        if code in IMAGE_CODES:
            return f"{where}: unknown image {kwargs.get('ImageId', '?')} ({code}: {message}); check --image-id and the region"
        if is_capacity(code):
            asked = f"{kwargs.get('MinCount', '?')} x {kwargs.get('InstanceType', '?')}"
            return f"{where}: the cloud refused {asked} (quota or capacity: {code}: {message})"
        if code in NOT_FOUND_CODES:
            return f"{where}: no such instance ({code}: {message})"
        return f"{where}: {what} failed ({code}: {message})"

    # --- operations ---------------------------------------------------------------------------

    def launch(
        self,
        userdata: bytes,
        image_id: str,
        instance_type: str,
        count: int = 1,
        tags: Optional[Mapping[str, str]] = None,
        key_name: Optional[str] = None,
        security_groups: Sequence[str] = (),
        subnet: Optional[str] = None,
        client_token: Optional[str] = None,
        max_userdata: int = EC2_LIMIT,
    ) -> list[dict[str, Any]]:
        """RunInstances; returns the instances as the API describes them. Without CLIENT_TOKEN
        vfarm makes one (not botocore: its token would be lost with the error), so that a launch
        whose outcome is unknown (`Ec2UnknownOutcome`) names the token that retries it without
        starting anything twice. MAX_USERDATA: AWS takes 16384 bytes; some EC2-compatible clouds
        take more."""
        if len(userdata) > max_userdata:
            raise Ec2Error(f"user-data is {len(userdata)} bytes, over the limit of {max_userdata}")
        token = client_token or str(uuid.uuid4())
        request = run_request(image_id, instance_type, count, tags, key_name, security_groups, subnet, token)
        try:
            # botocore base64-encodes UserData for RunInstances itself
            response = self._guard("launch", self.client.run_instances, UserData=userdata, **request)
            return self._listed(response.get("Instances"), "launch")
        except Ec2UnknownOutcome as err:
            shown = " ".join(f"--tag {shlex.quote(f'{k}={v}')}" for k, v in sorted((tags or {}).items()) if k != MANAGED_TAG)
            listing = f"vfarm instances {shown}".rstrip()
            raise Ec2UnknownOutcome(
                f"{err}; the launch may have started instances: `{listing}` shows them; retry with --client-token {token} to start none twice"
            ) from None

    def instances(
        self, tag_filters: Optional[Mapping[str, str]] = None, states: Optional[Sequence[str]] = LIVE_STATES, ids: Sequence[str] = ()
    ) -> list[dict[str, Any]]:
        """vfarm's instances (tag vfarm:managed=true), optionally narrowed by tags and states;
        states=None includes terminated ones."""
        filters = [{"Name": f"tag:{MANAGED_TAG}", "Values": ["true"]}]
        filters += [{"Name": f"tag:{k}", "Values": [v]} for k, v in sorted((tag_filters or {}).items())]
        if states:
            filters.append({"Name": "instance-state-name", "Values": list(states)})
        return self._describe(filters=filters, ids=ids)

    def describe(self, ids: Sequence[str]) -> list[dict[str, Any]]:
        return self._describe(ids=ids) if ids else []

    def _describe(self, filters: Sequence[Mapping[str, Any]] = (), ids: Sequence[str] = ()) -> list[dict[str, Any]]:
        def pages() -> list[dict[str, Any]]:
            kwargs: dict[str, Any] = {}
            if filters:
                kwargs["Filters"] = list(filters)
            if ids:
                kwargs["InstanceIds"] = list(ids)
            found: list[Any] = []
            for page in self.client.get_paginator("describe_instances").paginate(**kwargs):
                found += _as_list(page)
            return found

        found = self._listed(self._guard("describe instances", pages), "describe instances")
        return sorted(found, key=lambda i: (str(i.get("LaunchTime", "")), i["InstanceId"]))

    def _listed(self, items: Any, what: str) -> list[dict[str, Any]]:
        """ITEMS, a reply's instances, each with its InstanceId: what the rest reads them by. A reply
        of another shape is no EC2 API's: its outcome is unknown (for a launch: maybe started)."""
        if items is None:
            return []
        if not isinstance(items, list) or not all(isinstance(i, dict) and isinstance(i.get("InstanceId"), str) and i["InstanceId"] for i in items):
            raise Ec2UnknownOutcome(self._scrub(f"EC2 endpoint {self.endpoint} ({what}): the reply lists an instance without an InstanceId"))
        return items

    def terminate(self, ids: Sequence[str], only_managed: bool = True, tags: Optional[Mapping[str, str]] = None,
                  mark: Optional[Mapping[str, Mapping[str, str]]] = None) -> list[dict[str, Any]]:
        """TerminateInstances. Before anything is marked or terminated, refuses if any ID is not
        one of vfarm's own instances (with only_managed, the default), or lacks one of TAGS (K=V
        each: `vfarm terminate ID... --tag K=V` touches only that farm's instances). MARK (ID ->
        tags) is then set on the instances (CreateTags) just before they are terminated: the
        scaler records why it ended a worker. A failure to mark terminates nothing. An instance
        already ended (shutting-down, terminated: a retry, another cycle) gets only the tags of MARK
        it lacks: what its first end recorded (vfarm:end) is never rewritten."""
        ids = list(dict.fromkeys(ids))
        if not ids:
            return []
        described = {i["InstanceId"]: i for i in self.describe(ids)} if only_managed or tags or mark else {}
        known = {iid: tags_of(i) for iid, i in described.items()}
        if only_managed or tags:
            foreign = [i for i in ids if only_managed and known.get(i, {}).get(MANAGED_TAG) != "true"]
            if foreign:
                raise Ec2Error(f"not vfarm instances (no tag {MANAGED_TAG}=true), nothing terminated: {' '.join(foreign)}")
            wanted = dict(tags or {})
            other = [i for i in ids if any(known.get(i, {}).get(k) != v for k, v in wanted.items())]
            if other:
                shown = " ".join(f"{k}={v}" for k, v in sorted(wanted.items()))
                raise Ec2Error(f"not tagged {shown}, nothing terminated: {' '.join(other)}")
        # One CreateTags for all the instances that get the same tags.
        marks = mark or {}
        same: dict[tuple[tuple[str, str], ...], list[str]] = {}
        for iid in ids:
            ended = iid in described and described[iid].get("State", {}).get("Name") in ENDED_STATES
            pairs = tuple(sorted((k, v) for k, v in (marks.get(iid) or {}).items() if not (ended and k in known[iid])))
            if pairs:
                same.setdefault(pairs, []).append(iid)
        for pairs, marked in sorted(same.items()):
            self._guard("tag instances", self.client.create_tags, Resources=marked, Tags=[{"Key": k, "Value": v} for k, v in pairs])
        response = self._guard("terminate", self.client.terminate_instances, InstanceIds=ids)
        return self._listed(response.get("TerminatingInstances"), "terminate")

    def userdata(self, instance_id: str) -> bytes:
        """The raw user-data the cloud holds for an instance (DescribeInstanceAttribute)."""
        response = self._guard("read user-data", self.client.describe_instance_attribute, InstanceId=instance_id, Attribute="userData")
        value = response.get("UserData", {}).get("Value")
        return base64.b64decode(value) if value else b""

    def console_output(self, instance_id: str) -> str:
        """The instance's console output as the cloud keeps it (GetConsoleOutput: the serial
        console's last 64 KiB on AWS; botocore decodes its base64), '' when it holds none yet."""
        response = self._guard("read the console output", self.client.get_console_output, InstanceId=instance_id)
        output = response.get("Output") or ""
        return output if isinstance(output, str) else output.decode("utf-8", errors="replace")

    def verdict(self, instance_id: str) -> Optional[Verdict]:
        """The final check's verdict on the instance's console, None when there is none."""
        return parse_console(self.console_output(instance_id), instance_id)

    def wait_running(
        self,
        ids: Sequence[str],
        timeout: float = 600.0,
        interval: float = 5.0,
        progress: Optional[Callable[[list[dict[str, Any]]], None]] = None,
        sleep: Callable[[float], None] = time.sleep,
        clock: Callable[[], float] = time.monotonic,
    ) -> list[dict[str, Any]]:
        """Poll until every instance is running. Fails at once when one goes away (stopped,
        terminated: e.g. its final check powered it off), or after TIMEOUT seconds."""
        deadline = clock() + timeout
        while True:
            try:
                current = self.describe(ids)
            except Ec2Error as err:
                # just after RunInstances an ID may not be visible yet (eventual consistency)
                if "InvalidInstanceID.NotFound" not in str(err) or clock() > deadline:
                    raise
                current = [{"InstanceId": i, "State": {"Name": "pending"}} for i in ids]
            if progress is not None:
                progress(current)
            states = {i["InstanceId"]: i.get("State", {}).get("Name", "?") for i in current}
            gone = [f"{i['InstanceId']} {states[i['InstanceId']]}{_reason(i)}" for i in current if states[i["InstanceId"]] in GONE_STATES]
            if gone:
                raise Ec2Error(f"instance(s) went away while waiting: {'; '.join(gone)}")
            if len(current) == len(ids) and all(s == "running" for s in states.values()):
                return current
            if clock() > deadline:
                waiting = ", ".join(f"{i} {s}" for i, s in states.items() if s != "running")
                raise Ec2Error(f"not running after {timeout:.0f} s: {waiting}")
            sleep(interval)


def cloud_from_section(section: Mapping[str, Any], environ: Optional[Mapping[str, str]] = None) -> Ec2Cloud:
    """The cloud of a farm file's `scale.cloud` section (type ec2): endpoint, region and profile
    from it, the rest from the environment as for `vfarm launch ec2`."""
    params = Ec2Params.resolve(section.get("endpoint-url"), section.get("region"), section.get("profile"), environ)
    return Ec2Cloud(params)


def launch_options(section: Mapping[str, Any]) -> dict[str, Any]:
    """`Ec2Cloud.launch` keyword arguments (all but userdata and count) from a `scale.cloud` section."""
    return {
        "image_id": section["image-id"],
        "instance_type": section["instance-type"],
        "tags": dict(section.get("tags") or {}),
        "key_name": section.get("key-name"),
        "security_groups": tuple(section.get("security-groups") or ()),
        "subnet": section.get("subnet"),
    }


def _reason(instance: Mapping[str, Any]) -> str:
    reason = instance.get("StateReason", {}).get("Message") or instance.get("StateTransitionReason")
    return f" ({reason})" if reason else ""


def addresses(instance: Mapping[str, Any]) -> tuple[str, str]:
    return instance.get("PrivateIpAddress") or "-", instance.get("PublicIpAddress") or "-"


def summary_row(instance: Mapping[str, Any]) -> tuple[str, ...]:
    """ID, state, type, private and public address, launch time, vfarm-related tags."""
    private, public = addresses(instance)
    launched = instance.get("LaunchTime")
    when = launched.strftime("%Y-%m-%d %H:%M:%S") if isinstance(launched, datetime) else str(launched or "-")
    tags = tags_of(instance)
    shown = " ".join(f"{k}={v}" for k, v in sorted(tags.items()) if k != MANAGED_TAG) or "-"
    return (
        instance["InstanceId"],
        instance.get("State", {}).get("Name", "?"),
        instance.get("InstanceType", "?"),
        private,
        public,
        when,
        shown,
    )


SUMMARY_HEADERS = ("ID", "STATE", "TYPE", "PRIVATE IP", "PUBLIC IP", "LAUNCHED", "TAGS")
