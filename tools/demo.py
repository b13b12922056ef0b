"""The main job's demo (`tools/run demo`): the bundled example booted in a local VM (TCG) with the
real CernVM-FS client, which installs the pinned version, mounts alice.cern.ch and reads it.

The example names CERN's package repository (no `package-repository`) and a site squid, neither of
which can be reached here. So: the packages come from the local build (`vfarm launch local` points
such a section at them by itself), and the proxy and the cern.ch domain's server URL and key are
pointed at the test repository alice.cern.ch (published by set-up; its stratum 0 and a Debian
squid run in a network namespace of their own, reached by the guest as 10.0.2.100:3128), with the
repository's public key added as a part-handler part (it must be in place before the cvmfs part is
handled). The rest is the example as it is. The
config actually booted and everything collected are in out/demo/."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.fixtures.cvmfs_guest import SQUID_GUEST_PORT, guest_site, key_part, site_config  # noqa: E402

EXAMPLE = ROOT / "examples" / "torino.yaml"


def main(argv: list[str]) -> int:
    out = ROOT / "out" / "demo"
    out.mkdir(parents=True, exist_ok=True)
    config, key = out / "torino-local-site.yaml", out / "cvmfs-key.py"
    with guest_site() as site:
        config.write_text(site_config(EXAMPLE.read_text(encoding="utf-8"), quota=None), encoding="utf-8")
        key.write_text(key_part(site.site.published), encoding="utf-8")
        print(f"[demo] {EXAMPLE.name} with its cvmfs proxy and cern.ch domain pointed at the local test repository: {config}", flush=True)
        done = subprocess.run([str(Path(sys.executable).with_name("vfarm")), "launch", "local", str(config), "--collect", str(out),
                               "--forward", f"{SQUID_GUEST_PORT}={site.forwards[SQUID_GUEST_PORT]}", "--attach", f"{key}:part-handler",
                               *argv], check=False)
        requests = site.requests()
        print(f"[demo] squid carried {len(requests)} request(s) of the guest's client for /cvmfs/alice.cern.ch/", flush=True)
    return done.returncode


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
