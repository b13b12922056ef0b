"""`--save-snapshot` writes what a live cycle saw so that `--snapshot` replays it: the same plan,
also when the pool's ads hold numbers the snapshot reader's bounds refuse (1e300, NaN, an
infinity, an integer past 64 bits), as any pool user may put there."""

from __future__ import annotations

import functools
import json
import logging
from pathlib import Path
from typing import Any, NoReturn

import pytest

from vfarm.cli import main as cli
from vfarm.cli import scale as commands
from vfarm.config import scale as scale_spec
from vfarm.scaler import apply, loop
from vfarm.scaler import plan as planner
from vfarm.scaler.model import DRAIN_REASON_PREFIX

NOW = 1_700_000_000.0
FARM = """\
scale:
  name: odd
  cloud: {type: ec2, image-id: ami-1, instance-type: m5.xlarge}
  pool: {collector: 127.0.0.1:9}
  max-vms: 6
  waiting-time: 40
  idle-time: 600
  types:
    - {name: small, cpus: 2, memory: 4096}
    - {name: large, cpus: 8, memory: 16384}
"""


def instance(iid: str, kind: str = "small") -> dict[str, Any]:
    return {"InstanceId": iid, "LaunchTime": NOW - 5000, "State": {"Name": "running"},
            "Tags": [{"Key": "vfarm:farm", "Value": "odd"}, {"Key": "vfarm:type", "Value": kind}]}


def slot(iid: str, **ad: Any) -> dict[str, Any]:
    return {"Name": f"slot1@{iid}", "Machine": f"m-{iid}", "VfarmInstanceId": iid, "State": "Unclaimed", "Activity": "Idle", "Cpus": 2,
            "Memory": 4096, "EnteredCurrentState": NOW - 3000, "PartitionableSlot": True, "LastHeardFrom": NOW - 10, **ad}


def job(n: int, **ad: Any) -> dict[str, Any]:
    return {"ClusterId": 7, "ProcId": n, "JobStatus": 1, "QDate": NOW - 300, "EnteredCurrentStatus": NOW - 300, "RequestCpus": 1,
            "RequestMemory": 1024, **ad}


def pool() -> dict[str, Any]:
    """A pool whose ads hold every kind of number the snapshot reader refuses, where the planner
    reads them and where it does not."""
    slots = [
        slot("i-odd", Cpus=1e300, Memory=float("nan"), EnteredCurrentState=-float("inf"), TotalDisk=10**30, Load=[1e300, 2]),
        slot("i-idle", NumDynamicSlotsTime=float("nan"), LastHeardFrom=float("inf")),
        slot("i-busy", State="Claimed", Activity="Busy", Cpus=2, Memory=4096, KFlops=-1e300),
        slot("i-done", State="Drained", DrainReason=f"{DRAIN_REASON_PREFIX}idle", Cpus=-float("inf")),
    ]
    jobs = [
        *(job(n) for n in range(5)),
        job(5, RequestCpus=1e300),  # more than any type holds: held, reported
        job(6, RequestMemory=-1e300),  # counts as none
        job(7, RequestCpus=float("nan")),  # the default
        job(8, QDate=float("nan"), EnteredCurrentStatus=1e300),  # no time: not waiting
        job(9, RequestCpus=4, Requirements="/Expr(TARGET.Cpus >= MY.Need)/", Need=1e300),  # refused by every type
        job(10, RequestCpus=4, Requirements="/Expr(TARGET.Cpus >= MY.Need)/", Need=8.0),  # the large type
        job(11, JobStatus=2, RemoteHost="slot1_1@i-busy", RemoteWallClockTime=float("inf")),
    ]
    return {"jobs": jobs, "slots": slots, "collector": [{"MyCurrentTime": NOW, "DaemonStartTime": NOW - 9999, "RecentDutyCycle": float("nan")}]}


class Cloud:
    def __init__(self) -> None:
        self.instances = [instance(i) for i in ("i-odd", "i-idle", "i-busy", "i-done")]

    def farm_instances(self) -> list[dict[str, Any]]:
        return [dict(i) for i in self.instances]

    def launch(self, count: int, token: str, worker_type: scale_spec.WorkerType) -> list[str]:
        raise AssertionError("a dry run launches nothing")

    def terminate(self, ends: dict[str, str]) -> None:
        raise AssertionError("a dry run terminates nothing")


def no_constant(name: str) -> NoReturn:
    raise ValueError(f"{name} is not JSON")


def test_a_saved_snapshot_with_numbers_past_64_bits_replays_its_cycle(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    farm = tmp_path / "farm.yaml"
    farm.write_text(FARM)
    spec = commands.load_spec(str(farm))
    assert spec is not None
    scaler = loop.Scaler(spec, Cloud(), apply.CondorDrain("cm"), logging.getLogger("vfarm.test"), dry_run=True, clock=lambda: NOW, pool=pool)
    saved = tmp_path / "snap.json"
    live = scaler.cycle(save=functools.partial(commands._save_snapshot, str(saved)), strict=True)
    assert live is not None
    # A plan those numbers shape: i-odd lends no CPUs, i-done is terminated, 1e300 CPUs and 1e300
    # needed are reported, the rest launches.
    assert (live.launch, live.terminate, live.supply) == (2, ["i-done"], 2), live.decisions
    assert sorted(j for u in live.unfit for j in u.jobs) == ["7.5", "7.9"]
    text = saved.read_text()
    json.loads(text, parse_constant=no_constant)  # plain JSON: no NaN, no Infinity
    replayed = planner.plan(commands.read_snapshot(str(saved)), spec)
    assert replayed.to_json() == live.to_json()
    # and so does the command line
    assert cli.main(["scale", str(farm), "--snapshot", str(saved), "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == json.loads(json.dumps(live.to_json()))


def test_a_snapshot_without_such_numbers_is_written_as_it_was(tmp_path: Path) -> None:
    plain = {"now": NOW, "jobs": [job(0)], "slots": [slot("i-a")], "instances": [instance("i-a")], planner.OBSERVED: {}}
    saved = tmp_path / "snap.json"
    commands._save_snapshot(str(saved), plain)
    assert json.loads(saved.read_text()) == plain


@pytest.mark.parametrize("places", [
    "5", '[["slots", 0]]', '[["slots", 0, "Name"]]', '[["slots", 3, "Cpus"]]', '[["now"]]', '[["slots", 0, "Cpus", "x"]]', '[[]]', '[7]',
    '[["slots", true, "Cpus"]]', '[["slots", -1, "Cpus"]]',
])
def test_places_that_hold_no_number_written_as_text_are_refused(places: str, tmp_path: Path) -> None:
    """Only a place holding a number's text is read back as the number: anything else is a
    snapshot refused with the place named."""
    saved = tmp_path / "snap.json"
    saved.write_text('{"now": 1, "jobs": [], "slots": [{"Name": "slot1@a", "Cpus": 4}], "instances": [], "odd_numbers": ' + places + "}")
    with pytest.raises(planner.SnapshotError, match=r"^" + str(saved) + r": 'odd_numbers(\[0\])?' must be "):
        commands.read_snapshot(str(saved))
