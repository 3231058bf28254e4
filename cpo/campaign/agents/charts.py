"""The campaign report's charts: points with 95% interval error bars, drawn by matplotlib as deterministic SVG.

A figure is built with `matplotlib.figure.Figure` (no pyplot, no global backend) under its own rc settings:
text stays text (`svg.fonttype` none), a fixed hash salt and no date make the same numbers the same bytes, and
mathtext is off, so a `$` in a segment name is a dollar sign, not a formula. The page embeds each chart as an
image data URI: an image cannot run script, so no label from a user file can become markup.
"""

from __future__ import annotations

import base64
import io
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from cpo.core.errors import ConfigError

RC: dict[Any, Any] = {  # matplotlib's own settings, for these figures only
    "svg.fonttype": "none",
    "svg.hashsalt": "cpo-report",
    "svg.id": "chart",
    "text.parse_math": False,
    "font.family": "sans-serif",
    "font.sans-serif": ["DejaVu Sans", "Arial", "Helvetica"],
    "font.size": 9,
    "axes.spines.top": False,
    "axes.spines.right": False,
    "axes.edgecolor": "#8a93a3",
}
LABEL_CHARS = 44  # longer labels are cut (with an ellipsis): the tables beside each chart carry the full names
CI_GID = "ci-{}"  # the id of each point's error bar in the SVG (the tests count them)
MUTED, STRONG, BETTER, WORSE = "#7d8797", "#2b5cab", "#1f7a3d", "#b3261e"


@dataclass(frozen=True)
class Point:
    """One estimate with its 95% interval, in the unit the axis shows (percent, or percentage points)."""

    label: str
    value: float | None
    low: float | None
    high: float | None
    significant: bool = False
    lower_is_better: bool = False  # unsubscribes, bounces: a rise is harm


@contextmanager
def _figure(width: float, height: float, title: str) -> Iterator[Any]:
    """A new figure, titled, under the report's settings (they apply when it is saved, so save it inside)."""
    try:
        import matplotlib
        from matplotlib.figure import Figure
    except ImportError:
        raise ConfigError("the campaign report's charts need matplotlib: pip install matplotlib") from None
    with matplotlib.rc_context(RC):
        figure = Figure(figsize=(width, height), layout="constrained")
        figure.suptitle(title, x=0.01, ha="left", fontsize=10, fontweight="bold")
        yield figure


def _svg(figure: Any) -> bytes:
    out = io.BytesIO()
    figure.savefig(out, format="svg", metadata={"Date": None, "Creator": None})
    return out.getvalue()


def _short(label: str) -> str:
    return label if len(label) <= LABEL_CHARS else label[: LABEL_CHARS - 1] + "\u2026"


def _interval(axes: Any, index: int, at: float, point: Point, colour: str, horizontal: bool) -> None:
    """The point (drawn at `at` across the value axis), and its interval as an error bar (none if unknown)."""
    value = float(point.value or 0.0)
    x, y = (value, at) if horizontal else (at, value)
    if point.low is None or point.high is None:
        axes.plot([x], [y], "o", color=colour, markersize=5)
        return
    spread = [[max(value - point.low, 0.0)], [max(point.high - value, 0.0)]]
    errors = {"xerr": spread} if horizontal else {"yerr": spread}
    bars = axes.errorbar([x], [y], **errors, fmt="o", color=colour, capsize=3, markersize=5, elinewidth=1.4)
    bars.lines[2][0].set_gid(CI_GID.format(index))


def rate_chart(points: Sequence[Point], title: str, unit: str = "%") -> bytes:
    """One rate per arm (a bar to the point), each with its 95% interval as an error bar: SVG bytes."""
    shown = [p for p in points if p.value is not None]
    with _figure(max(4.2, 1.1 * len(shown) + 1.6), 3.0, title) as figure:
        axes = figure.add_subplot()
        for index, point in enumerate(shown):
            value = float(point.value or 0.0)
            axes.bar([index], [value], width=0.55, color="#dbe4f3", edgecolor="#b9c7e0")
            _interval(axes, index, index, point, STRONG, horizontal=False)
            axes.annotate(f"{value:.1f}{unit}", (index, value), xytext=(8, 2), textcoords="offset points", fontsize=8)
        axes.set_xticks(range(len(shown)), [_short(p.label) for p in shown])
        axes.set_ylabel(f"rate ({unit}), 95% interval")
        axes.set_ylim(bottom=0)
        axes.grid(axis="y", color="#e6e9ee", linewidth=0.8)
        axes.set_axisbelow(True)
        return _svg(figure)


def lift_chart(points: Sequence[Point], title: str, axis_label: str) -> bytes:
    """A forest plot: each row's lift and its 95% interval against a line at no difference: SVG bytes.

    Significant rows are coloured (green for a change in the good direction, red for one in the bad: for
    unsubscribes and bounces a rise is bad); the rest are grey."""
    with _figure(7.6, 0.9 + 0.3 * max(len(points), 1), title) as figure:
        axes = figure.add_subplot()
        rows = list(reversed(points))  # the first point at the top
        for row, point in enumerate(rows):
            if point.value is not None:
                good = (point.value > 0) != point.lower_is_better
                colour = (BETTER if good else WORSE) if point.significant else MUTED
                _interval(axes, len(rows) - 1 - row, row, point, colour, horizontal=True)
        axes.axvline(0, color="#1d2330", linewidth=0.9)
        axes.set_yticks(range(len(rows)), [_short(p.label) for p in rows])
        axes.set_ylim(-0.7, len(rows) - 0.3)
        axes.set_xlabel(axis_label)
        axes.grid(axis="x", color="#e6e9ee", linewidth=0.8)
        axes.set_axisbelow(True)
        return _svg(figure)


def data_uri(svg: bytes) -> str:
    """An SVG as an image data URI, for an <img> that needs nothing fetched."""
    return "data:image/svg+xml;base64," + base64.b64encode(svg).decode("ascii")
