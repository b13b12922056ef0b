"""Reading the farm file again while the loop runs (SIGHUP, `systemctl reload`): the new settings
act from the next cycle, which starts at once; what the scaler learnt of the farm stays (idle
sightings, launches of unknown outcome, back-off); a file that does not load, another farm's name
or other clouds leave the scaler as it was, said in one log line."""

from __future__ import annotations

import dataclasses
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from vfarm.config import scale as scale_spec
from vfarm.scaler import loop

from .test_scale_apply import NAME, SPEC, World, instance, job, launches, slot, stderr_until


def test_a_reload_keeps_what_the_scaler_learnt_and_says_what_changed(caplog: pytest.LogCaptureFixture) -> None:
    w = World(caplog)
    w.cloud.instances["i-idle"] = instance("i-idle", w.now[0] - 1000)
    w.slots = [slot("i-idle")]
    w.jobs = [job(n) for n in range(1, 6)]  # 5 CPUs asked, 2 free
    w.cloud.lose_reply = True  # a launch of unknown outcome: its token must be used again
    w.scaler.cycle()
    token = launches(w.cloud)[-1][1]
    assert w.scaler.applier.intents and "i-idle" in w.scaler.observed_idle_since
    w.cloud.fail["terminate"] = "throttled"
    w.scaler.applier._cloud_error("terminate", "terminate", RuntimeError("throttled"), w.now[0], loop.Outcome())
    backoff = dict(w.scaler.applier.backoff)

    bigger = dataclasses.replace(SPEC, max_vms=9, idle_time=200.0, pool={"collector": "127.0.0.1:10"})
    changed = w.scaler.adopt((bigger, w.cloud, w.drain, None))
    assert changed == ["max-vms 5 -> 9", "idle-time 100.0 -> 200.0", "pool changed"]
    assert w.scaler.spec is bigger and w.scaler.applier.spec is bigger
    assert "i-idle" in w.scaler.observed_idle_since and w.scaler.applier.backoff == backoff
    w.tick(20)
    w.scaler.cycle()
    assert launches(w.cloud)[-1][1] == token  # the lost launch retried with its token after the reload


def test_another_farm_or_other_clouds_are_refused_and_change_nothing(caplog: pytest.LogCaptureFixture) -> None:
    w = World(caplog)
    for other, why in ((dataclasses.replace(SPEC, name="milano"), "the farm's name changed (farm -> milano)"),
                       (scale_spec.parse({"name": NAME, "cloud": {"type": "openstack", "cloud": "site", "image": "i", "flavor": "f"},
                                          "pool": {"collector": "127.0.0.1:9"}, "max-vms": 5}), "the farm's clouds (names or kinds) changed")):
        with pytest.raises(loop.ReloadError, match=f"^{__import__('re').escape(why)}"):
            w.scaler.adopt((other, w.cloud, w.drain, None))
        assert w.scaler.spec is SPEC


def test_the_loop_takes_a_reload_before_its_next_cycle_which_starts_at_once(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="vfarm.test")
    w = World(caplog, dataclasses.replace(SPEC, check_every=3600.0))
    stop = threading.Event()
    reads: list[str] = []
    faster = dataclasses.replace(SPEC, check_every=3600.0, max_vms=7)

    def read() -> loop.Parts:
        reads.append("read")
        if len(reads) == 2:
            raise loop.ReloadError("f.yaml:3:5: scale.max-vms: expected a whole number, got 'many'")
        return faster, w.cloud, w.drain, None

    reload = loop.Reload(read)
    done: list[int] = []
    runner = threading.Thread(target=lambda: done.append(w.scaler.loop(stop, reload=reload)))
    runner.start()
    try:
        def cycles() -> int:
            return sum("cycle:" in r.getMessage() for r in caplog.records)

        deadline = time.monotonic() + 60
        while cycles() < 1 and time.monotonic() < deadline:
            time.sleep(0.05)
        reload.ask()
        while cycles() < 2 and time.monotonic() < deadline:  # not check-every (an hour) later
            time.sleep(0.05)
        assert cycles() == 2 and w.scaler.spec is faster
        reload.ask()
        while cycles() < 3 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert w.scaler.spec is faster  # the bad file changed nothing
    finally:
        stop.set()
        runner.join(timeout=60)
    assert done == [3]
    said = [r.getMessage() for r in caplog.records if "reload" in r.getMessage()]
    assert said == ["reloaded the farm file: max-vms 5 -> 7",
                    "reload refused, going on as before: f.yaml:3:5: scale.max-vms: expected a whole number, got 'many'"]


FARM = ("check: {}\nscale:\n  name: t\n"
        "  cloud: {type: ec2, image-id: ami-1, instance-type: m1.small, endpoint-url: 'http://127.0.0.1:9', handlers: baked}\n"
        "  pool: {collector: '127.0.0.1:9'}\n  max-vms: 1\n  check-every: 1h\n")


@pytest.mark.integration
def test_sighup_reads_the_farm_file_again_and_a_broken_one_changes_nothing(tmp_path: Path) -> None:
    """A real `vfarm scale` loop (its pool down, so each cycle is skipped and says so): SIGHUP after
    raising max-vms logs the change and runs a cycle at once (check-every is an hour); SIGHUP after
    breaking the file logs the file's own problem and the loop goes on; SIGTERM ends it with 0."""
    farm = tmp_path / "farm.yaml"
    farm.write_text(FARM)
    env = {**os.environ, "AWS_ACCESS_KEY_ID": "x", "AWS_SECRET_ACCESS_KEY": "y", "AWS_EC2_METADATA_DISABLED": "true"}
    proc = subprocess.Popen([sys.executable, "-m", "vfarm", "scale", str(farm)], stderr=subprocess.PIPE, text=True, env=env)
    skipped = "cycle skipped, nothing changed: collector 127.0.0.1:9"
    try:
        seen = stderr_until(proc, skipped)
        farm.write_text(FARM.replace("max-vms: 1", "max-vms: 3"))
        proc.send_signal(signal.SIGHUP)
        seen += stderr_until(proc, skipped)
        assert any("reloaded the farm file: max-vms 1 -> 3" in line for line in seen), "".join(seen)
        farm.write_text(FARM.replace("max-vms: 1", "max-vms: many"))
        proc.send_signal(signal.SIGHUP)
        seen += stderr_until(proc, skipped)
        refused = [line for line in seen if "reload refused" in line]
        assert len(refused) == 1 and f"reload refused, going on as before: {farm}:6:12: scale.max-vms:" in refused[0], "".join(seen)
        proc.send_signal(signal.SIGTERM)
        rest = proc.communicate(timeout=120)[1]
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 0, "".join(seen) + rest
    assert "stopped after 3 cycle(s)" in rest
