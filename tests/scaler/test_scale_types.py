"""Worker types: jobs fitted onto types by their requests and Requirements (HTCondor's own ClassAd
library), least waste then cost, per-type maxima, black holes and back-offs, the same-cycle fallback
on a capacity refusal, what --snapshot prints; and properties of the planner over random farms."""

from __future__ import annotations

import json
import logging
import subprocess
import sys
from pathlib import Path
from typing import Any, Optional

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from vfarm.cli import scale as commands
from vfarm.config import loader as configuration
from vfarm.config import scale as scale_spec
from vfarm.scaler import apply, loop
from vfarm.scaler import plan as planner

NOW = 1_700_000_000.0
FARM = """\
scale:
  name: mixed
  cloud: {type: ec2, image-id: ami-1, instance-type: m1.small}
  max-vms: 10
  waiting-time: 0
  boot-timeout: 100
  types:
    - {name: small, cpus: 1, memory: 2G, cloud: {instance-type: m1.small}}
    - {name: large, cpus: 8, memory: 32G, max: 2, cloud: {instance-type: m1.2xlarge}}
    - {name: gpu, cpus: 8, memory: 32G, gpus: 1, cost: 10, cloud: {instance-type: g4dn.2xlarge, image-id: ami-gpu}}
"""


def spec(text: str = FARM) -> scale_spec.ScaleSpec:
    return scale_spec.parse(configuration.load_text(text).sections["scale"])


def job(n: int, cpus: int = 1, memory: Any = 1024, gpus: Optional[int] = None, requirements: Optional[str] = None) -> dict[str, Any]:
    ad: dict[str, Any] = {"ClusterId": n, "ProcId": 0, "JobStatus": 1, "EnteredCurrentStatus": NOW - 60, "RequestCpus": cpus, "RequestMemory": memory}
    if gpus is not None:
        ad["RequestGPUs"] = gpus
    if requirements is not None:
        ad["Requirements"] = f"/Expr({requirements})/"  # as condor_q -json prints an expression
    return ad


def instance(iid: str, kind: str, launched: float, state: str = "running", end: Optional[str] = None) -> dict[str, Any]:
    tags = [{"Key": "vfarm:farm", "Value": "mixed"}, {"Key": "vfarm:type", "Value": kind}] + ([{"Key": "vfarm:end", "Value": end}] if end else [])
    return {"InstanceId": iid, "LaunchTime": launched, "State": {"Name": state}, "Tags": tags}


def launches(result: planner.Plan) -> dict[str, int]:
    return {d.type or "": d.count for d in result.decisions if d.action == "launch"}


def test_the_section_validates_and_the_old_single_type_still_means_one_type() -> None:
    typed = spec()
    assert [t.name for t in typed.types] == ["small", "large", "gpu"] and typed.typed
    assert typed.types[1].memory == 32 * 1024 and typed.types[2].gpus == 1 and typed.types[2].cost == 10
    assert typed.cloud_of(typed.types[2]) == {"type": "ec2", "image-id": "ami-gpu", "instance-type": "g4dn.2xlarge"}
    old = scale_spec.parse({"name": "x", "cloud": {"type": "ec2"}, "max-vms": 3, "cpus-per-vm": 4})
    assert [(t.name, t.cpus, t.memory) for t in old.types] == [("default", 4, None)] and not old.typed
    bad = FARM.replace("max-vms: 10", "max-vms: 10\n  cpus-per-vm: 2").replace("cloud: {instance-type: m1.small}", "cloud: {vcpus: 2}")
    with pytest.raises(configuration.ConfigError) as refused:
        configuration.load_text(bad)
    text = str(refused.value)
    assert "cpus-per-vm is for a farm of one type" in text and "vcpus: not a setting a worker type of cloud type ec2 can set" in text


def test_each_job_goes_to_the_type_with_least_waste_then_cost() -> None:
    jobs = [job(1), job(2), job(3, cpus=4, memory=16000), job(4, cpus=8, memory=4000), job(5, cpus=2, gpus=1)]
    result = planner.plan({"now": NOW, "jobs": jobs, "slots": [], "instances": []}, spec())
    # 1-CPU jobs: small (nothing left over); 4 and 8 CPUs: large (gpu holds them too but wastes its GPU); the GPU job: gpu.
    assert launches(result) == {"small": 2, "large": 2, "gpu": 1}
    assert (result.types["large"].waiting, result.types["large"].demand) == (2, 12)
    launch = next(d for d in result.decisions if d.type == "large")
    assert launch.reason.startswith("type large: 2 waiting job(s) need 12 CPU(s)") and launch.token and launch.token.startswith("vfarm-")


def test_requirements_are_evaluated_on_what_a_type_advertises_and_nothing_more() -> None:
    wants_large = job(1, requirements='TARGET.VfarmWorkerType == "large" && TARGET.Arch == "X86_64"')
    big_memory = job(2, requirements="TARGET.Memory >= 20000 && TARGET.HasFileTransfer")
    unknown_only = job(3, requirements='TARGET.OpSys == "LINUX"')  # nothing a type declares: refuses no type
    result = planner.plan({"now": NOW, "jobs": [wants_large, big_memory, unknown_only], "slots": [], "instances": []}, spec())
    assert (result.types["large"].waiting, result.types["small"].waiting) == (2, 1)
    never = job(4, requirements='TARGET.VfarmWorkerType == "huge"')
    result = planner.plan({"now": NOW, "jobs": [never, never], "slots": [], "instances": []}, spec())
    refused = "have Requirements that every type holding their CPUs, memory and GPUs refuses"
    assert result.launch == 0 and [(u.jobs, u.reason.split(" (")[0]) for u in result.unfit] == [(("4.0", "4.0"), refused)]


