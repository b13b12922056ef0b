"""A hybrid farm against real systems: the HTCondor pool (waiting jobs), the OpenStack control plane
first (its quota holds one more server) and an EC2 API (moto) second, all on 127.0.0.1. One cycle
starts one worker on OpenStack (none when both creates lose Nova's quota recheck, as they may on a
busy host) and, refused for quota there, the rest on moto in the same cycle;
--status counts them per cloud; past boot-timeout each is terminated on its own cloud; servers and
instances that are not the farm's are untouched on both. And a flavor Nova finds no valid host
for: the servers are deleted and moto starts the workers in the same cycle."""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from tests.cli.test_ec2_cli import EXAMPLE
from tests.clouds.test_openstack import NoDrain, foreign_server, server_ids, wait_gone
from tests.fixtures.condor_pool import CondorPool, restore, wait_for
from tests.fixtures.moto import Ec2Endpoint
from tests.fixtures.openstack import PASSWORD, OpenStackCloud
from vfarm.cli import scale as scale_cli
from vfarm.scaler import loop
from vfarm.scaler.model import Action

pytestmark = pytest.mark.openstack

FARM = "hybrid"
JOBS = 3


def farm_file(tmp_path: Path, pool: CondorPool, ec2: Ec2Endpoint) -> Path:
    token = tmp_path / "admin.token"
    token.write_text((pool.admin_token_dir / "autoscaler").read_text())
    farm = tmp_path / "farm.yaml"
    farm.write_text(
        EXAMPLE.read_text() + "\nscale:\n"
        f"  name: {FARM}\n"
        "  clouds:\n"
        "    - {name: site, type: openstack, cloud: os-demo, image: tiny, flavor: m1.tiny, network: private, handlers: baked}\n"
        f"    - {{name: aws, type: ec2, image-id: {ec2.image_id}, instance-type: m1.small, endpoint-url: '{ec2.url}', region: {ec2.region},"
        " handlers: baked}\n"
        f"  pool: {{collector: '{pool.collector_address}', token-file: admin.token}}\n"
        "  max-vms: 5\n  cpus-per-vm: 1\n  waiting-time: 0\n  boot-timeout: 600\n"
    )
    return farm


def moto_instances(ec2: Ec2Endpoint) -> dict[str, dict[str, Any]]:
    pages = ec2.client().describe_instances()
    return {i["InstanceId"]: i for r in pages["Reservations"] for i in r["Instances"]}


def tags_of(instance: dict[str, Any]) -> dict[str, str]:
    return {t["Key"]: t["Value"] for t in instance.get("Tags", [])}


