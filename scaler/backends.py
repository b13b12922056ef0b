"""The scaler's cloud backends behind one factory: each turns one cloud module's calls into the
three the scaler makes (list the farm, launch, terminate), with the same errors.

- ec2: an EC2 API, through clouds/ec2.py.
- openstack: OpenStack's own API, through clouds/openstack.py.
- local: worker VMs under qemu on this host, through clouds/local_farm.py. Their one route to the
  pool is 10.0.2.100:9618 in their slirp network, forwarded to `pool.collector` as the scaler
  reaches it; so their `condor` section names 10.0.2.100 as the central manager, and the pool must
  answer under that same address where the scaler runs (a network namespace of its own, as the
  tests make: HTCondor's CCB hands that address around).
A new cloud is one class with these three methods and one line in BACKENDS.

A hybrid farm (`clouds`) has one backend per cloud behind HybridBackend, which lists the farm on
every cloud, launches on the cloud of the placement it is given, and drains (through the pool),
tags and terminates each instance on the cloud that listed it.
"""

from __future__ import annotations

import time
from typing import Any, Callable, Optional, Union

from ..clouds import local_farm
from ..config.scale import ScaleSpec, WorkerType
from .apply import Backend, CapacityError, CloudError, launch_tags
from .discover import plain
from .model import CLOUD_TAG, END_TAG, FARM_TAG

# The workers' user-data: the same bytes for every launch, or (a typed farm) what makes it for one type.
UserData = Union[bytes, Callable[[WorkerType], bytes]]


def userdata_for(userdata: UserData, worker_type: WorkerType) -> bytes:
    return userdata if isinstance(userdata, bytes) else userdata(worker_type)


def _end_marks(ends: dict[str, str]) -> dict[str, dict[str, str]]:
    """What each cloud's terminate marks an instance with, once it proved to be this farm's: how
    it ended (the black hole reads it after a restart)."""
    return {i: {END_TAG: end} for i, end in ends.items()}


