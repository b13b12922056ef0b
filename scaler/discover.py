"""Discover: one snapshot of the pool (htcondor2) and the cloud (EC2 helpers), in the shape the
planner reads and `--save-snapshot` writes. A query that fails raises DiscoverError: it is never
read as "nothing there" (no jobs, no workers, no instances).
"""

from __future__ import annotations

import datetime
import json
import os
import time
from collections.abc import Iterable
from typing import Any, Callable, Optional

from ..config.scale import ScaleSpec
from .plan import FARM_TAG

# Job states the planner looks at (idle, running); history and held jobs stay out of the snapshot.
JOB_CONSTRAINT = "JobStatus == 1 || JobStatus == 2"


class DiscoverError(RuntimeError):
    """A query that failed; the message is one line."""


def ad_to_json(ad: Any) -> dict[str, Any]:
    """A ClassAd as `condor_q -json` / `condor_status -json` print it (expressions as strings)."""
    data: dict[str, Any] = json.loads(ad.printJson())
    return data


def _one_line(err: BaseException) -> str:
    return " ".join(str(err).split()) or type(err).__name__


def pool_snapshot(collector: str, schedd: Optional[str] = None, token_dir: Optional[str] = None) -> dict[str, Any]:
    """Jobs (every schedd the collector knows, or the one named), slots and the collector's ad."""
    if token_dir:
        os.environ["_CONDOR_SEC_TOKEN_DIRECTORY"] = token_dir
    try:
        import htcondor2
    except ImportError as err:
        raise DiscoverError(f"the htcondor Python bindings are missing (pip install htcondor): {err}") from None
    if token_dir:
        htcondor2.reload_config()
    try:
        pool = htcondor2.Collector(collector)
        slots = [ad_to_json(ad) for ad in pool.query(htcondor2.AdType.Startd)]
        collectors = [ad_to_json(ad) for ad in pool.query(htcondor2.AdType.Collector)]
    except Exception as err:  # noqa: BLE001 - any failure of the bindings is one line for the log
        raise DiscoverError(f"collector {collector}: {_one_line(err)}") from None
    try:
        if schedd:
            schedd_ads = [pool.locate(htcondor2.DaemonType.Schedd, schedd)]
        else:
            schedd_ads = list(pool.locateAll(htcondor2.DaemonType.Schedd))
    except Exception as err:  # noqa: BLE001
        raise DiscoverError(f"collector {collector}: cannot locate the schedd(s): {_one_line(err)}") from None
    if not schedd_ads:
        raise DiscoverError(f"collector {collector} knows no schedd: the queue cannot be read")
    jobs: list[dict[str, Any]] = []
    for ad in schedd_ads:
        name = ad.get("Name", "?")
        try:
            jobs += [ad_to_json(job) for job in htcondor2.Schedd(ad).query(constraint=JOB_CONSTRAINT)]
        except Exception as err:  # noqa: BLE001
            raise DiscoverError(f"schedd {name}: {_one_line(err)}") from None
    return {"jobs": jobs, "slots": slots, "collector": collectors}


def _iso(value: Any) -> Any:
    if isinstance(value, datetime.datetime):
        return value.isoformat()
    raise TypeError(f"not JSON: {type(value).__name__}")


def plain(instances: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    """Instance dicts as the JSON DescribeInstances prints (datetimes as ISO 8601)."""
    data: list[dict[str, Any]] = json.loads(json.dumps(list(instances), default=_iso))
    return data


def cloud_instances(spec: ScaleSpec) -> list[dict[str, Any]]:
    """The farm's instances from the cloud API (tag vfarm:farm = name)."""
    if spec.cloud.get("type") == "local":
        from ..clouds import local_farm

        try:
            return plain(local_farm.LocalFarm.from_section(spec.cloud).instances(tag_filters={FARM_TAG: spec.name}))
        except local_farm.LocalFarmError as err:
            raise DiscoverError(f"cloud: {err}") from None
    if spec.cloud.get("type") == "openstack":
        from ..clouds import openstack

        try:
            return plain(openstack.cloud_from_section(spec.cloud).instances(tag_filters={FARM_TAG: spec.name}, states=("pending", "running")))
        except openstack.OpenStackError as err:
            raise DiscoverError(f"cloud: {err}") from None
    if spec.cloud.get("type") != "ec2":
        raise DiscoverError(f"cloud type {spec.cloud.get('type')!r}: live cycles need cloud type ec2, openstack or local")
    from ..clouds import ec2

    try:
        return plain(ec2.cloud_from_section(spec.cloud).instances(tag_filters={FARM_TAG: spec.name}))
    except ec2.Ec2Error as err:
        raise DiscoverError(f"cloud: {err}") from None


def snapshot(spec: ScaleSpec, token_dir: Optional[str] = None, clock: Callable[[], float] = time.time,
             instances: Optional[Callable[[ScaleSpec], list[dict[str, Any]]]] = None) -> dict[str, Any]:
    """One whole snapshot: `{"now", "jobs", "slots", "instances", "collector"}`."""
    if not spec.collector:
        raise DiscoverError("the scale section has no pool.collector: live cycles need one")
    now = clock()
    pool = pool_snapshot(spec.collector, spec.pool.get("schedd"), token_dir)
    found = (instances or cloud_instances)(spec)
    return {"now": now, "jobs": pool["jobs"], "slots": pool["slots"], "instances": found, "collector": pool["collector"]}
