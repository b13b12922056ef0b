"""The `--pin` loader: a small part-handler that the builder embeds in place of cloud-init's
unverified `#include`. It runs ON THE INSTANCE (stdlib only, Python 3.9+; its source is copied into
the user-data with PINNED and FREQUENCY filled in by `vfarm build`).

When cloud-init registers it (`__begin__`), it fetches each handler file from its URL, checks the
sha256 recorded at build time and only then loads it; it takes the content types of all pinned
handlers and passes each part on to the handler it belongs to. The final check's file (an entry
with `install`) is verified the same way and then written to its place, not loaded; on later
boots (cloud-init calls the loader with frequency always, and power_state's condition runs once
per instance) the loader starts that written check instead (`start_installed`). A failed fetch or
a mismatch is written as a failed status record of that handler (what the final check reads),
never skipped in silence. cloud-init's own include would instead abort the whole user-data on a failed fetch.

A handler URL may carry credentials (`https://user:password@host/...`, see `split_userinfo`):
they are sent as HTTP basic authentication, to that host only (never to a redirect's). The
loader's log, its status records and the file name of the loaded code show such a URL with the
userinfo hidden, and an error about it is named by its type only (urllib quotes pieces of a bad
URL, the password among them: `nonnumeric port: 'pass'`).
"""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import os
import tempfile
import time
import types
import urllib.parse
from typing import TYPE_CHECKING, Any, Optional

if TYPE_CHECKING:
    import urllib.request

# `vfarm build` puts the source of the status record's one home here (and the default folder's
# value), so the loader needs no vfarm package on the instance.
from ..cc_modules.record import document
from ..files import DEFAULT_LOG_DIR

# Filled in by `vfarm build`: [{"name", "url", "sha256", "types", "frequency"}, ...].
PINNED: list[dict[str, Any]] = []
FREQUENCY = "once-per-instance"

PER_INSTANCE, PER_ALWAYS = "once-per-instance", "always"
ATTEMPTS = 5
TIMEOUT = 10.0
LOG = logging.getLogger("vfarm.pin")
POWEROFF = ["shutdown", "-P", "now", "vfarm check: FAILED: the final check could not start; poweroff now"]
handler_version = 3
frequency = FREQUENCY
_by_type: dict[str, types.ModuleType] = {}
_loaded: list[types.ModuleType] = []


def list_types() -> list[str]:
    return sorted({t for entry in PINNED for t in entry["types"]})


def _runs(mod_frequency: str, frequency: Optional[str]) -> bool:
    # cloud-init's own rule (handlers.run_part): per-instance handlers are not called on reboots.
    return mod_frequency == PER_ALWAYS or (frequency == PER_INSTANCE and mod_frequency == PER_INSTANCE)


def shown(url: str) -> str:
    """URL as the logs show it: everything between `://` and the last `@` hidden (the vfarm
    redaction is not on the instance; this one hides more than needed rather than less)."""
    scheme, sep, rest = url.partition("://")
    at = rest.rfind("@")
    return f"{scheme}{sep}***{rest[at:]}" if sep and at >= 0 else url


def error_text(err: BaseException, url: str) -> str:
    """ERR for a log or a record, about a fetch of URL: no piece of its credentials in it."""
    if shown(url) != url:
        code = getattr(err, "code", None)
        return f"{type(err).__name__}{f' {code}' if isinstance(code, int) else ''}"
    return str(err)


def split_userinfo(url: str) -> tuple[str, Optional[str]]:
    """URL without its userinfo, and that userinfo (None when it has none). The userinfo is the
    text between `://` and the last `@` before the next `/`, unless its user name (the text before
    its first `:`) holds a `?` or `#`: so a password may hold `?`, `#` and `@` as they are (`/`
    only as %2F), while in `https://h.example.org/v?q=a@b` or `https://h.example.org?q=a@b` the
    `@` is in the query. `vfarm build` reads a handler URL with this same rule."""
    scheme, sep, rest = url.partition("://")
    authority = rest.split("/", 1)[0]
    at = authority.rfind("@")
    if not sep or at < 0 or any(mark in authority[:at].partition(":")[0] for mark in "?#"):
        return url, None
    return f"{scheme}{sep}{rest[at + 1:]}", authority[:at]


