"""A hybrid farm with the local qemu cloud first, one REAL worker VM, and the overflow on the
OpenStack control plane and moto (`-m "vm and openstack and pool"`; one run of `tools/run tests`
runs it once).

Clouds in priority order: `local` (max 1: one trixie-condor VM under qemu), `site` (OpenStack,
max 1), `aws` (moto). Eight one-CPU jobs of two CPUs' workers: the first cycle starts one VM on
local, one server on site and two instances on aws (the queue exceeds the local maximum). Two jobs
can only run on the VM, six only elsewhere. Nova's fake driver and moto boot nothing: the test
plays their hypervisor (a token-only startd in the pool per server/instance, advertising its id,
stopped once its cloud says it is gone), as tests/scaler/test_scale_loop_pool.py does.

jobs -> one launch per cloud -> the VM boots and joins (VfarmInstanceId), the stand-ins join ->
every job runs once, exit 0, the VM's two on the VM -> the queue is empty -> idle past idle-time (or
consolidation) -> graceful drain (condor_drain) -> drained -> each worker terminated on its own
cloud (qemu killed; Nova server deleted; moto instance terminated, tagged vfarm:end=drained).
Untouched: a local instance of another farm, a server of the same OpenStack project that is not
the farm's, an instance of another farm and an untagged one on moto. `--status --json` counts per
cloud while the farm works.

Network (htcondor-facts.md's hard rule): the pool listens on 10.0.2.100:9618 in a network
namespace the test made; the scaler runs there (its VM's qemu with it). OpenStack's and moto's
ports on the host's 127.0.0.1 are carried into that namespace's 127.0.0.1 (loopback_bridge): the
scaler reaches them under the same URLs, and nothing on the host connects to 10.0.2.100.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.clouds.test_openstack import foreign_server, server_ids
from tests.fixtures.condor_pool import CondorPool, local_farm_file, loopback_bridge, namespaced_pool, stop_process, wait_for
from tests.fixtures.moto import Ec2Endpoint
from tests.fixtures.openstack import PASSWORD, PORTS, OpenStackCloud
from vfarm.clouds import local_farm

pytestmark = [pytest.mark.vm, pytest.mark.openstack, pytest.mark.pool]

POOL_ADDRESS = "10.0.2.100"  # inside the test's namespace only
FARM = "hybridvm"
VM_JOBS, OTHER_JOBS, JOB_SECONDS = 2, 6, 10
# Measured on 2026-12-02 (TCG, 2 vCPUs, the 2-core host at load 1-4, two runs; the printed timeline):
# the first cycle's launches on the three clouds 7-8 s after the submit, the VM in the pool 74-81 s
# after its launch, its jobs done 24 s later, every worker terminated 4-6 s after the last job
# (consolidation drains the stand-ins while the VM still runs). A boot alone can take 200 s on a quiet
# host of this kind and far more at load (README, Tests): the join waits as long as a VM test's boot.
LAUNCH_TIMEOUT = 180.0
JOIN_TIMEOUT = 900.0
JOB_TIMEOUT = 300.0
END_TIMEOUT = 400.0  # idle-time, drain, terminate on three clouds
GONE_TIMEOUT = 120.0


@pytest.fixture(scope="module")
def ns_pool() -> Iterator[CondorPool]:
    with namespaced_pool(POOL_ADDRESS, prefix="vfarm-hybridvm-") as pool:
        yield pool


def farm_file(folder: Path, pool: CondorPool, ec2: Ec2Endpoint) -> Path:
    """The workers (localfs scratch, condor joining the pool's address, the final check) and a
    `scale` section listing the local cloud first, then OpenStack and moto."""
    clouds = [
        "{name: local, type: local, image: trixie-condor, memory: 2G, vcpus: 2, handlers: baked, max: 1}",
        "{name: site, type: openstack, cloud: os-demo, image: tiny, flavor: m1.tiny, network: private, handlers: baked, max: 1}",
        f"{{name: aws, type: ec2, image-id: {ec2.image_id}, instance-type: m1.small, endpoint-url: '{ec2.url}', region: {ec2.region}, handlers: baked}}",
    ]
    return local_farm_file(folder, pool, name=FARM, address=POOL_ADDRESS, max_vms=4, idle_time=20, join_timeout=600, boot_timeout=900,
                           check_every=3, clouds=clouds)


def submit(pool: CondorPool) -> int:
    """One cluster: VM_JOBS that only the local VM may run, OTHER_JOBS that only the others may."""
    local = 'regexp("^i-local-", VfarmInstanceId)'
    return pool.submit_file("hybrid.sub", f"""\
universe = vanilla
executable = /bin/sh
transfer_executable = false
arguments = "-c 'sleep {JOB_SECONDS}; hostname'"
should_transfer_files = YES
when_to_transfer_output = ON_EXIT
output = /home/vfarm/hybrid-$(Cluster).$(Process).out
error = /home/vfarm/hybrid-$(Cluster).$(Process).err
request_cpus = 1
request_memory = 64
requirements = VfarmInstanceId =!= undefined && {local}
queue {VM_JOBS}
requirements = VfarmInstanceId =!= undefined && !{local}
queue {OTHER_JOBS}
""")


@pytest.fixture
def local_cloud() -> Iterator[tuple[Path, local_farm.LocalFarm, str]]:
    """The scaler's local cloud (VFARM_LOCAL_DIR), already holding an instance of another farm (its
    supervisor a stand-in process: the scaler must leave it alone, never boot or end it); every
    instance ended and the folder removed afterwards (VFARM_KEEP_VM=1 keeps the folder)."""
    root = Path(os.environ.get("VFARM_LOCAL_DIR", "/var/tmp/vfarm-local")) / f"test-hybrid-{uuid.uuid4().hex[:8]}"
    other = local_farm.LocalFarm(root / "farm", data_disk="blank", disk_size="1M", supervisor=lambda folder: ["sleep", "infinity"])
    try:
        [inst] = other.launch(b"#cloud-config\n", tags={"vfarm:farm": "other", "vfarm:managed": "true"})
        yield root, other, str(inst["InstanceId"])
    finally:
        other.terminate([i["InstanceId"] for i in other.instances(states=("pending", "running", "stopped"))])  # never leave a VM running
        if os.environ.get("VFARM_KEEP_VM"):
            print(f"\nkept {root}")
        else:
            shutil.rmtree(root, ignore_errors=True)


def moto_instances(ec2: Ec2Endpoint) -> dict[str, dict[str, Any]]:
    pages = ec2.client().describe_instances()
    return {i["InstanceId"]: i for r in pages["Reservations"] for i in r["Instances"]}


def tags_of(instance: dict[str, Any]) -> dict[str, str]:
    return {t["Key"]: t["Value"] for t in instance.get("Tags", [])}


def test_a_hybrid_farm_runs_a_real_local_vm_first_and_overflows_to_openstack_and_ec2(
        ns_pool: CondorPool, openstack_env: OpenStackCloud, ec2_endpoint: Ec2Endpoint, local_cloud: tuple[Path, local_farm.LocalFarm, str],
        tmp_path: Path) -> None:
    root, other_local, local_other = local_cloud
    farm = local_farm.LocalFarm(root / "farm")  # the test's view of the scaler's local cloud
    site_foreign = foreign_server(openstack_env)
    admin = openstack_env.connect()
    client = ec2_endpoint.client()
    other_tags = [{"ResourceType": "instance", "Tags": [{"Key": "vfarm:farm", "Value": "other"}, {"Key": "vfarm:managed", "Value": "true"}]}]
    aws_foreign = [i["InstanceId"] for i in client.run_instances(ImageId=ec2_endpoint.image_id, MinCount=1, MaxCount=1,
                                                                   TagSpecifications=other_tags)["Instances"]]
    aws_foreign += [i["InstanceId"] for i in client.run_instances(ImageId=ec2_endpoint.image_id, MinCount=1, MaxCount=1)["Instances"]]

    farm_path = farm_file(tmp_path, ns_pool, ec2_endpoint)
    env = {**os.environ, "VFARM_LOCAL_DIR": str(root), "CONDOR_CONFIG": str(ns_pool.host_config)}
    env.pop("_CONDOR_SEC_TOKEN_DIRECTORY", None)
    in_namespace = ["nsenter", f"--net=/proc/{ns_pool.master_pid}/ns/net", "--", sys.executable, "-m", "vfarm", "scale", str(farm_path)]
    log = tmp_path / "scale.log"
    bridged = [PORTS["keystone"], PORTS["nova-api"], PORTS["glance"], PORTS["neutron"], PORTS["placement"], int(ec2_endpoint.url.rsplit(":", 1)[1])]
    scaler = None
    cluster = None
    vm = ""
    stand_ins: dict[str, str] = {}  # instance or server id -> its cloud, once its stand-in startd runs
    gone: set[str] = set()
    status: Any = None
    timeline: dict[str, float] = {}
    started = time.monotonic()

    def mark(name: str) -> None:
        timeline[name] = time.monotonic() - started

    def scaler_log() -> str:
        return log.read_text(errors="replace")

    def vm_log() -> str:
        folder = farm.instances_dir / vm
        text = ""
        for name in ("supervisor.log", "console-1.log"):
            if vm and (folder / name).exists():
                text += f"--- {name}:\n" + (folder / name).read_text(errors="replace")[-3000:]
        return text

    def ours_site() -> dict[str, Any]:
        return {s.id: s for s in admin.compute.servers(all_projects=True) if s.metadata.get("vfarm:farm") == FARM}

    def ours_aws() -> dict[str, dict[str, Any]]:
        return {iid: i for iid, i in moto_instances(ec2_endpoint).items() if tags_of(i).get("vfarm:farm") == FARM}

    def hypervisor() -> None:
        """Nova's fake driver and moto boot nothing: a stand-in startd per server or instance while it
        lives, stopped once its cloud has deleted or terminated it. Fails fast when the scaler died."""
        assert scaler is not None and scaler.poll() is None, "the scaler died:\n" + scaler_log()[-3000:]
        if vm:
            [inst] = farm.instances(ids=[vm], states=None)
            assert inst["State"]["Name"] in ("pending", "running") or f"terminate {vm} (drained, cloud local)" in scaler_log(), \
                f"{vm} is {inst['State']['Name']}: {inst}\n{vm_log()}"
        live = {sid: "site" for sid, s in ours_site().items() if s.status == "ACTIVE"}
        live.update({iid: "aws" for iid, i in ours_aws().items() if i["State"]["Name"] in ("pending", "running")})
        for iid, cloud in live.items():
            if iid not in stand_ins:
                ns_pool.add_worker(iid, cpus=2, memory=1024, wait=False)  # the "VM" boots and joins
                stand_ins[iid] = cloud
        for iid in set(stand_ins) - set(live) - gone:
            ns_pool.remove_worker(iid)  # its cloud ended it: the hypervisor switches it off
            gone.add(iid)

    with loopback_bridge(ns_pool, bridged):  # until the scaler has stopped
        try:
            cluster = submit(ns_pool)
            mark("submitted")
            with open(log, "w") as err:
                scaler = subprocess.Popen(in_namespace, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=err, env=env)

            def launched() -> bool:
                hypervisor()
                return len(farm.instances(tag_filters={"vfarm:farm": FARM}, states=None)) + len(ours_site()) + len(ours_aws()) >= 4

            wait_for(launched, LAUNCH_TIMEOUT, "a launch on each cloud", interval=0.5)
            mark("launched")
            [local] = farm.instances(tag_filters={"vfarm:farm": FARM}, states=None)
            vm = str(local["InstanceId"])
            assert {t["Key"]: t["Value"] for t in local["Tags"]}.get("vfarm:cloud") == "local"
            site, aws = ours_site(), ours_aws()
            assert len(site) == 1 and all(s.metadata.get("vfarm:cloud") == "site" for s in site.values()), site
            assert len(aws) == 2 and all(tags_of(i).get("vfarm:cloud") == "aws" for i in aws.values()), aws
            workers = {vm: "local", **{sid: "site" for sid in site}, **{iid: "aws" for iid in aws}}
            # An operator looks while the farm works (nothing can end before the VM's jobs ran): per cloud.
            status = subprocess.run([*in_namespace, "--status", "--json"], text=True, capture_output=True, timeout=120, env=env)

            def joined() -> list[Any]:
                hypervisor()
                return [ad for ad in ns_pool.ads("Startd", f'VfarmInstanceId == "{vm}"') if "PartitionableSlot" in ad]

            ads = wait_for(joined, JOIN_TIMEOUT, f"the VM {vm} in the pool", interval=2)
            mark("vm joined")
            assert [ad["PartitionableSlot"] for ad in ads] == [True]
            qemu = farm.instances(ids=[vm])[0]["VfarmLocal"]["qemu_pid"]

            def done() -> list[dict[str, Any]]:
                hypervisor()
                return ns_pool.finished(cluster)

            finished = wait_for(done, JOB_TIMEOUT, f"jobs of cluster {cluster} done", interval=1)
            mark("jobs done")

            def ended() -> bool:
                hypervisor()
                text = scaler_log()
                return all(f"terminate {iid} (drained, cloud {cloud})" in text for iid, cloud in workers.items()) and gone == set(stand_ins)

            wait_for(ended, END_TIMEOUT, "every worker drained and terminated on its cloud", interval=1)
            mark("all terminated")

            def vm_gone() -> bool:
                [now] = farm.instances(ids=[vm], states=None)
                return now["State"]["Name"] == "terminated" and not (farm.instances_dir / vm).exists() and not local_farm.alive(qemu, None)

            wait_for(vm_gone, GONE_TIMEOUT, f"{vm} and its qemu gone", interval=0.5)
            mark("vm gone")
        finally:
            stop_process(scaler)
            for iid in set(stand_ins) - gone:
                ns_pool.remove_worker(iid)
            leftover = [i["InstanceId"] for i in farm.instances(states=("pending", "running", "stopped")) if i["InstanceId"] != local_other]
            listed_local = farm.instances(tag_filters={"vfarm:farm": FARM}, states=None)
            other_state = other_local.instances(ids=[local_other], states=None)
            debug = vm_log()
            farm.terminate(leftover)  # never leave a VM running
            if cluster is not None:
                ns_pool.run(["condor_rm", str(cluster)], check=False)
            print("\ntimeline (s since submit): " + ", ".join(f"{k} {v:.1f}" for k, v in timeline.items()))
    text = scaler_log()
    assert scaler is not None and leftover == [], f"left running: {leftover}\n{debug}"
    assert scaler.returncode == 0 and "SIGTERM: stopping after this cycle" in text, text[-3000:]
    assert PASSWORD not in text

    # The first cycle: the local cloud to its maximum, the overflow on site (its maximum), the rest on aws.
    for line in ("launch 1: cloud local: 2 waiting job(s) need 2 CPU(s), 0 free or booting: 1 more worker(s) of 2 CPUs",
                 "launch 1: cloud site: 2 waiting job(s) need 2 CPU(s), 0 free or booting: 1 more worker(s) of 2 CPUs",
                 "launch 2: cloud aws: 4 waiting job(s) need 4 CPU(s), 0 free or booting: 2 more worker(s) of 2 CPUs"):
        assert text.count(line) == 1, f"{line!r} not once in:\n{text[-3000:]}"
    assert text.count("launched i-local-") == 1, text[-3000:]
    [launch_line] = [line for line in text.splitlines() if "launched i-local-" in line]
    assert vm in launch_line

    # Every job ran once and exited 0; the VM's on the VM, the others on the stand-ins of site and aws.
    assert sorted((ad["NumJobStarts"], ad["ExitCode"], ad["JobStatus"]) for ad in finished) == [(1, 0, 4)] * (VM_JOBS + OTHER_JOBS)
    hosts = {int(ad["ProcId"]): str(ad.get("LastRemoteHost", "")) for ad in finished}
    assert all(f"vfarm-{vm[-8:]}" in hosts[p] for p in range(VM_JOBS)), hosts
    assert all(any(f"@w-{iid}@" in hosts[p] for iid in stand_ins) for p in range(VM_JOBS, VM_JOBS + OTHER_JOBS)), hosts

    # The operator's view after the launches: per-cloud counts, each instance on its cloud.
    assert status is not None and status.returncode == 0, status.stderr if status is not None else None
    seen = json.loads(status.stdout)
    assert {cloud: sum(of.values()) for cloud, of in seen["clouds"].items()} == {"local": 1, "site": 1, "aws": 2}, seen["clouds"]
    assert {r["instance"]: r["cloud"] for r in seen["instances"]} == workers

    # Each worker drained, then terminated on its own cloud; nothing else touched on any of them.
    for iid in workers:
        assert f"drain {iid}: idle for" in text or f"drain {iid}: consolidation:" in text, text[-3000:]
    assert "condor_drain -pool" in text
    [ended_vm] = listed_local
    assert ended_vm["InstanceId"] == vm and {"Key": "vfarm:end", "Value": "drained"} in ended_vm["Tags"]
    assert not set(workers) & server_ids(openstack_env) and site_foreign in server_ids(openstack_env)
    after = moto_instances(ec2_endpoint)
    assert {iid: (after[iid]["State"]["Name"], tags_of(after[iid]).get("vfarm:end")) for iid in aws} == {iid: ("terminated", "drained") for iid in aws}
    assert all(after[iid]["State"]["Name"] == "running" for iid in aws_foreign)
    assert [(i["InstanceId"], i["State"]["Name"]) for i in other_state] == [(local_other, "running")]
    print(f"launch->vm joined {timeline['vm joined'] - timeline['launched']:.1f} s, vm joined->jobs done "
          f"{timeline['jobs done'] - timeline['vm joined']:.1f} s, jobs done->all terminated {timeline['all terminated'] - timeline['jobs done']:.1f} s")