def test_requirements_without_a_prefix_read_the_job_then_the_machine_as_the_matchmaker_does() -> None:
    """HTCondor's manual (ClassAd evaluation semantics): a name without MY. or TARGET. is the
    job's attribute when the job has it, else the machine's; users write `VfarmWorkerType == "large"`."""
    wants_large = job(1, requirements='VfarmWorkerType == "large"')
    big_memory = job(2, requirements="Memory >= 20000")
    result = planner.plan({"now": NOW, "jobs": [wants_large, big_memory], "slots": [], "instances": []}, spec())
    assert (result.types["large"].waiting, result.types["small"].waiting) == (2, 0)
    own = job(3, requirements="Memory >= 20000")
    own["Memory"] = 30000  # the job's own attribute comes first: every type holds it
    result = planner.plan({"now": NOW, "jobs": [own], "slots": [], "instances": []}, spec())
    assert result.types["small"].waiting == 1
    never = job(4, requirements='VfarmWorkerType == "huge"')
    result = planner.plan({"now": NOW, "jobs": [never], "slots": [], "instances": []}, spec())
    assert result.launch == 0 and [u.jobs for u in result.unfit] == [("4.0",)]


def test_requirements_that_test_for_undefined_refuse_no_type_and_one_type_farms_check_cpus_only() -> None:
    # As a real schedd writes them: `=!= undefined` on an attribute no type declares would be false here.
    real = job(1, requirements='VfarmInstanceId =!= undefined && (TARGET.Arch == "X86_64") && (TARGET.Memory >= RequestMemory)')
    picky = job(2, requirements='ifThenElse(TARGET.HasDocker is undefined, false, TARGET.VfarmWorkerType == "large")')
    result = planner.plan({"now": NOW, "jobs": [real, picky], "slots": [], "instances": []}, spec())
    assert result.unfit == [] and result.types["small"].waiting == 2
    old = scale_spec.parse({"name": "mixed", "cloud": {"type": "ec2"}, "max-vms": 3, "cpus-per-vm": 2, "waiting-time": 0})
    never_here = [job(3, requirements='TARGET.VfarmWorkerType == "gpu"'), job(4, gpus=1, memory=999999)]
    result = planner.plan({"now": NOW, "jobs": never_here, "slots": [], "instances": []}, old)
    assert result.unfit == [] and result.launch == 1  # memory, GPUs and Requirements: not checked, as before types


def test_a_request_that_is_an_expression_is_evaluated_as_htcondor_would() -> None:
    # HTCondor's default RequestMemory: MemoryUsage once known, else from ImageSize (KiB): 40 GB here.
    default = "ifthenelse(MemoryUsage isnt undefined,MemoryUsage,(ImageSize + 1023) / 1024)"
    heavy = {**job(1, memory=f"/Expr({default})/"), "ImageSize": 40 * 1024 * 1024}
    light = {**job(2, memory=f"/Expr({default})/"), "ImageSize": 1000, "MemoryUsage": 1500}
    result = planner.plan({"now": NOW, "jobs": [heavy, light], "slots": [], "instances": []}, spec())
    assert launches(result) == {"small": 1}
    assert len(result.unfit) == 1 and result.unfit[0].jobs == ("1.0",) and "40960 MB of memory, more than any type offers (32768 MB)" in result.unfit[0].reason
    assert sum("no worker type can ever run them" in w for w in result.warnings) == 1


def test_jobs_no_type_can_hold_are_reported_once_with_why() -> None:
    jobs = [job(n, cpus=64) for n in range(5)] + [job(9, cpus=1, gpus=4)]
    result = planner.plan({"now": NOW, "jobs": jobs, "slots": [], "instances": []}, spec())
    assert result.launch == 0 and result.waiting == 0
    assert sorted(u.reason for u in result.unfit) == ["ask for 4 GPU(s), more than any type offers (1)", "ask for 64 CPUs, more than any type offers (8)"]
    assert [w for w in result.warnings if "64 CPUs" in w] == ["5 idle job(s) (0.0, 1.0, 2.0 and 2 more) ask for 64 CPUs, more than any type offers (8): "
                                                              "no worker type can ever run them, they are no demand"]


