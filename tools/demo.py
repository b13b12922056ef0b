"""The main job's demo (`tools/run demo`): the bundled example booted in a local VM (TCG) with the
real CernVM-FS client, which installs the pinned version, mounts alice.cern.ch and reads it.

The example names CERN's package repository (no `package-repository`) and a site squid, neither of
which can be reached here. So: the packages come from the local build (`vfarm launch local` points
such a section at them by itself), and the proxy and the cern.ch domain's server URL and key are
pointed at the test repository alice.cern.ch (published by set-up; its stratum 0 and a Debian
squid run in a network namespace of their own, reached by the guest as 10.0.2.100:3128), with the
repository's public key added as a part-handler part (it must be in place before the cvmfs part is
handled). The rest is the example as it is. The
config actually booted and everything collected are in out/demo/.

Arguments are passed on to `vfarm launch local` (e.g. --image trixie, --keep; see its --help)."""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.fixtures.cvmfs_guest import SQUID_GUEST_PORT, guest_site, key_part, site_config  # noqa: E402

EXAMPLE = ROOT / "examples" / "torino.yaml"


def exit_on_signals() -> None:
    """SIGTERM and SIGHUP (a `kill`, a closed terminal) end a demo as Ctrl-C does: through its
    finally blocks and with statements, which stop what it started (tools/farm_demo.py too)."""
    def leave(signum: int, _frame: Any) -> None:
        raise SystemExit(128 + signum)

    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, leave)


def launch(argv: list[str]) -> int:
    """`vfarm launch local ARGV`; when the demo is ended meanwhile, the launch gets a Ctrl-C (its
    clean-up path: qemu stopped, the instance folder removed) and is waited for."""
    proc = subprocess.Popen([str(Path(sys.executable).with_name("vfarm")), "launch", "local", *argv])
    try:
        return proc.wait()
    except BaseException as ended:
        if not isinstance(ended, KeyboardInterrupt):  # a Ctrl-C reached it already (same terminal group)
            proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        raise


def main(argv: list[str]) -> int:
    if {"-h", "--help"} & set(argv):
        print(__doc__)
        return 0
    exit_on_signals()
    out = ROOT / "out" / "demo"
    out.mkdir(parents=True, exist_ok=True)
    config, key = out / "torino-local-site.yaml", out / "cvmfs-key.py"
    with guest_site() as site:
        config.write_text(site_config(EXAMPLE.read_text(encoding="utf-8"), quota=None), encoding="utf-8")
        key.write_text(key_part(site.site.published), encoding="utf-8")
        print(f"[demo] {EXAMPLE.name} with its cvmfs proxy and cern.ch domain pointed at the local test repository: {config}", flush=True)
        returncode = launch([str(config), "--collect", str(out), "--forward", f"{SQUID_GUEST_PORT}={site.forwards[SQUID_GUEST_PORT]}",
                             "--attach", f"{key}:part-handler", *argv])
        requests = site.requests()
        print(f"[demo] squid carried {len(requests)} request(s) of the guest's client for /cvmfs/alice.cern.ch/", flush=True)
    return returncode


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
