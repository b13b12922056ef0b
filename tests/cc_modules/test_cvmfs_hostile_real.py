"""Hostile values in CVMFS files, read by the REAL CernVM-FS client (`-m cvmfs`): one value stays
the one value vfarm meant, or vfarm refuses to write it.

Each case is a file set rendered by vfarm's cvmfs module (default.local, domain.d/cern.ch.local,
config.d/alice.cern.ch.local) and installed as /etc/cvmfs of a sandbox (a private mount namespace
over the cached root folder with cvmfs 2.12 installed). There `cvmfs_config showconfig
alice.cern.ch` (the names, and the file each comes from) and `cvmfs_readconfig` from
/etc/cvmfs/config.sh (what cvmfs_config and the mount helper eval from `cvmfs2 -o parse`, the
client's own parser that reads each file through the shell and `echo $NAME`) read it back.
Asserted per case: the names are the stock ones plus exactly those vfarm wrote (nothing
injected), each comes from the file vfarm wrote it to, and its value is exactly the one vfarm
meant (not split, not expanded, no escape read). Values that try to run a command touch a marker
file, which must never appear.

The cases: every value of the hostile corpus (tests/cc_modules/test_render_hostile.py) that
render accepts, as a repository list item and a key in default.local, a proxy in the cern.ch
domain's file and the server URL in the repository's; and every hostile config under
tests/hostile/config with a cvmfs section that validates (the ones that do not never reach a file).
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from tests.cc_modules.test_render_hostile import corpus, cvmfs_variants
from tests.fixtures import cvmfs_repo
from tests.fixtures.cvmfs_repo import REPOSITORY, Sandbox
from vfarm.cc_modules import cc_cvmfs
from vfarm.config import cvmfs as cvmfs_spec
from vfarm.config.loader import ConfigError, load_file
from vfarm.textsafe import UnsafeValue

pytestmark = pytest.mark.cvmfs

HOSTILE_CONFIGS = Path(__file__).resolve().parents[1] / "hostile/config"
DOMAIN = REPOSITORY.split(".", 1)[1]
CASES = "/cases"  # the host's case folder, bound into the sandbox
QUOTA_MB = 4096  # stands in for the cache filesystem's size when a case says quota-limit: auto
# Where each variant of a corpus value goes: every .local file the client reads for alice.cern.ch
# gets one, each under a name no stock .conf file read after it sets.
PLACES = {"list": "local", "key": "local", "group": "domain", "scalar": "repository"}
# 31 cases (with the stock reading) took 45-78 s on 2 loaded cores: showconfig forks sed and grep for
# each name.
READ_TIMEOUT = 600.0

# Runs in the sandbox: each case's files become /etc/cvmfs's .local files, then the client reads
# them twice. "showconfig": `cvmfs_config showconfig` lists the names (and their files), and
# cvmfs_readconfig evals `cvmfs2 -o parse` (BashOptionsManager) for the values. "simple": the
# dump of `cvmfs2 -o parse,simple_options_parsing` (SimpleOptionsParser, no shell: what libcvmfs
# and a mount with that option read), evaluated the same way.
READ_CASES = r"""
set -u
cd /etc/cvmfs
for place in . domain.d config.d; do for decoy in a ab b x; do : > "$place/$decoy"; done; done  # names a glob would expand to
for case in "$1"/*/; do
  rm -f default.local domain.d/*.local config.d/*.local
  cp -r "$case/etc/." /etc/cvmfs/
  cvmfs_config showconfig "$2" > "$case/showconfig.lines" 2> "$case/showconfig.err"
  echo $? > "$case/showconfig.rc"
  (
    set +u  # config.sh reads unset names
    . /etc/cvmfs/config.sh
    cvmfs_readconfig "$2" || exit 1
    while IFS= read -r name; do printf '%s\0' "${!name-<unset>}"; done < "$case/names"
  ) > "$case/showconfig.values" 2> "$case/showconfig.values.err"
  echo $? >> "$case/showconfig.rc"
  cvmfs2 -o parse,simple_options_parsing "$2" / > "$case/simple.lines" 2> "$case/simple.err"
  echo $? > "$case/simple.rc"
  (
    set +u
    eval "$(grep '^CVMFS_' "$case/simple.lines")" || exit 1
    while IFS= read -r name; do printf '%s\0' "${!name-<unset>}"; done < "$case/names"
  ) > "$case/simple.values" 2> "$case/simple.values.err"
  echo $? >> "$case/simple.rc"
done
"""
READERS = ("showconfig", "simple")


@dataclass
class Case:
    """A file set vfarm rendered, and what the client must read back from it."""

    label: str
    files: dict[str, str]  # absolute path -> text
    expected: dict[str, str]  # CVMFS_* name -> value
    sources: dict[str, str] = field(default_factory=dict)  # CVMFS_* name -> the file it must come from


def read_order(path: str) -> int:
    """CernVM-FS reads default.local, then the domain's file, then the repository's: later wins."""
    return 0 if path.endswith("/default.local") else 1 if "/domain.d/" in path else 2


def render_case(label: str, section: dict[str, Any]) -> Case:
    """SECTION's file set as vfarm's cvmfs module writes it (UnsafeValue/PlanError when refused)."""
    files: dict[str, str] = {}
    expected: dict[str, str] = {}
    sources: dict[str, str] = {}
    for path, settings in sorted(cc_cvmfs.config_files(section).items(), key=lambda item: read_order(item[0])):
        assert path in (f"{cc_cvmfs.CONFIG_DIR}/default.local", f"{cc_cvmfs.CONFIG_DIR}/domain.d/{DOMAIN}.local",
                        f"{cc_cvmfs.CONFIG_DIR}/config.d/{REPOSITORY}.local"), f"{label}: {path} is not read for {REPOSITORY}"
        files[path] = cvmfs_spec.render(settings, QUOTA_MB, cc_cvmfs.HEADER)
        for key, value in settings.items():
            name = cvmfs_spec.variable(key)
            expected[name] = str(QUOTA_MB) if name == "CVMFS_QUOTA_LIMIT" and value == "auto" else cvmfs_spec.join(name, value)
            sources[name] = path
    return Case(label, files, expected, sources)


def corpus_cases(marker: Path) -> tuple[list[Case], int]:
    """A case per corpus value: each variant render accepts, in its place; the count refused."""
    cases: list[Case] = []
    refused = 0
    for index, value in enumerate(corpus(marker)):
        section: dict[str, Any] = {}
        for variant, settings in cvmfs_variants(value).items():
            try:
                cvmfs_spec.render(settings)
            except UnsafeValue as err:
                assert repr(value) not in str(err)
                refused += 1
                continue
            place = PLACES[variant]
            target = section.setdefault(place, {}) if place == "local" else section.setdefault(place, {}).setdefault(
                DOMAIN if place == "domain" else REPOSITORY, {})
            assert not set(settings) & set(target), (value, variant)
            target.update(settings)
        if section:
            cases.append(render_case(f"corpus[{index}] {value[:40]!r}", section))
    return cases, refused


def config_cases() -> tuple[list[Case], int]:
    """A case per hostile config with a cvmfs section that validates; the count that do not."""
    cases: list[Case] = []
    refused = 0
    for path in sorted(HOSTILE_CONFIGS.glob("*/*.yaml")):
        if "cvmfs:" not in path.read_text(encoding="utf-8", errors="replace"):
            continue
        try:
            section = load_file(path).sections.get("cvmfs")
        except ConfigError:
            refused += 1
            continue
        if section:
            cases.append(render_case(str(path.relative_to(HOSTILE_CONFIGS)), section))
    return cases, refused


