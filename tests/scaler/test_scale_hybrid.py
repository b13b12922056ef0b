"""Hybrid farms: several clouds in priority order. The planner fills the first cloud, then the
next (each cloud's max, each type's max over its clouds), and names what the next cloud starts if
one refuses; the applier falls back in the same cycle, less what the refused call started; back-off
and the black hole per cloud; the dispatching backend lists, launches, tags and terminates each
instance on its own cloud; --snapshot, --status and the metrics show the clouds."""

from __future__ import annotations

import json
import logging
import subprocess
import sys
from pathlib import Path
from typing import Any, Optional

import pytest

from vfarm.cli import scale as scale_cli
from vfarm.config import loader as configuration
from vfarm.config import scale as scale_spec
from vfarm.scaler import apply, backends, loop
from vfarm.scaler import plan as planner
from vfarm.scaler.model import DRAIN_REASON_PREFIX

NOW = 1_700_000_000.0
FARM = """\
scale:
  name: burst
  max-vms: 10
  waiting-time: 0
  boot-timeout: 100
  clouds:
    - {name: site, type: openstack, image: worker, flavor: m1.small, max: 2}
    - {name: aws, type: ec2, image-id: ami-1, instance-type: m5.large}
  types:
    - name: small
      cpus: 1
      clouds:
        site:
        aws: {instance-type: m5.large}
    - name: large
      cpus: 8
      max: 3
      clouds:
        site: {flavor: m1.xlarge}
        aws: {instance-type: m5.2xlarge}
"""
# One type, no types list: cpus-per-vm on every cloud.
PLAIN = """\
scale:
  name: burst
  max-vms: 5
  waiting-time: 0
  boot-timeout: 100
  clouds:
    - {name: site, type: openstack, image: worker, flavor: m1.small}
    - {name: aws, type: ec2, image-id: ami-1, instance-type: m5.large}
"""


def spec(text: str = FARM) -> scale_spec.ScaleSpec:
    return scale_spec.parse(configuration.load_text(text).sections["scale"])


def job(n: int, cpus: int = 1) -> dict[str, Any]:
    return {"ClusterId": n, "ProcId": 0, "JobStatus": 1, "EnteredCurrentStatus": NOW - 60, "RequestCpus": cpus}


def instance(iid: str, cloud: Optional[str], kind: Optional[str] = None, launched: float = NOW - 50, state: str = "running",
             end: Optional[str] = None, farm: str = "burst") -> dict[str, Any]:
    tags = [{"Key": "vfarm:farm", "Value": farm}]
    tags += [{"Key": "vfarm:type", "Value": kind}] if kind else []
    tags += [{"Key": "vfarm:cloud", "Value": cloud}] if cloud else []
    tags += [{"Key": "vfarm:end", "Value": end}] if end else []
    return {"InstanceId": iid, "LaunchTime": launched, "State": {"Name": state}, "Tags": tags}


def launches(result: planner.Plan) -> dict[str, int]:
    return {d.type or "": d.count for d in result.of(planner.Action.LAUNCH)}


def test_the_clouds_their_placements_and_settings() -> None:
    farm = spec()
    assert farm.hybrid and [c.name for c in farm.clouds] == ["site", "aws"] and farm.clouds[0].max == 2 and farm.clouds[1].max is None
    assert [p.name for p in farm.placements] == ["small@site", "small@aws", "large@site", "large@aws"]
    large_aws = farm.worker_type("large@aws")
    assert (large_aws.kind, large_aws.on, large_aws.cpus) == ("large", "aws", 8)
    assert farm.cloud_of(large_aws) == {"type": "ec2", "image-id": "ami-1", "instance-type": "m5.2xlarge"}
    assert farm.cloud_of(farm.worker_type("small@site")) == {"type": "openstack", "image": "worker", "flavor": "m1.small"}
    assert farm.on_cloud(farm.clouds[1]).cloud == {"type": "ec2", "image-id": "ami-1", "instance-type": "m5.large"}
    assert apply.launch_tags(farm, large_aws) == {"vfarm:farm": "burst", "vfarm:type": "large", "vfarm:cloud": "aws"}
    plain = spec(PLAIN)
    assert [p.name for p in plain.placements] == ["default@site", "default@aws"]
    assert apply.launch_tags(plain, plain.placements[1]) == {"vfarm:farm": "burst", "vfarm:cloud": "aws"}
    # A type limited to some clouds runs only there.
    only = spec(FARM.replace("        site:\n        aws: {instance-type: m5.large}\n", "        aws: {instance-type: m5.large}\n"))
    assert [p.name for p in only.placements] == ["small@aws", "large@site", "large@aws"]
    # One `cloud`: no placements of its own, no cloud tag, as before.
    one = scale_spec.parse({"name": "x", "cloud": {"type": "ec2"}, "max-vms": 3})
    assert not one.hybrid and [p.name for p in one.placements] == ["default"] and apply.launch_tags(one, one.types[0]) == {"vfarm:farm": "x"}


