"""The scaler's planner: every rule of issue 11 point 2 on hand-worked snapshots, and properties.

Snapshots use the systems' own shapes: job ads as `condor_q -json` prints them, machine ads as
`condor_status -json` prints them, instances as DescribeInstances returns them.
"""

from __future__ import annotations

import copy
import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any, Optional

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from vfarm.config import loader as configuration
from vfarm.config import scale as scale_spec
from vfarm.scaler import plan as planner
from vfarm.scaler.model import DRAIN_REASON_PREFIX, Action

NOW = 1_700_000_000
FARM = "torino"
EXAMPLE = """\
scale:
  name: torino
  cloud: {type: ec2, image-id: ami-000070, instance-type: m1.large}
  pool: {collector: 127.0.0.1:9618}
  min-vms: 0
  max-vms: 3
  cpus-per-vm: 4
  waiting-jobs-threshold: 0
  waiting-time: 40      # seconds (also "40s", "10m", "1h")
  idle-time: 3600
  boot-timeout: 600
"""


def spec(**overrides: Any) -> scale_spec.ScaleSpec:
    section = configuration.load_text(EXAMPLE).sections["scale"]
    section.update({k.replace("_", "-"): v for k, v in overrides.items()})
    return scale_spec.parse(section)


def instance(iid: str, age: float = 3600, state: str = "running", farm: Optional[str] = FARM) -> dict[str, Any]:
    launched = planner.datetime.datetime.fromtimestamp(NOW - age, planner.datetime.timezone.utc)
    tags = [{"Key": "Name", "Value": "worker"}] + ([{"Key": "vfarm:farm", "Value": farm}] if farm is not None else [])
    return {
        "InstanceId": iid,
        "ImageId": "ami-000070",
        "InstanceType": "m1.large",
        "LaunchTime": launched.isoformat().replace("+00:00", ".000Z"),
        "State": {"Code": 16 if state == "running" else 0, "Name": state},
        "Tags": tags,
    }


# The DrainReason a startd the scaler drained advertises (HTCondor 23.9): condor_drain's -reason.
SCALERS_DRAIN = f"{DRAIN_REASON_PREFIX}idle for 3700s (idle-time 3600s)"


def slot(iid: str, n: int = 1, state: str = "Unclaimed", activity: str = "Idle", cpus: int = 4, since: float = NOW - 7200,
         drain_reason: Optional[str] = SCALERS_DRAIN) -> dict[str, Any]:
    """A static slot's ad; a Drained one with the drain attributes its startd advertises (none
    when DRAIN_REASON is None)."""
    ad = {
        "MyType": "Machine",
        "Name": f"slot{n}@w-{iid}@host",
        "Machine": "host",
        "State": state,
        "Activity": activity,
        "Cpus": cpus,
        "Memory": 2048,
        "EnteredCurrentState": since,
        "VfarmInstanceId": iid,
    }
    if state == "Drained" and drain_reason is not None:
        ad.update(Draining=True, DrainReason=drain_reason, DrainingRequestId=f"{iid}-drain")
    return ad


def job(proc: int, status: int = 1, waited: float = 120, cpus: Optional[int] = 1, entered: bool = True) -> dict[str, Any]:
    ad: dict[str, Any] = {"ClusterId": 7, "ProcId": proc, "JobStatus": status, "QDate": NOW - waited, "Owner": "vfarm"}
    if entered:
        ad["EnteredCurrentStatus"] = NOW - waited
    if cpus is not None:
        ad["RequestCpus"] = cpus
    return ad


# A scaler that has seen every instance idle in every cycle for long: then the ads decide.
WATCHED = NOW - 10**6


def snap(jobs: Optional[list[Any]] = None, slots: Optional[list[Any]] = None, instances: Optional[list[Any]] = None, **extra: Any) -> dict[str, Any]:
    watched = {i["InstanceId"]: WATCHED for i in instances or []}
    return {"now": NOW, "jobs": jobs or [], "slots": slots or [], "instances": instances or [], "observed_idle_since": watched, **extra}


def state_of(result: planner.Plan, iid: str) -> str:
    return str(next(i.state for i in result.instances if i.id == iid))


# --- the config -------------------------------------------------------------------------------

def test_example_validates_and_is_admin_only() -> None:
    config = configuration.load_text("#multiple-config\n" + EXAMPLE)
    assert "scale" in config.sections
    assert "scale" not in config.sent_sections()
    parsed = scale_spec.parse(config.sections["scale"])
    assert (parsed.max_vms, parsed.cpus_per_vm, parsed.waiting_time, parsed.boot_timeout, parsed.check_every) == (3, 4, 40, 600, 15)
    assert parsed.collector == "127.0.0.1:9618"


@pytest.mark.parametrize("text,seconds", [(40, 40), ("40s", 40), ("10m", 600), ("1h", 3600), ("0s", 0)])
def test_durations(text: Any, seconds: float) -> None:
    assert scale_spec.seconds(text) == seconds
    config = configuration.load_text(EXAMPLE.replace("waiting-time: 40 ", f"waiting-time: {json.dumps(text)} "))
    assert scale_spec.parse(config.sections["scale"]).waiting_time == seconds


@pytest.mark.parametrize(
    "change,message",
    [
        ("waiting-time: 40 ", 'waiting-time: "4 minutes" '),
        ("min-vms: 0", "min-vms: 5"),
        ("boot-timeout: 600", "boot-timeout: 0"),
        ("cpus-per-vm: 4", "cpus-per-vm: 0"),
        ("instance-type: m1.large", "flavour: m1.large"),
        ("type: ec2", "type: gce"),
        ("collector: 127.0.0.1:9618", "collector: 'cm example'"),
    ],
)
def test_bad_scale_sections_are_rejected_with_a_position(change: str, message: str) -> None:
    with pytest.raises(configuration.ConfigError) as err:
        configuration.load_text(EXAMPLE.replace(change, message), "farm.yaml")
    text = str(err.value)
    assert text.startswith("farm.yaml:") and "scale" in text