@pytest.mark.pool
def test_a_hybrid_farm_fills_openstack_then_falls_back_to_ec2_in_one_cycle(condor_pool: CondorPool, openstack_env: OpenStackCloud,
                                                                            ec2_endpoint: Ec2Endpoint, tmp_path: Path,
                                                                            caplog: pytest.LogCaptureFixture) -> None:
    # Not the farm's: a server of the same OpenStack project, an instance of another farm and an untagged one on moto.
    foreign = foreign_server(openstack_env)
    admin = openstack_env.connect()
    demo = admin.identity.find_project("demo", ignore_missing=False)
    admin.compute.update_quota_set(demo.id, instances=2)  # the foreign server and one of the farm's
    client = ec2_endpoint.client()
    other_tags = [{"ResourceType": "instance", "Tags": [{"Key": "vfarm:farm", "Value": "other"}, {"Key": "vfarm:managed", "Value": "true"}]}]
    others = [i["InstanceId"] for i in client.run_instances(ImageId=ec2_endpoint.image_id, MinCount=1, MaxCount=1, TagSpecifications=other_tags)["Instances"]]
    others += [i["InstanceId"] for i in client.run_instances(ImageId=ec2_endpoint.image_id, MinCount=1, MaxCount=1)["Instances"]]

    farm = farm_file(tmp_path, condor_pool, ec2_endpoint)
    cluster = condor_pool.submit(JOBS, 5, requirements='VfarmInstanceId == "nowhere"')  # they wait: no worker joins
    wait_for(lambda: len(condor_pool.jobs(cluster)) == JOBS, 60, "the jobs in the queue")
    spec = scale_cli.load_spec(str(farm))
    assert spec is not None and spec.hybrid
    offset = [0.0]
    metrics = loop.Metrics(FARM, [c.name for c in spec.clouds])
    caplog.set_level(logging.INFO, logger="vfarm.scale")
    # The scaler points this process's htcondor2 at its token folder (gone after the stack): put it back after.
    previous = {"_CONDOR_SEC_TOKEN_DIRECTORY": os.environ.get("_CONDOR_SEC_TOKEN_DIRECTORY")}
    try:
        with contextlib.ExitStack() as stack:
            scaler = scale_cli.make_scaler(spec, argparse.Namespace(farm=str(farm)), stack, dry_run=False, metrics=metrics)
            scaler.clock = lambda: time.time() + offset[0]

            started = time.monotonic()
            first = scaler.cycle(strict=True)
            took = time.monotonic() - started
            assert first is not None and scaler.outcome is not None
            [launch_site, *_] = first.of(Action.LAUNCH)
            assert (launch_site.type, launch_site.count, launch_site.cloud) == ("default@site", JOBS, "site")
            assert [(o.type, o.count) for o in launch_site.fallback] == [("default@aws", JOBS)]
            # OpenStack took one before its quota refused; moto started the other two in the same cycle.
            # Or, on a busy host, Nova's quota race: the second create passed the API's check before
            # the first server was counted, then both lost the conductor's recheck (413, ERROR) and
            # were deleted: moto started all three in the same cycle.
            on_site = scaler.outcome.launched_by_cloud.get("site", 0)
            assert scaler.outcome.launched_by_cloud == {**({"site": 1} if on_site else {}), "aws": JOBS - on_site}, caplog.text
            [fallback] = scaler.outcome.fallbacks
            assert (fallback["from"], fallback["to"], fallback["count"], fallback["started_before"]) == ("default@site", "default@aws",
                                                                                                          JOBS - on_site, on_site)
            assert "Quota exceeded for instances" in fallback["reason"] and PASSWORD not in caplog.text
            if not on_site:
                assert "server(s) not placed, deleted" in fallback["reason"], fallback["reason"]

            def ours_on_site() -> dict[str, Any]:
                return {s.id: s for s in admin.compute.servers(all_projects=True) if s.metadata.get("vfarm:farm") == FARM}

            wait_for(lambda: len(ours_on_site()) == on_site, 600, "the farm's servers on OpenStack: the placed ones, the unplaced deleted",
                     interval=0.5)
            ours_site = ours_on_site()
            assert all(s.metadata.get("vfarm:cloud") == "site" for s in ours_site.values())
            ours_aws = {iid: i for iid, i in moto_instances(ec2_endpoint).items() if tags_of(i).get("vfarm:farm") == FARM}
            assert len(ours_aws) == JOBS - on_site and all(tags_of(i).get("vfarm:cloud") == "aws" for i in ours_aws.values())
            assert set(scaler.outcome.launched) == set(ours_site) | set(ours_aws)
            assert f'vfarm_scale_cloud_launches_total{{cloud="aws",farm="hybrid"}} {JOBS - on_site}.0' in metrics.text()
            print(f"first cycle (discover, plan, {on_site} on OpenStack, quota refusal, {JOBS - on_site} on moto): {took:.1f} s")

            # An operator looks: per-cloud counts.
            status = subprocess.run([sys.executable, "-m", "vfarm", "scale", str(farm), "--status", "--json"], text=True, capture_output=True,
                                    timeout=120, env=dict(os.environ))
            assert status.returncode == 0, status.stderr
            seen = json.loads(status.stdout)
            assert seen["clouds"] == {"site": {"booting": 1} if on_site else {}, "aws": {"booting": JOBS - on_site}}
            assert {r["instance"]: r["cloud"] for r in seen["instances"]} == {**{i: "site" for i in ours_site}, **{i: "aws" for i in ours_aws}}

            # The queue empties; past boot-timeout none has joined: each is terminated on its own cloud.
            condor_pool.run(["condor_rm", str(cluster)], check=False)
            wait_for(lambda: not condor_pool.jobs(cluster), 60, "the jobs removed")
            offset[0] = 700.0
            last = scaler.cycle(strict=True)
            assert last is not None and scaler.outcome is not None
            assert sorted((d.instance, d.cloud) for d in last.of(Action.TERMINATE)) == sorted(
                [*((i, "site") for i in ours_site), *((i, "aws") for i in ours_aws)])
            assert sorted(scaler.outcome.terminated) == sorted([*ours_site, *ours_aws]) and scaler.outcome.launched == []
        wait_gone(openstack_env, sorted(ours_site))
        after = moto_instances(ec2_endpoint)
        assert {iid: (after[iid]["State"]["Name"], tags_of(after[iid]).get("vfarm:end")) for iid in ours_aws} == {
            iid: ("terminated", "lost") for iid in ours_aws}
        assert foreign in server_ids(openstack_env)
        assert all(after[iid]["State"]["Name"] == "running" for iid in others)
    finally:
        restore(previous)
        condor_pool.run(["condor_rm", str(cluster)], check=False)


