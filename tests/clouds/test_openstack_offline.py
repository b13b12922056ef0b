"""The OpenStack backend's pure parts, in the fast tier: `vfarm launch openstack --dry-run` (no
API call), the `scale` section's `cloud: {type: openstack}`, Nova servers in EC2's shape."""

from __future__ import annotations

import shlex
from pathlib import Path

import pytest

from tests.cli.test_ec2_cli import EXAMPLE, one_line_failure, run
from vfarm.cli.main import main
from vfarm.clouds import openstack
from vfarm.config import scale as scale_spec
from vfarm.scaler import plan as planner


def test_dry_run_writes_the_built_userdata_and_prints_the_openstack_line(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OS_PASSWORD", "never-printed-password-77")
    monkeypatch.setenv("OS_CLIENT_CONFIG_FILE", str(tmp_path / "absent.yaml"))  # nothing is read: no API call
    out_file, built = tmp_path / "w.userdata", tmp_path / "b.userdata"
    code, out, err = run(capsys, "launch", "openstack", str(EXAMPLE), "--handlers", "include=https://h.example.org/v1", "--image", "alma9",
                         "--flavor", "m1.large", "--network", "workers", "--key-name", "site", "--count", "3",
                         "--property", "vfarm:farm=torino", "--os-cloud", "cern", "--dry-run", "-o", str(out_file), "--wait")
    assert code == 0, err
    # the same bytes as `vfarm build` with the same options and the limit Nova takes
    assert main(["build", str(EXAMPLE), "--handlers", "include=https://h.example.org/v1", "--max-size", "49149", "-o", str(built)]) == 0
    assert out_file.read_bytes() == built.read_bytes()
    assert shlex.split(out) == ["openstack", "--os-cloud", "cern", "server", "create", "--image", "alma9", "--flavor", "m1.large",
                                "--network", "workers", "--key-name", "site", "--user-data", str(out_file),
                                "--property", "vfarm:farm=torino", "--property", "vfarm:managed=true",
                                "--min", "3", "--max", "3", "--wait", "vfarm-worker"]
    assert "never-printed-password-77" not in out + err


@pytest.mark.parametrize(("extra", "expected"), [
    (["--property", "vfarm:token=x"], "property vfarm:token is vfarm's own"),
    (["--property", "novalue"], "bad property 'novalue': expected KEY=VALUE"),
    (["--count", "0"], "--count must be at least 1, not 0"),
    (["--handlers", "embed", "--max-size", "20000"], "over the limit of 20000"),
])
def test_dry_run_refusals(tmp_path: Path, capsys: pytest.CaptureFixture[str], extra: list[str], expected: str) -> None:
    argv = ["launch", "openstack", str(EXAMPLE), "--handlers", "baked", "--image", "i", "--flavor", "f", "--dry-run",
            "-o", str(tmp_path / "u"), *extra]
    err = one_line_failure(*run(capsys, *argv))
    assert expected in err, err


def test_scale_section_openstack_validates(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    farm = tmp_path / "farm.yaml"
    good = ("#multiple-config\nscale:\n  name: torino\n  max-vms: 3\n"
            "  cloud: {type: openstack, cloud: cern, image: alma9, flavor: m1.large, network: workers, properties: {site: to}}\n")
    farm.write_text(good)
    assert run(capsys, "validate", str(farm))[0] == 0
    spec = scale_spec.parse({"name": "t", "max-vms": 1, "cloud": {"type": "openstack", "image": "i", "flavor": "f"}})
    assert openstack.launch_options(spec.cloud) == {"image": "i", "flavor": "f", "network": None, "key_name": None, "properties": {}}
    farm.write_text(good.replace("flavor: m1.large, ", "").replace("site: to", "vfarm:farm: x"))
    code, out, err = run(capsys, "validate", str(farm))
    assert code == 1 and out == ""
    assert all(line.startswith(f"{farm}:5:") for line in err.splitlines()), err
    assert "flavor" in err and "vfarm:farm" in err


def test_servers_in_ec2_shape_for_the_planner() -> None:
    server = {"id": "5f1c", "name": "vfarm-torino-1", "status": "ACTIVE", "created_at": "2026-12-02T03:00:00Z",
              "flavor": {"original_name": "m1.tiny"}, "image": {"id": "img"},
              "addresses": {"private": [{"addr": "127.100.0.7", "OS-EXT-IPS:type": "fixed"},
                                        {"addr": "192.0.2.9", "OS-EXT-IPS:type": "floating"}]},
              "metadata": {"vfarm:managed": "true", "vfarm:farm": "torino", "vfarm:token": "vfarm-x"}}
    d = openstack.describe(server)
    assert d["InstanceId"] == "5f1c" and d["State"] == {"Name": "running"} and d["InstanceType"] == "m1.tiny"
    assert (d["PrivateIpAddress"], d["PublicIpAddress"]) == ("127.100.0.7", "192.0.2.9")
    assert planner.epoch(d["LaunchTime"]) == 1796180400.0
    assert planner.farm_instances([d], "torino") == [d]
    failed = openstack.describe({**server, "status": "ERROR", "fault": {"code": 500, "message": "No valid host was found. "}})
    assert failed["State"]["Name"] == "stopped" and failed["StateReason"]["Message"].startswith("No valid host")
    assert planner.farm_instances([failed], "torino") == []  # neither counted as a worker nor drained
    assert openstack.describe({**server, "status": "BUILD"})["State"]["Name"] == "pending"


def test_the_verdict_is_read_from_novas_console_log() -> None:
    """The console Nova returns ({"output": ...}) holds the final check's line among the boot's
    own: it is found and read as the check wrote it."""
    from types import SimpleNamespace

    from vfarm.cc_modules.check import verdict_line

    summary = {"result": "failed", "instance_id": "5f1c", "vfarm_version": "0.1.0", "decision": {"action": "poweroff", "reason": "a handler failed"},
               "handlers": [{"name": "condor", "status": "failed", "failed": True, "reason": "not joined within 300 s"}]}
    console = f"[  1.0] kernel\n{verdict_line(summary)}\n[ 60.0] reboot: Power down\n"
    compute = SimpleNamespace(get_server_console_output=lambda server_id: {"output": console if server_id == "5f1c" else ""})
    cloud = openstack.OpenStackCloud("cern", connection=SimpleNamespace(compute=compute))
    verdict = cloud.verdict("5f1c")
    assert verdict is not None and verdict.result == "failed" and verdict.action == "poweroff", verdict
    assert "condor" in verdict.text() and "not joined within 300 s" in verdict.text(), verdict.text()
    assert cloud.verdict("other") is None