# --- instance states --------------------------------------------------------------------------

def test_only_pending_or_running_instances_of_this_farm_count() -> None:
    instances = [
        instance("i-a"),
        instance("i-b", state="pending", age=10),
        instance("i-other", farm="milano"),
        instance("i-untagged", farm=None),
        instance("i-stopped", state="stopped"),
        instance("i-gone", state="terminated"),
    ]
    result = planner.plan(snap(instances=instances, slots=[slot("i-a"), slot("i-other"), slot("i-stopped")]), spec(idle_time=0))
    assert [i.id for i in result.instances] == ["i-a", "i-b"]
    assert "i-other" not in result.drain + result.terminate and "i-untagged" not in result.terminate
    assert result.active == 2


def test_booting_then_lost_after_boot_timeout() -> None:
    result = planner.plan(snap(instances=[instance("i-young", age=599), instance("i-old", age=600)]), spec())
    assert state_of(result, "i-young") == "booting"
    assert state_of(result, "i-old") == "lost"
    assert result.terminate == ["i-old"]
    assert result.active == 1


def test_a_worker_whose_ads_vanished_while_the_schedd_runs_jobs_on_it_is_not_lost() -> None:
    """Slot ads expire from the collector in a network break while the jobs run on: with jobs
    running on startds no ad belongs to, an instance without ads may be running them."""
    running = job(1, status=2)
    running["RemoteHost"] = "slot1_1@w-i-quiet@host2"
    elsewhere = job(2, status=2)
    elsewhere["RemoteHost"] = "slot1@w-i-busy@host"  # on a startd the collector lists: no doubt about i-quiet
    listed = [slot("i-busy", 1, state="Claimed", activity="Busy")]
    doubt = planner.plan(snap(jobs=[running, elsewhere], slots=listed, instances=[instance("i-quiet", age=7200), instance("i-busy")]), spec())
    assert state_of(doubt, "i-quiet") == "other" and doubt.terminate == []
    assert "the schedd has 1 job(s) on startds the collector does not list" in next(w.reason for w in doubt.instances if w.id == "i-quiet")
    clear = planner.plan(snap(jobs=[elsewhere], slots=listed, instances=[instance("i-quiet", age=7200), instance("i-busy")]), spec())
    assert state_of(clear, "i-quiet") == "lost" and clear.terminate == ["i-quiet"]


def test_a_freshly_restarted_collector_saves_unjoined_instances() -> None:
    restarted = {"MyType": "Collector", "Name": "cm", "DaemonStartTime": NOW - 60}
    result = planner.plan(snap(instances=[instance("i-old", age=5000)], collector=restarted), spec())
    assert state_of(result, "i-old") == "booting" and result.terminate == []
    # HTCondor 23.9's collector ad has no DaemonStartTime: MyCurrentTime - MonitorSelfAge.
    ad_23_9 = [{"MyType": "Collector", "MyCurrentTime": NOW, "MonitorSelfAge": 100}]
    assert planner.plan(snap(instances=[instance("i-old", age=5000)], collector=ad_23_9), spec()).terminate == []
    long_running = {"MyType": "Collector", "MyCurrentTime": NOW, "MonitorSelfAge": 600}
    assert planner.plan(snap(instances=[instance("i-old", age=5000)], collector=long_running), spec()).terminate == ["i-old"]


def test_joined_states() -> None:
    slots = [
        slot("i-idle", 1), slot("i-idle", 2, since=NOW - 100),
        slot("i-busy", 1, state="Claimed", activity="Busy"), slot("i-busy", 2),
        slot("i-draining", 1, state="Drained", activity="Retiring"), slot("i-draining", 2, state="Claimed", activity="Retiring"),
        slot("i-drained", 1, state="Drained", activity="Idle"), slot("i-drained", 2, state="Drained", activity="Idle"),
        slot("i-owner", 1, state="Owner"),
    ]
    names = ["i-idle", "i-busy", "i-draining", "i-drained", "i-owner"]
    result = planner.plan(snap(slots=slots, instances=[instance(n) for n in names]), spec())
    states = {i.id: i.state for i in result.instances}
    assert states == {"i-idle": "idle", "i-busy": "busy", "i-draining": "draining", "i-drained": "drained", "i-owner": "other"}
    idle = next(i for i in result.instances if i.id == "i-idle")
    assert idle.idle_since == NOW - 100  # the latest EnteredCurrentState of its slots
    assert result.terminate == ["i-drained"]
    assert result.active == 3  # idle, busy, other