def test_a_type_at_its_max_or_in_a_black_hole_sends_its_jobs_to_the_next_type() -> None:
    jobs = [job(n) for n in range(3)]
    lost = [instance(f"i-{k}", "small", NOW - 150 + k, "terminated", "lost") for k in range(3)]
    result = planner.plan({"now": NOW, "jobs": jobs, "slots": [], "instances": lost}, spec())
    assert result.types["small"].black_hole.blocked and launches(result) == {"large": 1}
    assert not any(d.action == "hold" for d in result.decisions)  # nothing left waiting for small
    # ... and the launch says what it stands in for, and why.
    [launch] = [d for d in result.decisions if d.action == "launch"]
    assert launch.reason.endswith("; instead of type small: NOT launching, black hole back-off (3 lost in a row) for 252s more")
    # A type in cloud back-off: the same, and the types' table shows the back-off.
    result = planner.plan({"now": NOW, "jobs": jobs, "slots": [], "instances": [], "cloud_backoff": {"launch:small": NOW + 400}}, spec())
    [launch] = [d for d in result.decisions if d.action == "launch"]
    assert launches(result) == {"large": 1}
    assert launch.reason.endswith("; instead of type small: launch postponed, cloud back-off for 400s more after a failed launch")
    small = next(line for line in commands.render(result, spec()).splitlines() if line.startswith("small "))
    assert small.endswith("back-off 400s")
    # Only a launch whose jobs went past small says so: a GPU job never had small for a choice.
    result = planner.plan({"now": NOW, "jobs": [job(1), job(5, cpus=2, gpus=1)], "slots": [], "instances": [],
                           "cloud_backoff": {"launch:small": NOW + 400}}, spec())
    reasons = {d.type: d.reason for d in result.decisions if d.action == "launch"}
    assert set(reasons) == {"large", "gpu"} and "instead of type small" in reasons["large"] and "instead of" not in reasons["gpu"]
    # A job only small can hold (Requirements) is held, with the black hole as the reason.
    only_small = job(7, requirements='TARGET.VfarmWorkerType == "small"')
    result = planner.plan({"now": NOW, "jobs": [only_small], "slots": [], "instances": lost}, spec())
    [hold] = [d for d in result.decisions if d.action == "hold"]
    assert hold.type == "small" and "NOT launching, black hole back-off (3 lost in a row)" in hold.reason
    # large is full (max 2): 8-CPU jobs spill to gpu.
    booting = [instance(f"i-l{k}", "large", NOW - 50) for k in range(2)]
    result = planner.plan({"now": NOW, "jobs": [job(n, cpus=8) for n in range(3)], "slots": [], "instances": booting}, spec())
    assert launches(result) == {"gpu": 1}  # the two booting large workers take two; the third goes to gpu


class Cloud:
    """An in-memory cloud whose launches of one instance type are refused for capacity."""

    def __init__(self, refuse: str) -> None:
        self.refuse = refuse
        self.started: list[tuple[str, int, str]] = []

    def farm_instances(self) -> list[dict[str, Any]]:
        return []

    def launch(self, count: int, token: str, worker_type: scale_spec.WorkerType) -> list[str]:
        if worker_type.name == self.refuse:
            raise apply.CapacityError(f"the cloud refused {count} x {worker_type.name} (quota or capacity: InsufficientInstanceCapacity)")
        self.started.append((worker_type.name, count, token))
        return [f"i-{worker_type.name}-{k}" for k in range(count)]

    def terminate(self, ends: dict[str, str]) -> None:
        raise AssertionError("nothing to terminate")


def test_a_capacity_refusal_falls_back_to_the_next_type_in_the_same_cycle(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="vfarm.test")
    farm = spec()
    jobs = [job(n) for n in range(3)]
    snapshot = {"now": NOW, "jobs": jobs, "slots": [], "instances": []}
    decided = planner.plan(snapshot, farm)
    [launch] = decided.of(planner.Action.LAUNCH)
    assert (launch.type, launch.count) == ("small", 3) and [(o.type, o.count) for o in launch.fallback] == [("large", 1)]
    cloud = Cloud(refuse="small")
    scaler = loop.Scaler(farm, cloud, apply.CondorDrain("cm"), logging.getLogger("vfarm.test"), clock=lambda: NOW,
                         pool=lambda: {"jobs": jobs, "slots": [], "collector": []})
    scaler.cycle()
    assert [(name, count) for name, count, _token in cloud.started] == [("large", 1)]
    assert scaler.outcome is not None and scaler.outcome.launched == ["i-large-0"] and scaler.outcome.cloud_errors == {"launch": 1}
    assert "launch 1 of type large instead (the cloud refused type small for quota or capacity)" in caplog.text
    # small backs off on its own: the next plan holds it and still may start large.
    memory = scaler.memory()
    assert set(memory[planner.BACKOFF]) == {"launch:small"} and memory[planner.INTENTS] == {}
    again = planner.plan({**snapshot, **memory, "now": NOW + 1}, farm)
    assert launches(again) == {"large": 1} and again.types["small"].launch_backoff_until == NOW + 15