def test_the_first_cloud_fills_first_then_the_next() -> None:
    result = planner.plan({"now": NOW, "jobs": [job(n) for n in range(5)], "slots": [], "instances": []}, spec())
    # site holds 2 (its max); the other 3 go to aws; were site to refuse, its 2 would go to aws too.
    assert launches(result) == {"small@site": 2, "small@aws": 3}
    first = result.of(planner.Action.LAUNCH)[0]
    assert first.cloud == "site" and [(o.type, o.count, o.cloud) for o in first.fallback] == [("small@aws", 2, "aws")]
    assert first.reason.startswith("cloud site: type small: 2 waiting job(s)")
    assert (result.clouds["site"].launch, result.clouds["site"].fallback, result.clouds["aws"].launch, result.clouds["aws"].fallback) == (2, 0, 3, 2)
    data = result.to_json()
    assert data["decisions"][0]["cloud"] == "site" and data["decisions"][0]["fallback"][0]["cloud"] == "aws"
    assert data["clouds"]["site"]["max"] == 2 and list(data["clouds"]) == ["site", "aws"]


def test_cloud_max_is_shared_by_its_types_and_type_max_by_its_clouds() -> None:
    # One worker on site already: 1 more there (small first, in the farm's order); large: max 3 over both clouds.
    running = [instance("i-s1", "site", "small")]
    jobs = [job(n) for n in range(2)] + [job(10 + n, cpus=8) for n in range(5)]
    result = planner.plan({"now": NOW, "jobs": jobs, "slots": [], "instances": running}, spec())
    assert launches(result) == {"small@site": 1, "large@aws": 3}
    assert result.clouds["site"].active == 1 and result.clouds["site"].states["booting"] == 1
    # site full: every job goes to aws.
    full = [instance("i-s1", "site", "small"), instance("i-s2", "site", "large")]
    again = planner.plan({"now": NOW, "jobs": jobs, "slots": [], "instances": full}, spec())
    assert launches(again) == {"small@aws": 1, "large@aws": 2}  # the booting small takes one job, the booting large 8 CPUs


def test_a_farm_of_one_type_over_clouds_and_an_untagged_instance() -> None:
    farm = spec(PLAIN)
    # An instance launched before the farm listed clouds (no vfarm:cloud) belongs to the cloud the backend found it on;
    # in a snapshot without that tag, to the first cloud.
    result = planner.plan({"now": NOW, "jobs": [job(n) for n in range(4)], "slots": [], "instances": [instance("i-old", None)]}, farm)
    assert [(w.id, w.cloud) for w in result.instances] == [("i-old", "site")]
    assert launches(result) == {"default@site": 3}
    assert [(o.type, o.count) for o in result.of(planner.Action.LAUNCH)[0].fallback] == [("default@aws", 3)]


def test_a_refused_cloud_is_left_for_the_cycle_and_its_fallback_places_all_its_jobs(caplog: pytest.LogCaptureFixture) -> None:
    """site refuses its first launch: the fallback (the plan without site) starts what both of
    site's launches were for on aws, every launch of it; site's second launch is not tried, and
    nothing is started twice."""
    caplog.set_level(logging.INFO, logger="vfarm.test")
    farm = spec()
    jobs = [job(1), job(2, cpus=8)]
    snapshot = {"now": NOW, "jobs": jobs, "slots": [], "instances": []}
    decided = planner.plan(snapshot, farm)
    assert launches(decided) == {"small@site": 1, "large@site": 1}
    site, aws = Cloud("site", quota=0), Cloud("aws")
    applier = apply.Applier(farm, backends.HybridBackend(farm, {"site": site, "aws": aws}), apply.CondorDrain("cm"), logging.getLogger("vfarm.test"))
    outcome = applier.apply(decided, snapshot)
    assert [(n, c) for n, c, _t in site.launched] == [("small@site", 0)]
    assert sorted((n, c) for n, c, _t in aws.launched) == [("large@aws", 1), ("small@aws", 1)]
    assert outcome.launched_by_cloud == {"aws": 2} and len(outcome.fallbacks) == 2
    assert "launch 1 of large@site skipped: cloud site refused a launch for quota or capacity in this cycle" in caplog.text