def test_only_a_worker_the_scaler_drained_is_terminated_once_drained() -> None:
    """An admin's maintenance drain (condor_drain) or condor_defrag's drain of a farm worker is not
    the scaler's: drained or still draining, the worker is left alone with whose drain it is, never
    terminated; one whose ads name no DrainReason cannot be shown to be the scaler's either."""
    maintenance = "kernel update, back at 14:00"
    slots = [
        slot("i-ours", 1, state="Drained"), slot("i-ours", 2, state="Drained"),
        slot("i-admin", 1, state="Drained", drain_reason=maintenance), slot("i-admin", 2, state="Drained", drain_reason=maintenance),
        slot("i-defrag", 1, state="Drained", activity="Retiring", drain_reason="defrag"), slot("i-defrag", 2, state="Claimed", activity="Retiring"),
        slot("i-finishing", 1, state="Drained", drain_reason=maintenance),  # its ads lag: the schedd still runs a job there
        slot("i-mute", 1, state="Drained", drain_reason=None),
        slot("i-lookalike", 1, state="Drained", drain_reason="vfarm scale"),  # not the prefix
    ]
    running = {**job(0, status=2), "RemoteHost": "slot1@w-i-finishing@host"}
    names = ["i-ours", "i-admin", "i-defrag", "i-finishing", "i-mute", "i-lookalike"]
    result = planner.plan(snap(jobs=[running], slots=slots, instances=[instance(n) for n in names]), spec(idle_time=0))
    assert result.terminate == ["i-ours"] and result.drain == []
    reasons = {w.id: (w.state.value, w.reason) for w in result.instances}
    assert reasons == {
        "i-ours": ("drained", "every slot drained and idle"),
        "i-admin": ("other", f"drained by someone else (reason {maintenance!r}): left alone"),
        "i-defrag": ("other", "being drained by someone else (reason 'defrag'), 1 slot(s) still claimed: left alone"),
        "i-finishing": ("other", f"being drained by someone else (reason {maintenance!r}), the schedd still has 1 job(s) there: left alone"),
        "i-mute": ("other", "drained by someone else (no DrainReason): left alone"),
        "i-lookalike": ("other", "drained by someone else (reason 'vfarm scale'): left alone"),
    }
    assert result.active == 5 and result.supply == 0  # live instances of the farm, but no room for a job


def test_a_worker_drained_by_someone_else_is_no_free_cpus() -> None:
    """A drained startd takes no new job, whatever a lagging Unclaimed ad of it says: the waiting
    jobs get a worker of their own."""
    slots = [slot("i-admin", 1, state="Drained", drain_reason="maintenance"), slot("i-admin", 2, cpus=4)]
    result = planner.plan(snap(jobs=[job(n) for n in range(4)], slots=slots, instances=[instance("i-admin")]), spec())
    assert state_of(result, "i-admin") == "other" and result.supply == 0 and result.launch == 1


# --- demand and supply ------------------------------------------------------------------------

def test_waiting_jobs_demand_and_the_warning_for_jobs_too_big() -> None:
    jobs = [
        job(0),  # waits 120 s
        job(1, cpus=2),
        job(2, cpus=None),  # RequestCpus defaults to 1
        job(3, waited=39),  # not long enough
        job(4, waited=120, entered=False),  # QDate when no EnteredCurrentStatus
        job(5, status=2),  # running
        job(6, status=5),  # held
        job(7, cpus=8),  # more than cpus-per-vm: never runs
    ]
    result = planner.plan(snap(jobs=jobs), spec())
    assert result.waiting == 4
    assert result.demand == 5
    assert len(result.warnings) == 1 and "more than cpus-per-vm" in result.warnings[0]


def test_waiting_time_counts_from_entered_current_status_not_qdate() -> None:
    requeued = {**job(0, waited=10), "QDate": NOW - 10_000}
    assert planner.plan(snap(jobs=[requeued]), spec()).waiting == 0


def test_idle_jobs_younger_than_waiting_time_are_counted_and_shown_not_demand() -> None:
    from vfarm.cli.scale import render

    jobs = [job(0, waited=10), {**job(1, waited=5), "JobCount": 46}, job(2, waited=100)]
    result = planner.plan(snap(jobs=jobs), spec())
    assert (result.waiting, result.young, result.to_json()["young"]) == (1, 47, 47)
    assert "1 waiting job(s) (+47 idle for less than waiting-time 40s)," in render(result, spec())
    quiet = planner.plan(snap(jobs=[job(2, waited=100)]), spec())
    assert quiet.young == 0 and "waiting job(s), demand" in render(quiet, spec())


def test_supply_counts_unclaimed_cpus_of_joined_non_draining_and_booting_instances() -> None:
    slots = [
        slot("i-idle", cpus=3),
        slot("i-busy", 1, state="Claimed", cpus=1), slot("i-busy", 2, cpus=2),
        slot("i-draining", 1, state="Drained", activity="Retiring", cpus=4), slot("i-draining", 2, cpus=4),
    ]
    instances = [instance("i-idle"), instance("i-busy"), instance("i-draining"), instance("i-boot", age=10), instance("i-lost", age=9999)]
    result = planner.plan(snap(slots=slots, instances=instances), spec())
    assert result.supply == 3 + 2 + 4  # the booting one counts cpus-per-vm
    assert result.active == 3
    # A worker whose final check failed takes no job (its START says so) until its power-off: no
    # supply; one still "pending" (condor starts before the check) is about to take them.
    checked = [{**s, "VfarmVerdict": "failed" if s["VfarmInstanceId"] == "i-idle" else "pending"} for s in slots]
    assert planner.plan(snap(slots=checked, instances=instances), spec()).supply == 2 + 4


# --- launch -----------------------------------------------------------------------------------

def test_launch_covers_the_missing_cpus() -> None:
    result = planner.plan(snap(jobs=[job(i) for i in range(9)]), spec(max_vms=10))
    assert result.demand == 9 and result.supply == 0
    assert result.launch == 3  # ceil(9 / 4)
    assert result.decisions[0].action == "launch" and "9 waiting" in result.decisions[0].reason


def test_launch_subtracts_supply_and_booting_instances() -> None:
    result = planner.plan(snap(jobs=[job(i) for i in range(9)], instances=[instance("i-boot", age=30)]), spec(max_vms=10))
    assert result.launch == 2  # ceil((9 - 4) / 4)


def test_launch_capped_by_max_vms_and_never_negative() -> None:
    many = [job(i) for i in range(100)]
    assert planner.plan(snap(jobs=many), spec()).launch == 3
    busy = [slot(f"i-{n}", state="Claimed", activity="Busy") for n in range(5)]
    over = planner.plan(snap(jobs=many, slots=busy, instances=[instance(f"i-{n}") for n in range(5)]), spec())
    assert over.launch == 0
    assert any(d.action == "hold" for d in over.decisions)


