"""cc_condor against a REAL HTCondor pool (`-m pool`): the module's whole run writes an instance's
/etc/condor, and a real startd started from exactly that (tests/fixtures/condor_instance.py)
joins the pool, advertises VfarmInstanceId and runs a job; with a token the pool did not sign it
never joins and the handler records the failure; HTCondor's own condor_config_val accepts
everything render() writes.

The module's systemctl / condor_config_val / condor_status / install calls go to wrappers on PATH
that run the real tools inside the pool's root folder. Waits are on events (the handler's own
wait for the collector, an ad, a job leaving the queue)."""

from __future__ import annotations

import itertools
import os
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.fixtures.condor_instance import InstanceWorker, instance_worker
from tests.fixtures.condor_pool import UID_DOMAIN, CondorPool, wait_for
from vfarm.cc_modules import cc_condor, handling
from vfarm.config import condor as condor_spec
from vfarm.files import CONDOR_VERDICT_FILE

pytestmark = pytest.mark.pool

JOIN_TIMEOUT = 60  # a worker joins in 3-4 s (htcondor-facts.md)
JOB_TIMEOUT = 90.0
_names = itertools.count(1)


class Cloud:
    def __init__(self, iid: str):
        self.iid = iid

    def get_instance_id(self) -> str:
        return self.iid