def request_for(url: str) -> urllib.request.Request:
    """URL as a request. urllib reads a user:password in a URL as part of the host: they are sent
    as HTTP basic authentication instead (percent-escapes decoded), in a header urllib does not
    pass on to the host of a redirect."""
    import urllib.request  # here: `vfarm build` imports this module for split_userinfo, and no network code

    bare, userinfo = split_userinfo(url)
    request = urllib.request.Request(bare)
    if userinfo is not None:
        user, _, password = userinfo.partition(":")
        token = f"{urllib.parse.unquote(user)}:{urllib.parse.unquote(password)}".encode()
        request.add_unredirected_header("Authorization", "Basic " + base64.b64encode(token).decode("ascii"))
    return request


def fetch(url: str) -> bytes:
    """URL's content; retries what may pass (network, 5xx), not a definite answer (4xx)."""
    import urllib.error
    import urllib.request

    delay = float(os.environ.get("VFARM_PIN_RETRY_DELAY", "1"))
    for attempt in range(1, ATTEMPTS + 1):
        try:
            with urllib.request.urlopen(request_for(url), timeout=TIMEOUT) as response:
                data: bytes = response.read()
                return data
        except urllib.error.HTTPError as err:
            if err.code < 500 or attempt == ATTEMPTS:
                raise
        except (OSError, ValueError):
            if attempt == ATTEMPTS:
                raise
        LOG.warning("vfarm pin: fetching %s failed (attempt %d of %d), retrying", shown(url), attempt, ATTEMPTS)
        time.sleep(delay * 2 ** (attempt - 1))
    raise OSError(f"cannot fetch {shown(url)}")


def _instance_id(cloud: Any) -> Optional[str]:
    try:
        return str(cloud.get_instance_id()) or None
    except Exception:  # noqa: BLE001 - any Cloud-like object, or none
        return None


def record_failure(name: str, reason: str, cloud: Any = None) -> None:
    """Write a failed status record of handler NAME."""
    directory = os.environ.get("VFARM_LOG_DIR") or DEFAULT_LOG_DIR
    now = time.time()
    data = document(name, "failed", reason, now, _instance_id(cloud), "pin-loader",
                    steps=[{"action": "pin", "ok": False, "reason": reason}], finished=now)
    write_atomically(os.path.join(directory, f"{name}.status.json"), (json.dumps(data, indent=2) + "\n").encode("utf-8"), 0o644)
    LOG.error("vfarm %s failed: %s", name, reason)


def write_atomically(target: str, content: bytes, mode: int) -> None:
    """CONTENT at TARGET (its folder made), through a temporary file in that folder: a reader sees
    the old file or the whole new one, and a failed write leaves no temporary file behind."""
    os.makedirs(os.path.dirname(target), exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=os.path.dirname(target), prefix=".vfarm-pin.")
    try:
        with os.fdopen(fd, "wb") as out:
            out.write(content)
        os.chmod(tmp, mode)
        os.replace(tmp, target)
    except BaseException:
        os.unlink(tmp)
        raise


def verified(entry: dict[str, Any], cloud: Any = None) -> Optional[bytes]:
    """The content of ENTRY's URL when its sha256 is the pinned one, or None (after recording why)."""
    name, url = entry["name"], entry["url"]
    where = shown(url)
    try:
        content = fetch(url)
    except Exception as err:  # noqa: BLE001 - whatever the network does, it is recorded
        record_failure(name, f"pinned handler not fetched from {where}: {error_text(err, url)}", cloud)
        return None
    digest = hashlib.sha256(content).hexdigest()
    if digest != entry["sha256"]:
        record_failure(name, f"pinned handler from {where} has sha256 {digest}, expected {entry['sha256']}: not run", cloud)
        return None
    LOG.info("vfarm pin: %s from %s verified (sha256 %s)", name, where, digest)
    return content


def install(entry: dict[str, Any], cloud: Any = None) -> None:
    """An entry with `install` (the final check): its verified file written there (under
    $VFARM_ROOT), readable by root only; run by cloud-init's power_state condition, which powers
    off when the file is missing."""
    content = verified(entry, cloud)
    if content is None:
        return
    target = os.path.join(os.environ.get("VFARM_ROOT") or "/", entry["install"].lstrip("/"))
    try:
        write_atomically(target, content, 0o700)
    except OSError as err:
        record_failure(entry["name"], f"cannot write {target}: {err}", cloud)