def test_no_launch_at_or_below_the_threshold() -> None:
    assert planner.plan(snap(jobs=[job(i) for i in range(3)]), spec(waiting_jobs_threshold=3)).launch == 0
    assert planner.plan(snap(jobs=[job(i) for i in range(4)]), spec(waiting_jobs_threshold=3)).launch == 1


def test_min_vms_launches_even_without_jobs_but_not_for_lost_or_draining() -> None:
    instances = [instance("i-lost", age=9999), instance("i-drain")]
    slots = [slot("i-drain", state="Drained", activity="Retiring")]
    result = planner.plan(snap(instances=instances, slots=slots), spec(min_vms=2))
    assert result.active == 0 and result.launch == 2
    assert "min-vms" in result.decisions[0].reason


# --- drain ------------------------------------------------------------------------------------

def test_drain_idle_instances_longest_idle_first_ties_by_id() -> None:
    slots = [slot("i-c", since=NOW - 5000), slot("i-b", since=NOW - 9000), slot("i-a", since=NOW - 5000), slot("i-new", since=NOW - 3599)]
    instances = [instance(n) for n in ("i-a", "i-b", "i-c", "i-new")]
    result = planner.plan(snap(slots=slots, instances=instances), spec(max_vms=5))
    assert result.drain == ["i-b", "i-a", "i-c"]
    assert result.terminate == []


def test_drain_keeps_min_vms() -> None:
    slots = [slot("i-a", since=NOW - 5000), slot("i-b", since=NOW - 9000), slot("i-c", state="Claimed", activity="Busy")]
    result = planner.plan(snap(slots=slots, instances=[instance(n) for n in ("i-a", "i-b", "i-c")]), spec(min_vms=2))
    assert result.drain == ["i-b"]  # 3 active - 1 drained = min-vms
    assert "kept for min-vms" in next(i for i in result.instances if i.id == "i-a").reason


def test_no_drain_while_jobs_wait() -> None:
    slots = [slot("i-a", since=NOW - 9000, cpus=1)]
    big = job(0, cpus=4)  # needs a whole worker: i-a's one free CPU cannot take it
    result = planner.plan(snap(jobs=[big], slots=slots, instances=[instance("i-a")]), spec())
    assert result.drain == [] and result.launch == 1
    # Within the threshold, draining goes on.
    assert planner.plan(snap(jobs=[big], slots=slots, instances=[instance("i-a")]), spec(waiting_jobs_threshold=1)).drain == ["i-a"]


def test_a_worker_a_waiting_job_fits_is_kept_until_the_negotiator_had_idle_time_to_match_it() -> None:
    """Below waiting-jobs-threshold nothing is launched for a waiting job; draining the idle worker
    it fits would leave it nowhere to run. Once the job has been idle for idle-time as well, the
    negotiator evidently does not match them: the worker goes."""
    slots = [slot("i-a", since=NOW - 9000, cpus=4)]
    config = spec(waiting_jobs_threshold=5, idle_time=600)
    fresh = planner.plan(snap(jobs=[job(0, waited=599, cpus=2)], slots=slots, instances=[instance("i-a")]), config)
    assert fresh.drain == [] and fresh.launch == 0
    assert "the negotiator may match it there" in next(i for i in fresh.instances if i.id == "i-a").reason
    assert planner.plan(snap(jobs=[job(0, waited=600, cpus=2)], slots=slots, instances=[instance("i-a")]), config).drain == ["i-a"]
    # A job the worker's free slot cannot hold (5 CPUs on 4, or more memory than it has) keeps nothing.
    assert planner.plan(snap(jobs=[job(0, waited=100, cpus=5)], slots=slots, instances=[instance("i-a")]), config).drain == ["i-a"]
    bigger = {**job(0, waited=100, cpus=1), "RequestMemory": 4096}
    assert planner.plan(snap(jobs=[bigger], slots=slots, instances=[instance("i-a")]), config).drain == ["i-a"]
    # Any one of several waiting jobs is enough; the worker's other free slots count too.
    two = [slot("i-a", 1, since=NOW - 9000, cpus=1), slot("i-a", 2, since=NOW - 9000, cpus=3)]
    jobs = [job(0, waited=5000, cpus=2), job(1, waited=100, cpus=4), job(2, waited=100, cpus=3)]
    assert planner.plan(snap(jobs=jobs, slots=two, instances=[instance("i-a")]), config).drain == []
    assert planner.plan(snap(jobs=jobs[:2], slots=two, instances=[instance("i-a")]), config).drain == ["i-a"]


def test_never_drain_or_terminate_a_claimed_instance() -> None:
    slots = [slot("i-a", 1, state="Claimed", activity="Busy", since=NOW - 99999), slot("i-a", 2, since=NOW - 99999)]
    result = planner.plan(snap(slots=slots, instances=[instance("i-a", age=99999)]), spec(idle_time=0))
    assert result.drain == [] and result.terminate == []


def test_one_odd_job_or_ad_neither_stops_the_cycle_nor_cancels_demand() -> None:
    """What one pool user can submit or advertise is read, not fatal: a request that is a ClassAd
    list (JSON array) or mapping takes the default, a negative one counts as none, a partitionable
    slot's ChildName that is not a list lists no children."""
    normal = [job(n) for n in range(8)]  # 8 one-CPU jobs: two 4-CPU workers
    assert planner.plan(snap(jobs=normal), spec()).launch == 2
    listed = job(8)
    listed["RequestCpus"] = [1, 2]
    mapped = job(9)
    mapped["RequestMemory"] = {"a": 1}
    negative = job(10, cpus=-(2**62))
    result = planner.plan(snap(jobs=[*normal, listed, mapped, negative]), spec(max_vms=10))
    assert result.launch == 3, result.decisions  # the list and the mapping as one CPU each; the negative as none
    parent = slot("i-p", 1)
    parent.update(PartitionableSlot=True, LastHeardFrom=NOW, ChildName=5)
    child = slot("i-p", 2, state="Claimed", activity="Busy")
    child.update(DynamicSlot=True, Name="slot1_1@w-i-p@host", LastHeardFrom=NOW - 10)
    odd = planner.plan(snap(slots=[parent, child], instances=[instance("i-p")]), spec())
    assert state_of(odd, "i-p") in ("idle", "busy")