class Ec2Backend:
    """An EC2 cloud, through clouds/ec2.py."""

    def __init__(self, spec: ScaleSpec, userdata: UserData, cloud: Any = None) -> None:
        from ..clouds import ec2

        self.spec = spec
        self.userdata = userdata
        self._ec2 = ec2
        self.cloud = cloud or self._call(ec2.cloud_from_section, spec.cloud)

    def _call(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except self._ec2.Ec2CapacityError as err:
            raise CapacityError(str(err)) from None
        except self._ec2.Ec2Error as err:
            raise CloudError(str(err)) from None

    def farm_instances(self) -> list[dict[str, Any]]:
        return plain(self._call(self.cloud.instances, tag_filters={FARM_TAG: self.spec.name}, states=None))

    def launch(self, count: int, token: str, worker_type: WorkerType) -> list[str]:
        options = self._ec2.launch_options(self.spec.cloud_of(worker_type))
        options["tags"] = {**options["tags"], **launch_tags(self.spec, worker_type)}
        started = self._call(self.cloud.launch, userdata_for(self.userdata, worker_type), count=count, client_token=token, **options)
        return [str(i["InstanceId"]) for i in started]

    def terminate(self, ends: dict[str, str]) -> None:
        self._call(self.cloud.terminate, list(ends), tags={FARM_TAG: self.spec.name}, mark=_end_marks(ends))

    def verdict(self, instance_id: str) -> Any:
        """The final check's verdict on the instance's console output (GetConsoleOutput)."""
        return self._call(self.cloud.verdict, instance_id)


def attachments(spec: ScaleSpec, farm: Optional[local_farm.LocalFarm] = None) -> tuple[Any, ...]:
    """Extra user-data parts the local cloud needs: keep a local test image (which powers off after
    cloud-init for its harness) running as a farm worker."""
    farm = farm or local_farm.LocalFarm.from_section(spec.cloud)
    try:
        image = farm.image()
    except local_farm.LocalFarmError as err:
        raise CloudError(str(err)) from None
    return (local_farm.keep_running(),) if getattr(image, "has_harness", False) else ()


class LocalBackend:
    """Worker VMs under qemu on this host, through clouds/local_farm.py."""

    def __init__(self, spec: ScaleSpec, userdata: UserData, farm: Optional[local_farm.LocalFarm] = None) -> None:
        self.spec = spec
        self.userdata = userdata
        self.farm = farm or local_farm.LocalFarm.from_section(spec.cloud)
        self._farms: dict[str, local_farm.LocalFarm] = {}

    @staticmethod
    def _call(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except local_farm.LocalFarmError as err:
            raise CloudError(str(err)) from None

    def _farm_of(self, worker_type: WorkerType) -> local_farm.LocalFarm:
        """The farm whose image, memory and vcpus are those of WORKER_TYPE (one folder for all)."""
        if not worker_type.cloud:
            return self.farm
        if worker_type.name not in self._farms:
            self._farms[worker_type.name] = self._call(local_farm.LocalFarm.from_section, self.spec.cloud_of(worker_type), root=self.farm.root)
        return self._farms[worker_type.name]

    def farm_instances(self) -> list[dict[str, Any]]:
        return plain(self._call(self.farm.instances, tag_filters={FARM_TAG: self.spec.name}, states=None))

    def launch(self, count: int, token: str, worker_type: WorkerType) -> list[str]:
        if not self.spec.collector:
            raise CloudError("cloud type local: the workers need pool.collector (their one route out)")
        userdata = userdata_for(self.userdata, worker_type)
        started = self._call(self._farm_of(worker_type).launch, userdata, count=count, tags=launch_tags(self.spec, worker_type),
                             client_token=token, pool=local_farm.pool_forward(self.spec.collector))
        return [str(i["InstanceId"]) for i in started]

    def terminate(self, ends: dict[str, str]) -> None:
        self._call(self.farm.terminate, list(ends), tags={FARM_TAG: self.spec.name}, mark=_end_marks(ends))

    def verdict(self, instance_id: str) -> Any:
        """The final check's verdict from the VM's console logs (or its tombstone)."""
        return self._call(self.farm.verdict, instance_id)


class OpenStackBackend:
    """An OpenStack cloud, through clouds/openstack.py. Two differences from EC2 are absorbed here:
    - Nova keeps a server that failed to build (ERROR: no valid host, the quota race it lost after
      accepting the request) or that powered itself off (SHUTOFF: a worker whose final check
      failed; Nova has no terminate-on-shutdown) until it is deleted, and it holds quota all that
      time. Before each launch the farm's dead servers are deleted.
    - Nova forgets deleted servers at once (EC2 lists them for an hour): the black-hole rule sees a
      deleted worker's fate only while the scaler runs (its `ended` memory), not across a restart.
    """

    # How long a launch waits for Nova to schedule its servers: a server that finds no valid host
    # (or loses the quota race after its 202) is a refusal for capacity, known in the same cycle.
    schedule_wait = 30.0
    schedule_poll = 0.5

    def __init__(self, spec: ScaleSpec, userdata: UserData, cloud: Any = None) -> None:
        from ..clouds import openstack

        self.spec = spec
        self.userdata = userdata
        self._openstack = openstack
        self.cloud = cloud or self._call(openstack.cloud_from_section, spec.cloud)
        self.clock: Callable[[], float] = time.monotonic
        self.sleep: Callable[[float], None] = time.sleep

    def _call(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except self._openstack.OpenStackQuotaError as err:
            raise CapacityError(str(err)) from None
        except self._openstack.OpenStackError as err:
            raise CloudError(str(err)) from None

    def farm_instances(self) -> list[dict[str, Any]]:
        return plain(self._call(self.cloud.instances, tag_filters={FARM_TAG: self.spec.name}))

    def reap(self) -> list[str]:
        """Delete the farm's servers that will never run (ERROR, SHUTOFF). Untagged: Nova refuses
        metadata changes on a server in ERROR, and forgets a deleted one at once anyway."""
        dead = [i["InstanceId"] for i in self._call(self.cloud.instances, tag_filters={FARM_TAG: self.spec.name})
                if i.get("Status") in self._openstack.DEAD_STATUSES]
        if dead:
            self._call(self.cloud.terminate, dead)
        return dead

    def launch(self, count: int, token: str, worker_type: WorkerType) -> list[str]:
        """Raises CapacityError for a quota refusal (with the servers started before it), and for
        servers Nova could not place (no valid host, the quota race after a 202): those are deleted."""
        self.reap()
        options = self._openstack.launch_options(self.spec.cloud_of(worker_type))
        options["properties"] = {**options["properties"], **launch_tags(self.spec, worker_type)}
        try:
            self.cloud.launch(userdata_for(self.userdata, worker_type), count=count, client_token=token, name=f"vfarm-{self.spec.name}",
                              **options)
        except self._openstack.OpenStackQuotaError as err:
            started = self._placed(token)  # one create each: those before the refusal run
            raise CapacityError(str(err), started) from None
        except self._openstack.OpenStackError as err:
            raise CloudError(str(err)) from None
        return self._placed(token)

    def _placed(self, token: str) -> list[str]:
        """The servers of launch TOKEN once Nova has scheduled them (at most schedule_wait);
        CapacityError (with the placed ones) when some found no valid host or lost the quota race."""
        deadline = self.clock() + self.schedule_wait
        while True:
            servers = self._call(self.cloud.by_token, token)
            if not any(s.get("Status") == "BUILD" and s.get("TaskState") in (None, "scheduling") for s in servers) or self.clock() >= deadline:
                break
            self.sleep(self.schedule_poll)
        # Nova's listing leaves out a failed server's fault: it is read from the server itself.
        servers = [self._call(self.cloud.get, s["InstanceId"]) if s.get("Status") == "ERROR" and not s.get("StateReason") else s for s in servers]
        refused = [s for s in servers if s.get("Status") == "ERROR" and _capacity_fault(s)]
        placed = [str(s["InstanceId"]) for s in servers if s not in refused]
        if refused:
            self._call(self.cloud.terminate, [s["InstanceId"] for s in refused])
            faults = sorted({str(s.get("StateReason", {}).get("Message", "")) for s in refused})
            raise CapacityError(f"{len(refused)} of {len(servers)} server(s) not placed, deleted: {'; '.join(faults)}", placed)
        return placed

    def terminate(self, ends: dict[str, str]) -> None:
        """Nova refuses metadata on a server still building (a lost one): it is deleted all the same."""
        self._call(self.cloud.terminate, list(ends), tags={FARM_TAG: self.spec.name}, mark=_end_marks(ends))

    def verdict(self, instance_id: str) -> Any:
        """The final check's verdict on the server's console log (Nova keeps it while the server exists)."""
        return self._call(self.cloud.verdict, instance_id)


def _capacity_fault(server: dict[str, Any]) -> bool:
    """Whether a server in ERROR failed for capacity: no valid host (500) or the quota race (413)."""
    reason = server.get("StateReason") or {}
    return "no valid host" in str(reason.get("Message", "")).lower() or str(reason.get("Code")) == "413"


class HybridBackend:
    """A hybrid farm: one backend per cloud, in the farm's priority order. Every instance listed
    carries the tag vfarm:cloud of the cloud that listed it, and is listed once even when clouds
    share an account: an instance tagged for another of the farm's clouds is that cloud's (left
    out here); one without a cloud of the farm in its tag (launched before the farm listed clouds)
    is the first cloud's, in the farm's order, that lists it. Tagging and terminating go to the
    cloud that listed the instance."""

    def __init__(self, spec: ScaleSpec, backends: dict[str, Backend]) -> None:
        self.spec = spec
        self.backends = backends  # cloud name -> its backend
        self.where: dict[str, str] = {}  # instance id -> the cloud that last listed it

    def _backend(self, cloud: Optional[str]) -> Backend:
        backend = self.backends.get(str(cloud))
        if backend is None:
            raise CloudError(f"cloud {cloud!r}: not one of farm {self.spec.name}'s clouds ({', '.join(self.backends)})")
        return backend

    def farm_instances(self) -> list[dict[str, Any]]:
        found: list[dict[str, Any]] = []
        where: dict[str, str] = {}
        for name, backend in self.backends.items():
            try:
                listed = backend.farm_instances()
            except CloudError as err:
                raise CloudError(f"cloud {name}: {err}") from None
            for inst in listed:
                tags = [t for t in inst.get("Tags") or [] if isinstance(t, dict)]
                marked = next((t.get("Value") for t in tags if t.get("Key") == CLOUD_TAG), None)
                if marked is not None and marked != name and marked in self.backends:
                    continue  # the same account behind two clouds of the farm: that one lists it
                if str(inst["InstanceId"]) in where:
                    continue  # untagged, and an earlier cloud (the same account) listed it already
                inst = {**inst, "Tags": [t for t in tags if t.get("Key") != CLOUD_TAG] + [{"Key": CLOUD_TAG, "Value": name}]}
                where[str(inst["InstanceId"])] = name
                found.append(inst)
        self.where = where
        return found

    def launch(self, count: int, token: str, worker_type: WorkerType) -> list[str]:
        try:
            return self._backend(worker_type.on).launch(count, token, worker_type)
        except CapacityError as err:
            raise CapacityError(f"cloud {worker_type.on}: {err}", err.started) from None
        except CloudError as err:
            raise CloudError(f"cloud {worker_type.on}: {err}") from None

    def _by_cloud(self, ids: list[str]) -> dict[str, list[str]]:
        unknown = [i for i in ids if i not in self.where]
        if unknown:
            raise CloudError(f"not listed on any cloud of farm {self.spec.name} in this cycle, nothing done: {' '.join(unknown)}")
        grouped: dict[str, list[str]] = {}
        for iid in ids:
            grouped.setdefault(self.where[iid], []).append(iid)
        return grouped

    def terminate(self, ends: dict[str, str]) -> None:
        """Each cloud's instances on that cloud, every cloud tried whatever another answered; then
        CloudError naming each cloud that failed (the others' terminations are done)."""
        failed: list[str] = []
        for cloud, ids in self._by_cloud(list(ends)).items():
            try:
                self._backend(cloud).terminate({i: ends[i] for i in ids})
            except CloudError as err:
                failed.append(f"cloud {cloud}: {err}")
        if failed:
            raise CloudError("; ".join(failed))

    def verdict(self, instance_id: str) -> Any:
        """The verdict, read on the instance's cloud (CloudError when that backend cannot read consoles)."""
        cloud = self._by_cloud([instance_id])
        backend = self._backend(next(iter(cloud)))
        read = getattr(backend, "verdict", None)
        if read is None:
            raise CloudError(f"cloud {next(iter(cloud))}: this cloud backend cannot read consoles")
        return read(instance_id)


# Cloud type -> its backend: a class with the three methods above, raising CapacityError/CloudError.
BACKENDS: dict[str, Callable[[ScaleSpec, UserData], Backend]] = {
    "ec2": Ec2Backend,
    "openstack": OpenStackBackend,
    "local": LocalBackend,
}


def backend_for(spec: ScaleSpec, userdata: bytes | Callable[[ScaleSpec], UserData]) -> Backend:
    """The backend of the scale section's cloud type (a hybrid farm: a HybridBackend over one per
    cloud, each given spec.on_cloud(cloud)); USERDATA: the workers' user-data, or what makes it
    for one cloud (a hybrid farm's clouds may carry the handlers differently). CloudError (one
    line) when it cannot be made."""
    if spec.hybrid:
        made: dict[str, Backend] = {}
        for cloud in spec.clouds:
            try:
                made[cloud.name] = _one_backend(spec.on_cloud(cloud), userdata)
            except CloudError as err:
                raise CloudError(f"cloud {cloud.name}: {err}") from None
        return HybridBackend(spec, made)
    return _one_backend(spec, userdata)


def _one_backend(spec: ScaleSpec, userdata: bytes | Callable[[ScaleSpec], UserData]) -> Backend:
    kind = str(spec.cloud.get("type"))
    make = BACKENDS.get(kind)
    if make is None:
        raise CloudError(f"cloud type {kind!r}: vfarm scale drives cloud types {', '.join(sorted(BACKENDS))}")
    return make(spec, userdata if isinstance(userdata, bytes) else userdata(spec))

