"""A small hand-written SVG plot for the benchmarks' figures: panels stacked over one shared time
axis, each with lines or stacked areas, labelled axes with units, gridlines and a legend.

No plotting library: the figures are plain text the repository can diff, drawn from the
benchmark's own series. Figures meant to be compared get the same `x_max` and the same panel
`y_max` values, so equal heights mean equal numbers from one figure to the next. Every series is
one `<path>` inside `<g class="series" data-panel=... data-series=...>`, so a test (or a reader
of the source) finds each one by name.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Optional
from xml.sax.saxutils import escape, quoteattr

WIDTH = 960
LEFT, RIGHT = 78, 24  # room for the y tick labels and the rotated y-axis label
TOP = 36  # the figure's title and subtitle (each panel's own title sits in its gap)
PANEL_HEIGHT = 170
PANEL_GAP = 58  # each panel's title and legend sit in the gap above it
BOTTOM = 52  # x tick labels and the x-axis label
FONT = "DejaVu Sans, Helvetica, Arial, sans-serif"


@dataclass(frozen=True)
class Series:
    label: str
    values: Sequence[float]
    color: str


@dataclass(frozen=True)
class Panel:
    title: str
    y_label: str  # with its unit, e.g. "jobs" or "cores"
    y_max: float
    series: Sequence[Series]
    stacked: bool = False  # areas stacked in the order given (the first at the bottom)


def tick_step(span: float, count: int = 5) -> float:
    """A round step (1, 2, 2.5 or 5 x 10^k) cutting SPAN into about COUNT intervals, at most COUNT."""
    rough = span / count if span > 0 else 1.0
    exponent = math.floor(math.log10(rough))
    for step in (1, 2, 2.5, 5, 10):
        if step * 10.0**exponent >= rough * (1 - 1e-9):
            return step * 10.0**exponent
    return 10.0 ** (exponent + 1)


def nice_ceiling(value: float) -> float:
    """The axis top for data reaching VALUE: the first multiple of its tick step at or above it."""
    step = tick_step(value)
    return max(1, math.ceil(value / step - 1e-9)) * step


def ticks(top: float, count: int = 5) -> list[float]:
    """Evenly spaced round tick values from 0 to at most TOP, about COUNT intervals."""
    step = tick_step(top, count)
    return [i * step for i in range(int(top / step + 1e-9) + 1)]


def thinned(points: Sequence[tuple[float, float]]) -> list[tuple[float, float]]:
    """POINTS without the inner points of horizontal runs (the same line, fewer bytes)."""
    keep = [p for i, p in enumerate(points) if i in (0, len(points) - 1) or not (points[i - 1][1] == p[1] == points[i + 1][1])]
    return keep


def fmt(value: float) -> str:
    return f"{value:g}"


def _path(points: Sequence[tuple[float, float]]) -> str:
    return "M" + " L".join(f"{x:.1f},{y:.1f}" for x, y in points)


def figure(title: str, subtitle: str, x: Sequence[float], x_label: str, x_max: float, panels: Sequence[Panel],
           x_step: Optional[float] = None) -> str:
    """The SVG text of PANELS drawn over X (shared by every series, same length as each), from
    0 to X_MAX, x ticks every X_STEP (default: about 12 round steps). Values above a panel's
    y_max are drawn at its top edge."""
    for panel in panels:
        for series in panel.series:
            if len(series.values) != len(x):
                raise ValueError(f"series {series.label!r} has {len(series.values)} values for {len(x)} x values")
    plot_width = WIDTH - LEFT - RIGHT
    height = TOP + len(panels) * (PANEL_GAP + PANEL_HEIGHT) + BOTTOM
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{height}" viewBox="0 0 {WIDTH} {height}" '
           f'font-family="{FONT}" font-size="12">',
           f'<rect width="{WIDTH}" height="{height}" fill="#ffffff"/>',
           f'<text x="{LEFT}" y="22" font-size="16" font-weight="bold">{escape(title)}</text>',
           f'<text x="{LEFT}" y="42" fill="#444444">{escape(subtitle)}</text>']

    def px(value: float) -> float:
        return LEFT + min(max(value, 0.0), x_max) / x_max * plot_width

    x_ticks = [i * x_step for i in range(int(x_max / x_step + 1e-9) + 1)] if x_step else ticks(x_max, 12)
    for index, panel in enumerate(panels):
        top = TOP + index * (PANEL_GAP + PANEL_HEIGHT) + PANEL_GAP
        bottom = top + PANEL_HEIGHT

        def py(value: float, top: float = top, y_max: float = panel.y_max) -> float:
            return top + PANEL_HEIGHT - min(max(value, 0.0), y_max) / y_max * PANEL_HEIGHT

        out.append(f'<g class="panel" data-panel={quoteattr(panel.title)}>')
        out.append(f'<text x="{LEFT}" y="{top - 12}" font-size="14" font-weight="bold">{escape(panel.title)}</text>')
        for tick in ticks(panel.y_max):
            y = py(tick)
            out.append(f'<line x1="{LEFT}" x2="{WIDTH - RIGHT}" y1="{y:.1f}" y2="{y:.1f}" stroke="#e4e4e4"/>')
            out.append(f'<text x="{LEFT - 6}" y="{y + 4:.1f}" text-anchor="end" fill="#444444">{fmt(tick)}</text>')
        for tick in x_ticks:
            out.append(f'<line x1="{px(tick):.1f}" x2="{px(tick):.1f}" y1="{top}" y2="{bottom}" stroke="#eeeeee"/>')
        middle = top + PANEL_HEIGHT / 2
        out.append(f'<text x="18" y="{middle:.1f}" text-anchor="middle" transform="rotate(-90 18 {middle:.1f})">{escape(panel.y_label)}</text>')

        base = [0.0] * len(x)
        for series in panel.series:
            attrs = f'class="series" data-panel={quoteattr(panel.title)} data-series={quoteattr(series.label)}'
            if panel.stacked:
                upper = [b + v for b, v in zip(base, series.values)]
                outline = thinned([(px(t), py(v)) for t, v in zip(x, upper)])
                back = thinned([(px(t), py(v)) for t, v in zip(reversed(x), reversed(base))])
                out.append(f'<g {attrs}><path d="{_path(outline + back)} Z" fill="{series.color}" fill-opacity="0.9"/></g>')
                base = upper
            else:
                line = thinned([(px(t), py(v)) for t, v in zip(x, series.values)])
                out.append(f'<g {attrs}><path d="{_path(line)}" fill="none" stroke="{series.color}" stroke-width="1.5" '
                           f'stroke-linejoin="round"/></g>')
        out.append(f'<rect x="{LEFT}" y="{top}" width="{plot_width}" height="{PANEL_HEIGHT}" fill="none" stroke="#888888"/>')

        # The legend, right-aligned in the gap above the panel; a stacked panel lists its top area first.
        entries = list(reversed(panel.series)) if panel.stacked else list(panel.series)
        widths = [26 + 7 * len(s.label) for s in entries]
        lx = WIDTH - RIGHT - sum(widths)
        out.append('<g class="legend">')
        for series, width in zip(entries, widths):
            out.append(f'<rect x="{lx}" y="{top - 22}" width="12" height="12" fill="{series.color}"/>')
            out.append(f'<text x="{lx + 16}" y="{top - 12}">{escape(series.label)}</text>')
            lx += width
        out.append("</g>")
        out.append("</g>")

    last_bottom = TOP + len(panels) * (PANEL_GAP + PANEL_HEIGHT)
    for tick in x_ticks:
        out.append(f'<line x1="{px(tick):.1f}" x2="{px(tick):.1f}" y1="{last_bottom}" y2="{last_bottom + 5}" stroke="#888888"/>')
        out.append(f'<text x="{px(tick):.1f}" y="{last_bottom + 18}" text-anchor="middle" fill="#444444">{fmt(tick)}</text>')
    out.append(f'<text x="{LEFT + plot_width / 2:.1f}" y="{last_bottom + 40}" text-anchor="middle">{escape(x_label)}</text>')
    out.append("</svg>")
    return "\n".join(out) + "\n"