@pytest.mark.parametrize("key,value,launch", [
    ("RequestCpus", 1e300, 2), ("RequestCpus", 10**30, 2), ("RequestCpus", float("inf"), 2), ("RequestCpus", float("nan"), 3),
    ("RequestCpus", -float("inf"), 2), ("RequestMemory", 10**30, 3), ("RequestGPUs", 1e300, 3),  # the one type declares neither: any is held
    ("QDate", 1e300, 3), ("EnteredCurrentStatus", 10**30, 3), ("EnteredCurrentStatus", float("nan"), 3),
])
def test_a_job_number_out_of_range_is_read_never_a_failed_cycle(key: str, value: Any, launch: int) -> None:
    """Any pool user can submit `request_cpus = 1e300`: such a job is one that no type holds
    (reported), not a plan that fails for the whole farm. A request of NaN takes the default; a
    time out of range is no time (EnteredCurrentStatus: QDate then)."""
    normal = [job(n) for n in range(8)]  # 8 one-CPU jobs: two 4-CPU workers
    odd = job(8)
    odd[key] = value
    result = planner.plan(snap(jobs=[*normal, odd]), spec(max_vms=10))
    assert result.launch == launch, (result.decisions, result.warnings)
    if launch == 2 and value > 0:  # more than any type holds: reported once
        assert [u.jobs for u in result.unfit] == [("7.8",)] and len(result.warnings) == 1, result.warnings


# Numbers no 64-bit number holds, as a startd may advertise them (`Cpus = 1e300`) and condor_status -json prints them.
ODD_NUMBERS = [1e300, -1e300, float("inf"), -float("inf"), float("nan"), 10**30]


def odd_worker(key: str, value: Any) -> dict[str, Any]:
    """The partitionable slot of i-odd, a worker seen idle for long, with KEY set to VALUE (None:
    left out)."""
    pslot = {**slot("i-odd", since=NOW - 9999), "PartitionableSlot": True, "NumDynamicSlotsTime": NOW - 5000, "LastHeardFrom": NOW - 10,
             "GPUs": 0, "ChildName": []}
    if value is None:
        del pslot[key]
    else:
        pslot[key] = value
    return pslot


@pytest.mark.parametrize("value", ODD_NUMBERS, ids=repr)
@pytest.mark.parametrize("key", planner.SLOT_NUMBERS)
def test_a_slot_number_out_of_range_is_read_as_absent_never_a_failed_cycle(key: str, value: Any) -> None:
    """Any startd holding the pool's token can advertise `Cpus = 1e300`: one such worker must not
    stop the farm's scaling. The number is read as absent: the plan is the plan of the ad without it."""
    gone = {**slot("i-odd", 2, state="Claimed", activity="Busy", since=NOW - 6000), "Name": "slot1_1@w-i-odd@host", "DynamicSlot": True,
            "LastHeardFrom": NOW - 5000}  # given back since: its parent's newer ad lists it no more
    others = [slot("i-busy", state="Claimed", activity="Busy"), slot("i-spare", since=NOW - 100)]
    instances = [instance("i-odd"), instance("i-busy"), instance("i-spare")]
    for jobs in ([], [job(n) for n in range(6)]):  # quiet: drains; jobs waiting: supply and launches
        odd = snap(jobs=jobs, slots=[odd_worker(key, value), gone, *others], instances=instances)
        frozen = copy.deepcopy(odd)
        result = planner.plan(odd, spec(max_vms=5))
        assert odd == frozen  # read as absent, not removed from the caller's snapshot
        absent = planner.plan(snap(jobs=jobs, slots=[odd_worker(key, None), gone, *others], instances=instances), spec(max_vms=5))
        assert result.to_json() == absent.to_json()


# A worker of this type offers what every kind of waiting job below asks for: CPUs, memory and GPUs.
AMOUNTS = {"Cpus": 4, "Memory": 4096, "GPUs": 4}


def impossible(key: str, which: str) -> int:
    """An amount of KEY no machine has, as any startd holding the pool's token may advertise it."""
    return {"cancels-a-worker": -AMOUNTS[key], "very-negative": -(2**62), "2**62": 2**62, "past-any-machine": planner.SLOT_RESOURCES[key] + 1}[which]


