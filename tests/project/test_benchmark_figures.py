"""The benchmarks' SVG figures: the plot writer draws well-formed SVG with the series it was given,
where they belong, and the day simulation writes one figure per policy, linked from its section,
all on the same axes; and the simulation behind them drives the planner as the loop does."""

from __future__ import annotations

import re
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from tests.project.test_benchmarks_smoke import SMOKE_TIMEOUT

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "benchmarks"))
import _svgplot as svgplot  # noqa: E402

SVG = "{http://www.w3.org/2000/svg}"


def points(path_d: str) -> list[tuple[float, float]]:
    return [(float(x), float(y)) for x, y in re.findall(r"(-?[\d.]+),(-?[\d.]+)", path_d)]


def series_paths(root: ET.Element) -> dict[tuple[str, str], str]:
    """(panel, series) -> the series' path data."""
    found = {}
    for group in root.iter(f"{SVG}g"):
        if group.get("class") == "series":
            path = group.find(f"{SVG}path")
            assert path is not None
            found[group.get("data-panel", ""), group.get("data-series", "")] = path.get("d", "")
    return found


def texts(root: ET.Element) -> list[str]:
    return [t.text or "" for t in root.iter(f"{SVG}text")]


def small_figure() -> str:
    x = [0.0, 1.0, 2.0, 3.0, 4.0]
    panels = [
        svgplot.Panel("Queue", "waiting jobs", 10, [svgplot.Series("waiting", [0, 5, 10, 5, 0], "#1f77b4")]),
        svgplot.Panel("Workers", "workers (VMs)", 8, [svgplot.Series("busy", [1, 2, 3, 2, 1], "#2ca02c"),
                                                      svgplot.Series("idle & <draining>", [1, 1, 1, 1, 1], "#f2b134")], stacked=True),
    ]
    return svgplot.figure("A day", "two panels", x, "time (hours)", 4.0, panels)


def test_figure_is_well_formed_svg_with_every_series_in_its_panel() -> None:
    root = ET.fromstring(small_figure())
    assert root.tag == f"{SVG}svg"
    paths = series_paths(root)
    assert set(paths) == {("Queue", "waiting"), ("Workers", "busy"), ("Workers", "idle & <draining>")}
    # Axis labels with units, the x label, and a legend entry per series (escaped text reads back as given).
    labels = texts(root)
    for expected in ("waiting jobs", "workers (VMs)", "time (hours)", "waiting", "busy", "idle & <draining>", "A day"):
        assert expected in labels


def test_line_points_land_on_the_axes() -> None:
    root = ET.fromstring(small_figure())
    line = points(series_paths(root)["Queue", "waiting"])
    assert len(line) == 5
    xs = [p[0] for p in line]
    assert xs == sorted(xs) and xs[0] == svgplot.LEFT and xs[-1] == svgplot.WIDTH - svgplot.RIGHT
    top = svgplot.TOP + svgplot.PANEL_GAP
    bottom = top + svgplot.PANEL_HEIGHT
    assert line[0][1] == bottom and line[-1][1] == bottom  # 0 at the bottom edge
    assert line[2][1] == top  # the panel's y_max at the top edge
    assert line[1][1] == pytest.approx((top + bottom) / 2, abs=0.1)  # half of y_max halfway up


def test_stacked_areas_sit_on_each_other() -> None:
    root = ET.fromstring(small_figure())
    paths = series_paths(root)
    top = svgplot.TOP + 2 * svgplot.PANEL_GAP + svgplot.PANEL_HEIGHT
    scale = svgplot.PANEL_HEIGHT / 8
    busy, idle = points(paths["Workers", "busy"]), points(paths["Workers", "idle & <draining>"])
    # The upper outline of the second area is busy + idle (at x = 2: 3 + 1 = 4 of 8); its lower one is busy's top.
    assert idle[2][1] == pytest.approx(top + svgplot.PANEL_HEIGHT - 4 * scale, abs=0.1)
    assert busy[2][1] == pytest.approx(top + svgplot.PANEL_HEIGHT - 3 * scale, abs=0.1)
    assert (busy[2][0], busy[2][1]) in idle[5:]


def test_flat_runs_keep_their_ends_only() -> None:
    assert svgplot.thinned([(0, 2), (1, 2), (2, 2), (3, 2), (4, 5)]) == [(0, 2), (3, 2), (4, 5)]
    assert svgplot.thinned([(0, 1), (1, 2), (2, 1)]) == [(0, 1), (1, 2), (2, 1)]


def test_a_series_of_the_wrong_length_is_refused() -> None:
    with pytest.raises(ValueError, match="'short' has 2 values for 3 x values"):
        svgplot.figure("t", "s", [0, 1, 2], "x", 2, [svgplot.Panel("p", "y", 1, [svgplot.Series("short", [0, 1], "#000000")])])


@pytest.mark.parametrize(("value", "top"), [(270, 300), (97, 100), (12, 12.5), (0, 1), (3, 3)])
def test_axis_tops_are_round(value: float, top: float) -> None:
    assert svgplot.nice_ceiling(value) == pytest.approx(top)
    assert svgplot.ticks(svgplot.nice_ceiling(value))[-1] == pytest.approx(top)


@pytest.mark.integration
def test_the_day_simulation_draws_one_figure_per_policy_on_shared_axes(tmp_path: Path) -> None:
    output = tmp_path / "BENCHMARKS.md"
    done = subprocess.run([sys.executable, str(REPO / "benchmarks/scale_sim.py"), "--smoke", "--output", str(output)],
                          capture_output=True, text=True, timeout=SMOKE_TIMEOUT, cwd=REPO)
    assert done.returncode == 0, done.stderr[-2000:]
    links = sorted(set(re.findall(r"\]\((benchmarks/figures/[^)]+\.svg)\)", output.read_text())))
    assert links == [f"benchmarks/figures/scale-day-{policy}-{size}.svg" for policy in ("elastiq", "vfarm") for size in (100, 30)]
    axes = set()
    for link in links:
        root = ET.parse(tmp_path / link).getroot()
        panels = {panel for panel, _ in series_paths(root)}
        assert {name for _, name in series_paths(root)} == {"waiting jobs", "busy", "idle", "draining", "booting", "lost", "idle cores"}
        assert len(panels) == 3
        # The tick labels are the axes: every figure must show the same ones.
        axes.add(tuple(t for t in texts(root) if re.fullmatch(r"[\d.]+", t)))
    assert len(axes) == 1


def test_the_simulated_planner_gives_idle_workers_back_as_the_loop_does() -> None:
    """The simulation drives the planner as the scaler's loop does (with what the previous cycle
    saw), so the day ends with every worker drained and terminated, not kept until the time limit."""
    import scale_sim

    jobs = scale_sim.trace(3, 2.0, 1, 20)
    sim = scale_sim.simulate(scale_sim.VfarmPolicy(), jobs, scale_sim.boot_times(3), 14)
    assert len(sim.done) == len(jobs) and sim.finished()
    assert not sim.vms, f"{len(sim.vms)} worker(s) never given back"
    assert sim.samples["time"][-1] < 14 * 3600
