"""The local cloud's bookkeeping (clouds/local_farm.py, scaler/backends.py), without a VM:
a stand-in supervisor plays qemu (a `sleep` child in the supervisor's process group). The real
boot is tests/test_scale_local_vm.py."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Optional

import pytest

from vfarm.cli import scale as commands
from vfarm.clouds import images, local_farm
from vfarm.clouds.images import Image
from vfarm.config import scale as scale_spec
from vfarm.scaler import apply, loop, model
from vfarm.scaler import plan as planner
from vfarm.scaler.backends import LocalBackend, userdata_for

pytestmark = pytest.mark.integration  # starts processes (see tests/conftest.py)

# The stand-in: "running" keeps a child (its qemu) until killed; "poweroff" is a VM that powered
# itself off (exit.json, as the real supervisor writes it when qemu exits).
SUPERVISOR = r"""
import json, os, subprocess, sys, time
folder, mode = sys.argv[1], sys.argv[2]
if mode == "poweroff":
    with open(os.path.join(folder, "exit.json"), "w") as f:
        json.dump({"outcome": "poweroff", "seconds": 1.0, "self_poweroff": True, "harness_poweroff": False, "at": time.time()}, f)
    sys.exit(0)
child = subprocess.Popen(["sleep", "300"])
with open(os.path.join(folder, "qemu.pid"), "w") as f:
    f.write(f"{child.pid}\n")