@pytest.mark.parametrize("which", ["cancels-a-worker", "very-negative", "2**62", "past-any-machine"])
@pytest.mark.parametrize("key", list(AMOUNTS))
def test_a_slot_resource_no_machine_has_is_read_as_absent(key: str, which: str) -> None:
    """A negative Cpus, Memory or GPUs would cancel other workers' free resources (launches for
    nothing), one beyond any machine would hide the waiting jobs' demand (no launch): either is read
    as absent, and no worker is drained or terminated for it."""
    farm = scale_spec.parse({"name": FARM, "cloud": {"type": "ec2", "image-id": "ami-1", "instance-type": "g4dn.xlarge"}, "max-vms": 5,
                             "waiting-time": 40, "idle-time": 3600, "types": [{"name": "gpu", **{k.lower(): v for k, v in AMOUNTS.items()}}]})

    def worker(iid: str, value: Any, **changes: Any) -> dict[str, Any]:
        ad = {**slot(iid, since=NOW - 9999), **AMOUNTS, "PartitionableSlot": True, "NumDynamicSlotsTime": NOW - 5000, **changes}
        return {k: v for k, v in {**ad, key: value}.items() if v is not None}

    instances = [instance("i-odd"), instance("i-done"), instance("i-spare")]
    asking = [{**job(n), "RequestMemory": 1024, "RequestGPUs": 1} for n in range(6)]  # 6 of each: i-spare's 4, and one worker more
    for jobs in ([], asking):  # quiet: drains and terminations; jobs waiting: supply and launches
        plans = []
        for value in (impossible(key, which), None):
            slots = [worker("i-odd", value), worker("i-done", value, State="Drained", DrainReason=SCALERS_DRAIN),
                     worker("i-spare", AMOUNTS[key], EnteredCurrentState=NOW - 100)]
            plans.append(planner.plan(snap(jobs=jobs, slots=slots, instances=instances), farm))
        odd, absent = plans
        assert odd.to_json() == absent.to_json()
        assert (absent.launch, absent.drain, absent.terminate) == ((1, [], ["i-done"]) if jobs else (0, ["i-odd"], ["i-done"]))


def test_slot_ads_claiming_more_cpus_than_cpus_per_vm_stop_no_launch() -> None:
    """Any startd holding the pool's token may advertise 64 free CPUs for a worker the farm launched
    with cpus-per-vm 4 (or a second startd may advertise a slot in its name): the planner believes
    at most 4, less what the worker's other slots hold, so the waiting jobs still get their
    workers, and a warning names the worker."""
    jobs = [job(n) for n in range(8)]  # 8 one-CPU jobs: i-a's 4 free CPUs and one worker more
    honest = planner.plan(snap(jobs=jobs, slots=[slot("i-a")], instances=[instance("i-a")]), spec())
    assert (honest.supply, honest.launch, honest.warnings) == (4, 1, [])
    forged = planner.plan(snap(jobs=jobs, slots=[{**slot("i-a"), "Cpus": 64}], instances=[instance("i-a")]), spec())
    assert (forged.supply, forged.launch) == (4, 1)
    assert [w for w in forged.warnings if "i-a" in w and "64 CPUs" in w and "cpus-per-vm 4" in w], forged.warnings
    # Busy on its 4 CPUs, and another slot in its name says 64 more are free: none are.
    busy = planner.plan(snap(jobs=jobs, slots=[slot("i-a", state="Claimed", activity="Busy"), {**slot("i-a", 2), "Cpus": 64}],
                             instances=[instance("i-a")]), spec())
    assert (busy.supply, busy.launch) == (0, 2)


def test_a_farm_on_the_default_cpus_per_vm_reads_its_workers_ads_as_they_are() -> None:
    """cpus-per-vm left at its default (1) says nothing of what the site's workers have: an 8-CPU
    worker's 8 free CPUs are supply, not 1 (that would launch a worker per waiting job)."""
    section = configuration.load_text(EXAMPLE).sections["scale"]
    section.pop("cpus-per-vm")
    result = planner.plan(snap(jobs=[job(n) for n in range(8)], slots=[{**slot("i-a"), "Cpus": 8}], instances=[instance("i-a")]),
                          scale_spec.parse(section))
    assert (result.supply, result.launch, result.warnings) == (8, 0, [])


def test_what_an_absent_slot_number_means_errs_on_the_safe_side() -> None:
    """EnteredCurrentState unknown: idle from now, never drained early; Cpus unknown: no free CPUs
    (the waiting jobs get a worker); LastHeardFrom unknown: a dynamic slot is never taken for stale."""
    idle = snap(slots=[slot("i-a", since=NOW - 9999)], instances=[instance("i-a")])
    assert planner.plan(idle, spec()).drain == ["i-a"]
    unknown = snap(slots=[slot("i-a", since=1e300)], instances=[instance("i-a")])
    result = planner.plan(unknown, spec())
    assert result.drain == [] and state_of(result, "i-a") == "idle" and result.instances[0].idle_since == NOW
    huge = snap(jobs=[job(n) for n in range(4)], slots=[{**slot("i-a"), "Cpus": 1e300}], instances=[instance("i-a")])
    result = planner.plan(huge, spec())
    assert result.supply == 0 and result.launch == 1
    parent = odd_worker("LastHeardFrom", float("nan"))
    child = {**slot("i-odd", 2, state="Claimed", activity="Busy"), "Name": "slot1_1@w-i-odd@host", "DynamicSlot": True, "LastHeardFrom": NOW - 5000}
    assert state_of(planner.plan(snap(slots=[parent, child], instances=[instance("i-odd")]), spec()), "i-odd") == "busy"
    assert state_of(planner.plan(snap(slots=[odd_worker("LastHeardFrom", NOW), child], instances=[instance("i-odd")]), spec()), "i-odd") == "idle"


@pytest.mark.parametrize("key,changes,place", [
    ("instances", {"LaunchTime": 1e300}, "'instances[0].LaunchTime' is out of range (a 64-bit number), got 1e+300"),
    ("instances", {"LaunchTime": float("nan")}, "'instances[0].LaunchTime' is out of range"),
    ("collector", {"DaemonStartTime": float("inf")}, "'collector.DaemonStartTime' is out of range"),
    ("collector", {"MonitorSelfAge": -(10**30)}, "'collector.MonitorSelfAge' is out of range"),
])
def test_instances_and_the_collectors_numbers_stay_strict(key: str, changes: dict[str, Any], place: str) -> None:
    """The cloud's and the collector's numbers are no pool user's to write: one out of range is a
    snapshot the planner refuses, with its place."""
    base = snap(instances=[instance("i-a")], collector={"MyCurrentTime": NOW, "MonitorSelfAge": 600})
    bad = {**base, "instances": [{**instance("i-a"), **changes}]} if key == "instances" else {**base, "collector": {**base["collector"], **changes}}
    with pytest.raises(planner.SnapshotError, match=re.escape(place)):
        planner.plan(bad, spec())