@pytest.mark.integration
def test_snapshot_prints_types_and_the_decisions(tmp_path: Path) -> None:
    farm = tmp_path / "farm.yaml"
    farm.write_text(FARM)
    snap = tmp_path / "snap.json"
    lost = [instance(f"i-{k}", "small", NOW - 150 + k, "terminated", "lost") for k in range(3)]
    snap.write_text(json.dumps({"now": NOW, "jobs": [job(1), job(2, cpus=8), job(3, cpus=99)], "slots": [], "instances": lost,
                                "launch_intents": {"large": {"token": "vfarm-abc", "count": 1}}}))
    done = subprocess.run([sys.executable, "-m", "vfarm", "scale", str(farm), "--snapshot", str(snap)], text=True, capture_output=True, timeout=60)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    # small is in its black hole: the 1-CPU job goes to large too; a launch of 1 large of unknown outcome is
    # retried first with its token (the rest next cycle); were large refused for capacity, 2 gpu instead.
    assert any(line.split()[:3] == ["launch", "1", "large"] and line.endswith("the same token as a launch of unknown outcome; "
                                                                              "if refused for quota or capacity: 2 gpu instead") for line in lines)
    assert any(line.split()[:1] == ["TYPE"] for line in lines)
    assert [line.split()[0] for line in lines if line.startswith("small")] == ["small"] and "black hole, blocked" in done.stdout
    assert "1 idle job(s) (3.0) ask for 99 CPUs" in done.stderr
    as_json = json.loads(subprocess.run([sys.executable, "-m", "vfarm", "scale", str(farm), "--snapshot", str(snap), "--json"], text=True,
                                        capture_output=True, timeout=60).stdout)
    assert as_json["types"]["small"]["black_hole"]["blocked"] is True and as_json["unfit"][0]["jobs"] == ["3.0"]
    [launch] = [d for d in as_json["decisions"] if d["action"] == "launch"]
    assert (launch["token"], launch["count"]) == ("vfarm-abc", 1) and as_json["launch_intents"] == {}
    # the intent is dropped once nothing of its type is wanted
    snap.write_text(json.dumps({"now": NOW, "jobs": [], "slots": [], "instances": [], "launch_intents": {"large": {"token": "vfarm-abc", "count": 1}}}))
    quiet = subprocess.run([sys.executable, "-m", "vfarm", "scale", str(farm), "--snapshot", str(snap)], text=True, capture_output=True, timeout=60)
    assert any(line.split()[:2] == ["forget", "-"] and "launch of 1 worker(s) of type large of unknown outcome no longer wanted" in line
               for line in quiet.stdout.splitlines()), quiet.stdout


# --- properties ----------------------------------------------------------------------------------

worker_types = st.lists(
    st.builds(lambda cpus, memory, gpus, cap, cost: {"cpus": cpus, "memory": memory, "gpus": gpus, "max": cap, "cost": cost},
              st.sampled_from([1, 2, 4, 8]), st.sampled_from([None, 2048, 8192, 32768]), st.sampled_from([0, 0, 1]),
              st.one_of(st.none(), st.integers(0, 4)), st.sampled_from([1, 2, 10])),
    min_size=1, max_size=4)
requests = st.lists(st.tuples(st.sampled_from([1, 1, 2, 4, 8, 16]), st.sampled_from([None, 1000, 4000, 16000, 64000]), st.sampled_from([0, 0, 1, 2]),
                              st.sampled_from([None, 'TARGET.VfarmWorkerType == "t0"', "TARGET.Cpus >= 4", 'TARGET.Arch == "X86_64"'])),
                    max_size=40)


def test_a_fallback_and_the_other_launches_stay_within_max_vms() -> None:
    """The fallback is planned with the plan's other launches going ahead. Here max-vms is 3: r
    holds the older 2-CPU jobs in one worker, p the two 16-CPU jobs; were r refused, its jobs
    need more of q than the 3 max-vms leaves beside p's 2."""
    farm = spec(FARM_OF_THREE)
    jobs = [job(n, cpus=2, memory=2000) for n in range(4)] + [job(10 + n, cpus=16, memory=500) for n in range(2)]
    for older in jobs[:4]:
        older["EnteredCurrentStatus"] = NOW - 600
    decided = planner.plan({"now": NOW, "jobs": jobs, "slots": [], "instances": []}, farm)
    assert launches(decided) == {"r": 1, "p": 2}
    refused = next(d for d in decided.of(planner.Action.LAUNCH) if d.type == "r")
    assert [(o.type, o.count) for o in refused.fallback] == [("q", 1)]  # not 3: p's 2 go ahead
    cloud = Cloud(refuse="r")
    applier = apply.Applier(farm, cloud, apply.CondorDrain("cm"), logging.getLogger("vfarm.test"))
    outcome = applier.apply(decided, {"now": NOW, "jobs": jobs, "slots": [], "instances": []})
    assert sorted((name, count) for name, count, _token in cloud.started) == [("p", 2), ("q", 1)] and len(outcome.launched) == 3


FARM_OF_THREE = """\
scale:
  name: mixed
  cloud: {type: ec2, image-id: ami-1, instance-type: m1.small}
  max-vms: 3
  waiting-time: 0
  types:
    - {name: r, cpus: 8, memory: 16000}
    - {name: q, cpus: 2, memory: 4000}
    - {name: p, cpus: 16, memory: 1000}
"""


@settings(max_examples=300, deadline=None)
@given(types=worker_types, asked=requests, max_vms=st.integers(0, 12), booting=st.lists(st.integers(0, 3), max_size=5),
       lost=st.integers(0, 4), max_cpus=st.one_of(st.none(), st.integers(0, 60)))
