"""A forest plot of paired differences: one row per metric, one marker per comparison.

Every metric drawn here is oriented so that higher is better (AUROC, AUPRC, R^2, Dice, hit
rate), so a point right of the zero line favours the first encoder of its comparison. Intervals
are drawn as given (paired bootstrap percentiles); a filled marker means the interval excludes 0.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from matplotlib.figure import Figure

from raddino.atomic import write_atomic

COLOURS = ("#1b6ca8", "#c0392b", "#27864a", "#8e44ad", "#d68910")


@dataclass(frozen=True)
class Difference:
    """``value`` [``low``, ``high``] of one paired difference; bounds may be None (no CI)."""

    value: float
    low: float | None = None
    high: float | None = None

    @property
    def excludes_zero(self) -> bool:
        return self.low is not None and self.high is not None and (self.low > 0 or self.high < 0)


@dataclass(frozen=True)
class ForestRow:
    """One metric (``label``) and its difference for each comparison name (missing: not drawn)."""

    label: str
    differences: dict[str, Difference]


def forest_figure(rows: list[ForestRow], comparisons: list[str], title: str = "") -> Figure:
    """The figure: rows top to bottom in the given order, comparisons offset vertically."""
    if not rows or not comparisons:
        raise ValueError("a forest plot needs at least one row and one comparison")
    height = 1.2 + 0.42 * len(rows) * max(1, min(len(comparisons), 3)) / 1.6
    figure = Figure(figsize=(8.0, height), layout="constrained")
    axes = figure.add_subplot()
    n = len(comparisons)
    spread = 0.6 / max(n, 1)
    for c, name in enumerate(comparisons):
        colour = COLOURS[c % len(COLOURS)]
        label: str | None = name  # the legend names each comparison once
        for r, row in enumerate(rows):
            d = row.differences.get(name)
            if d is None:
                continue
            y = r + (c - (n - 1) / 2) * spread
            if d.low is not None and d.high is not None:
                axes.plot([d.low, d.high], [y, y], color=colour, linewidth=1.6)
            face = colour if d.excludes_zero else "white"
            axes.plot(
                [d.value], [y], "o", markersize=6, color=colour, markerfacecolor=face, label=label
            )
            label = None
    axes.axvline(0.0, color="#555555", linewidth=0.8, linestyle="--")
    axes.set_yticks(range(len(rows)), [row.label for row in rows])
    axes.set_ylim(len(rows) - 0.5, -0.5)
    axes.set_xlabel("paired difference (right of 0: the first encoder of the comparison is better)")
    axes.grid(axis="x", color="#dddddd", linewidth=0.6)
    axes.legend(loc="best", fontsize=8, frameon=True)
    if title:
        axes.set_title(title, fontsize=10)
    return figure


def write_forest_plot(
    path: str | Path, rows: list[ForestRow], comparisons: list[str], title: str = ""
) -> Path:
    """Draw and write the plot atomically (PNG, or SVG by the suffix); returns the path."""
    figure = forest_figure(rows, comparisons, title)
    suffix = Path(path).suffix.lower().lstrip(".") or "png"
    return write_atomic(Path(path), lambda tmp: figure.savefig(tmp, format=suffix, dpi=130))