def test_back_off_and_black_hole_are_per_cloud() -> None:
    farm = spec(PLAIN)
    jobs = [job(n) for n in range(2)]
    held = planner.plan({"now": NOW, "jobs": jobs, "slots": [], "instances": [], planner.BACKOFF: {"launch@site": NOW + 30}}, farm)
    assert launches(held) == {"default@aws": 2}
    assert held.clouds["site"].launch_backoff_until == NOW + 30
    lost = [instance(f"i-{k}", "site", launched=NOW - 200 + k, state="terminated", end="lost") for k in range(3)]
    holed = planner.plan({"now": NOW, "jobs": jobs, "slots": [], "instances": lost}, farm)
    assert holed.types["default@site"].black_hole.blocked and not holed.types["default@aws"].black_hole.active
    assert launches(holed) == {"default@aws": 2}
    # Terminations back off per cloud too.
    drained = [instance("i-a", "aws"), instance("i-s", "site")]
    slots = [{"Name": f"slot1@{i}", "VfarmInstanceId": i, "State": "Drained", "Activity": "Idle", "Cpus": 1, "Draining": True,
              "DrainReason": f"{DRAIN_REASON_PREFIX}idle for 99s"} for i in ("i-a", "i-s")]
    ends = planner.plan({"now": NOW, "jobs": [], "slots": slots, "instances": drained, planner.BACKOFF: {"terminate@site": NOW + 9}}, farm)
    assert [(d.action.value, d.instance, d.cloud) for d in ends.decisions] == [("terminate", "i-a", "aws"), ("hold", "i-s", "site")]


class Cloud:
    """An in-memory cloud of one name: its instances, and launches refused for quota after STARTS."""

    def __init__(self, name: str, quota: Optional[int] = None, instances: Optional[list[dict[str, Any]]] = None) -> None:
        self.name = name
        self.quota = quota
        self.instances = instances or []
        self.launched: list[tuple[str, int, str]] = []
        self.terminated: list[dict[str, str]] = []

    def farm_instances(self) -> list[dict[str, Any]]:
        return [dict(i) for i in self.instances]

    def launch(self, count: int, token: str, worker_type: scale_spec.WorkerType) -> list[str]:
        assert worker_type.on == self.name
        room = count if self.quota is None else max(0, self.quota - len(self.instances))
        ids = [f"{self.name}-{len(self.instances) + k}" for k in range(min(count, room))]
        self.instances += [instance(i, self.name) for i in ids]
        self.launched.append((worker_type.name, len(ids), token))
        if len(ids) < count:
            raise apply.CapacityError(f"quota exceeded for instances: {len(ids)} of {count} started", ids)
        return ids

    def terminate(self, ends: dict[str, str]) -> None:
        self.terminated.append(dict(ends))

    def verdict(self, instance_id: str) -> Any:
        return None


def test_the_dispatching_backend_lists_launches_and_terminates_on_each_cloud() -> None:
    farm = spec(PLAIN)
    site = Cloud("site", instances=[instance("s-old", None), instance("s-1", "site"), instance("a-dup", "aws")])
    aws = Cloud("aws", instances=[instance("a-dup", "aws"), instance("a-2", None)])
    hybrid = backends.HybridBackend(farm, {"site": site, "aws": aws})
    listed = hybrid.farm_instances()
    clouds = {i["InstanceId"]: [t["Value"] for t in i["Tags"] if t["Key"] == "vfarm:cloud"] for i in listed}
    # Each once, tagged with the cloud that listed it (a-dup: the same account behind both, aws's by its tag).
    assert clouds == {"s-old": ["site"], "s-1": ["site"], "a-dup": ["aws"], "a-2": ["aws"]}
    assert hybrid.launch(2, "tok", farm.worker_type("default@aws")) == ["aws-2", "aws-3"] and site.launched == []
    hybrid.terminate({"s-1": "drained", "a-2": "lost"})
    assert site.terminated == [{"s-1": "drained"}] and aws.terminated == [{"a-2": "lost"}]
    with pytest.raises(apply.CloudError, match="not listed on any cloud of farm burst in this cycle, nothing done: i-x"):
        hybrid.terminate({"i-x": "lost", "s-1": "lost"})
    assert site.terminated == [{"s-1": "drained"}]
    site.quota = 0
    with pytest.raises(apply.CapacityError, match="^cloud site: quota exceeded"):
        hybrid.launch(1, "tok2", farm.worker_type("default@site"))