def test_properties_of_typed_plans(types: list[dict[str, Any]], asked: list[tuple[int, Optional[int], int, Optional[str]]], max_vms: int,
                                   booting: list[int], lost: int, max_cpus: Optional[int]) -> None:
    section = {"name": "mixed", "cloud": {"type": "ec2"}, "max-vms": max_vms, "waiting-time": 0, "boot-timeout": 100,
               "types": [{"name": f"t{i}", **{k: v for k, v in t.items() if v is not None}} for i, t in enumerate(types)]}
    if max_cpus is not None:
        section["max-cpus"] = max_cpus
    farm = scale_spec.parse(section)
    jobs = [job(n, cpus, memory, gpus, req) for n, (cpus, memory, gpus, req) in enumerate(asked)]
    names = [t.name for t in farm.types]
    instances = [instance(f"i-b{k}", names[kind % len(names)], NOW - 10) for k, kind in enumerate(booting)]
    instances += [instance(f"i-l{k}", "t0", NOW - 1000 + k, "terminated", "lost") for k in range(lost)]
    snapshot = {"now": NOW, "jobs": jobs, "slots": [], "instances": instances}
    result = planner.plan(snapshot, farm)
    assert planner.plan(json.loads(json.dumps(snapshot)), farm).to_json() == result.to_json()  # same snapshot, same plan
    started = launches(result)
    by_type = {t.name: t for t in farm.types}
    # never over max-vms, nor over a type's max
    assert result.active + result.launch <= max(max_vms, result.active)
    live = sum(farm.worker_type(w.type).cpus for w in result.instances)
    if max_cpus is not None:  # nor over max-cpus (every live worker counted with its type's CPUs)
        assert live + sum(n * by_type[name].cpus for name, n in started.items()) <= max(max_cpus, live)
    for name, count in started.items():
        kind = by_type[name]
        assert count > 0 and (kind.max is None or result.types[name].active + count <= max(kind.max, result.types[name].active))
    # every waiting job is counted once: on a type that holds it, or as unfit
    assert sum(f.waiting for f in result.types.values()) + sum(len(u.jobs) for u in result.unfit) == len(jobs)
    assert len({u.reason for u in result.unfit}) == len(result.unfit)  # each reason reported once
    for n, (cpus, memory, gpus, req) in enumerate(asked):
        holders = [t for t in farm.types if t.cpus >= cpus and (t.gpus is None or t.gpus >= gpus) and (t.memory is None or memory is None or memory <= t.memory)
                   and not (req == 'TARGET.VfarmWorkerType == "t0"' and t.name != "t0") and not (req == "TARGET.Cpus >= 4" and t.cpus < 4)]
        assert (f"{n}.0" in {j for u in result.unfit for j in u.jobs}) == (not holders), (n, cpus, memory, gpus, req)
    # a type in its black hole back-off starts nothing; a probing one at most one
    hole = result.types["t0"].black_hole
    if hole.blocked:
        assert "t0" not in started
    if hole.probing:
        assert started.get("t0", 0) <= 1
    # launching a type's wanted workers covers what its jobs ask (per CPU) when nothing holds it back
    for name, figures in result.types.items():
        if name in started and started[name] == figures.wanted:
            assert figures.supply + started[name] * by_type[name].cpus >= figures.demand
    # a launch's fallback never names its own type and only types that hold work; with the plan's
    # other launches it stays within max-vms, max-cpus and every type's max
    for decision in result.of(planner.Action.LAUNCH):
        assert all(o.type != decision.type and o.count > 0 for o in decision.fallback)
        instead = {name: n for name, n in started.items() if name != decision.type}
        for o in decision.fallback:
            instead[o.type] = instead.get(o.type, 0) + o.count
        assert result.active + sum(instead.values()) <= max(max_vms, result.active), (decision.type, started, decision.fallback)
        if max_cpus is not None:
            assert live + sum(n * by_type[name].cpus for name, n in instead.items()) <= max(max_cpus, live)
        for name, count in instead.items():
            kind = by_type[name]
            assert kind.max is None or result.types[name].active + count <= max(kind.max, result.types[name].active)


def test_each_type_of_a_farm_with_a_condor_section_advertises_its_name(tmp_path: Path) -> None:
    """A typed farm's workers are launched with a user-data of their type: its condor section's
    startd advertises VfarmWorkerType (the attribute a job's Requirements may name), over the
    farm's own attributes; one build per type, made when that type is first launched."""
    from vfarm.cli import scale as scale_cli
    from vfarm.mime_builder.inspect import inspect_bytes

    farm = tmp_path / "farm.yaml"
    farm.write_text("#multiple-config\ncondor: {central-manager: cm.example.org, token: aaa.bbb.ccc, attributes: {Site: T2_IT_Torino}}\n"
                    + FARM.replace("cloud: {type: ec2, image-id: ami-1, instance-type: m1.small}",
                                   "cloud: {type: ec2, image-id: ami-1, instance-type: m1.small, handlers: baked}"))
    typed = spec(farm.read_text())
    userdata = scale_cli._userdata(str(farm), typed)
    assert callable(userdata)

    def condor_part(data: bytes) -> str:
        [content] = [p.content for p in inspect_bytes(data).parts if p.content and "central-manager" in p.content]
        return content

    large, small = userdata(typed.worker_type("large")), userdata(typed.worker_type("small"))
    assert "VfarmWorkerType: large" in condor_part(large) and "Site: T2_IT_Torino" in condor_part(large)
    assert "VfarmWorkerType: small" in condor_part(small) and large != small
    assert userdata(typed.worker_type("large")) is large  # built once
    untyped = spec(farm.read_text().replace("  types:\n", "  no-types:\n").split("  no-types:\n")[0])
    assert isinstance(scale_cli._userdata(str(farm), untyped), bytes)


