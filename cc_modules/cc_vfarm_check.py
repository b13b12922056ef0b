"""cloud-init config module `vfarm_check`: vfarm's final check, baked into an image.

List it LAST in `cloud_final_modules`. WHEN it checks is the whole point:
- Inside the final stage the check cannot see everything: cloud-init writes the final stage's
  errors to status.json, and result.json at all, only after the last final module returned,
  and `cloud-init status --wait` from here would wait for ourselves forever.
- So `handle` does not check: it starts a detached process (double fork + setsid, the way
  cloud-init's own power_state_change waits for cloud-init to exit) and returns at once. That
  process waits until result.json exists (written at the very end of the final stage, after
  status.json has every stage's errors and 25.1's recoverable errors), or the `check.timeout`
  (an unfinished cloud-init then counts as a failure), and only then discovers, plans, writes
  the summary and powers off.
- It survives the end of the stage: Debian's cloud-final.service (22.4) and
  cloud-init-main.service (25.1, the single process running all stages) both set
  KillMode=process, so systemd does not kill what the stage left running; 22.4's init stage
  (cloud-init.service, where the embed and include parts start it on later boots, `start`) is a
  oneshot with RemainAfterExit=yes, whose processes run on until shutdown.
- It fails closed: the check is imported in that process, not here (cloud-init skips a config
  module that does not import, and nothing would power off), and the process powers off when the
  check does not run to its end (an ImportError or SyntaxError in it, a failed fork, anything its
  own guard did not catch), as the check does when it judges a failure.
The settings come from the raw user-data (see check.py), so the check works even when cloud-init
consumed none of the user-data (a failed #include). Frequency `always`: every boot is checked,
so a worker that failed once cannot quietly join the pool after a restart.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any, Callable, Optional

from ..files import log_dir, system_root
from .meta import DISTROS, module_meta

if TYPE_CHECKING:
    from .check import Paths, Runner

frequency = "always"
distros = DISTROS
meta = module_meta("cc_vfarm_check", "Summary of the vfarm handlers and cloud-init, power off on failure", __doc__, frequency)

# Tests point these elsewhere; on an instance (None) they are the real paths (under $VFARM_ROOT,
# as check.install writes the script) and the one runner.
PATHS: Optional[Paths] = None
RUNNER: Optional[Runner] = None
POWEROFF = ["shutdown", "-P", "now", "vfarm check: FAILED: the final check could not run; poweroff now"]


def _check() -> None:
    from . import check  # here, in the detached process: see the module's docstring

    check.run_guarded(PATHS or check.Paths(system_root()), run=RUNNER)


def _power_off() -> None:
    """Power off without the check's modules: they may be what broke."""
    if RUNNER is not None:
        RUNNER(list(POWEROFF))
    else:
        os.execvp(POWEROFF[0], POWEROFF)


def _detach(target: Callable[[], object]) -> int:
    """Run TARGET in a grandchild that is no longer ours (own session, stdio on /dev/null);
    returns the grandchild's pid to the caller, who returns at once. When TARGET (or the detaching
    itself) does not run to its end, that process powers off (_power_off)."""
    read_end, write_end = os.pipe()
    middle = os.fork()
    if middle:
        os.close(write_end)
        os.waitpid(middle, 0)
        with os.fdopen(read_end, "r") as pipe:
            text = pipe.read().strip()
        return int(text) if text.isdigit() else 0
    done = False
    try:
        os.close(read_end)
        os.setsid()
        grandchild = os.fork()
        if grandchild:
            os.write(write_end, str(grandchild).encode())
        else:
            os.close(write_end)
            devnull = os.open(os.devnull, os.O_RDWR)
            for fd in (0, 1, 2):
                os.dup2(devnull, fd)
            target()
        done = True
    finally:
        try:
            if not done:
                _power_off()
        finally:
            os._exit(0 if done else 1)


def start() -> int:
    """Start the check in a detached process that waits for cloud-init to finish; returns its pid.
    The embed and include parts call this on every boot after the first (their power_state
    condition runs once per instance), from the init stage."""
    return _detach(_check)


def handle(*args: Any, **kwargs: Any) -> None:
    """cloud-init calls this positionally (22.4: name, cfg, cloud, log, args) or by keyword
    (25.1: name, cfg, cloud, args); the check needs none of them."""
    log = kwargs.get("log") or (args[3] if len(args) > 3 else None)
    pid = start()
    folder = PATHS.log_dir if PATHS else log_dir()
    message = f"vfarm_check: checking in process {pid} once cloud-init has finished (summary: {folder / 'summary.log'})"
    if log is not None and hasattr(log, "info"):
        log.info(message)
    else:
        import logging

        logging.getLogger(__name__).info(message)