def test_an_instance_without_a_cloud_tag_counts_once_when_clouds_share_an_account() -> None:
    farm = spec(PLAIN)
    # launched before the farm listed clouds: no vfarm:cloud tag; site and aws are the same account
    site = Cloud("site", instances=[instance("i-old", None), instance("i-gone-cloud", "retired")])
    aws = Cloud("aws", instances=[instance("i-old", None), instance("i-gone-cloud", "retired"), instance("a-1", "aws")])
    hybrid = backends.HybridBackend(farm, {"site": site, "aws": aws})
    listed = hybrid.farm_instances()
    clouds = sorted((i["InstanceId"], [t["Value"] for t in i["Tags"] if t["Key"] == "vfarm:cloud"]) for i in listed)
    # the first cloud in the farm's order that lists it keeps it (a cloud the farm no longer has: the same)
    assert clouds == [("a-1", ["aws"]), ("i-gone-cloud", ["site"]), ("i-old", ["site"])]
    hybrid.terminate({"i-old": "lost"})
    assert site.terminated == [{"i-old": "lost"}] and aws.terminated == []


def test_a_refused_cloud_falls_back_to_the_next_in_the_same_cycle(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="vfarm.test")
    farm = spec(PLAIN)
    site, aws = Cloud("site", quota=1), Cloud("aws")
    jobs = [job(n) for n in range(3)]
    metrics = loop.Metrics("burst", [c.name for c in farm.clouds])
    scaler = loop.Scaler(farm, backends.HybridBackend(farm, {"site": site, "aws": aws}), apply.CondorDrain("cm"), logging.getLogger("vfarm.test"),
                         clock=lambda: NOW, pool=lambda: {"jobs": jobs, "slots": [], "collector": []}, metrics=metrics)
    scaler.cycle()
    # site took 1 of its 3 before its quota refused: aws starts the other 2 in the same cycle.
    assert [(n, c) for n, c, _t in site.launched] == [("default@site", 1)] and [(n, c) for n, c, _t in aws.launched] == [("default@aws", 2)]
    outcome = scaler.outcome
    assert outcome is not None and outcome.launched == ["site-0", "aws-0", "aws-1"] and outcome.launched_by_cloud == {"site": 1, "aws": 2}
    assert [(f["from"], f["to"], f["count"], f["started_before"]) for f in outcome.fallbacks] == [("default@site", "default@aws", 2, 1)]
    assert "launch 2 of default@aws instead (cloud site refused default@site for quota or capacity; 1 started before the refusal)" in caplog.text
    assert set(scaler.memory()[planner.BACKOFF]) == {"launch@site"}
    text = metrics.text()
    assert 'vfarm_scale_cloud_launches_total{cloud="site",farm="burst"} 1.0' in text
    assert 'vfarm_scale_cloud_launches_total{cloud="aws",farm="burst"} 2.0' in text
    assert 'vfarm_scale_cloud_fallbacks_total{cloud="site",farm="burst"} 2.0' in text
    # The next cycle sees 1 booting on site and 2 on aws, site backing off: nothing more.
    scaler.cycle()
    assert len(site.launched) == 1 and len(aws.launched) == 1
    text = metrics.text()
    assert 'vfarm_scale_cloud_instances{cloud="site",farm="burst",state="booting"} 1.0' in text
    assert 'vfarm_scale_cloud_active_instances{cloud="aws",farm="burst"} 2.0' in text