@pytest.fixture(scope="module")
def sandbox(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Sandbox, Path]]:
    published = cvmfs_repo.cached()
    if published is None:
        pytest.fail("the cvmfs test repository is not built: run tools/run setup (builds CernVM-FS and publishes alice.cern.ch)")
    folder = tmp_path_factory.mktemp("cvmfs-cases")
    with Sandbox(published.rootfs, binds=[(folder, CASES, False)]) as box:
        yield box, folder


@dataclass
class Reading:
    """What one reader of the client made of a case's files."""

    names: list[str]  # each CVMFS_* name it lists, in order (a name twice would show here)
    sources: dict[str, str]  # name -> the file its value came from
    values: dict[str, str]  # each name the case expects -> the value read


def read_by_client(box: Sandbox, folder: Path, cases: list[Case]) -> list[dict[str, Reading]]:
    """Each case through the real client: reader -> Reading."""
    for stale in folder.iterdir():
        if stale.is_dir():
            shutil.rmtree(stale)
    for index, case in enumerate(cases):
        root = folder / f"{index:04d}"
        (root / "etc").mkdir(parents=True)
        for path, text in case.files.items():
            target = root / "etc" / Path(path).relative_to(cc_cvmfs.CONFIG_DIR)
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(text, encoding="utf-8")
        (root / "names").write_text("".join(f"{name}\n" for name in case.expected), encoding="utf-8")
    box.path("/root/read-cases.sh").write_text(READ_CASES, encoding="utf-8")
    box.run(["bash", "/root/read-cases.sh", CASES, REPOSITORY], timeout=READ_TIMEOUT)
    results = []
    for index, case in enumerate(cases):
        root = folder / f"{index:04d}"
        readings = {}
        for reader in READERS:
            errors = "".join(path.read_text(errors="replace") for path in sorted(root.glob(f"{reader}*.err")))
            assert (root / f"{reader}.rc").read_text().split() == ["0", "0"], (case.label, reader, errors)
            lines = [line for line in (root / f"{reader}.lines").read_text(encoding="utf-8").splitlines() if line.startswith("CVMFS_")]
            sources = {line.split("=", 1)[0]: line.rsplit("    # from ", 1)[1] for line in lines if "    # from " in line}
            values = (root / f"{reader}.values").read_bytes().decode("utf-8").split("\0")[:-1]
            readings[reader] = Reading([line.split("=", 1)[0] for line in lines], sources, dict(zip(case.expected, values)))
        results.append(readings)
    return results