@pytest.mark.parametrize("text,reason", [
    ('{"now": 1, "jobs": [], "slots": {"Cpus": 4}, "instances": []}', "'slots' must be a list, got dict"),
    ('{"now": 1, "jobs": [], "slots": [4], "instances": []}', "'slots[0]' must be an object, got int"),
    ('{"now": 1, "jobs": [], "slots": [], "instances": [{"LaunchTime": 1}]}', "'instances[0]' has no InstanceId"),
    ('{"now": 1, "jobs": [], "slots": [], "instances": [], "collector": 5}', "'collector' must be an ad or a list of ads, got int"),
])
def test_a_snapshot_file_of_the_wrong_shape_is_still_refused_with_its_place(text: str, reason: str, tmp_path: Path) -> None:
    """Only the slot ads' numbers are read leniently: a snapshot file whose shape the planner cannot
    read is refused, in one line naming the file and the place."""
    from vfarm.cli import scale as commands

    path = tmp_path / "snap.json"
    path.write_text(text)
    with pytest.raises(planner.SnapshotError) as refused:
        commands.read_snapshot(str(path))
    assert str(refused.value) == f"{path}: {reason}"


# --- snapshots and the command ----------------------------------------------------------------

@pytest.mark.parametrize(
    "bad,reason",
    [
        ([], "JSON object"),
        ({"jobs": [], "slots": [], "instances": []}, "lacks 'now'"),
        ({"now": NOW, "jobs": [], "slots": []}, "lacks 'instances'"),
        ({"now": "soon", "jobs": [], "slots": [], "instances": []}, "epoch seconds"),
        ({"now": NOW, "jobs": {}, "slots": [], "instances": []}, "'jobs' must be a list"),
        ({"now": NOW, "jobs": [1], "slots": [], "instances": []}, "'jobs[0]' must be an object"),
        ({"now": NOW, "jobs": [], "slots": [], "instances": [{"State": {"Name": "running"}}]}, "no InstanceId"),
        ({"now": NOW, "jobs": [], "slots": [], "instances": [{"InstanceId": "i-1", "Tags": [{"Key": ["x"], "Value": "y"}]}]},
         "'instances[0].Tags' must be a list of {Key, Value} with text keys"),
    ],
)
def test_bad_snapshots(bad: Any, reason: str) -> None:
    with pytest.raises(planner.SnapshotError, match=re.escape(reason)):
        planner.plan(bad, spec())


def test_launch_time_formats() -> None:
    assert planner.epoch("2023-11-14T22:13:20.000Z") == NOW
    assert planner.epoch("2023-11-14T22:13:20+00:00") == NOW
    assert planner.epoch("2023-11-14 22:13:20") == NOW  # naive: EC2 times are UTC
    assert planner.epoch(NOW) == NOW
    assert planner.epoch("yesterday") is None


def run_vfarm(*args: str, stdin: Optional[str] = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "vfarm", *args], input=stdin, text=True, capture_output=True, timeout=60)


@pytest.mark.integration
def test_command_prints_the_plan_and_refuses_bad_snapshots(tmp_path: Path) -> None:
    farm = tmp_path / "farm.yaml"
    farm.write_text("#multiple-config\n" + EXAMPLE)
    snapshot = snap(jobs=[job(i) for i in range(5)], slots=[slot("i-lazy", since=NOW - 9000)], instances=[instance("i-lazy"), instance("i-dead", age=9999)])
    path = tmp_path / "snap.json"
    path.write_text(json.dumps(snapshot))
    as_json = run_vfarm("scale", str(farm), "--snapshot", str(path), "--json")
    assert as_json.returncode == 0, as_json.stderr
    doc = json.loads(as_json.stdout)
    assert (doc["launch"], doc["drain"], doc["terminate"]) == (1, [], ["i-dead"])  # ceil((5 - 4) / 4)
    table = run_vfarm("scale", str(farm), "--snapshot", str(path))
    assert table.returncode == 0
    assert "launch" in table.stdout and "i-dead" in table.stdout and "boot-timeout" in table.stdout
    bad_count = json.dumps({**snapshot, "jobs": [{**snapshot["jobs"][0], "JobCount": 0}]})
    for bad, reason in (("not json", "not JSON: Expecting value (line 1, column 1)"), ('{"now": 1}', "lacks 'jobs'"),
                        (bad_count, f"{path}: 'jobs[0].JobCount' must be a positive integer")):
        path.write_text(bad)
        result = run_vfarm("scale", str(farm), "--snapshot", str(path))
        assert result.returncode == 1 and result.stderr.count("\n") == 1 and reason in result.stderr, result.stderr
        assert "Traceback" not in result.stderr
    missing = run_vfarm("scale", str(farm), "--snapshot", str(tmp_path / "nope.json"))
    assert missing.returncode == 1 and "cannot read" in missing.stderr