def test_no_valid_host_on_openstack_falls_back_to_ec2_in_the_same_cycle(openstack_env: OpenStackCloud, ec2_endpoint: Ec2Endpoint,
                                                                       tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="vfarm.test")
    admin = openstack_env.connect()
    huge = admin.compute.create_flavor(name="vfarm.nohost", ram=512, vcpus=1, disk=700000, is_public=True)
    try:
        farm = tmp_path / "farm.yaml"
        farm.write_text(
            EXAMPLE.read_text() + "\nscale:\n"
            f"  name: {FARM}\n  max-vms: 4\n  cpus-per-vm: 1\n  waiting-time: 0\n"
            "  clouds:\n"
            "    - {name: site, type: openstack, cloud: os-demo, image: tiny, flavor: vfarm.nohost, network: private, handlers: baked}\n"
            f"    - {{name: aws, type: ec2, image-id: {ec2_endpoint.image_id}, instance-type: m1.small, endpoint-url: '{ec2_endpoint.url}',"
            f" region: {ec2_endpoint.region}, handlers: baked}}\n"
        )
        spec = scale_cli.load_spec(str(farm))
        assert spec is not None
        backend = scale_cli.make_backend(spec, str(farm), build=True)
        jobs = [{"ClusterId": n, "ProcId": 0, "JobStatus": 1, "EnteredCurrentStatus": time.time() - 100, "RequestCpus": 1} for n in range(2)]
        scaler = loop.Scaler(spec, backend, NoDrain(), logging.getLogger("vfarm.test"), pool=lambda: {"jobs": jobs, "slots": [], "collector": []})
        started = time.monotonic()
        assert scaler.cycle(strict=True) is not None and scaler.outcome is not None
        took = time.monotonic() - started
        assert len(scaler.outcome.fallbacks) == 1, caplog.text
        [fallback] = scaler.outcome.fallbacks
        assert (fallback["from"], fallback["to"], fallback["count"], fallback["started_before"]) == ("default@site", "default@aws", 2, 0)
        assert "No valid host" in fallback["reason"] and "deleted" in fallback["reason"]
        assert scaler.outcome.launched_by_cloud == {"aws": 2}
        ours = {iid for iid, i in moto_instances(ec2_endpoint).items() if tags_of(i).get("vfarm:cloud") == "aws"}
        assert ours == set(scaler.outcome.launched)
        wait_for(lambda: not server_ids(openstack_env), 600, "the unplaced servers deleted", interval=0.5)
        print(f"cycle with 2 unplaced on OpenStack, 2 started on moto: {took:.1f} s")
    finally:
        openstack_env.clean()
        admin.compute.delete_flavor(huge)