def test_status_counts_per_cloud(capsys: pytest.CaptureFixture[str]) -> None:
    farm = spec(PLAIN)
    snapshot = {"now": NOW, "jobs": [], "slots": [], "instances": [instance("s-1", "site"), instance("a-1", "aws"), instance("a-2", "aws"),
                                                                 instance("a-3", "aws", state="terminated", end="drained")]}
    result = planner.plan(snapshot, farm)
    rows = loop.status_rows(result, snapshot, farm) + loop.ended_rows(snapshot, farm)
    assert loop.cloud_counts(rows, farm) == {"site": {"booting": 1}, "aws": {"booting": 2, "terminated": 1}}
    text = scale_cli.render_status(rows, farm, result)
    assert "cloud site: 1 booting\ncloud aws: 2 booting, 1 terminated\n" in text
    lines = text.splitlines()
    assert lines[4].split()[:4] == ["INSTANCE", "CLOUD", "TYPE", "STATE"] and ["a-3", "aws", "default", "terminated"] in [line.split()[:4] for line in lines]


@pytest.mark.integration
def test_snapshot_shows_the_per_cloud_decision(tmp_path: Path) -> None:
    farm = tmp_path / "farm.yaml"
    farm.write_text(FARM)
    snap = tmp_path / "snap.json"
    snap.write_text(json.dumps({"now": NOW, "jobs": [job(n) for n in range(5)], "slots": [], "instances": []}))
    done = subprocess.run([sys.executable, "-m", "vfarm", "scale", str(farm), "--snapshot", str(snap)], text=True, capture_output=True, timeout=60)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert any(line.split()[:3] == ["launch", "2", "small@site"] and line.endswith("; if refused for quota or capacity: 2 small@aws instead")
               for line in lines)
    assert any(line.split()[:3] == ["launch", "3", "small@aws"] for line in lines)
    assert [line.split()[:6] for line in lines if line.startswith(("site ", "aws "))] == [["site", "openstack", "2", "0", "2", "0"],
                                                                                          ["aws", "ec2", "-", "0", "3", "2"]]
    as_json = subprocess.run([sys.executable, "-m", "vfarm", "scale", str(farm), "--snapshot", str(snap), "--json"], text=True,
                             capture_output=True, timeout=60)
    data = json.loads(as_json.stdout)
    assert [(d["type"], d["cloud"], d["count"]) for d in data["decisions"]] == [("small@site", "site", 2), ("small@aws", "aws", 3)]


class Nova:
    """An in-memory OpenStack cloud whose listing by token answers from a script: scheduling, then placed or not."""

    def __init__(self, listings: list[list[dict[str, Any]]]) -> None:
        self.listings = listings
        self.deleted: list[str] = []

    def instances(self, tag_filters: dict[str, str]) -> list[dict[str, Any]]:
        return []

    def launch(self, userdata: bytes, **options: Any) -> list[dict[str, Any]]:
        return []

    def by_token(self, token: str) -> list[dict[str, Any]]:
        return self.listings.pop(0) if len(self.listings) > 1 else self.listings[0]

    def terminate(self, ids: list[str]) -> None:
        self.deleted += ids

    def get(self, server_id: str) -> dict[str, Any]:
        """A server as GET shows it: with its fault (the listing leaves it out)."""
        return server(server_id, "ERROR", fault=("500", "No valid host was found. "))


def server(iid: str, status: str, task: Optional[str] = None, fault: Optional[tuple[str, str]] = None) -> dict[str, Any]:
    described: dict[str, Any] = {"InstanceId": iid, "Status": status, "TaskState": task}
    if fault:
        described["StateReason"] = {"Code": fault[0], "Message": fault[1]}
    return described


def test_openstack_servers_without_a_valid_host_are_a_capacity_refusal_in_the_same_launch() -> None:
    farm = spec(PLAIN)
    nova = Nova([[server("a", "BUILD", "scheduling"), server("b", "BUILD", "scheduling")],
                 [server("a", "BUILD", "spawning"), server("b", "ERROR")]])
    backend = backends.OpenStackBackend(farm.on_cloud(farm.clouds[0]), b"#cloud-config\n", cloud=nova)
    waited: list[float] = []
    backend.sleep = waited.append
    with pytest.raises(apply.CapacityError, match=r"1 of 2 server\(s\) not placed, deleted: No valid host was found") as refused:
        backend.launch(2, "tok", farm.placements[0])
    assert refused.value.started == ["a"] and nova.deleted == ["b"] and waited == [backend.schedule_poll]
    # Placed (or past the wait): the servers, nothing deleted; an ERROR of another kind is no refusal for capacity.
    placed = backends.OpenStackBackend(farm.on_cloud(farm.clouds[0]), b"", cloud=Nova([[server("c", "ACTIVE"), server("d", "BUILD", "networking")]]))
    assert placed.launch(2, "tok", farm.placements[0]) == ["c", "d"]
    broken = Nova([[server("e", "ERROR", fault=("500", "Build of instance e aborted: image not active"))]])
    assert backends.OpenStackBackend(farm.on_cloud(farm.clouds[0]), b"", cloud=broken).launch(1, "tok", farm.placements[0]) == ["e"]
    assert broken.deleted == []


