"""Reading the farm file again while the loop runs (SIGHUP, `systemctl reload`): the new settings
act from the next cycle, which starts at once; what the scaler learnt of the farm stays (idle
sightings, launches of unknown outcome, back-off); a file that does not load, another farm's name
or other clouds leave the scaler as it was, said in one log line."""

from __future__ import annotations

import dataclasses
import logging
import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from vfarm.config import scale as scale_spec
from vfarm.scaler import loop

from .test_scale_apply import NAME, SPEC, World, instance, job, launches, slot, stderr_until, stop_and_read


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

    w.scaler.applier._said_black_hole["default"] = w.now[0]

    bigger = dataclasses.replace(SPEC, max_vms=9, idle_time=200.0, check_every=60.0, pool={"collector": "127.0.0.1:10"})
    changed = w.scaler.adopt(loop.Parts(bigger, w.cloud, w.drain, None))
    assert changed == ["max-vms 5 -> 9", "idle-time 100s -> 200s", "check-every 15s -> 60s", "pool: collector changed"]
    assert w.scaler.spec is bigger and w.scaler.applier.spec is bigger and w.scaler.history.check_every == 60.0
    assert "i-idle" in w.scaler.observed_idle_since and w.scaler.applier._said_black_hole == {"default": w.now[0]}
    # The timers run on (until, failures), from the new check-every's base on.
    assert {k: (b.until, b.failures) for k, b in w.scaler.applier.backoff.items()} == {k: (b.until, b.failures) for k, b in backoff.items()}
    assert {b.base for b in w.scaler.applier.backoff.values()} == {60.0}
    w.tick(20)
    w.scaler.cycle()
    assert launches(w.cloud)[-1][1] == token  # the lost launch retried with its token after the reload


def test_a_launch_of_unknown_outcome_is_forgotten_when_what_it_launches_changed(caplog: pytest.LogCaptureFixture) -> None:
    """A cloud refuses a ClientToken used again with other parameters (EC2: IdempotentParameterMismatch):
    after a reload that changes the type's cloud settings or the workers' user-data, the lost launch
    is forgotten (a warning says so) and the next one gets a token of its own."""
    for change in ("cloud", "userdata"):
        w = World(caplog)
        w.jobs = [job(n) for n in range(1, 6)]
        w.cloud.lose_reply = True
        w.scaler.cycle()
        token = launches(w.cloud)[-1][1]
        new = dataclasses.replace(SPEC, cloud={**SPEC.cloud, "instance-type": "m1.large"}) if change == "cloud" else SPEC
        changed = w.scaler.adopt(loop.Parts(new, w.cloud, w.drain, None, same_userdata=change != "userdata"))
        assert changed == (["cloud: instance-type changed"] if change == "cloud" else [])
        assert w.scaler.applier.intents == {}
        assert "launch of 3 worker(s) of unknown outcome (default) forgotten: what it launches changed" in caplog.text
        w.cloud.instances.clear()  # that launch started nothing after all: the workers are still wanted
        w.tick(20)
        w.scaler.cycle()
        assert launches(w.cloud)[-1][1] != token
        caplog.clear()
    # One of a type the farm file no longer lists: forgotten aloud too.
    w = World(caplog)
    w.scaler.applier.intents["retired"] = ("vfarm-old", 2)
    w.scaler.adopt(loop.Parts(SPEC, w.cloud, w.drain, None))
    assert w.scaler.applier.intents == {} and "launch of 2 worker(s) of unknown outcome (retired) forgotten" in caplog.text


def test_another_farm_or_other_clouds_are_refused_and_change_nothing(caplog: pytest.LogCaptureFixture) -> None:
    w = World(caplog)
    elsewhere = "the farm's clouds changed (names, kinds, or where their instances are: endpoint, region, account)"
    for other, why in ((dataclasses.replace(SPEC, name="milano"), "the farm's name changed (farm -> milano)"),
                       (scale_spec.parse({"name": NAME, "cloud": {"type": "openstack", "cloud": "site", "image": "i", "flavor": "f"},
                                          "pool": {"collector": "127.0.0.1:9"}, "max-vms": 5}), elsewhere),
                       (dataclasses.replace(SPEC, cloud={**SPEC.cloud, "region": "eu-west-3"}), elsewhere),
                       (dataclasses.replace(SPEC, cloud={**SPEC.cloud, "endpoint-url": "http://127.0.0.1:8773/"}), elsewhere)):
        with pytest.raises(loop.ReloadError, match=f"^{re.escape(why)}"):
            w.scaler.adopt(loop.Parts(other, w.cloud, w.drain, None))
        assert w.scaler.spec is SPEC


