"""The final check's part of the user-data, for the `embed` and `include` delivery modes.

The check must run after cloud-init has finished ALL its stages (it reads result.json, written at
the very end), so it cannot be a part-handler or a script part (both run inside a stage). The
one hook cloud-init offers for "after I exit" is `power_state`: its condition command runs once
cloud-init has exited. So the part is a `#cloud-config` that
- writes the bundled check (one self-contained Python file, `mime_builder.bundle`) to disk
  (`write_files`, init stage), and
- sets `power_state` with that file as the condition. The check waits for result.json itself,
  writes the summary and powers off through its own command runner when it must, then exits
  check.HANDLED, which the condition turns into 1: cloud-init's power_state changes nothing.
  Any other exit (python3 missing, the script missing, a crash before the check could judge:
  an ImportError, a SyntaxError, a MemoryError) the condition turns into 0: cloud-init powers
  the instance off itself, since a check that cannot run cannot vouch for the boot.

In `embed` the script travels once, inside the library part of the handlers: registering that
part writes it to the check's place (bundle.CHECK_LIBRARY_TAIL), and this part only sets
`power_state`. With `include` the script is a hosted file fetched with the handlers
(bundle.bundle_check: the same part-handler that writes itself there; `--pin` verifies it and
writes it), and this part is the same. When the script is not there (the part carrying it never
ran, or its sha256 did not match), python3 cannot open it and the condition powers off.

power_state runs once per instance. On later boots the part that wrote the script (embed's
library part, include's hosted check: frequency always) starts the check itself, detached, as the
baked module does (bundle.CHECK_LIBRARY_TAIL); with `--pin` the loader starts the check it wrote
(pinloader.start_installed).

`baked` images list the `vfarm_check` config module (cc_vfarm_check) instead: no part at all.
With `include`, a failed fetch makes cloud-init consume no part at all, this one included: only
a baked check (or `--pin`) powers such an instance off.
"""

from __future__ import annotations

import functools
from typing import Any

import yaml

from ..files import CHECK_HANDLED
from ..files import CHECK_SCRIPT as CHECK_PATH

FILENAME = "vfarm-check.cfg"
CONTENT_TYPE = "text/cloud-config"
# How long power_state waits for cloud-init to exit before running the condition anyway; the
# check then still waits for result.json itself (the check section's `timeout`).
POWER_STATE_TIMEOUT = 60

Part = tuple[str, str, str]  # (content type, filename, payload)

NOT_RUN_MESSAGE = "vfarm check: FAILED: the final check could not run (no script, or it broke); poweroff now"


def _mode(handlers_mode: str) -> str:
    return handlers_mode.split("=", 1)[0].strip()


@functools.lru_cache(maxsize=8)  # the guard's YAML parse is 40 ms: once per script per process
def cloud_config(script: str) -> str:
    """The #cloud-config text carrying SCRIPT; built by hand so the bytes never depend on the
    PyYAML version (the same input must give the same user-data)."""
    body = "".join(f"      {line}\n" if line else "\n" for line in script.rstrip("\n").split("\n"))
    text = (
        "#cloud-config\n"
        "# vfarm final check: runs after cloud-init has finished (power_state condition), writes\n"
        "# /var/log/vfarm/summary.log and powers the instance off on failure (the check section).\n"
        "write_files:\n"
        f"  - path: {CHECK_PATH}\n"
        "    owner: root:root\n"
        "    permissions: '0700'\n"
        "    content: |\n"
        f"{body}"
        f"{power_state()}"
    )
    # Guard against a script line that would break the literal block.
    parsed = yaml.safe_load(text)
    if parsed["write_files"][0]["content"] != script.rstrip("\n") + "\n":
        raise ValueError("the bundled check does not survive a YAML literal block")
    return text


def condition(script: str = CHECK_PATH) -> str:
    """The power_state condition of every mode: a shell command (as a list, a missing python3
    would be an exception, which cloud-init reads as "do not apply") that runs SCRIPT and exits 1
    (change nothing) only when SCRIPT exited CHECK_HANDLED, else 0 (cloud-init powers off)."""
    return f"python3 {script} --power-state-condition; [ $? != {CHECK_HANDLED} ]"


def power_state() -> str:
    """The `power_state` mapping that runs the check as its condition (NOT_RUN_MESSAGE is the
    shutdown message when cloud-init itself powers off)."""
    return (
        "power_state:\n"
        "  mode: poweroff\n"
        "  delay: now\n"
        f"  timeout: {POWER_STATE_TIMEOUT}\n"
        f"  message: '{NOT_RUN_MESSAGE}'\n"
        f"  condition: '{condition()}'\n"
    )


def library_cloud_config() -> str:
    """The #cloud-config that runs the check the embed library part wrote."""
    return (
        "#cloud-config\n"
        "# vfarm final check (written by the library part): runs after cloud-init, powers off on failure.\n"
        f"{power_state()}"
    )


def check_parts(config: Any, handlers_mode: str, from_library: bool = False) -> list[Part]:
    """The parts that bring the final check along in HANDLERS_MODE (include[=URL]|embed|baked).

    The check's settings are not in here: the check reads the `text/check-config` part of the
    raw user-data at run time (the builder sends it like every section, and
    part_handlers/check_handler takes it), so they work even when cloud-init consumed nothing.
    CONFIG is accepted for symmetry with the other part builders and not needed today.
    FROM_LIBRARY: another part brings the script (embed's library part, include's hosted
    check); otherwise this part carries it (write_files)."""
    mode = _mode(handlers_mode)
    if mode == "baked":
        return []
    if mode not in ("embed", "include"):
        raise ValueError(f"unknown handlers mode {handlers_mode!r}: expected include=URL_BASE, embed or baked")
    if from_library:
        return [(CONTENT_TYPE, FILENAME, library_cloud_config())]
    from .bundle import bundle_module

    return [(CONTENT_TYPE, FILENAME, cloud_config(bundle_module("cc_modules.check")))]