def stock_names(box: Sandbox, folder: Path) -> dict[str, set[str]]:
    """The names each reader lists with no vfarm file at all."""
    (stock,) = read_by_client(box, folder, [Case("stock", {}, {})])
    return {reader: set(reading.names) for reader, reading in stock.items()}


def test_the_real_client_reads_each_hostile_value_as_one_value(sandbox: tuple[Sandbox, Path]) -> None:
    box, folder = sandbox
    marker = folder / "marker"
    stock = stock_names(box, folder)
    assert all({"CVMFS_CACHE_BASE", "CVMFS_SERVER_URL", "CVMFS_KEYS_DIR"} <= names for names in stock.values())
    from_corpus, corpus_refused = corpus_cases(Path(CASES) / marker.name)
    from_configs, configs_refused = config_cases()
    cases = from_corpus + from_configs
    started = time.monotonic()
    results = read_by_client(box, folder, cases)
    seconds = time.monotonic() - started
    assert not marker.exists(), "the client's parser ran a command from a rendered value"
    for case, readings in zip(cases, results):
        for reader, reading in readings.items():
            want_names = stock[reader] | set(case.expected)
            assert set(reading.names) == want_names, (case.label, reader, sorted(set(reading.names) ^ want_names))
            assert len(reading.names) == len(want_names), (case.label, reader, reading.names)  # each name once
            for name, want in case.expected.items():
                assert reading.sources.get(name) == case.sources[name], (case.label, reader, name, reading.sources.get(name))
                assert reading.values[name] == want, (case.label, reader, name, reading.values[name], want)
    # The corpus reaches every file and variant; the configs include the legal credentials.
    assert len(from_corpus) > 20 and corpus_refused > 100
    assert {case.sources[name] for case in from_corpus for name in case.sources} == {
        "/etc/cvmfs/default.local", f"/etc/cvmfs/domain.d/{DOMAIN}.local", f"/etc/cvmfs/config.d/{REPOSITORY}.local"}
    assert len(from_configs) >= 4 and configs_refused > 10
    assert any("@" in case.expected.get("CVMFS_HTTP_PROXY", "") for case in from_configs)
    print(f"\n{len(from_corpus)} corpus cases ({corpus_refused} variants refused by render), {len(from_configs)} configs "
          f"({configs_refused} refused at validation): read by the client in {seconds:.1f} s")


def test_the_client_readers_see_an_injected_key(sandbox: tuple[Sandbox, Path]) -> None:
    """Control: a file written without vfarm's checks hands the client a second name, and the
    shell-based reader collapses blanks; the readers above see both."""
    box, folder = sandbox
    stock = stock_names(box, folder)
    raw = Case("raw", {f"{cc_cvmfs.CONFIG_DIR}/default.local": 'CVMFS_REPOSITORIES="alice.cern.ch"\nCVMFS_INJECTED=1\nCVMFS_QUOTA_LIMIT="a  b"\n'},
               {"CVMFS_REPOSITORIES": "alice.cern.ch", "CVMFS_QUOTA_LIMIT": "a  b"})
    (readings,) = read_by_client(box, folder, [raw])
    for reader, reading in readings.items():
        assert set(reading.names) == stock[reader] | {"CVMFS_REPOSITORIES", "CVMFS_INJECTED", "CVMFS_QUOTA_LIMIT"}, reader
    assert readings["showconfig"].values["CVMFS_QUOTA_LIMIT"] == "a b"  # echo $NAME collapses the blanks
    assert readings["simple"].values["CVMFS_QUOTA_LIMIT"] == "a  b"
    with pytest.raises(UnsafeValue):
        cvmfs_spec.render({"repositories": "alice.cern.ch\nCVMFS_INJECTED=1"})
