"""The real CernVM-FS client (built from upstream's source by set-up) mounts alice.cern.ch, a
repository published by the real cvmfs_server, through Debian's squid, all on 127.0.0.1 of a
network namespace of the test's own (`-m cvmfs`).

The client's configuration is what vfarm's cvmfs module renders from the bundled example's
`cvmfs` section, with the proxy, the cern.ch domain's server URL and key pointing at the local
services, plus the host's open-files limit (CVMFS_NFILES: no CAP_SYS_RESOURCE here).
Waits are on events (a log line, a mount); the timeouts are 3x or more of the measured times.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.fixtures import cvmfs_repo
from tests.fixtures.cvmfs_repo import REPOSITORY, CvmfsSite
from vfarm.cc_modules import cc_cvmfs
from vfarm.config import cvmfs as cvmfs_spec

pytestmark = pytest.mark.cvmfs

EXAMPLE = Path(__file__).resolve().parents[2] / "examples/torino.yaml"
KEYS_DIR = "/etc/cvmfs/keys/vfarm-test"  # the test repository's key, as a site would install it
MOUNT_TIMEOUT = 60.0  # a mount takes 0.2-1 s here (cold cache through squid)
HOST_NFILES = 16384  # the host's hard RLIMIT_NOFILE is 20000; cvmfs wants 131072 by default


@pytest.fixture(scope="module")
def site() -> Iterator[CvmfsSite]:
    published = cvmfs_repo.cached()
    if published is None:
        pytest.fail("the cvmfs test repository is not built: run tools/run setup (builds CernVM-FS and publishes alice.cern.ch)")
    with cvmfs_repo.cvmfs_site(published) as running:
        yield running


def client_section(site: CvmfsSite) -> dict[str, Any]:
    """The example's cvmfs section, pointed at the local squid and stratum 0."""
    section: dict[str, Any] = yaml.safe_load(EXAMPLE.read_text(encoding="utf-8"))["cvmfs"]
    local = dict(section["local"])
    assert REPOSITORY in str(local["repositories"])
    local["http-proxy"] = site.proxy_url
    local["nfiles"] = HOST_NFILES
    section["local"] = local
    section["domain"] = {"cern.ch": {"server-url": site.stratum0_url, "keys-dir": KEYS_DIR}}
    return section


def write_client_config(site: CvmfsSite, section: dict[str, Any]) -> None:
    box = site.box
    keys = box.path(KEYS_DIR)
    keys.mkdir(parents=True, exist_ok=True)
    (keys / f"{REPOSITORY}.pub").write_bytes(site.published.public_key.read_bytes())
    for path, settings in cc_cvmfs.config_files(section).items():
        box.path(path).write_text(cvmfs_spec.render(settings, header=cc_cvmfs.HEADER), encoding="utf-8")


def showconfig(site: CvmfsSite) -> dict[str, str]:
    """`cvmfs_config showconfig REPO` as NAME -> value (the client's own parse of the files)."""
    out = site.box.run(["cvmfs_config", "showconfig", REPOSITORY]).stdout
    values = {}
    for line in out.splitlines():
        name, sep, rest = line.partition("=")
        if sep and name.startswith("CVMFS_"):
            values[name] = rest.split("    # from ", 1)[0].strip()
    return values


def test_real_client_mounts_alice_through_squid(site: CvmfsSite) -> None:
    section = client_section(site)
    write_client_config(site, section)
    box = site.box
    mountpoint = f"/cvmfs/{REPOSITORY}"
    box.path(mountpoint).mkdir(parents=True, exist_ok=True)
    assert site.access_log().count(f"/cvmfs/{REPOSITORY}/") == 0

    started = time.monotonic()
    box.run(["mount", "-t", "cvmfs", REPOSITORY, mountpoint], timeout=MOUNT_TIMEOUT)
    mount_seconds = time.monotonic() - started
    try:
        # Every published file reads back with the checksum taken when it was written.
        manifest = site.published.manifest["files"]
        assert {"hello.txt", "etc/alice.conf", "sw/v1/bin/jq", "sw/v1/data.bin"} <= set(manifest)
        for name, digest in manifest.items():
            assert hashlib.sha256(box.path(f"{mountpoint}/{name}").read_bytes()).hexdigest() == digest, name
        assert box.path(f"{mountpoint}/hello.txt").read_text().startswith(f"hello from a real cvmfs repository: {REPOSITORY}")
        assert box.run(["readlink", f"{mountpoint}/sw/current"]).stdout.strip() == "v1"
        # The binary runs from the repository, through the symlink.
        assert box.run([f"{mountpoint}/sw/current/bin/jq", "--version"]).stdout.startswith("jq-")
        assert box.run(["attr", "-qg", "fqrn", mountpoint]).stdout.strip() == REPOSITORY

        # The client reads the values as vfarm wrote them: its own parser, and the running mount.
        config = showconfig(site)
        local = section["local"]
        assert config["CVMFS_CACHE_BASE"] == local["cache-base"] == "/var/lib/cvmfs"
        assert config["CVMFS_QUOTA_LIMIT"] == str(local["quota-limit"])
        assert config["CVMFS_HTTP_PROXY"] == site.proxy_url
        assert config["CVMFS_SERVER_URL"] == site.stratum0_url.replace("@fqrn@", REPOSITORY)  # showconfig expands it
        assert config["CVMFS_KEYS_DIR"] == KEYS_DIR
        running = box.run(["cvmfs_talk", "-i", REPOSITORY, "parameters"]).stdout
        assert f"CVMFS_CACHE_BASE={local['cache-base']}" in running
        assert f"CVMFS_QUOTA_LIMIT={local['quota-limit']}" in running
        assert site.proxy_url in box.run(["cvmfs_talk", "-i", REPOSITORY, "proxy", "info"]).stdout
        # The cache is where the configuration puts it (the shared cache's catalog and data).
        assert any(box.path(f"{local['cache-base']}/shared").glob("??/*")), "no cached objects under the cache base"
    finally:
        box.run(["umount", mountpoint], check=False)

    # squid carried the client's requests to the stratum 0.
    requests = [line for line in site.access_log().splitlines() if f"/cvmfs/{REPOSITORY}/" in line]
    assert any(".cvmfspublished" in line for line in requests), requests
    assert any("/data/" in line for line in requests), requests
    print(f"\nsite start {site.start_seconds:.2f} s, mount {mount_seconds:.2f} s, squid requests {len(requests)}")
