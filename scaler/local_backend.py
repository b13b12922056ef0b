"""The scaler's view of the local cloud (`cloud.type: local`): worker VMs under qemu on this host,
through clouds/local_farm.py, with the same calls the EC2 backend makes.

The workers' one route to the pool is 10.0.2.100:9618 in their slirp network, forwarded to
`pool.collector` as the scaler reaches it; so their `condor` section names 10.0.2.100 as the
central manager, and the pool must answer under that same address where the scaler runs (a
network namespace of its own, as the tests make: HTCondor's CCB hands that address around).
"""

from __future__ import annotations

from typing import Any, Callable, Optional

from ..clouds import local_farm
from ..config.scale import ScaleSpec
from .apply import END_TAG, CloudError
from .plan import FARM_TAG


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
    def __init__(self, spec: ScaleSpec, userdata: bytes, farm: Optional[local_farm.LocalFarm] = None) -> None:
        self.spec = spec
        self.userdata = userdata
        self.farm = farm or local_farm.LocalFarm.from_section(spec.cloud)

    @staticmethod
    def _call(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except local_farm.LocalFarmError as err:
            raise CloudError(str(err)) from None

    def farm_instances(self) -> list[dict[str, Any]]:
        from .discover import plain

        return plain(self._call(self.farm.instances, tag_filters={FARM_TAG: self.spec.name}, states=None))

    def launch(self, count: int, token: str) -> list[str]:
        if not self.spec.collector:
            raise CloudError("cloud type local: the workers need pool.collector (their one route out)")
        started = self._call(self.farm.launch, self.userdata, count=count, tags={FARM_TAG: self.spec.name}, client_token=token,
                             pool=local_farm.pool_forward(self.spec.collector))
        return [str(i["InstanceId"]) for i in started]

    def terminate(self, ends: dict[str, str]) -> None:
        for end in sorted(set(ends.values())):
            self._call(self.farm.tag, [i for i, e in ends.items() if e == end], {END_TAG: end})
        self._call(self.farm.terminate, list(ends))
