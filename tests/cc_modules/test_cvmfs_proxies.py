"""Proxies as the real CernVM-FS client sees them (`-m cvmfs`): a vfarm cvmfs config whose
http-proxy is two squids in one load-balance group with DIRECT as the fallback group
(`[[A, B], DIRECT]`, written as CVMFS_HTTP_PROXY="A|B;DIRECT") mounts alice.cern.ch; killing the
squid the client uses makes it switch to the other one of the group, and killing that one too
makes it fall back to DIRECT, each time for a file not in the cache yet.

The client picks one proxy of a load-balance group at random, so "the first proxy" is the one
whose access log shows the client's requests: that is the squid killed (`cvmfs_talk proxy info`'s
"Active proxy" is the group's first entry, whichever is in use, so it cannot say). The client
reports each switch in `proxy info` (the dead one moves to the group's end) and in its syslog line
"switching proxy from A to B" (cvmfs 2.12 network/download.cc,
UpdateProxiesUnlocked), read here from its micro-syslog file (CVMFS_USYSLOG: no syslog daemon
runs in the test's namespace). Waits are on events; the timeouts are 3x or more of the measured
times.
"""

from __future__ import annotations

import hashlib
import re
import shlex
import time
from collections.abc import Iterator
from typing import Any

import pytest
import yaml

from tests.cc_modules.test_cvmfs_real import MOUNT_TIMEOUT, client_section, showconfig, write_client_config
from tests.fixtures import cvmfs_repo
from tests.fixtures.condor_pool import wait_for
from tests.fixtures.cvmfs_repo import REPOSITORY, CvmfsSite
from vfarm.config.loader import load_text

pytestmark = pytest.mark.cvmfs

MOUNTPOINT = f"/cvmfs/{REPOSITORY}"
USYSLOG = "/tmp/cvmfs-usyslog.log"  # the client writes it after dropping to user cvmfs: /tmp is open to it
# A read after a squid is killed (nsenter + sha256sum included) took 0.2-1.5 s, median 1.0 s, on 2 loaded
# cores: connection refused, so the client switches at once.
READ_TIMEOUT = 30.0
LOG_TIMEOUT = 60.0  # log lines appeared within 0.2 s when quiet; a loaded 2-core host is slower by far
ACTIVE = re.compile(r"^Active proxy: \[(\d+)\] (\S+)$", re.MULTILINE)


@pytest.fixture(scope="module")
def site() -> Iterator[CvmfsSite]:
    published = cvmfs_repo.cached()
    if published is None:
        pytest.fail("the cvmfs test repository is not built: run tools/run setup (builds CernVM-FS and publishes alice.cern.ch)")
    with cvmfs_repo.cvmfs_site(published, squids=2) as running:
        yield running


def proxy_section(site: CvmfsSite) -> dict[str, Any]:
    """The example's cvmfs section with the two squids as one group and DIRECT as the fallback,
    validated as a vfarm config."""
    first, second = site.proxy_urls
    section = client_section(site)
    section["local"]["http-proxy"] = [[first, second], "DIRECT"]
    section["local"]["usyslog"] = USYSLOG
    loaded: dict[str, Any] = load_text("#multiple-config\n" + yaml.safe_dump({"cvmfs": section}, sort_keys=False),
                                       source="proxies.yaml", sections={"cvmfs"}).sections["cvmfs"]
    return loaded


def active_proxy(site: CvmfsSite) -> tuple[int, str]:
    """The client's active load-balance group and proxy URL (`cvmfs_talk proxy info`)."""
    info = site.box.run(["cvmfs_talk", "-i", REPOSITORY, "proxy", "info"]).stdout
    found = ACTIVE.search(info)
    assert found, info
    return int(found.group(1)), found.group(2)


def read_checked(site: CvmfsSite, name: str) -> float:
    """Read NAME from the mount in the sandbox (with a timeout); check its sha256; the seconds taken."""
    started = time.monotonic()
    out = site.box.run(["sha256sum", f"{MOUNTPOINT}/{name}"], timeout=READ_TIMEOUT).stdout
    seconds = time.monotonic() - started
    assert out.split()[0] == site.published.manifest["files"][name], name
    return seconds


