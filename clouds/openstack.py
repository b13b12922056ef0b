"""OpenStack backend (openstacksdk): launch, list, wait for and terminate vfarm's servers.

Used by `vfarm launch openstack`, `vfarm instances --cloud openstack`, `vfarm terminate --cloud
openstack` and the scaler (`cloud: {type: openstack}`). Admin side only: nothing here runs on an
instance, so openstacksdk is imported here and nowhere in the on-instance code.

Credentials, as the `openstack` command finds them: a cloud named by `--os-cloud` (or `cloud:` in
the scale section), else `OS_CLOUD`, looked up in clouds.yaml (`OS_CLIENT_CONFIG_FILE`, then
./clouds.yaml, ~/.config/openstack/, /etc/openstack/), with secure.yaml beside it; without a cloud
name, the `OS_*` variables of an openrc file. Application credentials (`auth_type:
v3applicationcredential`) work like passwords.

Servers are found by their metadata, never by name: every server vfarm starts carries
`vfarm:managed=true` (plus `vfarm:farm` = the farm's name for the scaler, and any `--property`);
only those are counted or touched. Nova has no ClientToken: a launch puts a token of vfarm's own in
`vfarm:token` and lists the servers holding it before each create, so a retry after a lost reply
(or a scaler that retries a launch of unknown outcome) never starts a server twice.

Servers are described in the shape of EC2's DescribeInstances (InstanceId, State.Name, LaunchTime,
Tags, ...), the shape the scaler and `vfarm instances` read, with Nova's own status beside it.
Every failure becomes an `OpenStackError` with one line for the user; no secret appears in it.
"""

from __future__ import annotations

import base64
import logging
import os
import shlex
import time
import uuid
import warnings
from collections.abc import Mapping, Sequence
from typing import Any, Callable, Optional

from ..mime_builder.limits import OPENSTACK_B64_LIMIT as USERDATA_B64_LIMIT
from ..mime_builder.limits import OPENSTACK_LIMIT as USERDATA_LIMIT
from ..redaction import hide_credentials
from .quoted import cloud_words
from .verdict import Verdict, parse_console

MANAGED_KEY = "vfarm:managed"
TOKEN_KEY = "vfarm:token"
CREATE_ATTEMPTS = 3  # creates tried per server when the reply is lost
# Nova's status -> EC2's state name (what the scaler and the listings read).
STATES = {
    "BUILD": "pending",
    "REBUILD": "pending",
    "ACTIVE": "running",
    "REBOOT": "running",
    "HARD_REBOOT": "running",
    "PASSWORD": "running",
    "RESCUE": "running",
    "MIGRATING": "running",
    "RESIZE": "running",
    "VERIFY_RESIZE": "running",
    "REVERT_RESIZE": "running",
    "SHUTOFF": "stopped",
    "PAUSED": "stopped",
    "SUSPENDED": "stopped",
    "SHELVED": "stopped",
    "SHELVED_OFFLOADED": "stopped",
    "ERROR": "stopped",
    "DELETED": "terminated",
    "SOFT_DELETED": "terminated",
}
LIVE_STATES = ("pending", "running", "stopped")
# Servers that never will run again and still hold quota: a failed build, a worker whose final
# check powered it off (Nova keeps it SHUTOFF: there is no terminate-on-shutdown).
DEAD_STATUSES = ("ERROR", "SHUTOFF")


class OpenStackError(Exception):
    """A failure to report to the user in one line (no traceback). A launch that failed after it
    may have started servers sets TOKEN (its launch token: the same token starts only the rest) and
    STARTED (the IDs of its servers listed after the failure)."""

    def __init__(self, message: str = "", *, token: Optional[str] = None, started: Sequence[str] = ()) -> None:
        super().__init__(message)
        self.token = token
        self.started = list(started)


class OpenStackQuotaError(OpenStackError):
    """Nova refused a request for quota (another flavor may still fit)."""


class OpenStackNotFoundError(OpenStackError):
    """Nova has no such server (404 by ID): deleted, or never was."""