# A farm whose one type no longer runs on aws: aws still holds workers launched there before.
RETIRED = """\
scale:
  name: burst
  max-vms: 5
  waiting-time: 0
  boot-timeout: 100
  clouds:
    - {name: site, type: openstack, image: worker, flavor: m1.small, max: 1}
    - {name: aws, type: ec2, image-id: ami-1, instance-type: m5.large}
  types:
    - name: small
      cpus: 1
      clouds: [site]
"""


class Refusing(Cloud):
    """A cloud whose terminate fails (its API down)."""

    def terminate(self, ends: dict[str, str]) -> None:
        self.terminated.append(dict(ends))
        raise apply.CloudError(f"{self.name} API down")


def drained_slot(iid: str) -> dict[str, Any]:
    return {"Name": f"slot1@{iid}", "VfarmInstanceId": iid, "State": "Drained", "Activity": "Idle", "Cpus": 1,
            "DrainReason": f"{DRAIN_REASON_PREFIX}idle for 99s"}


def test_a_failed_termination_on_one_cloud_holds_back_no_other_and_backs_off_only_its_own() -> None:
    """The dispatching backend tries every cloud's terminations whatever another answered. A worker
    is the cloud's it runs on, also when no type of the farm may run there any more: its
    termination goes there, and only that cloud's failure postpones it."""
    farm = spec(PLAIN)
    site, aws = Refusing("site", instances=[instance("s-1", "site")]), Cloud("aws", instances=[instance("a-1", "aws")])
    hybrid = backends.HybridBackend(farm, {"site": site, "aws": aws})
    hybrid.farm_instances()
    with pytest.raises(apply.CloudError, match="^cloud site: site API down$"):
        hybrid.terminate({"s-1": "drained", "a-1": "drained"})  # site's first: it fails
    assert aws.terminated == [{"a-1": "drained"}]

    farm = spec(RETIRED)
    site, aws = Refusing("site", instances=[instance("s-1", "site", "small")]), Cloud("aws", instances=[instance("a-1", "aws", "small")])
    hybrid = backends.HybridBackend(farm, {"site": site, "aws": aws})
    snapshot = {"now": NOW, "jobs": [], "slots": [drained_slot("a-1"), drained_slot("s-1")], "instances": hybrid.farm_instances()}
    decided = planner.plan(snapshot, farm)
    assert [(d.action.value, d.instance, d.cloud) for d in decided.decisions] == [("terminate", "a-1", "aws"), ("terminate", "s-1", "site")]
    applier = apply.Applier(farm, hybrid, apply.CondorDrain("cm"), logging.getLogger("vfarm.test"))
    outcome = applier.apply(decided, snapshot)
    assert aws.terminated == [{"a-1": "drained"}] and outcome.terminated == ["a-1"] and outcome.cloud_errors == {"terminate": 1}
    assert set(applier.memory()[planner.BACKOFF]) == {"terminate@site"}
    again = planner.plan({**snapshot, **applier.memory()}, farm)
    assert [(d.action.value, d.instance) for d in again.decisions] == [("terminate", "a-1"), ("hold", "s-1")]
    assert again.clouds["aws"].states["drained"] == 1 and again.clouds["site"].states["drained"] == 1


def test_a_clouds_max_counts_the_workers_it_holds_not_their_placements() -> None:
    """A worker left on a cloud no type may run on any more counts against that cloud's max, not
    against the max of the cloud its type now runs on."""
    farm = spec(RETIRED)
    idle = {"Name": "slot1@a-1", "VfarmInstanceId": "a-1", "State": "Unclaimed", "Activity": "Idle", "Cpus": 0, "EnteredCurrentState": NOW - 10}
    result = planner.plan({"now": NOW, "jobs": [job(0)], "slots": [idle], "instances": [instance("a-1", "aws", "small")]}, farm)
    assert launches(result) == {"small@site": 1}, result.decisions
    assert (result.clouds["site"].active, result.clouds["aws"].active) == (0, 1)
    assert [w.cloud for w in result.instances] == ["aws"]