@pytest.fixture
def instance(condor_pool: CondorPool, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[InstanceWorker]:
    """An instance's file system (tmp_path/root) whose condor runs as a worker of the pool."""
    name = f"inst{os.getpid()}x{next(_names)}"
    worker = instance_worker(condor_pool, name, tmp_path / "root", tmp_path / "wrappers")
    monkeypatch.setenv("PATH", f"{tmp_path / 'wrappers'}{os.pathsep}{os.environ['PATH']}")
    try:
        yield worker
    finally:
        worker.stop()


def section(pool: CondorPool, worker: InstanceWorker, token: str, **extra: Any) -> dict[str, Any]:
    # The worker shares the host's network: its metadata guard is tested in a namespace of its own (test_metadata_guard.py).
    return {"central-manager": pool.collector_address, "token": token, "execute": worker.execute,
            "attributes": {"Site": "T2_IT_Test"}, "join-timeout": JOIN_TIMEOUT, "protect-metadata": False, **extra}


def run(worker: InstanceWorker, data: dict[str, Any], iid: str) -> dict[str, Any]:
    log_dir = worker.host_root.parent / "log"
    return handling.execute("condor", lambda: dict(data), cc_condor.work, cloud=Cloud(iid), directory=log_dir, root=worker.host_root)


def test_the_config_it_writes_joins_the_pool_and_runs_a_job(condor_pool: CondorPool, instance: InstanceWorker) -> None:
    iid = f"i-{instance.name}"
    token = condor_pool.token(f"condor@{UID_DOMAIN}")
    started = time.monotonic()
    status = run(instance, section(condor_pool, instance, token), iid)
    took = time.monotonic() - started
    assert status["status"] == "ok", status["reason"]
    assert [s["action"] for s in status["steps"]] == ["discover", "plan", "write-token", "write-config", "mkdir", "check-config", "start", "wait-join"]
    ads = condor_pool.ads("Startd", f'VfarmInstanceId == "{iid}"')
    assert [(ad["Site"], ad["PartitionableSlot"], ad["Cpus"]) for ad in ads] == [("T2_IT_Test", True, 2)]
    assert ads[0]["MaxJobRetirementTime"] == 3600
    condor_pool.wait_for_ad("Master", f'VfarmInstanceId == "{iid}"', 30, "the worker's master ad")
    # the module's own files, as the worker read them
    assert instance.tool(["condor_config_val", "COLLECTOR_HOST"]).stdout.strip() == condor_pool.collector_address
    assert instance.tool(["condor_config_val", "EXECUTE"]).stdout.strip() == instance.execute
    written = "".join(p.read_text() for p in (instance.host_root.parent / "log").iterdir())
    assert token not in written and token.split(".")[2] not in written
    # No job before the final check found the worker fit: the negotiator turns the job down while
    # the startd says "pending" (it considered it: LastRejMatchTime), then the check's verdict file
    # and the unit's reload (as check.tell_condor does) let it run.
    cluster = condor_pool.submit(1, 1, requirements=f'VfarmInstanceId == "{iid}"')
    wait_for(lambda: [job for job in condor_pool.jobs(cluster, ["LastRejMatchTime"]) if "LastRejMatchTime" in job], JOB_TIMEOUT,
             f"the negotiator turning job {cluster} down")
    assert [job["JobStatus"] for job in condor_pool.jobs(cluster, ["JobStatus"])] == [1]
    assert [ad["VfarmVerdict"] for ad in condor_pool.ads("Startd", f'VfarmInstanceId == "{iid}"')] == ["pending"]
    condor_pool.run(["install", "-d", os.path.dirname(CONDOR_VERDICT_FILE)])
    condor_pool.write(CONDOR_VERDICT_FILE, 'VfarmVerdict = "ok"\n')  # inside the pool's root: the worker's /run
    try:
        subprocess.run([str(instance.wrappers / "systemctl"), "--no-block", "reload", "condor"], check=True, capture_output=True, timeout=60)
        ads = wait_for(lambda: [] if condor_pool.jobs(cluster) else condor_pool.history(cluster), JOB_TIMEOUT, f"job {cluster} done")
    finally:
        condor_pool.run(["rm", "-f", CONDOR_VERDICT_FILE])
    assert [(ad["ExitCode"], ad["NumJobStarts"]) for ad in ads] == [(0, 1)]
    assert str(ads[0]["LastRemoteHost"]).endswith(f"@{instance.name}@{os.uname().nodename}") or instance.name in str(ads[0]["LastRemoteHost"])
    print(f"cc_condor: written, checked, started and joined in {took:.1f} s")


def test_a_second_run_writes_nothing_and_restarts_nothing(condor_pool: CondorPool, instance: InstanceWorker) -> None:
    iid = f"i-{instance.name}"
    data = section(condor_pool, instance, condor_pool.token(f"condor@{UID_DOMAIN}"))
    assert run(instance, data, iid)["status"] == "ok"
    pid = instance.pool.run(["cat", f"{instance.inside}/local/run/master.pid"]).stdout.strip()
    config = instance.host_root / condor_spec.CONFIG_FILE.lstrip("/")
    mtime = config.stat().st_mtime_ns
    again = run(instance, data, iid)
    assert again["status"] == "ok" and again["changed"] is False
    assert [s["action"] for s in again["steps"]] == ["discover", "plan", "wait-join"]
    assert instance.pool.run(["cat", f"{instance.inside}/local/run/master.pid"]).stdout.strip() == pid
    assert config.stat().st_mtime_ns == mtime


def test_a_token_the_pool_did_not_sign_never_joins(condor_pool: CondorPool, instance: InstanceWorker) -> None:
    iid = f"i-{instance.name}"
    # Signed by a key of the same name that the pool does not hold: well-formed, useless.
    other = condor_pool.run(["sh", "-euc", 'umask 077; d=$(mktemp -d); head -c 32 /dev/urandom > "$d/POOL"; '
                             '_CONDOR_SEC_PASSWORD_DIRECTORY="$d" _CONDOR_SEC_TOKEN_POOL_SIGNING_KEY_FILE="$d/POOL" '
                             'condor_token_create -identity "$1" -key POOL; rm -rf "$d"', "sh", f"condor@{UID_DOMAIN}"]).stdout.strip()
    assert condor_spec.TOKEN.match(other) and other != condor_pool.token(f"condor@{UID_DOMAIN}")
    status = run(instance, section(condor_pool, instance, other, **{"join-timeout": 15}), iid)
    assert status["status"] == "failed"
    assert status["reason"] == f"not joined: the collector {condor_pool.collector_address} did not list this worker's startd within 15 s"
    assert instance.running(), "the worker's condor ran: it was refused, it did not fail to start"
    assert condor_pool.ads("Startd", f'VfarmInstanceId == "{iid}"') == []
    assert "Failed to authenticate using IDTOKENS" in instance.log("StartLog")  # refused by the collector, for the token
    assert other.split(".")[2] not in (instance.host_root.parent / "log/condor.log").read_text()


SECTIONS: list[dict[str, Any]] = [
    {},
    {"slots": "static", "ccb": False},
    {"slots": "partitionable", "ccb": True, "retirement-time": "2h", "start": 'TARGET.RequestCpus <= 2 && (Owner =!= "bad")'},
    {"attributes": {"Site": "T2_IT_Torino", "HasCvmfs": True, "Cost": 1.5, "Rank": 3, "Quote": 'say "hi" \\ bye'}},
    {"config": {"NUM_CPUS": 1, "STARTD_NOCLAIM_SHUTDOWN": 1200, "SUSPEND": False, "CONTINUOUS": "TRUE"}},
    {"central-manager": "cm.example.org:9620", "execute": "/scratch/condor"},
    {"central-manager": "[2001:db8::1]:9618"},
]


def test_condor_config_val_accepts_everything_render_writes(condor_pool: CondorPool, instance: InstanceWorker) -> None:
    target = instance.host_root / condor_spec.CONFIG_FILE.lstrip("/")
    for extra in SECTIONS:
        data = {"central-manager": condor_pool.collector_address, "token": "a.b.c", **extra}
        spec = condor_spec.parse(data)
        target.write_text(condor_spec.render(spec, "i-render"))
        done = instance.tool(["condor_config_val", "-summary"], check=False)
        assert done.returncode == 0, f"{extra}: {done.stderr}"
        values = instance.tool(["condor_config_val", "MAXJOBRETIREMENTTIME", "VfarmInstanceId", "START", "COLLECTOR_HOST"]).stdout.split("\n")
        # START: the section's own in brackets, then the final check's verdict
        assert values[:4] == [str(spec.retirement_time), '"i-render"', f"({spec.start}) && {condor_spec.VERDICT_GATE}", spec.collector], extra
        attrs = instance.tool(["condor_config_val", "STARTD_ATTRS"]).stdout.split()
        assert "VfarmInstanceId" in attrs and all(name in attrs for name, _ in spec.attributes)
    # Control: the same check rejects a broken file (so it can fail).
    target.write_text(condor_spec.render(condor_spec.parse({"central-manager": "cm", "token": "a.b.c"}), "i-x") + "if version >\n")
    assert instance.tool(["condor_config_val", "-summary"], check=False).returncode != 0