ROOM = """\
scale:
  name: mixed
  cloud: {type: ec2, image-id: ami-1, instance-type: m1.small}
  max-vms: 2
  waiting-time: 0
  idle-time: 600
  types:
    - {name: small, cpus: 2, memory: 8G, cloud: {instance-type: m1.small}}
    - {name: large, cpus: 8, memory: 32G, cloud: {instance-type: m1.2xlarge}}
"""


def test_while_max_vms_holds_back_a_type_idle_workers_of_other_types_make_room() -> None:
    farm = spec(ROOM)
    slots = [{"Name": f"slot1@w-{iid}@host", "VfarmInstanceId": iid, "State": "Unclaimed", "Activity": "Idle", "Cpus": 2, "Memory": 8192,
              "EnteredCurrentState": NOW - 3600, "PartitionableSlot": True} for iid in ("i-s1", "i-s2")]
    workers = [instance("i-s1", "small", NOW - 7200), instance("i-s2", "small", NOW - 7200)]
    seen = {"i-s1": NOW - 3000, "i-s2": NOW - 700}
    big = [job(n, cpus=8, memory=4000) for n in range(3)]
    result = planner.plan({"now": NOW, "jobs": big, "slots": slots, "instances": workers, "observed_idle_since": seen}, farm)
    # Large workers wanted, none may start (max-vms 2, both taken by idle small workers): both drained, the longest idle first.
    assert result.drain == ["i-s1", "i-s2"] and result.launch == 0 and result.types["large"].wanted == 3
    drain = next(d for d in result.decisions if d.action == "drain")
    assert drain.reason == "idle for 3000s (idle-time 600s); room under max-vms 2 for the workers the waiting jobs need (3 of type large)"
    # Idle for less than idle-time: kept, whatever waits (no worker drained before idle-time).
    recent = {"i-s1": NOW - 100, "i-s2": NOW - 100}
    assert planner.plan({"now": NOW, "jobs": big, "slots": slots, "instances": workers, "observed_idle_since": recent}, farm).drain == []
    # Only as many as the held-back workers need: one large job, one drained.
    result = planner.plan({"now": NOW, "jobs": big[:1], "slots": slots, "instances": workers, "observed_idle_since": seen}, farm)
    assert result.drain == ["i-s1"]
    # Idle workers of a type some waiting jobs are fitted to are not drained for room (those jobs may be about to land there).
    result = planner.plan({"now": NOW, "jobs": [job(9, cpus=2, memory=8000)] * 5, "slots": slots, "instances": workers, "observed_idle_since": seen},
                          farm)
    assert result.types["small"].waiting > 0 and result.types["large"].wanted > 0 and result.drain == []
    # Room only when max-vms binds: with room left, launches go on and nothing idle is drained while jobs wait.
    result = planner.plan({"now": NOW, "jobs": big, "slots": slots, "instances": workers, "observed_idle_since": seen},
                          spec(ROOM.replace("max-vms: 2", "max-vms: 10")))
    assert result.drain == [] and launches(result) == {"large": 3}


def test_jobs_of_the_same_age_get_the_scarce_worker_whatever_the_schedds_order() -> None:
    """Under a binding cap, equal ages are told apart by the request, not by list order: the same
    queue listed in another order (another schedd, a snapshot read back) plans the same."""
    farm = scale_spec.parse({"name": "farm", "cloud": {"type": "ec2"}, "max-vms": 2, "max-cpus": 8, "waiting-time": 0,
                             "types": [{"name": "small", "cpus": 1, "memory": "2G"}, {"name": "large", "cpus": 8, "memory": "32G"}]})
    now = 1_700_000_000.0
    a = {"ClusterId": 11, "ProcId": 0, "JobStatus": 1, "RequestCpus": 1, "EnteredCurrentStatus": now - 5000}
    b = {"ClusterId": 12, "ProcId": 0, "JobStatus": 1, "RequestCpus": 1, "RequestMemory": 4096, "EnteredCurrentStatus": now - 5000}
    plans = [planner.plan({"now": now, "jobs": jobs, "slots": [], "instances": []}, farm) for jobs in ([a, b], [b, a])]
    assert [[(d.action.value, d.type, d.count) for d in p.decisions] for p in plans][0] == \
        [[(d.action.value, d.type, d.count) for d in p.decisions] for p in plans][1]


def free_slot(iid: str, **amounts: Any) -> dict[str, Any]:
    """The partitionable slot of an idle worker of FARM, advertising AMOUNTS (Cpus, Memory, GPUs)."""
    return {"Name": f"slot1@{iid}", "Machine": f"m-{iid}", "State": "Unclaimed", "Activity": "Idle", "PartitionableSlot": True,
            "EnteredCurrentState": NOW - 50, "NumDynamicSlotsTime": NOW - 50, "VfarmInstanceId": iid, **amounts}