child.wait()
"""
TAGS = {"vfarm:farm": "lf"}


def wait_until(condition: Any, timeout: float = 10.0) -> Any:
    deadline = time.monotonic() + timeout
    while not (value := condition()):
        assert time.monotonic() < deadline, "not within the timeout"
        time.sleep(0.05)
    return value


@pytest.fixture
def image(tmp_path: Path) -> Image:
    folder = tmp_path / "image"
    folder.mkdir()
    for name in ("disk.raw", "vmlinuz", "initrd.img"):
        (folder / name).write_bytes(b"x" * 4096)
    return Image("trixie-condor", folder, folder / "disk.raw", folder / "vmlinuz", folder / "initrd.img", {"harness": True})


def make_farm(root: Path, image: Image, mode: str = "running") -> local_farm.LocalFarm:
    return local_farm.LocalFarm(root, data_disk="blank", disk_size="1M", find_image=lambda name: image,
                                supervisor=lambda folder: [sys.executable, "-c", SUPERVISOR, str(folder), mode])


@pytest.fixture
def farm(tmp_path: Path, image: Image) -> Iterator[local_farm.LocalFarm]:
    farm = make_farm(tmp_path / "farm", image)
    yield farm
    farm.terminate([i["InstanceId"] for i in farm.instances(states=None)])  # nothing left running


def test_launch_starts_in_the_background_and_lists_ec2_shaped_instances(farm: local_farm.LocalFarm, tmp_path: Path, image: Image) -> None:
    before = time.time()
    started = farm.launch(b"#cloud-config\n", count=2, tags=TAGS, client_token="tok-1", pool="10.0.2.100:9618")
    assert len(started) == 2 and all(i["State"] == {"Code": 16, "Name": "running"} for i in started)
    listed = farm.instances(tag_filters=TAGS)
    assert [i["InstanceId"] for i in listed] == [i["InstanceId"] for i in started]
    first = listed[0]
    assert first["Tags"] == [{"Key": "vfarm:farm", "Value": "lf"}] and first["ClientToken"] == "tok-1"
    assert before <= first["LaunchTime"].timestamp() <= time.time()
    assert first["ImageId"] == "image" and first["InstanceType"] == "local.2cpu.2048m"
    folder = farm.instances_dir / first["InstanceId"]
    assert (folder / "seed/user-data").read_bytes() == b"#cloud-config\n"
    assert "instance-id: " + first["InstanceId"] in (folder / "seed/meta-data").read_text()
    record = json.loads((folder / "record.json").read_text())
    assert record["pool_forward"] == "10.0.2.100:9618" and record["supervisor"]["pid"] > 0
    # The qemu stand-in runs in the supervisor's own session: the scaler's end does not end it.
    assert os.getsid(record["supervisor"]["pid"]) == record["supervisor"]["pid"] != os.getsid(0)
    assert farm.instances(tag_filters={"vfarm:farm": "other"}) == []
    # A restarted scaler (a new object, same folder) sees the same cloud.
    again = make_farm(farm.root, image)
    assert [i["InstanceId"] for i in again.instances(tag_filters=TAGS)] == [i["InstanceId"] for i in started]


def test_the_same_client_token_never_starts_twice(farm: local_farm.LocalFarm) -> None:
    first = farm.launch(b"", count=1, tags=TAGS, client_token="tok-2")
    second = farm.launch(b"", count=1, tags=TAGS, client_token="tok-2")
    assert [i["InstanceId"] for i in second] == [i["InstanceId"] for i in first]
    assert len(farm.instances(states=None)) == 1
    assert len(farm.launch(b"", count=1, tags=TAGS, client_token="tok-3")) == 1
    assert len(farm.instances(states=None)) == 2


def test_terminate_kills_the_vm_removes_its_folder_and_keeps_a_tombstone(farm: local_farm.LocalFarm) -> None:
    [inst] = farm.launch(b"", count=1, tags=TAGS)
    iid = inst["InstanceId"]
    folder = farm.instances_dir / iid
    qemu = int(wait_until(lambda: (folder / "qemu.pid").exists() and (folder / "qemu.pid").read_text().strip()))
    sup = json.loads((folder / "record.json").read_text())["supervisor"]["pid"]
    assert farm.terminate([iid], mark={iid: {"vfarm:end": "drained"}}) == [iid]
    assert not folder.exists()
    assert not local_farm.alive(qemu, None) and not local_farm.alive(sup, None) and local_farm.group_members(sup) == []
    assert farm.instances(tag_filters=TAGS) == []
    [ended] = farm.instances(tag_filters=TAGS, states=None)
    assert ended["State"]["Name"] == "terminated"
    assert {"Key": "vfarm:end", "Value": "drained"} in ended["Tags"]
    assert farm.terminate([iid]) == [iid]  # again: nothing to do, no error
    with pytest.raises(local_farm.LocalFarmError, match="no such instance: i-local-000000000000"):
        farm.terminate(["i-local-000000000000"])
    with pytest.raises(local_farm.LocalFarmError, match="no such instance"):
        farm.terminate(["../etc"], mark={"../etc": {"a": "b"}})


def test_an_instance_mid_terminate_is_listed_once_as_terminated(farm: local_farm.LocalFarm) -> None:
    [inst] = farm.launch(b"", count=1, tags=TAGS)
    farm.ended_dir.mkdir(parents=True, exist_ok=True)
    record = json.loads((farm.instances_dir / inst["InstanceId"] / "record.json").read_text())
    (farm.ended_dir / f"{inst['InstanceId']}.json").write_text(json.dumps({**record, "EndEpoch": time.time()}))
    assert [i["State"]["Name"] for i in farm.instances(states=None)] == ["terminated"]
    farm._stop(record, farm.instances_dir / inst["InstanceId"])  # what terminate would go on with


def test_tombstones_expire_like_ec2s_terminated_instances(farm: local_farm.LocalFarm) -> None:
    [inst] = farm.launch(b"", count=1, tags=TAGS)
    farm.terminate([inst["InstanceId"]])
    path = farm.ended_dir / f"{inst['InstanceId']}.json"
    record = json.loads(path.read_text())
    record["EndEpoch"] -= local_farm.ENDED_KEEP + 1
    path.write_text(json.dumps(record))
    assert farm.instances(states=None) == [] and not path.exists()


def test_a_vm_that_powered_itself_off_is_stopped_and_flagged_for_clean_up(tmp_path: Path, image: Image) -> None:
    farm = make_farm(tmp_path / "farm", image, mode="poweroff")
    [inst] = farm.launch(b"", count=1, tags=TAGS)
    iid = inst["InstanceId"]
    stopped = wait_until(lambda: [i for i in farm.instances(tag_filters=TAGS, states=("stopped",))])
    assert stopped[0]["StateReason"]["Message"] == "qemu exited: poweroff after 1 s (the instance powered itself off)"
    assert farm.instances(tag_filters=TAGS) == []  # not live: the planner neither counts nor touches it
    spec = scale_spec.parse({"name": "lf", "cloud": {"type": "local"}, "max-vms": 2})
    backend = LocalBackend(spec, b"", farm)
    snapshot = {"now": time.time(), "jobs": [], "slots": [], "instances": backend.farm_instances()}
    result = planner.plan(snapshot, spec)
    assert result.instances == [] and result.terminate == []
    rows = loop.status_rows(result, snapshot, spec)
    assert [(r["instance"], r["state"]) for r in rows] == [(iid, "stopped")]
    assert "needs a clean-up" in rows[0]["reason"]
    farm.terminate([iid])
    assert farm.instances(tag_filters=TAGS, states=("stopped",)) == []


def test_a_vm_whose_supervisor_was_killed_is_stopped(farm: local_farm.LocalFarm) -> None:
    [inst] = farm.launch(b"", count=1, tags=TAGS)
    folder = farm.instances_dir / inst["InstanceId"]
    sup = json.loads((folder / "record.json").read_text())["supervisor"]["pid"]
    os.killpg(sup, 9)
    wait_until(lambda: farm.instances(states=("stopped",)))
    assert "supervisor is gone" in farm.instances(states=None)[0]["StateTransitionReason"]


def test_stopping_a_dead_supervisor_never_kills_the_process_that_got_its_pid(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """After the supervisor died (a host restart, say) its pid may lead another group: that group
    is someone else's and is left alone."""
    monkeypatch.setattr(local_farm, "STOP_WAIT", 0.5)
    other = subprocess.Popen(["sleep", "300"], start_new_session=True)  # a group leader, as a reused pid would be
    try:
        started = local_farm.start_time(other.pid)
        assert started is not None
        record = {"supervisor": {"pid": other.pid, "start": started - 12345}}  # the dead supervisor's start time
        local_farm.LocalFarm(root=tmp_path / "farm")._stop(record, tmp_path / "farm/instances/i-local-000000000000")
        assert other.poll() is None, "the unrelated process was killed"
    finally:
        other.kill()
        other.wait()


