"""A joined worker carries its verdict (`-m pool`): cc_condor's config on a REAL startd of the test
pool advertises VfarmVersion and VfarmVerdict "pending"; the final check's `tell_condor` writes the
verdict file that config includes and reloads the condor unit (SIGHUP to the worker's real
condor_master), and `condor_status -af` answers with the verdict. /run/vfarm of the worker is a host
folder bind-mounted into the pool's mount namespace, as the fixture does for /etc/condor."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

import vfarm
from tests.cc_modules.test_condor_real import instance, run, section  # noqa: F401 - instance is a fixture
from tests.cc_modules.test_verdict import summary_with
from tests.fixtures.condor_instance import InstanceWorker
from tests.fixtures.condor_pool import CLEAN_ENV, UID_DOMAIN, CondorPool
from vfarm import files
from vfarm.cc_modules import check

pytestmark = pytest.mark.pool

AD_TIMEOUT = 60.0  # the worker's UPDATE_INTERVAL is 2 s; a reconfig re-advertises at once


@dataclass(frozen=True)
class WorkerPaths(check.Paths):
    """The check's paths on the instance's file system, its /run/vfarm where the worker reads it."""

    run_vfarm: Path = Path("/run/vfarm")

    @property
    def condor_verdict(self) -> Path:
        return self.run_vfarm / Path(files.CONDOR_VERDICT_FILE).name


@pytest.fixture
def run_vfarm(condor_pool: CondorPool, tmp_path: Path) -> Iterator[Path]:
    """A host folder that the pool's workers see as /run/vfarm."""
    folder = tmp_path / "run-vfarm"
    folder.mkdir()
    target = condor_pool.merged / files.CONDOR_VERDICT_FILE.lstrip("/")
    condor_pool.run(["install", "-d", str(Path(files.CONDOR_VERDICT_FILE).parent)])
    mount = ["nsenter", f"--target={condor_pool.master_pid}", "--mount", "--"]
    subprocess.run([*mount, "mount", "--bind", str(folder), str(target.parent)], check=True, env=CLEAN_ENV)
    try:
        yield folder
    finally:
        subprocess.run([*mount, "umount", str(target.parent)], check=True, env=CLEAN_ENV)


def advertised(pool: CondorPool, worker: InstanceWorker, iid: str) -> list[str]:
    """`condor_status -af VfarmVersion VfarmVerdict` (the slot ads, as an admin asks) of the worker, run
    with its own configuration and token. Not `-startd`: that lists the startd's daemon ad, which
    carries the attributes too but is re-sent later than the slot ads after a reconfig."""
    constraint = f'VfarmInstanceId == "{iid}"'
    done = worker.tool(["condor_status", "-pool", pool.collector_address, "-constraint", constraint, "-af", "VfarmVersion", "VfarmVerdict"])
    return done.stdout.split()


def test_condor_status_answers_which_vfarm_and_which_verdict(condor_pool: CondorPool, instance: InstanceWorker,  # noqa: F811
                                                             run_vfarm: Path) -> None:
    iid = f"i-{instance.name}"
    status = run(instance, section(condor_pool, instance, condor_pool.token(f"condor@{UID_DOMAIN}")), iid)
    assert status["status"] == "ok", status["reason"]
    pending = f'VfarmInstanceId == "{iid}" && VfarmVerdict == "pending" && VfarmVersion == "{vfarm.__version__}"'
    condor_pool.wait_for_ad("Startd", pending, AD_TIMEOUT, "the worker's ad with VfarmVerdict pending")
    assert advertised(condor_pool, instance, iid) == [vfarm.__version__, "pending"]

    def systemctl(argv: list[str]) -> None:  # the check's runner: the fixture's systemctl on PATH
        subprocess.run(argv, check=True, timeout=60)

    paths = WorkerPaths(instance.host_root, run_vfarm=run_vfarm)
    assert check.tell_condor(paths, summary_with("", iid, result="ok"), systemctl)
    condor_pool.wait_for_ad("Startd", f'VfarmInstanceId == "{iid}" && VfarmVerdict == "ok"', AD_TIMEOUT, "the verdict in the ad")
    assert advertised(condor_pool, instance, iid) == [vfarm.__version__, "ok"]