def data_requests(site: CvmfsSite, proxy_url: str) -> int:
    """Requests for file content in PROXY_URL's access log (squid writes a line once it has answered)."""
    return sum(f"/cvmfs/{REPOSITORY}/data/" in line for line in site.access_log(proxy_url).splitlines())


def switch_logged(site: CvmfsSite, old: str, new: str) -> str:
    """The client's syslog line reporting the switch from OLD to NEW, once it is written."""
    pattern = re.compile(rf"switching proxy from {re.escape(old)}( \([^)]*\))? to {re.escape(new)}( \([^)]*\))?\. Reason: failed proxy")

    def line() -> str:
        path = site.box.path(USYSLOG)
        text = path.read_text(encoding="utf-8", errors="replace") if path.exists() else ""
        return next((entry for entry in text.splitlines() if pattern.search(entry)), "")

    found: str = wait_for(line, LOG_TIMEOUT, f"the client's log line: switching proxy from {old} to {new}")
    return found


def test_the_client_switches_proxy_inside_the_group_then_to_direct(site: CvmfsSite) -> None:
    first, second = site.proxy_urls
    section = proxy_section(site)
    write_client_config(site, section)
    box = site.box
    box.path(MOUNTPOINT).mkdir(parents=True, exist_ok=True)
    box.run(["mount", "-t", "cvmfs", REPOSITORY, MOUNTPOINT], timeout=MOUNT_TIMEOUT)
    try:
        # The client reads the list as vfarm means it: one group of two, then DIRECT.
        assert showconfig(site)["CVMFS_HTTP_PROXY"] == shlex.quote(f"{first}|{second};DIRECT")  # printed shell-quoted
        info = box.run(["cvmfs_talk", "-i", REPOSITORY, "proxy", "info"]).stdout
        groups = re.findall(r"^\[(\d+)\] (.*)$", info, re.MULTILINE)
        assert [(index, sorted(re.findall(r"http://[^\s,]+|DIRECT", urls))) for index, urls in groups] == \
            [("0", sorted([first, second])), ("1", ["DIRECT"])], info
        assert "First fallback group" not in info  # DIRECT is a failover group, not CVMFS_FALLBACK_PROXY

        read_checked(site, "hello.txt")
        assert active_proxy(site)[0] == 0
        # Which squid of the group the client picked (at random) the squids' logs say: `cvmfs_talk
        # proxy info`'s "Active proxy" is the group's first entry, not the one in use (talk.cc).
        wait_for(lambda: data_requests(site, first) + data_requests(site, second), LOG_TIMEOUT, "a squid logging the client's requests")
        used, other = (first, second) if data_requests(site, first) else (second, first)
        assert data_requests(site, other) == 0

        # The squid in use dies: a file not in the cache yet still reads, through the other squid.
        site.kill_squid(used)
        to_other = read_checked(site, "etc/alice.conf")
        assert active_proxy(site) == (0, other)
        wait_for(lambda: data_requests(site, other), LOG_TIMEOUT, f"squid {other} logging the client's requests")
        logged_other = switch_logged(site, used, other)

        # Both squids dead: the DIRECT group carries the next new file.
        site.kill_squid(other)
        to_direct = read_checked(site, "sw/v1/bin/jq")
        assert active_proxy(site) == (1, "DIRECT")
        logged_direct = switch_logged(site, other, "DIRECT")
        assert hashlib.sha256(box.path(f"{MOUNTPOINT}/sw/v1/data.bin").read_bytes()).hexdigest() == site.published.manifest["files"]["sw/v1/data.bin"]
    finally:
        box.run(["umount", MOUNTPOINT], check=False)
    print(f"\nread after killing the active squid {to_other:.2f} s, after killing both {to_direct:.2f} s"
          f"\n{logged_other}\n{logged_direct}")