@pytest.mark.parametrize("kind,honest,forged,jobs", [
    # 4 one-CPU jobs fit small workers (1 CPU): a worker's 1 free CPU, and 3 more workers.
    ("small", {"Cpus": 1, "Memory": 1800}, {"Cpus": 64}, [job(n) for n in range(4)]),
    # 3 jobs of one GPU each: a gpu worker holds one; claiming 8 GPUs, it would hold them all.
    ("gpu", {"Cpus": 8, "Memory": 30000, "GPUs": 1}, {"GPUs": 8}, [job(n, cpus=2, gpus=1) for n in range(3)]),
    # 2 jobs of 20000 MB: a large worker (32G) holds one; claiming 1 TB of memory, both.
    ("large", {"Cpus": 8, "Memory": 30000}, {"Memory": 10**6}, [job(n, memory=20000) for n in range(2)]),
], ids=["cpus", "gpus", "memory"])
def test_a_slot_ad_claiming_more_than_its_workers_type_has_stops_no_launch(kind: str, honest: dict[str, Any], forged: dict[str, Any],
                                                                         jobs: list[dict[str, Any]]) -> None:
    """Any startd holding the pool's token may advertise what it likes for a worker of the farm:
    the planner believes no more free CPUs, memory or GPUs than the worker's type has (the one its
    tag vfarm:type names), so the launches the queue needs are the same as with the worker's true
    ad; a warning names the worker and what it claimed."""
    instances = [instance("i-w", kind, NOW - 1000)]
    true = planner.plan({"now": NOW, "jobs": jobs, "slots": [free_slot("i-w", **honest)], "instances": instances}, spec())
    assert launches(true)[kind] > 0 and true.warnings == []
    lying = planner.plan({"now": NOW, "jobs": jobs, "slots": [free_slot("i-w", **{**honest, **forged})], "instances": instances}, spec())
    assert launches(lying) == launches(true) and lying.types[kind].supply == true.types[kind].supply
    assert [w for w in lying.warnings if "i-w" in w and f"type {kind}" in w], lying.warnings


def test_a_worker_of_a_type_the_farm_no_longer_lists_is_read_as_its_ads_say() -> None:
    """A worker whose vfarm:type names no type of the farm (a type since removed) counts as the
    first type's, but what it has is unknown: its ads are believed as they are (within any machine's)."""
    instances = [instance("i-old", "retired", NOW - 1000)]
    result = planner.plan({"now": NOW, "jobs": [job(n) for n in range(4)], "slots": [free_slot("i-old", Cpus=8, Memory=30000)],
                           "instances": instances}, spec())
    assert result.types["small"].supply == 8 and launches(result) == {} and result.warnings == []


# A hybrid farm whose `large` type ran on both clouds and now runs on aws only.
MOVED = """\
scale:
  name: mixed
  max-vms: 10
  waiting-time: 0
  boot-timeout: 100
  clouds:
    - {name: site, type: openstack, image: worker, flavor: m1.small, max: 5}
    - {name: aws, type: ec2, image-id: ami-1, instance-type: m5.large}
  types:
    - name: small
      cpus: 1
      memory: 2G
      clouds:
        site:
        aws: {instance-type: m5.large}
    - name: large
      cpus: 8
      memory: 32G
      clouds:
        aws: {instance-type: m5.2xlarge}
"""


def placed(iid: str, kind: str, cloud: Optional[str]) -> dict[str, Any]:
    """An instance of MOVED tagged KIND, on CLOUD (None: no vfarm:cloud tag)."""
    inst = instance(iid, kind, NOW - 5000)
    inst["Tags"] += [{"Key": "vfarm:cloud", "Value": cloud}] if cloud else []
    return inst


@pytest.mark.parametrize("cloud", ["site", None], ids=["left-on-site", "no-cloud-tag"])
def test_a_worker_counted_under_another_types_placement_is_read_as_the_type_it_was_launched_as(cloud: Optional[str]) -> None:
    """A large worker still on site (where large may no longer run), or without a cloud tag, counts
    under the cloud's first placement, small@site; yet it has what it was launched with, a large's
    8 CPUs: its 8 free CPUs take the 8 waiting one-CPU jobs (no launch, no warning), not one CPU
    (seven needless launches, and a warning blaming an honest worker). A forged ad of it is still
    read as at most a large's."""
    farm, instances, jobs = spec(MOVED), [placed("i-big", "large", cloud)], [job(n) for n in range(8)]
    honest = planner.plan({"now": NOW, "jobs": jobs, "slots": [free_slot("i-big", Cpus=8, Memory=30000)], "instances": instances}, farm)
    assert [w.type for w in honest.instances] == ["small@site"]  # where it counts
    assert (honest.types["small@site"].supply, launches(honest), honest.warnings) == (8, {}, [])
    forged = planner.plan({"now": NOW, "jobs": jobs, "slots": [free_slot("i-big", Cpus=64, Memory=30000)], "instances": instances}, farm)
    assert (forged.types["small@site"].supply, launches(forged)) == (8, {})
    assert [w for w in forged.warnings if "i-big (type large: 64 CPUs free read as 8)" in w], forged.warnings