def parse_properties(items: Sequence[str]) -> dict[str, str]:
    """`K=V` strings (from --property) to a dict."""
    props: dict[str, str] = {}
    for item in items:
        key, sep, value = item.partition("=")
        key = key.strip()
        if not key or not sep:
            raise OpenStackError(f"bad property {item!r}: expected KEY=VALUE")
        if len(key) > 255 or len(value) > 255:
            raise OpenStackError(f"property {key[:40]!r}: Nova takes keys and values of at most 255 characters")
        if props.get(key, value) != value:
            raise OpenStackError(f"property {key!r} given twice, with two values: give it once")
        props[key] = value
    return props


def server_metadata(properties: Optional[Mapping[str, str]], token: str) -> dict[str, str]:
    """The metadata every server of one launch gets: the caller's, vfarm:managed, vfarm:token."""
    metadata = dict(properties or {})
    for key in (MANAGED_KEY, TOKEN_KEY):
        if key in metadata and not (key == MANAGED_KEY and metadata[key] == "true"):
            raise OpenStackError(f"property {key} is vfarm's own")
    metadata[MANAGED_KEY] = "true"
    metadata[TOKEN_KEY] = token
    return metadata


def new_token() -> str:
    return f"vfarm-{uuid.uuid4().hex}"


def create_command(image: str, flavor: str, count: int, userdata_file: str, name: str, network: Optional[str] = None,
                   key_name: Optional[str] = None, properties: Optional[Mapping[str, str]] = None,
                   os_cloud: Optional[str] = None, wait: bool = False, os_region: Optional[str] = None) -> str:
    """The `openstack server create` line that starts the same servers (no secret in it: the
    client finds its credentials where vfarm does). It has no token: run twice, it starts twice."""
    argv = ["openstack"]
    if os_cloud:
        argv += ["--os-cloud", os_cloud]
    if os_region:
        argv += ["--os-region-name", os_region]
    argv += ["server", "create", "--image", image, "--flavor", flavor]
    argv += ["--network", network] if network else ["--nic", "auto"]
    if key_name:
        argv += ["--key-name", key_name]
    argv += ["--user-data", userdata_file]
    for key, value in sorted({**(properties or {}), MANAGED_KEY: "true"}.items()):
        argv += ["--property", f"{key}={value}"]
    if count > 1:
        argv += ["--min", str(count), "--max", str(count)]
    if wait:
        argv.append("--wait")
    argv.append(name)
    return shlex.join(argv)


def _quiet_libraries() -> None:
    """openstacksdk and keystoneauth log warnings (with URLs) through Python's last-resort
    handler when nobody configured logging: vfarm reports failures itself, in one line."""
    for name in ("openstack", "keystoneauth", "os_client_config", "stevedore"):
        logger = logging.getLogger(name)
        if not logger.handlers:
            logger.addHandler(logging.NullHandler())
        logger.propagate = False
    # its deprecation notices are for vfarm's developers, not for the output of a command
    warnings.filterwarnings("ignore", module=r"(openstack|keystoneauth1)(\.|$)")


def _mapping(value: Any) -> dict[Any, Any]:
    """VALUE where the API gives an object; anything else (a reply outside its shape) is an empty one."""
    return value if isinstance(value, dict) else {}


