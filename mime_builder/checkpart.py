"""The final check's part of the user-data, for the `embed` and `include` delivery modes.

The check must run after cloud-init has finished ALL its stages (it reads result.json, written at
the very end), so it cannot be a part-handler or a script part (both run inside a stage). The
one hook cloud-init offers for "after I exit" is `power_state`: its condition command runs once
cloud-init has exited. So the part is a `#cloud-config` that
- writes the bundled check (one self-contained Python file, `mime_builder.bundle`) to disk
  (`write_files`, init stage), and
- sets `power_state` with that file as the condition. The check waits for result.json itself,
  writes the summary and powers off through its own command runner when it must; as a condition
  it then always exits 1, so cloud-init's power_state changes nothing by itself.

`baked` images list the `vfarm_check` config module (cc_vfarm_check) instead: no part at all.
With `include`, a failed fetch makes cloud-init consume no part at all, this one included: only
a baked check (or `--pin`) powers such an instance off.
"""

from __future__ import annotations

import functools
from typing import Any

import yaml

CHECK_PATH = "/var/lib/vfarm/vfarm-check.py"
FILENAME = "vfarm-check.cfg"
CONTENT_TYPE = "text/cloud-config"
# How long power_state waits for cloud-init to exit before running the condition anyway; the
# check then still waits for result.json itself (the check section's `timeout`).
POWER_STATE_TIMEOUT = 60

Part = tuple[str, str, str]  # (content type, filename, payload)


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
        "power_state:\n"
        "  mode: poweroff\n"
        "  delay: now\n"
        f"  timeout: {POWER_STATE_TIMEOUT}\n"
        f"  condition: [python3, {CHECK_PATH}, --power-state-condition]\n"
    )
    # Guard against a script line that would break the literal block.
    parsed = yaml.safe_load(text)
    if parsed["write_files"][0]["content"] != script.rstrip("\n") + "\n":
        raise ValueError("the bundled check does not survive a YAML literal block")
    return text


def check_parts(config: Any, handlers_mode: str) -> list[Part]:
    """The parts that bring the final check along in HANDLERS_MODE (include[=URL]|embed|baked).

    The check's settings are not in here: the check reads the `text/check-config` part of the
    raw user-data at run time (the builder sends it like every section, and
    part_handlers/check_handler takes it), so they work even when cloud-init consumed nothing.
    CONFIG is accepted for symmetry with the other part builders and not needed today."""
    mode = _mode(handlers_mode)
    if mode == "baked":
        return []
    if mode not in ("embed", "include"):
        raise ValueError(f"unknown handlers mode {handlers_mode!r}: expected include=URL_BASE, embed or baked")
    from .bundle import bundle_module

    return [(CONTENT_TYPE, FILENAME, cloud_config(bundle_module("cc_modules.check")))]
