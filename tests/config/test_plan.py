"""`vfarm plan` and the resolution of percentages to whole extents."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from vfarm.cli import main as cli
from vfarm.config.loader import load_file, load_text
from vfarm.config.localfs import LocalfsSpec, PartSpec, Size, VolumeGroup, parse, resolve
from vfarm.errors import PlanError

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "torino.yaml"


def test_seed_example_on_20g_by_hand(capsys: pytest.CaptureFixture[str]) -> None:
    # 20 GiB / 4 MiB = 5120 extents: cvmfs floor(870.4), home floor(2969.6), tmp floor(409.6),
    # swap = 100% of what the others leave = 5120 - 870 - 2969 - 409 = 872.
    assert cli.main(["plan", str(EXAMPLE), "--vg-size", "20G"]) == 0
    out = capsys.readouterr().out
    assert out == (
        "volume group VG: 5120 extents of 4.00 MiB (20.00 GiB)\n"
        "NAME   ASKED     EXTENTS       SIZE  FS    MOUNT           OPTIONS\n"
        "cvmfs  17%VG         870   3.40 GiB  ext4  /var/lib/cvmfs  defaults\n"
        "home   58%VG        2969  11.60 GiB  ext4  /home           defaults\n"
        "tmp    8%VG          409   1.60 GiB  ext4  /tmp            defaults\n"
        "swap   100%FREE      872   3.41 GiB  swap  -               sw\n"
        "left free: 0 extents (0 B)\n"
    )


def test_plan_json(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["plan", str(EXAMPLE), "--vg-size", "10G", "--extent-size", "32M", "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["vg"] == {"name": "VG", "extent_size": 32 * 2**20, "extents": 320, "bytes": 10 * 2**30}
    assert [(p["name"], p["extents"]) for p in doc["parts"]] == [("cvmfs", 54), ("home", 185), ("tmp", 25), ("swap", 56)]
    assert doc["parts"][2]["mode"] == "1777"
    assert doc["free"] == {"extents": 0, "bytes": 0}  # as the text's "left free"


def test_plan_json_says_what_is_left_free(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = tmp_path / "half.yaml"
    config.write_text("#multiple-config\nlocalfs:\n  parts: {home: 50}\n")
    assert cli.main(["plan", str(config), "--vg-size", "10G", "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["free"] == {"extents": 1280, "bytes": 5 * 2**30}
    assert cli.main(["plan", str(config), "--vg-size", "10G"]) == 0
    assert capsys.readouterr().out.splitlines()[-1] == "left free: 1280 extents (5.00 GiB)"


def test_plan_bad_sizes(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_:  # not a size: argparse's usage error
        cli.main(["plan", str(EXAMPLE), "--vg-size", "lots"])
    assert exit_.value.code == 2
    assert capsys.readouterr().err.splitlines()[-1] == \
        "vfarm plan: error: argument --vg-size: not a size: 'lots' (expected a number with K, M, G or T, like 20G)"
    assert cli.main(["plan", str(EXAMPLE), "--vg-size", "2M"]) == 1
    assert capsys.readouterr().err == "vfarm: --vg-size 2.00 MiB must hold at least one extent of 4.00 MiB\n"


def test_plan_absolute_sizes_that_do_not_fit(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "big.yaml"
    path.write_text("localfs:\n  parts:\n    home: 30G\n")
    assert cli.main(["plan", str(path), "--vg-size", "20G"]) == 1
    assert capsys.readouterr().err == f"vfarm: {path}: the parts need 7680 extents (30.00 GiB) but volume group VG has 5120 (20.00 GiB) for them\n"


def test_plan_without_localfs(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("cvmfs:\n  install: false\n")
    assert cli.main(["plan", str(path), "--vg-size", "20G"]) == 1
    assert "has no localfs section" in capsys.readouterr().err


def test_foreign_lvs_reduce_free_and_own_lvs_count_back() -> None:
    spec = parse(load_file(EXAMPLE).sections["localfs"])
    fresh = resolve(spec, VolumeGroup("vg", 4 << 20, 5120, 5120))
    # A second run: our four LVs exist, nothing is free; the plan must come out the same.
    own = tuple((p.spec.name, p.extents) for p in fresh)
    again = resolve(spec, VolumeGroup("vg", 4 << 20, 5120, 0, own))
    assert again == fresh
    # 500 extents taken by an LV that is not ours: swap gets what is left after ours.
    shared = resolve(spec, VolumeGroup("vg", 4 << 20, 5120, 4620))
    assert [p.extents for p in shared] == [870, 2969, 409, 4620 - 870 - 2969 - 409]
    with pytest.raises(PlanError, match="the parts need 4248 extents"):
        resolve(spec, VolumeGroup("vg", 4 << 20, 5120, 3000))


def test_zero_extents_is_an_error() -> None:
    spec = LocalfsSpec((PartSpec("home", Size("VG", 0.5), "ext4", "/home", "defaults", None, None),), None, (), False)
    with pytest.raises(PlanError, match="part 'home' \\(0.5%VG\\) comes to 0 extents"):
        resolve(spec, VolumeGroup("vg", 4 << 20, 100, 100))


def test_percentages_are_worked_out_as_written() -> None:
    """0.57% of 10,000 extents is 57 (the float nearest 0.57 times 100 is 56.99...); shares that
    add up to 100 as written fit, whatever floating point makes of their sum."""
    spec = LocalfsSpec((PartSpec("home", Size("VG", 0.57), "ext4", "/home", "defaults", None, None),), None, (), False)
    assert [p.extents for p in resolve(spec, VolumeGroup("vg", 4 << 20, 10_000, 10_000))] == [57]
    config = load_text("localfs:\n  parts:\n    a: 0.01\n    a-mount: /a\n    b: 65.4\n    b-mount: /b\n    c: 34.59\n    c-mount: /c\n")
    assert config.warnings == []
    parts = resolve(parse(config.sections["localfs"]), VolumeGroup("vg", 4 << 20, 10_000, 10_000))
    assert [p.extents for p in parts] == [1, 6540, 3459]


percent = st.floats(min_value=0.5, max_value=100, allow_nan=False).map(lambda x: round(x, 1))


@st.composite
def layouts(draw: st.DrawFn) -> LocalfsSpec:
    vg_shares = draw(st.lists(percent, min_size=0, max_size=4))
    scale = max(1.0, sum(vg_shares) / 100)
    vg_shares = [math.floor(s / scale * 10) / 10 for s in vg_shares]
    free_shares = draw(st.lists(percent, min_size=0, max_size=3))
    free_scale = max(1.0, sum(free_shares) / 100)
    free_shares = [math.floor(s / free_scale * 10) / 10 for s in free_shares]
    parts = [PartSpec(f"v{i}", Size("VG", s), "ext4", f"/v{i}", "defaults", None, None) for i, s in enumerate(vg_shares) if s > 0]
    parts += [PartSpec(f"f{i}", Size("FREE", s), "ext4", f"/f{i}", "defaults", None, None) for i, s in enumerate(free_shares) if s > 0]
    parts += [PartSpec("abs", Size("BYTES", draw(st.integers(1, 2**30))), "ext4", "/abs", "defaults", None, None)] if draw(st.booleans()) else []
    return LocalfsSpec(tuple(parts), None, (), False)


@settings(max_examples=300, deadline=None)
@given(layouts(), st.integers(1, 2**20), st.sampled_from([1 << 20, 4 << 20, 32 << 20]), st.integers(0, 100))
def test_plan_never_exceeds_the_vg_and_replans_the_same(spec: LocalfsSpec, total: int, extent: int, foreign_pct: int) -> None:
    free = total - total * foreign_pct // 100
    vg = VolumeGroup("vg", extent, total, free)
    try:
        parts = resolve(spec, vg)
    except PlanError:
        return  # refusing is always allowed; over-committing never is
    assert sum(p.extents for p in parts) <= free
    assert all(p.extents > 0 and p.bytes == p.extents * extent for p in parts)
    # Re-planning on the machine after the first run (our LVs now exist) changes nothing.
    used = sum(p.extents for p in parts)
    after = VolumeGroup("vg", extent, total, free - used, tuple((p.spec.name, p.extents) for p in parts))
    assert resolve(spec, after) == parts