def _module(name: str, where: str, content: bytes) -> types.ModuleType:
    """A module NAME of verified CONTENT; WHERE names it in tracebacks (its shown URL or path)."""
    module = types.ModuleType(name)
    module.__file__ = where
    exec(compile(content.decode("utf-8"), where, "exec"), module.__dict__)  # noqa: S102 - verified by the caller
    return module


def start_installed(entry: dict[str, Any], cloud: Any = None) -> None:
    """A later boot (power_state's condition runs once per instance): the check the first boot
    wrote, if it is still the one pinned, loaded from its place and started as its own part-handler
    starts it (detached, waiting for cloud-init's end). A check that cannot start cannot vouch for
    the boot: its failure is recorded and the instance powered off."""
    target = os.path.join(os.environ.get("VFARM_ROOT") or "/", entry["install"].lstrip("/"))
    try:
        with open(target, "rb") as file:
            content = file.read()
        if hashlib.sha256(content).hexdigest() != entry["sha256"]:
            raise ValueError(f"{target} is not the pinned check (sha256 {entry['sha256']})")
        _module("vfarm_pinned_check", target, content).handle_part(cloud, "__begin__", None, None, PER_ALWAYS)
    except Exception as err:  # noqa: BLE001 - whatever stops it, it is recorded and fails closed
        record_failure(entry["name"], f"the final check cannot start at this boot: {type(err).__name__}: {err}", cloud)
        import subprocess

        subprocess.run(POWEROFF, check=False, timeout=60)


def load(entry: dict[str, Any], cloud: Any = None) -> Optional[types.ModuleType]:
    """The verified handler module of ENTRY, or None (after recording why)."""
    name, url = entry["name"], entry["url"]
    where = shown(url)
    content = verified(entry, cloud)
    if content is None:
        return None
    try:
        module = _module(f"vfarm_pinned_{name}", where, content)
    except Exception as err:  # noqa: BLE001
        record_failure(name, f"pinned handler from {where} does not load: {type(err).__name__}: {error_text(err, url)}", cloud)
        return None
    return module


def _call(module: types.ModuleType, data: Any, ctype: str, filename: Any, payload: Any, frequency: Optional[str], headers: Any) -> None:
    if not _runs(getattr(module, "frequency", PER_INSTANCE), frequency):
        return
    version = int(getattr(module, "handler_version", 1))
    if version >= 3:
        module.handle_part(data, ctype, filename, payload, frequency, headers)
    elif version == 2:
        module.handle_part(data, ctype, filename, payload, frequency)
    else:
        module.handle_part(data, ctype, filename, payload)


def handle_part(data: Any, ctype: str, filename: Any, payload: Any, frequency: Optional[str] = None, headers: Any = None) -> None:
    if ctype == "__begin__":
        for entry in PINNED:
            if not _runs(entry.get("frequency", PER_INSTANCE), frequency):
                continue
            if entry.get("install"):
                (start_installed if frequency == PER_ALWAYS else install)(entry, data)
                continue
            module = load(entry, data)
            if module is None:
                continue
            _loaded.append(module)
            for t in entry["types"]:
                _by_type[t] = module
            try:
                _call(module, data, ctype, filename, payload, frequency, {"Content-Type": ctype})
            except Exception:  # noqa: BLE001 - one handler's failure must not stop the others
                LOG.exception("vfarm pin: %s failed to start", entry["name"])
        return
    if ctype == "__end__":
        for module in _loaded:
            try:
                _call(module, data, ctype, filename, payload, frequency, {"Content-Type": ctype})
            except Exception:  # noqa: BLE001
                LOG.exception("vfarm pin: %s failed to finish", module.__name__)
        return
    module = _by_type.get(ctype)
    if module is None:
        if not any(ctype in entry["types"] and _runs(entry.get("frequency", PER_INSTANCE), frequency) for entry in PINNED):
            return  # a later boot: its handler is once per instance, and cloud-init would not call it either
        LOG.error("vfarm pin: no verified handler for %r (%r): its failure is recorded", ctype, filename)  # repr: escaped
        return
    _call(module, data, ctype, filename, payload, frequency, headers)
