"""The scaler's view of an OpenStack cloud (`cloud.type: openstack`), through clouds/openstack.py,
with the same calls the EC2 backend makes.

Two differences from EC2 are absorbed here:
- Nova keeps a server that failed to build (ERROR: no valid host, the quota race it lost after
  accepting the request) or that powered itself off (SHUTOFF: a worker whose final check failed;
  Nova has no terminate-on-shutdown) until it is deleted, and it holds quota all that time. Before
  each launch the farm's dead servers are tagged `vfarm:end=lost` and deleted.
- Nova forgets deleted servers at once (EC2 lists them for an hour): the black-hole rule sees a
  deleted worker's fate only while the scaler runs (its `joined` set), not across a restart.
"""

from __future__ import annotations

from typing import Any, Callable, Optional

from ..clouds import openstack
from ..config.scale import ScaleSpec
from .apply import END_TAG, CloudError
from .plan import FARM_TAG


class OpenStackBackend:
    def __init__(self, spec: ScaleSpec, userdata: bytes, cloud: Optional[openstack.OpenStackCloud] = None) -> None:
        self.spec = spec
        self.userdata = userdata
        self.cloud = cloud or openstack.cloud_from_section(spec.cloud)

    @staticmethod
    def _call(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except openstack.OpenStackError as err:
            raise CloudError(str(err)) from None

    def farm_instances(self) -> list[dict[str, Any]]:
        from .discover import plain

        return plain(self._call(self.cloud.instances, tag_filters={FARM_TAG: self.spec.name}))

    def reap(self) -> list[str]:
        """Delete the farm's servers that will never run (ERROR, SHUTOFF). Untagged: Nova refuses
        metadata changes on a server in ERROR, and forgets a deleted one at once anyway."""
        dead = [i["InstanceId"] for i in self._call(self.cloud.instances, tag_filters={FARM_TAG: self.spec.name})
                if i.get("Status") in openstack.DEAD_STATUSES]
        if dead:
            self._call(self.cloud.terminate, dead)
        return dead

    def launch(self, count: int, token: str) -> list[str]:
        self.reap()
        options = openstack.launch_options(self.spec.cloud)
        options["properties"] = {**options["properties"], FARM_TAG: self.spec.name}
        started = self._call(self.cloud.launch, self.userdata, count=count, client_token=token, name=f"vfarm-{self.spec.name}", **options)
        return [str(i["InstanceId"]) for i in started]

    def terminate(self, ends: dict[str, str]) -> None:
        for end in sorted(set(ends.values())):
            try:
                self._call(self.cloud.tag, [i for i, e in ends.items() if e == end], {END_TAG: end})
            except CloudError:
                pass  # Nova refuses metadata on a server still building (a lost one): deleting it matters more
        self._call(self.cloud.terminate, list(ends))