def test_a_failed_launch_leaves_nothing_behind(tmp_path: Path, image: Image) -> None:
    image.disk.unlink()
    farm = make_farm(tmp_path / "farm", image)
    with pytest.raises(local_farm.LocalFarmError, match=r"^launch i-local-[0-9a-f]{12}: cp --sparse=always"):
        farm.launch(b"", count=1, tags=TAGS)
    assert farm.instances(states=None) == [] and list(farm.instances_dir.iterdir()) == []


def test_the_scalers_local_backend(farm: local_farm.LocalFarm) -> None:
    spec = scale_spec.parse({"name": "lf", "cloud": {"type": "local"}, "pool": {"collector": "10.0.2.100"}, "max-vms": 2})
    backend = LocalBackend(spec, b"ud", farm)
    [iid] = backend.launch(1, "tok-4", spec.types[0])
    assert backend.launch(1, "tok-4", spec.types[0]) == [iid]
    listed = backend.farm_instances()
    assert [(i["InstanceId"], i["State"]["Name"]) for i in listed] == [(iid, "running")]
    assert isinstance(listed[0]["LaunchTime"], str) and planner.epoch(listed[0]["LaunchTime"]) is not None  # JSON-plain
    record = json.loads((farm.instances_dir / iid / "record.json").read_text())
    assert record["pool_forward"] == "10.0.2.100:9618"
    backend.terminate({iid: "lost"})
    [ended] = backend.farm_instances()
    assert ended["State"]["Name"] == "terminated" and {"Key": "vfarm:end", "Value": "lost"} in ended["Tags"]
    with pytest.raises(apply.CloudError, match="no such instance"):
        backend.terminate({"i-local-ffffffffffff": "lost"})


def test_the_scaler_tags_only_its_farms_instances_and_only_after_the_check(farm: local_farm.LocalFarm) -> None:
    """Farms share the local cloud's folder. The scaler records why it ended a worker (tag
    vfarm:end) just before killing it, and only once every instance asked for proved to be its
    farm's: another farm's, or an unknown id, refuses the call with nothing tagged or killed."""
    spec = scale_spec.parse({"name": "lf", "cloud": {"type": "local"}, "pool": {"collector": "10.0.2.100"}, "max-vms": 2})
    backend = LocalBackend(spec, b"ud", farm)
    drained, lost = (i["InstanceId"] for i in farm.launch(b"", count=2, tags=TAGS))
    [other] = [i["InstanceId"] for i in farm.launch(b"", count=1, tags={"vfarm:farm": "other"})]

    def seen() -> dict[str, tuple[str, Optional[str]]]:
        return {i["InstanceId"]: (i["State"]["Name"], model.tag(i, model.END_TAG)) for i in farm.instances(states=None)}

    with pytest.raises(apply.CloudError, match="^no such instance: i-local-ffffffffffff$"):
        backend.terminate({drained: "drained", "i-local-ffffffffffff": "lost"})
    assert seen() == {i: ("running", None) for i in (drained, lost, other)}
    with pytest.raises(apply.CloudError, match=f"^not tagged vfarm:farm=lf, nothing terminated: {other}$"):
        backend.terminate({drained: "drained", other: "lost"})
    assert seen() == {i: ("running", None) for i in (drained, lost, other)}

    backend.terminate({drained: "drained", lost: "lost"})
    assert seen() == {drained: ("terminated", "drained"), lost: ("terminated", "lost"), other: ("running", None)}