def describe(server: Any) -> dict[str, Any]:
    """A Nova server in the shape of EC2's DescribeInstances (what the scaler reads), with Nova's
    own status, name and fault beside it."""
    data = server.to_dict() if hasattr(server, "to_dict") else dict(server)
    status = str(data.get("status") or "UNKNOWN").upper()
    metadata = {str(k): str(v) for k, v in _mapping(data.get("metadata")).items()}
    fixed = floating = None
    for entries in _mapping(data.get("addresses")).values():
        for entry in entries if isinstance(entries, list) else []:
            entry = _mapping(entry)
            kind = entry.get("OS-EXT-IPS:type") or entry.get("type")
            if kind == "floating":
                floating = floating or entry.get("addr")
            else:
                fixed = fixed or entry.get("addr")
    flavor = _mapping(data.get("flavor"))
    image = data.get("image") or {}
    fault = _mapping(data.get("fault"))
    described: dict[str, Any] = {
        "InstanceId": str(data.get("id")),
        "Name": data.get("name") or "",
        "State": {"Name": STATES.get(status, "pending")},
        "Status": status,
        # Nova's task while it builds: "scheduling" until a host is chosen (or none is found)
        "TaskState": data.get("task_state"),
        # when it was asked for: what the scaler's boot-timeout counts from
        "LaunchTime": data.get("created_at"),
        "InstanceType": flavor.get("original_name") or flavor.get("name") or flavor.get("id") or "?",
        "ImageId": image.get("id") if isinstance(image, dict) else str(image or ""),
        "PrivateIpAddress": fixed,
        "PublicIpAddress": floating,
        "Tags": [{"Key": k, "Value": v} for k, v in sorted(metadata.items())],
    }
    if fault.get("message"):
        described["StateReason"] = {"Code": str(fault.get("code", "")), "Message": str(fault["message"])}
    return described


def metadata_of(described: Mapping[str, Any]) -> dict[str, str]:
    return {t["Key"]: t.get("Value", "") for t in described.get("Tags", [])}