@pytest.mark.parametrize("text,argv,message", [
    ("#multiple-config\n" + EXAMPLE.replace("  pool: {collector: 127.0.0.1:9618}\n", "") + "localfs: {parts: {home: 50}}\n", ["--once"],
     "the scale section has no pool.collector: live cycles read the queue from it"),
    ("#multiple-config\n" + EXAMPLE, ["--once"], "no section for the workers (localfs, cvmfs, condor...): their user-data would be empty"),
    ("#multiple-config\n" + EXAMPLE, [], "--json prints one plan or status: it goes with --once, --status or --snapshot"),
])
def test_what_live_cycles_need_is_said_before_anything_is_contacted(text: str, argv: list[str], message: str, tmp_path: Path,
                                                                      capsys: pytest.CaptureFixture[str]) -> None:
    from vfarm.cli.main import main

    farm = tmp_path / "farm.yaml"
    farm.write_text(text)
    assert main(["scale", str(farm), *argv, *(["--json"] if not argv else [])]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and message in err, err


# --- properties -------------------------------------------------------------------------------

SLOT_STATES = st.sampled_from(
    [("Unclaimed", "Idle"), ("Claimed", "Busy"), ("Claimed", "Retiring"), ("Drained", "Retiring"), ("Drained", "Idle"), ("Owner", "Idle"), ("Matched", "Idle")]
)


@st.composite
def snapshots(draw: Any) -> tuple[dict[str, Any], scale_spec.ScaleSpec]:
    n = draw(st.integers(0, 8))
    instances, slots = [], []
    for k in range(n):
        iid = f"i-{k:03d}"
        instances.append(instance(iid, age=draw(st.integers(0, 3000)), state=draw(st.sampled_from(["running", "running", "pending", "stopped"])),
                                  farm=draw(st.sampled_from([FARM, FARM, FARM, "other"]))))
        for s in range(draw(st.integers(0, 3))):
            state, activity = draw(SLOT_STATES)
            slots.append(slot(iid, s + 1, state, activity, cpus=draw(st.integers(0, 4)), since=NOW - draw(st.integers(0, 5000)),
                              drain_reason=draw(st.sampled_from([SCALERS_DRAIN, SCALERS_DRAIN, "maintenance", None]))))
    jobs = [
        job(j, status=draw(st.sampled_from([1, 1, 2, 5])), waited=draw(st.integers(0, 300)), cpus=draw(st.integers(1, 6)))
        for j in range(draw(st.integers(0, 30)))
    ]
    low = draw(st.integers(0, 4))
    config = spec(min_vms=low, max_vms=low + draw(st.integers(0, 5)), waiting_jobs_threshold=draw(st.integers(0, 3)),
                  idle_time=draw(st.integers(0, 4000)), boot_timeout=draw(st.integers(1, 2000)),
                  max_cpus=draw(st.one_of(st.none(), st.integers(0, 40))))
    collector = draw(st.sampled_from([None, {"DaemonStartTime": NOW - 30}, [{"MyCurrentTime": NOW, "MonitorSelfAge": 99999}]]))
    snapshot = snap(jobs=jobs, slots=slots, instances=instances)
    if collector is not None:
        snapshot["collector"] = collector
    return snapshot, config


@settings(max_examples=200, deadline=None)
@given(snapshots())
def test_properties(case: tuple[dict[str, Any], scale_spec.ScaleSpec]) -> None:
    snapshot, config = case
    frozen = copy.deepcopy(snapshot)
    result = planner.plan(snapshot, config)
    assert snapshot == frozen  # pure: the snapshot is not touched
    assert planner.plan(copy.deepcopy(snapshot), config) == result  # same snapshot, same plan
    assert json.loads(json.dumps(result.to_json())) == result.to_json()  # plain data
    active = result.active
    assert result.launch >= 0
    assert active + result.launch <= max(config.max_vms, active)  # never over max-vms
    if config.max_cpus is not None:  # never over max-cpus: every live worker counted with its CPUs
        live = sum(config.worker_type(w.type).cpus for w in result.instances)
        assert live + result.launch * config.cpus_per_vm <= max(config.max_cpus, live)
    if result.drain:
        assert active - len(result.drain) >= config.min_vms  # never under min-vms by its own hand
    claimed = {s["VfarmInstanceId"] for s in snapshot["slots"] if s["State"] == "Claimed"}
    touched = set(result.drain) | set(result.terminate)
    assert not set(result.terminate) & claimed  # never a busy instance terminated
    others = {s["VfarmInstanceId"] for s in snapshot["slots"] if s["State"] == "Drained" and s.get("DrainReason") != SCALERS_DRAIN}
    assert not touched & others  # never one someone else drains, nor drained again
    # A busy worker is drained only to consolidate (gracefully: its jobs run on within their retirement time), while
    # the plan launches nothing, and never more than the disruption budget at once.
    consolidating = {d.instance for d in result.decisions if d.action is Action.DRAIN and d.reason.startswith("consolidation")}
    assert set(result.drain) & claimed <= consolidating
    assert len(consolidating) <= config.disruption_budget
    assert not consolidating or result.launch == 0
    farm = {i["InstanceId"] for i in planner.farm_instances(snapshot["instances"], FARM)}
    assert touched <= farm  # never an instance of another farm, or stopped
    assert not set(result.drain) & set(result.terminate)


def test_partitionable_slot_is_idle_since_its_last_job_ended_not_since_it_joined() -> None:
    # Seen on a real 23.9 worker: after a job the partitionable slot is Unclaimed with its join
    # time as EnteredCurrentState; NumDynamicSlotsTime moved to when the job's dynamic slot went.
    joined_long_ago = {**slot("i-a", since=NOW - 99999), "PartitionableSlot": True, "NumDynamicSlotsTime": NOW - 60}
    result = planner.plan(snap(slots=[joined_long_ago], instances=[instance("i-a", age=99999)]), spec(idle_time=3600))
    assert result.drain == []
    assert next(i for i in result.instances if i.id == "i-a").idle_since == NOW - 60
    quiet = {**joined_long_ago, "NumDynamicSlotsTime": NOW - 4000}
    assert planner.plan(snap(slots=[quiet], instances=[instance("i-a", age=99999)]), spec(idle_time=3600)).drain == ["i-a"]