def test_a_second_terminate_keeps_the_first_ends_tag(farm: local_farm.LocalFarm, image: Image) -> None:
    """How a worker ended (vfarm:end, and the tombstone's end time and reason) is what the first
    terminate recorded: a later one (a retry, another cycle, another scaler on the same folder)
    never rewrites it; it adds only tags the tombstone lacks. A VM that powered itself off is not
    ended yet: the terminate that ends it records why."""
    spec = scale_spec.parse({"name": "lf", "cloud": {"type": "local"}, "pool": {"collector": "10.0.2.100"}, "max-vms": 2})
    backend = LocalBackend(spec, b"ud", farm)
    [iid] = [i["InstanceId"] for i in farm.launch(b"", count=1, tags=TAGS)]
    backend.terminate({iid: "lost"})
    tombstone = json.loads((farm.ended_dir / f"{iid}.json").read_text())
    assert tombstone["TagMap"]["vfarm:end"] == "lost"
    backend.terminate({iid: "drained"})
    LocalBackend(spec, b"ud", make_farm(farm.root, image)).terminate({iid: "drained"})
    farm.terminate([iid], tags=TAGS, mark={iid: {"vfarm:end": "drained", "note": "later"}})
    again = json.loads((farm.ended_dir / f"{iid}.json").read_text())
    assert again == {**tombstone, "TagMap": {**tombstone["TagMap"], "note": "later"}}
    [ended] = farm.instances(states=None)
    assert model.tag(ended, model.END_TAG) == "lost"

    off = make_farm(farm.root, image, mode="poweroff")
    [stopped] = [i["InstanceId"] for i in off.launch(b"", count=1, tags=TAGS)]
    wait_until(lambda: [i for i in off.instances(states=None) if i["InstanceId"] == stopped and i["State"]["Name"] == "stopped"])
    LocalBackend(spec, b"ud", off).terminate({stopped: "lost"})
    assert {i["InstanceId"]: (i["State"]["Name"], model.tag(i, model.END_TAG)) for i in off.instances(states=None)}[stopped] == ("terminated", "lost")