class OpenStackCloud:
    """One OpenStack cloud (a clouds.yaml entry or the OS_* variables). Every method raises
    `OpenStackError` (one line) on failure."""

    def __init__(self, cloud: Optional[str] = None, *, region: Optional[str] = None, connection: Any = None,
                 environ: Optional[Mapping[str, str]] = None) -> None:
        env = os.environ if environ is None else environ
        self.cloud_name = cloud or env.get("OS_CLOUD") or None
        self.region = region
        self._conn = connection

    # --- connection -------------------------------------------------------------------------

    @property
    def where(self) -> str:
        if self._conn is not None:
            try:
                return f"OpenStack {hide_credentials(str(self._conn.config.get_auth_args().get('auth_url') or self.cloud_name))}"
            except Exception:  # noqa: BLE001 - naming the cloud must never fail an error path
                pass
        return f"OpenStack cloud {self.cloud_name}" if self.cloud_name else "OpenStack"

    @property
    def conn(self) -> Any:
        if self._conn is None:
            self._conn = self._guard("connect", self._connect)
        return self._conn

    def _connect(self) -> Any:
        _quiet_libraries()
        import openstack

        kwargs: dict[str, Any] = {"app_name": "vfarm"}
        if self.region:
            kwargs["region_name"] = self.region
        conn = openstack.connect(cloud=self.cloud_name, **kwargs)
        auth = conn.config.get_auth_args()
        if not auth.get("auth_url"):
            raise OpenStackError("no OpenStack credentials: set OS_CLOUD (a cloud in clouds.yaml), use --os-cloud, or source an openrc file")
        return conn

    def _secrets(self) -> list[str]:
        found: list[str] = []
        try:
            auth = self._conn.config.get_auth_args() if self._conn is not None else {}
            found += [str(v) for k, v in auth.items() if v and any(w in k for w in ("password", "secret", "token"))]
        except Exception:  # noqa: BLE001 - scrubbing must never fail the error path
            pass
        found += [v for k, v in os.environ.items() if k.startswith("OS_") and v and any(w in k for w in ("PASSWORD", "SECRET", "TOKEN"))]
        return sorted({s for s in found if len(s) >= 4}, key=len, reverse=True)

    def _scrub(self, text: str) -> str:
        for secret in self._secrets():
            text = text.replace(secret, "***")
        return hide_credentials(" ".join(text.split()))

    def _guard(self, what: str, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        """Call FN, turning openstacksdk's and keystoneauth's exceptions into one-line errors."""
        try:
            return fn(*args, **kwargs)
        except OpenStackError as err:
            raise OpenStackError(self._scrub(str(err))) from None
        except Exception as err:  # noqa: BLE001 - every library failure is one line for the user
            text = self._explain(what, err)
            kind = OpenStackError
            if text.startswith(f"{self.where}: the cloud refused to {what} (quota:"):
                kind = OpenStackQuotaError
            elif _status(err) == 404:
                kind = OpenStackNotFoundError
            raise kind(self._scrub(text)) from None

    def _explain(self, what: str, err: BaseException) -> str:
        from keystoneauth1 import exceptions as ka
        from openstack import exceptions as ox

        where = self.where
        message = _message(err)
        status = _status(err)
        if isinstance(err, ka.http.Unauthorized) or status == 401:
            return f"{where}: credentials refused (401: {message}); check the cloud's entry in clouds.yaml, OS_CLOUD or the OS_* variables"
        if isinstance(err, (ka.connection.ConnectFailure, ka.connection.ConnectTimeout, ka.connection.UnknownConnectionError)):
            return f"{where}: endpoint not answering ({what}): {message}"
        if isinstance(err, ka.connection.ConnectionError):
            return f"{where}: endpoint not answering ({what}): {message}"
        if isinstance(err, ka.EndpointNotFound):
            return f"{where}: the catalog has no such service ({what}): {message}"
        if isinstance(err, (ka.auth_plugins.MissingAuthPlugin, ka.auth_plugins.MissingRequiredOptions, ka.auth_plugins.NoMatchingPlugin)):
            return f"{where}: incomplete credentials ({message}); set OS_CLOUD (a cloud in clouds.yaml) or the OS_* variables"
        if isinstance(err, ox.ConfigException):
            return f"OpenStack configuration: {message}"
        if isinstance(err, ox.ForbiddenException) or status == 403:
            if "quota" in message.lower():
                return f"{where}: the cloud refused to {what} (quota: {message})"
            return f"{where}: not allowed to {what} (403: {message})"
        if isinstance(err, ox.ResourceTimeout):
            return f"{where}: {what}: {message}"
        if isinstance(err, ox.HttpException):
            return f"{where}: {what} refused ({status}: {message})"
        if isinstance(err, ka.ClientException):
            return f"{where}: {what} failed: {message}"
        return f"{where}: {what} failed ({type(err).__name__}: {message})"

    # --- look-ups -----------------------------------------------------------------------------

    def resolve(self, image: str, flavor: str, network: Optional[str]) -> tuple[str, str, Any]:
        """IDs of IMAGE and FLAVOR (name or ID) and the `networks` argument for NETWORK (None:
        Nova picks the project's one network, "auto")."""

        def find() -> tuple[str, str, Any]:
            from openstack import exceptions as ox

            try:
                found_image = self.conn.image.find_image(image, ignore_missing=True)
            except ox.DuplicateResource:
                raise OpenStackError(f"{self.where}: more than one image is named {image!r}: give its ID") from None
            if found_image is None:
                raise OpenStackError(f"{self.where}: unknown image {image!r} (openstack image list shows the ones this project sees)")
            try:
                found_flavor = self.conn.compute.find_flavor(flavor, ignore_missing=True)
            except ox.DuplicateResource:
                raise OpenStackError(f"{self.where}: more than one flavor is named {flavor!r}: give its ID") from None
            if found_flavor is None:
                raise OpenStackError(f"{self.where}: unknown flavor {flavor!r} (openstack flavor list shows the ones this project may use)")
            networks: Any = "auto"
            if network:
                try:
                    found_net = self.conn.network.find_network(network, ignore_missing=True)
                except ox.DuplicateResource:
                    raise OpenStackError(f"{self.where}: more than one network is named {network!r}: give its ID") from None
                if found_net is None:
                    raise OpenStackError(f"{self.where}: unknown network {network!r} (openstack network list shows the ones this project sees)")
                networks = [{"uuid": found_net.id}]
            return str(found_image.id), str(found_flavor.id), networks

        result: tuple[str, str, Any] = self._guard("look up the image, flavor and network", find)
        return result

    # --- operations ---------------------------------------------------------------------------

    def _servers(self) -> list[Any]:
        return list(self.conn.compute.servers(details=True))

    def instances(self, tag_filters: Optional[Mapping[str, str]] = None, states: Optional[Sequence[str]] = None,
                  ids: Sequence[str] = ()) -> list[dict[str, Any]]:
        """vfarm's servers (metadata vfarm:managed=true), narrowed by metadata (Nova filters
        metadata only client-side), EC2 state names and IDs."""
        wanted = {MANAGED_KEY: "true", **dict(tag_filters or {})}
        found = [describe(s) for s in self._guard("list servers", self._servers)]
        found = [d for d in found if all(metadata_of(d).get(k) == v for k, v in wanted.items())]
        if states:
            found = [d for d in found if d["State"]["Name"] in states]
        if ids:
            found = [d for d in found if d["InstanceId"] in set(ids)]
        return sorted(found, key=lambda d: (str(d.get("LaunchTime") or ""), d["InstanceId"]))

    def by_token(self, token: str) -> list[dict[str, Any]]:
        return self.instances({TOKEN_KEY: token})

    def launch(self, userdata: bytes, image: str, flavor: str, count: int = 1, network: Optional[str] = None,
               key_name: Optional[str] = None, properties: Optional[Mapping[str, str]] = None, client_token: Optional[str] = None,
               name: str = "vfarm-worker", max_userdata: int = USERDATA_LIMIT) -> list[dict[str, Any]]:
        """COUNT servers holding vfarm:token = CLIENT_TOKEN (made up when not given), one create
        each. Before every create the servers with that token are listed: those a lost reply
        started count, so the same token never starts more than COUNT (and one call never makes
        more than COUNT creates, however far the listing lags). Returns them (described).
        A failure once servers of the token may run (one was listed or created, or a reply was
        lost) is raised in its own class with TOKEN and STARTED set, and says "started K of N: IDS"."""
        if count < 1:
            raise OpenStackError(f"--count must be at least 1, not {count}")
        if len(userdata) > max_userdata:
            raise OpenStackError(f"user-data is {len(userdata)} bytes, over the limit of {max_userdata} (Nova takes {USERDATA_B64_LIMIT} characters of base64)")
        token = client_token or new_token()
        metadata = server_metadata(properties, token)
        image_id, flavor_id, networks = self.resolve(image, flavor, network)
        encoded = base64.b64encode(userdata).decode("ascii")
        attempts = created = 0
        # Whether servers of this launch may run: once one was listed or created, or a reply was
        # lost. A failure from then on says which run and the token (they keep running).
        maybe_running = False
        try:
            while True:
                have = self.by_token(token)
                if len(have) >= count:
                    return have
                maybe_running = maybe_running or bool(have)
                if created >= count:  # a listing that lags behind the creates, or leaves them out: never more creates than COUNT
                    raise OpenStackError(f"{self.where}: {created} server(s) created, yet the listing by token shows {len(have)}")
                kwargs: dict[str, Any] = {"name": f"{name}-{len(have) + 1}", "image_id": image_id, "flavor_id": flavor_id,
                                          "networks": networks, "metadata": metadata, "user_data": encoded}
                if key_name:
                    kwargs["key_name"] = key_name
                try:
                    self._guard("create a server", self.conn.compute.create_server, **kwargs)
                    maybe_running, created = True, created + 1
                except OpenStackError as err:
                    attempts += 1
                    lost = _reply_lost(str(err))
                    maybe_running = maybe_running or lost
                    if not lost or attempts >= CREATE_ATTEMPTS:
                        raise
                    # the reply was lost, maybe not the request: list by token again before a retry
        except OpenStackError as err:
            if not maybe_running:
                raise
            return self._part_way(err, token, count)

    def _part_way(self, err: OpenStackError, token: str, count: int) -> list[dict[str, Any]]:
        """After ERR, a launch (TOKEN, COUNT) that may have started servers: its servers if they
        are all there after all (the last reply was lost, not the request); else ERR again, of
        its own class (a quota refusal stays one), naming the servers that run and the token."""
        try:
            have = self.by_token(token)
        except OpenStackError:
            raise type(err)(f"{err}; the servers it started could not be listed", token=token) from None
        if len(have) >= count:
            return have
        ids = [str(s["InstanceId"]) for s in have]
        raise type(err)(f"{err}; started {len(ids)} of {count}" + (f": {' '.join(ids)}" if ids else ""), token=token, started=ids) from None

    def get(self, server_id: str) -> dict[str, Any]:
        """The server, described. `OpenStackNotFoundError` when Nova has no such server."""
        found = self._guard("show a server", self.conn.compute.find_server, server_id, ignore_missing=True)
        if found is None:
            raise OpenStackNotFoundError(f"{self.where}: no such server {server_id}")
        return describe(self._guard("show a server", self.conn.compute.get_server, found.id))

    def terminate(self, ids: Sequence[str], only_managed: bool = True, tags: Optional[Mapping[str, str]] = None,
                  mark: Optional[Mapping[str, Mapping[str, str]]] = None) -> list[dict[str, Any]]:
        """Delete servers. Before anything is marked or deleted, refuses if any ID is not one of
        vfarm's own servers (with ONLY_MANAGED, the default), or lacks one of TAGS (metadata K=V
        each: `vfarm terminate ID... --tag K=V` touches only that farm's servers). MARK (ID ->
        metadata) is then set on each server just before it is deleted (the scaler records why it
        ended a worker); a server that refuses it (Nova's 409 for one still building) is deleted
        all the same. A server Nova no longer has (deleted meanwhile: 404 by ID) is skipped, its
        change `terminated` before and after; any other failure to look a server up is raised as
        itself."""
        ids = list(dict.fromkeys(ids))
        current: dict[str, dict[str, Any]] = {}
        for server_id in ids:
            try:
                current[server_id] = self.get(server_id)
            except OpenStackNotFoundError:
                continue
        metadata = {i: metadata_of(d) for i, d in current.items()}
        if only_managed:
            foreign = [i for i in current if metadata[i].get(MANAGED_KEY) != "true"]
            if foreign:
                raise OpenStackError(f"not vfarm servers (no metadata {MANAGED_KEY}=true), nothing deleted: {' '.join(foreign)}")
        wanted = dict(tags or {})
        other = [i for i in current if any(metadata[i].get(k) != v for k, v in wanted.items())]
        if other:
            shown = " ".join(f"{k}={v}" for k, v in sorted(wanted.items()))
            raise OpenStackError(f"not tagged {shown} (metadata), nothing deleted: {' '.join(other)}")
        changes = []
        for server_id in ids:
            if server_id not in current:
                changes.append({"InstanceId": server_id, "PreviousState": {"Name": "terminated"}, "CurrentState": {"Name": "terminated"}})
                continue
            real = current[server_id]["InstanceId"]
            if mark and server_id in mark:
                try:
                    self._guard("set metadata", self.conn.compute.set_server_metadata, real, **dict(mark[server_id]))
                except OpenStackError:
                    pass  # deleting the server matters more than recording why
            self._guard("delete a server", self.conn.compute.delete_server, real)
            before = current[server_id]["State"]["Name"]
            changes.append({"InstanceId": real, "PreviousState": {"Name": before}, "CurrentState": {"Name": "shutting-down"}})
        return changes

    def console_output(self, server_id: str) -> str:
        """The server's console log as Nova keeps it ('' when it holds none)."""
        reply = self._guard("read the console output", self.conn.compute.get_server_console_output, server_id)
        if reply is not None and not isinstance(reply, dict):
            raise OpenStackError(f"{self.where}: the console output of {server_id} is not in Nova's shape")
        return str((reply or {}).get("output") or "")

    def verdict(self, server_id: str) -> Optional[Verdict]:
        """The final check's verdict on the server's console log, None when there is none."""
        return parse_console(self.console_output(server_id), server_id)

    def userdata(self, server_id: str) -> bytes:
        """The user-data Nova holds for a server (b"" unless the credentials are an admin's:
        Nova shows `user_data` to admins only)."""
        server = self._guard("read user-data", self.conn.compute.get_server, server_id)
        value = getattr(server, "user_data", None)
        return base64.b64decode(value) if value else b""

    def wait_running(self, ids: Sequence[str], timeout: float = 600.0, interval: float = 2.0,
                     progress: Optional[Callable[[list[dict[str, Any]]], None]] = None,
                     sleep: Callable[[float], None] = time.sleep, clock: Callable[[], float] = time.monotonic) -> list[dict[str, Any]]:
        """Poll until every server is ACTIVE. Fails at once when one goes ERROR (no valid host,
        the quota race Nova loses after its 202, a bad image) with Nova's fault, or SHUTOFF, or
        disappears; or after TIMEOUT seconds."""
        deadline = clock() + timeout
        while True:
            current = [self.get(i) for i in ids]
            if progress is not None:
                progress(current)
            failed = [f"{d['InstanceId']} {d['Status']}{_fault(d)}" for d in current if d["Status"] in DEAD_STATUSES]
            if failed:
                raise OpenStackError(f"{self.where}: server(s) failed: {'; '.join(failed)}")
            if all(d["Status"] == "ACTIVE" for d in current):
                return current
            if clock() > deadline:
                waiting = ", ".join(f"{d['InstanceId']} {d['Status']}" for d in current if d["Status"] != "ACTIVE")
                raise OpenStackError(f"not ACTIVE after {timeout:.0f} s: {waiting}")
            sleep(interval)


def _message(err: BaseException) -> str:
    """The server's own words where there are some (openstacksdk puts them in `details`), as an
    error may quote them (quoted.cloud_words)."""
    details = getattr(err, "details", None)
    return cloud_words(str(details) if details else str(err)) or type(err).__name__


def _status(err: BaseException) -> Optional[int]:
    """The HTTP status of a library failure, None without one."""
    status = getattr(err, "status_code", None) or getattr(err, "http_status", None)
    return status if isinstance(status, int) else None


def _fault(described: Mapping[str, Any]) -> str:
    reason = described.get("StateReason", {}).get("Message")
    return f" ({reason})" if reason else ""


def _reply_lost(message: str) -> bool:
    """Whether a failed create may still have started a server (the request got there, the reply did not)."""
    return "not answering" in message or any(f"({code}:" in message for code in ("500", "502", "503", "504"))


def cloud_from_section(section: Mapping[str, Any]) -> OpenStackCloud:
    """The cloud of a farm file's `scale.cloud` section (type openstack): the clouds.yaml entry it
    names (`cloud`), else OS_CLOUD / the OS_* variables, as for `vfarm launch openstack`."""
    return OpenStackCloud(section.get("cloud"), region=section.get("region"))


def launch_options(section: Mapping[str, Any]) -> dict[str, Any]:
    """`OpenStackCloud.launch` keyword arguments (all but userdata, count and token) from a
    `scale.cloud` section."""
    return {
        "image": section["image"],
        "flavor": section["flavor"],
        "network": section.get("network"),
        "key_name": section.get("key-name"),
        "properties": dict(section.get("properties") or {}),
    }


def summary_row(described: Mapping[str, Any]) -> tuple[str, ...]:
    """ID, Nova status, flavor, fixed and floating address, creation time, vfarm-related metadata."""
    metadata = metadata_of(described)
    shown = " ".join(f"{k}={v}" for k, v in sorted(metadata.items()) if k not in (MANAGED_KEY, TOKEN_KEY)) or "-"
    return (
        described["InstanceId"],
        described.get("Status", "?"),
        str(described.get("InstanceType", "?")),
        described.get("PrivateIpAddress") or "-",
        described.get("PublicIpAddress") or "-",
        str(described.get("LaunchTime") or "-"),
        shown,
    )


SUMMARY_HEADERS = ("ID", "STATUS", "FLAVOR", "FIXED IP", "FLOATING IP", "CREATED", "METADATA")
