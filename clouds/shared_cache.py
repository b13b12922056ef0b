"""Set-up's caches that several checkouts on one machine share (under hostcmd.cache_base()):
which folder of a cache each checkout asks for, and which folders are provably stale.

One rule for every builder of such a cache (clouds/cvmfs_local.py, tests/fixtures/cvmfs_build.py,
tests/fixtures/cvmfs_repo.py):
  * Before it looks for its folder, a builder records which folder its checkout asks for
    (`record_use`: CACHE/.users/ID.json), with the sha256 of the files whose contents decide that
    folder and, optionally, a file of the checkout that must still be there. It records and looks
    inside `asking`, which holds the records' lock shared; `prune` holds it exclusive, so a prune
    comes wholly before the look (which then finds the folder gone and builds it) or after the
    record (which it then reads).
  * A record stands while each of its files is as recorded and its checkout file is there: a
    changed or missing file means that checkout asks for another folder now, or is gone. A later
    record of the same asker replaces it.
  * After a build, holding the cache's lock, `prune` removes the candidate folders made by a
    builder that records (the MADE marker in them) that no standing record names. A folder
    without the marker (made before records, or by hand) stays; when a record cannot be read,
    nothing is provably stale and every folder stays.
A record names a folder relative to the cache ("KEY", or "KEY/SUB" for a folder inside KEY): it
keeps that folder and every folder that holds it.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import shutil
import threading
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Optional

USERS = ".users"  # CACHE/.users/ID.json: which folder an asker (a checkout, with its inputs) asks for
MADE = ".vfarm-made"  # in a folder made by a builder that records (one without it is left alone)
SHA = "_sha256"  # a record's field LABEL + SHA is the sha256 of the file at field LABEL
CHECKOUT = "checkout"  # a record's field: a file of the checkout; the record stands while it is there
RECORDS_LOCK = ".lock"  # CACHE/.users/.lock: shared while a builder records and looks, exclusive while one prunes


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as stream:
        for block in iter(lambda: stream.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def record_use(cache: Path, key: str, asker: Sequence[str], files: Mapping[str, Path], checkout: Optional[Path] = None) -> None:
    """Note in CACHE/USERS that ASKER asks for the folder CACHE/KEY, which FILES (label -> file)
    decide; with CHECKOUT, only while that file is there. One record per ASKER (its strings:
    the checkout's file, what else tells its requests apart), rewritten when what it says changes;
    a cache this process cannot write gets none (then nothing protects KEY)."""
    fields = {"key": key}
    for label, path in files.items():
        resolved = path.resolve()
        fields[label], fields[label + SHA] = str(resolved), sha256(resolved)
    if checkout is not None:
        fields[CHECKOUT] = str(checkout.resolve())
    record = json.dumps(fields, sort_keys=True)
    name = hashlib.sha256("\0".join(asker).encode()).hexdigest()[:16]
    path = cache / USERS / f"{name}.json"
    try:
        if path.is_file() and path.read_text(encoding="utf-8") == record:
            return
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}")
        partial.write_text(record, encoding="utf-8")
        partial.replace(path)
    except OSError:
        pass


@contextmanager
def asking(cache: Path, key: str, asker: Sequence[str], files: Mapping[str, Path], checkout: Optional[Path] = None) -> Iterator[None]:
    """`record_use`, then the block (the caller's look for CACHE/KEY), with no prune in between."""
    with _records_locked(cache, fcntl.LOCK_SH):
        record_use(cache, key, asker, files, checkout)
        yield


@contextmanager
def _records_locked(cache: Path, mode: int) -> Iterator[None]:
    """CACHE's records' lock held in MODE (flock's LOCK_SH or LOCK_EX) while the block runs; not
    at all when this process cannot make it (then it cannot write a record either)."""
    path = cache / USERS / RECORDS_LOCK
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        try:  # open for writing where it can: NFS's emulated flock takes an exclusive lock only so
            descriptor = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        except PermissionError:
            descriptor = os.open(path, os.O_RDONLY)
    except OSError:
        yield
        return
    try:
        try:
            fcntl.flock(descriptor, mode)
        except OSError:  # a file system without locks: nothing to hold
            pass
        yield
    finally:
        os.close(descriptor)  # (the kernel drops the flock with the file)


def _wanted(cache: Path) -> Optional[set[str]]:
    """The folders some checkout still asks for: the keys of CACHE's standing records. A record
    that no longer stands is removed (under the records' lock held exclusive: no owner is
    rewriting it). None when a record cannot be read (then nothing is
    provably stale)."""
    keys: set[str] = set()
    for path in sorted((cache / USERS).glob("*.json")):
        try:
            record = json.loads(path.read_text(encoding="utf-8"))
            key = record["key"]
            hashes = {label[: -len(SHA)]: sha for label, sha in record.items() if label.endswith(SHA)}
            if not isinstance(key, str) or not key or not hashes:
                raise ValueError(f"{path}: no key or no file")
            stands = all(_same(Path(record[label]), sha) for label, sha in hashes.items())
            if CHECKOUT in record:
                stands = stands and _there(Path(record[CHECKOUT]))
        except (OSError, ValueError, KeyError, TypeError, AttributeError):
            return None
        if stands:
            keys.add(key)
        else:
            path.unlink(missing_ok=True)
    return keys


def _same(path: Path, sha: object) -> bool:
    try:
        return sha256(path) == sha
    except (FileNotFoundError, NotADirectoryError):
        return False


def _there(path: Path) -> bool:
    try:
        path.stat()
    except (FileNotFoundError, NotADirectoryError):
        return False
    return True


def prune(cache: Path, candidates: Iterable[Path], keep: str) -> list[Path]:
    """Remove those of CANDIDATES (folders under CACHE) made by a builder that records (MADE in
    them) that no standing record names, neither holding a folder one names, nor KEEP (the
    caller's own folder, as its record names it). The caller holds the cache's lock.
    The folders removed."""
    with _records_locked(cache, fcntl.LOCK_EX):
        names = _wanted(cache)
        if names is None:
            return []
        names.add(keep)
        removed = []
        for folder in candidates:
            name = folder.relative_to(cache).as_posix()
            if any(kept == name or kept.startswith(name + "/") for kept in names):
                continue
            if folder.is_dir() and not folder.is_symlink() and (folder / MADE).is_file():
                shutil.rmtree(folder, ignore_errors=True)
                removed.append(folder)
        return removed