def test_vfarm_scale_selects_the_local_cloud_and_keeps_the_test_image_running(tmp_path: Path, image: Image,
                                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(images, "find", lambda name: image)
    farm = tmp_path / "farm.yaml"
    farm.write_text("check: {}\nscale:\n  name: lf\n  cloud: {type: local, image: trixie-condor, memory: 1G, vcpus: 1, handlers: baked}\n"
                    "  pool: {collector: '10.0.2.100:9618'}\n  max-vms: 1\n")
    spec = commands.load_spec(str(farm))
    assert spec is not None
    backend = commands.make_backend(spec, str(farm), build=True)
    assert isinstance(backend, LocalBackend)
    assert backend.farm.memory == 1024 and backend.farm.vcpus == 1
    userdata = userdata_for(backend.userdata, spec.types[0])  # what a worker of the farm's one type boots with
    assert b"vfarm-local-keep-running.sh" in userdata and b"systemctl --no-block stop vfarm-local-harness.service" in userdata
    image.info["harness"] = False  # a site's image has no harness: nothing extra
    plain = commands.make_backend(spec, str(farm), build=True)
    assert isinstance(plain, LocalBackend) and b"keep-running" not in userdata_for(plain.userdata, spec.types[0])


@pytest.mark.parametrize(("given", "expected"), [("10.0.2.100", "10.0.2.100:9618"), ("cm:9619", "cm:9619"), ("[::1]", "[::1]:9618")])
def test_pool_forward(given: str, expected: str) -> None:
    assert local_farm.pool_forward(given) == expected


def test_memory() -> None:
    assert [local_farm.memory_mib(m) for m in ("2G", "1536M", "512")] == [2048, 1536, 512]
    with pytest.raises(local_farm.LocalFarmError):
        local_farm.memory_mib("2T")


def mode(path: Path) -> int:
    return path.stat().st_mode & 0o777


def test_the_farms_folders_and_the_seed_are_private(farm: local_farm.LocalFarm) -> None:
    """The seed carries the user-data, and with it the pool's token: only its owner reads it."""
    [inst] = farm.launch(b"#cloud-config\ntoken: secret\n", count=1, tags=TAGS)
    folder = farm.instances_dir / inst["InstanceId"]
    assert {p.name: mode(p) for p in (farm.root, farm.instances_dir, folder, folder / "seed")} == {
        farm.root.name: 0o700, "instances": 0o700, folder.name: 0o700, "seed": 0o700}
    assert {p.name: mode(p) for p in (folder / "seed/user-data", folder / "seed.iso", folder / "disk.raw", folder / "data.raw")} == {
        "user-data": 0o600, "seed.iso": 0o600, "disk.raw": 0o600, "data.raw": 0o600}
    farm.terminate([inst["InstanceId"]])
    assert mode(farm.ended_dir) == 0o700


def test_a_farm_root_another_user_could_write_is_refused(tmp_path: Path, image: Image, monkeypatch: pytest.MonkeyPatch) -> None:
    """/var/tmp is shared: a root made (or opened up) by someone else may hold planted records."""
    root = tmp_path / "farm"
    root.mkdir()
    root.chmod(0o777)
    farm = make_farm(root, image, mode="poweroff")  # were a launch not refused, nothing would keep running
    for call in (lambda: farm.launch(b"", count=1, tags=TAGS), lambda: farm.instances(states=None),
                 lambda: farm.terminate(["i-local-000000000000"])):
        with pytest.raises(local_farm.LocalFarmError, match=r"farm is writable by group or others \(mode 0777\): another user could"):
            call()
    root.chmod(0o755)  # ours and closed to others: tightened, not refused
    assert farm.instances(states=None) == [] and mode(root) == 0o700
    monkeypatch.setattr(os, "geteuid", lambda: os.getuid() + 4242)  # the folder now is someone else's
    with pytest.raises(local_farm.LocalFarmError, match=r"farm belongs to uid \d+, not to this user"):
        farm.instances(states=None)
    monkeypatch.undo()
    # The default root ($VFARM_LOCAL_DIR/farm) and the local state root above it, both checked.
    monkeypatch.setenv("VFARM_LOCAL_DIR", str(tmp_path / "shared"))
    (tmp_path / "shared").mkdir(mode=0o777)
    (tmp_path / "shared").chmod(0o777)
    with pytest.raises(local_farm.LocalFarmError, match="shared is writable by group or others"):
        local_farm.LocalFarm(data_disk="blank", disk_size="1M", find_image=lambda name: image,
                             supervisor=lambda folder: [sys.executable, "-c", SUPERVISOR, str(folder), "poweroff"]).launch(b"", count=1)
    assert not (tmp_path / "shared/farm").exists()


def test_terminate_never_signals_a_process_a_record_names_that_is_not_the_instances(farm: local_farm.LocalFarm) -> None:
    """A record is only as good as its folder: a pid (and start time) of an unrelated process
    group, planted or stale, is left alone; the folder goes."""
    other = subprocess.Popen(["sleep", "300"], start_new_session=True)
    try:
        iid = "i-local-0123456789ab"
        folder = farm.instances_dir / iid
        folder.mkdir(parents=True)
        started = local_farm.start_time(other.pid)
        (folder / "record.json").write_text(json.dumps({"InstanceId": iid, "LaunchEpoch": time.time(), "TagMap": TAGS,
                                                        "supervisor": {"pid": other.pid, "start": started}}))
        assert farm.terminate([iid]) == [iid]
        assert other.poll() is None, "terminate signalled a process group that was not the instance's"
        assert not folder.exists()
    finally:
        other.kill()
        other.wait()


def test_terminate_ends_a_supervisor_it_started_whatever_its_command_line(tmp_path: Path, image: Image) -> None:
    """A supervisor argv that does not name the folder (tests/scaler/test_scale_hybrid_vm.py's
    stand-in) is still recognised: it is the one this cloud starts for that folder."""
    farm = local_farm.LocalFarm(tmp_path / "farm", data_disk="blank", disk_size="1M", find_image=lambda name: image,
                                supervisor=lambda folder: ["sleep", "300"])
    [inst] = farm.launch(b"")
    sup = json.loads((farm.instances_dir / inst["InstanceId"] / "record.json").read_text())["supervisor"]["pid"]
    try:
        farm.terminate([inst["InstanceId"]])
        assert not local_farm.alive(sup, None)
    finally:
        if local_farm.alive(sup, None):
            os.killpg(sup, 9)