def test_consolidation_reads_a_worker_counted_under_another_types_placement_as_the_type_it_was_launched_as() -> None:
    """MOVED, the queue quiet: two large workers, one still on site (counted as small@site), each
    running a one-CPU job: 7 + 7 idle CPUs, above the budget (8, the largest type's), so one is
    drained for the other to fill; the site one's idle CPUs are a large's, not a small's (none)."""
    slots: list[dict[str, Any]] = []
    jobs: list[dict[str, Any]] = []
    for k, iid in enumerate(["i-aws", "i-site"]):
        slots += [{**free_slot(iid, Cpus=7, Memory=28000), "EnteredCurrentState": NOW - 9999, "NumDynamicSlotsTime": NOW - 600},
                  {"Name": f"slot1_1@{iid}", "Machine": f"m-{iid}", "State": "Claimed", "Activity": "Busy", "Cpus": 1, "Memory": 1024,
                   "DynamicSlot": True, "EnteredCurrentState": NOW - 600, "VfarmInstanceId": iid}]
        jobs.append({"ClusterId": 100 + k, "ProcId": 0, "JobStatus": 2, "RequestCpus": 1, "QDate": NOW - 900,
                     "EnteredCurrentStatus": NOW - 600, "RemoteHost": f"slot1_1@{iid}"})
    result = planner.plan({"now": NOW, "jobs": jobs, "slots": slots, "instances": [placed("i-aws", "large", "aws"), placed("i-site", "large", "site")]},
                          spec(MOVED))
    assert {w.id: (w.type, w.state.value) for w in result.instances} == {"i-aws": ("large@aws", "busy"), "i-site": ("small@site", "busy")}
    drained = [d for d in result.of(planner.Action.DRAIN) if d.reason.startswith("consolidation")]
    assert len(drained) == 1 and "14 idle CPU(s)" in drained[0].reason, result.decisions
    assert result.warnings == [] and launches(result) == {}


def test_a_booting_worker_counted_under_another_types_placement_brings_what_it_was_launched_with() -> None:
    """A large worker still booting on site (counted as small@site) brings a large's 8 CPUs to the
    supply, not a small's one: the 8 waiting one-CPU jobs need no launch. max-cpus counts its 8
    cores as a cloud's quota would: with max-cpus 9, one more large (8) would exceed it."""
    booting = placed("i-big", "large", "site")
    booting["LaunchTime"] = NOW - 10
    result = planner.plan({"now": NOW, "jobs": [job(n) for n in range(8)], "slots": [], "instances": [booting]}, spec(MOVED))
    assert [(w.type, w.state.value) for w in result.instances] == [("small@site", "booting")]
    assert (result.types["small@site"].supply, launches(result)) == (8, {})
    capped = spec(MOVED.replace("  max-vms: 10\n", "  max-vms: 10\n  max-cpus: 9\n"))
    more = planner.plan({"now": NOW, "jobs": [job(n, cpus=8) for n in range(9)], "slots": [], "instances": [booting]}, capped)
    assert launches(more).get("large@aws", 0) == 0, more.decisions


def test_a_types_max_counts_the_workers_launched_as_it_wherever_they_count() -> None:
    """large has max 1 and one large worker, busy, still on site (counted under small@site): the
    waiting 8-CPU jobs launch no second large; small's own max is not charged for it."""
    farm = spec(MOVED.replace("      cpus: 8\n", "      cpus: 8\n      max: 1\n"))
    slots = [{"Name": "slot1_1@i-big", "Machine": "m-i-big", "State": "Claimed", "Activity": "Busy", "Cpus": 8, "Memory": 30000,
              "DynamicSlot": True, "EnteredCurrentState": NOW - 600, "VfarmInstanceId": "i-big"}]
    result = planner.plan({"now": NOW, "jobs": [job(n, cpus=8) for n in range(3)], "slots": slots, "instances": [placed("i-big", "large", "site")]}, farm)
    assert [(w.type, w.state.value) for w in result.instances] == [("small@site", "busy")]
    assert launches(result).get("large@aws", 0) == 0, result.decisions


def test_max_cpus_counts_a_worker_of_a_type_no_longer_listed_by_its_ads() -> None:
    """A farm file reloaded without a type its live workers were launched as: their CPUs are what
    their ads advertise (at least the largest listed type's), so max-cpus is not overshot."""
    small_only = spec(FARM.replace("max-vms: 10", "max-vms: 50\n  max-cpus: 32").split("    - {name: large")[0])
    insts = [instance(f"i-L{k}", "large", NOW - 500) for k in range(4)]
    slots = [{"Name": f"slot1@w-i-L{k}", "VfarmInstanceId": f"i-L{k}", "State": "Unclaimed", "Activity": "Idle", "Cpus": 0, "TotalCpus": 8,
              "EnteredCurrentState": NOW - 10, "SlotType": "Partitionable"} for k in range(4)]
    result = planner.plan({"now": NOW, "jobs": [job(n) for n in range(40)], "slots": slots, "instances": insts}, small_only)
    assert launches(result) == {}
    assert any("max-cpus 32 reached (32 CPUs live)" in d.reason for d in result.decisions if d.action == "hold")
    assert any("4 live worker(s) of type(s) the farm no longer lists (large)" in w for w in result.warnings)
    # Booting, without ads: each counts as the largest listed type (1 CPU here), and the warning says so.
    young = [instance(f"i-L{k}", "large", NOW - 50, "pending") for k in range(4)]
    booting = planner.plan({"now": NOW, "jobs": [job(n) for n in range(40)], "slots": [], "instances": young}, small_only)
    assert launches(booting) == {"small": 28}