def test_the_settings_changed_are_said_as_the_file_says_them() -> None:
    unset = scale_spec.parse({"name": NAME, "cloud": {"type": "ec2"}, "max-vms": 1})
    assert loop.changed_settings(unset, dataclasses.replace(unset, cpus_per_vm=1, cpus_per_vm_given=True)) == ["cpus-per-vm - -> 1"]
    assert loop.changed_settings(unset, dataclasses.replace(unset, max_cpus=8, waiting_time=0.5)) == ["max-cpus - -> 8", "waiting-time 40s -> 0.5s"]
    secret = dataclasses.replace(unset, cloud={"type": "ec2", "endpoint-url": "http://u:pw@127.0.0.1/"})
    assert loop.changed_settings(secret, dataclasses.replace(secret, cloud={"type": "ec2", "endpoint-url": "http://u:other@127.0.0.1/"})) == \
        ["cloud: endpoint-url changed"]  # never its value


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
        if len(reads) == 3:
            raise RuntimeError("a bug in reading")
        return loop.Parts(faster, w.cloud, w.drain, None)

    outcomes: list[object] = []
    reload = loop.Reload(read, settled=outcomes.append)
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
        for expected in (3, 4):  # a refused reload, then one that fails: neither ends the loop
            reload.ask()
            while cycles() < expected and time.monotonic() < deadline:
                time.sleep(0.05)
            assert w.scaler.spec is faster
    finally:
        stop.set()
        runner.join(timeout=60)
    assert done == [4] and outcomes == [faster, None, None]
    said = [r.getMessage() for r in caplog.records if "reload" in r.getMessage()]
    assert said == ["reloaded the farm file: max-vms 5 -> 7",
                    "reload refused, going on as before: f.yaml:3:5: scale.max-vms: expected a whole number, got 'many'",
                    "reload failed, going on as before: a bug in reading"]


FARM = ("check: {}\nscale:\n  name: t\n"
        "  cloud: {type: ec2, image-id: ami-1, instance-type: m1.small, endpoint-url: 'http://127.0.0.1:9', handlers: baked}\n"
        "  pool: {collector: '127.0.0.1:9', token-file: pool.token}\n  max-vms: 1\n  check-every: 1h\n")
EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


@pytest.mark.integration
def test_sighup_reads_the_farm_file_again_and_one_that_cannot_be_taken_changes_nothing(tmp_path: Path) -> None:
    """A real `vfarm scale` loop (its pool down, so each cycle is skipped and says so): SIGHUP after
    raising max-vms logs the change and runs a cycle at once (check-every is an hour); SIGHUP after
    breaking the file, and after making the workers' user-data too large for EC2, logs why and the
    loop goes on; each reload's copy of the token file is gone once it is not in use; SIGTERM ends
    it with 0."""
    farm = tmp_path / "farm.yaml"
    farm.write_text(FARM)
    (tmp_path / "pool.token").write_text((EXAMPLES / "pool.token").read_text())
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    env = {**os.environ, "AWS_ACCESS_KEY_ID": "x", "AWS_SECRET_ACCESS_KEY": "y", "AWS_EC2_METADATA_DISABLED": "true", "TMPDIR": str(scratch)}
    proc = subprocess.Popen([sys.executable, "-m", "vfarm", "scale", str(farm)], stderr=subprocess.PIPE, text=True, env=env)
    skipped = "cycle skipped, nothing changed: collector 127.0.0.1:9"
    try:
        seen = stderr_until(proc, skipped)
        for round_ in range(3):
            farm.write_text(FARM.replace("max-vms: 1", f"max-vms: {3 + round_}"))
            proc.send_signal(signal.SIGHUP)
            seen += stderr_until(proc, skipped)
            assert any(f"reloaded the farm file: max-vms {2 + round_ if round_ else 1} -> {3 + round_}" in line for line in seen), "".join(seen)
        # The start's copy and the one in use; none of the two reloads before.
        assert len(list(scratch.glob("vfarm-token-*"))) == 2, sorted(scratch.iterdir())
        farm.write_text(FARM.replace("max-vms: 1", "max-vms: many"))
        proc.send_signal(signal.SIGHUP)
        seen += stderr_until(proc, skipped)
        farm.write_text(FARM.replace("handlers: baked", "handlers: embed"))
        proc.send_signal(signal.SIGHUP)
        seen += stderr_until(proc, skipped)
        refused = [line for line in seen if "reload refused" in line]
        assert len(refused) == 2, "".join(seen)
        assert f"reload refused, going on as before: {farm}:6:12: scale.max-vms:" in refused[0]
        assert f"reload refused, going on as before: {farm}: the workers' user-data: gzipped user-data is" in refused[1]
        assert len(list(scratch.glob("vfarm-token-*"))) == 2
    finally:
        rest = stop_and_read(proc)
    assert proc.returncode == 0, "".join(seen) + rest
    assert "stopped after 6 cycle(s)" in rest
    assert not list(scratch.glob("vfarm-token-*"))


@pytest.mark.integration
def test_a_sighup_while_the_scaler_starts_is_a_reload_request_not_its_end(tmp_path: Path) -> None:
    """SIGHUP's default ends a process: from the moment vfarm scale knows it will loop (before the
    lock, the cloud backend and the user-data, which take a while), a SIGHUP only asks for a reload."""
    farm = tmp_path / "farm.yaml"
    farm.write_text(FARM.replace(", token-file: pool.token", ""))
    script = ("import os, signal, sys\n"
              "from vfarm.cli import main, scale\n"
              "from vfarm.scaler import apply\n"
              "def starting(*args, **kwargs):\n"
              "    os.kill(os.getpid(), signal.SIGHUP)\n"
              "    raise apply.CloudError('stopped here, alive')\n"
              "scale.make_scaler = starting\n"
              "sys.exit(main.main(['scale', sys.argv[1]]))\n")
    done = subprocess.run([sys.executable, "-c", script, str(farm)], capture_output=True, text=True, timeout=120)
    assert done.returncode == 1 and done.stderr == "vfarm: stopped here, alive\n", done
