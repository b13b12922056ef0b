"""The OpenStack fixture keeps its fixed loopback ports out of the kernel's automatic choice."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.fixtures import openstack


def test_ports_are_reserved_while_the_plane_runs_and_given_back(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    setting = tmp_path / "ip_local_reserved_ports"
    setting.write_text("8080\n")
    monkeypatch.setattr(openstack, "RESERVED_PORTS", setting)
    with openstack.ports_reserved(log=lambda m: None):
        reserved = setting.read_text().strip()
        assert reserved == f"8080,{min(openstack.PORTS.values())}-{max(openstack.PORTS.values())}"
        assert reserved.endswith("-25778") and ",25000-" in reserved  # every service's port is inside
    assert setting.read_text() == "8080\n"


def test_an_unwritable_setting_is_said_and_the_plane_still_starts(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(openstack, "RESERVED_PORTS", tmp_path / "missing" / "ip_local_reserved_ports")
    said: list[str] = []
    ran = False
    with openstack.ports_reserved(log=said.append):
        ran = True
    assert ran and len(said) == 1 and "cannot reserve ports 25000-25778" in said[0]


def test_one_run_at_a_time_through_the_builders_lock(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The plane's lock is hostcmd.locked (one lock helper): a waiter says so once through the
    progress lines, gives up with LockTimeout, and a block already holding the lock (the same
    thread, hostcmd.locked on the same file) goes through instead of waiting for itself."""
    import fcntl

    from vfarm.clouds import hostcmd

    said: list[tuple[str, str]] = []
    monkeypatch.setattr(hostcmd, "progress", lambda area, message: said.append((area, message)))
    monkeypatch.setattr(hostcmd, "LOCK_POLL", 0.01)
    base = tmp_path / "openstack"
    base.mkdir()
    with open(base / ".lock", "w") as other_run:  # another test run's lock, as flock sees it
        fcntl.flock(other_run, fcntl.LOCK_EX)
        with pytest.raises(hostcmd.LockTimeout, match="for over 0 s"), openstack.exclusive(base, timeout=0.2):
            pytest.fail("ran beside another test run")
    assert said == [("openstack", f"another test run uses {base}: waiting for it to end")]
    ran = []
    with hostcmd.locked(base / ".lock"), openstack.exclusive(base, timeout=0.2):
        ran.append(True)
    assert ran == [True]
