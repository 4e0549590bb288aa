"""Trend plots of a study: a metric against a setting (pre-training images, resolution, steps),
one line per group of arms, each point with its confidence interval.

One panel per metric, side by side. Arms that are not on the axis (random weights) appear as a
horizontal dashed line with their interval shaded, so every point can be read against them.
Written as PNG and SVG (the SVG for a paper), atomically.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from matplotlib.figure import Figure
from matplotlib.ticker import FixedLocator, NullLocator

from raddino.viz.tokens import save_figure_atomic

COLOURS = ("#1b6ca8", "#c0392b", "#27864a", "#8e44ad", "#d68910", "#555555")
MARKERS = ("o", "s", "^", "D", "v", "P")


@dataclass(frozen=True)
class TrendPoint:
    """One arm: its x, the metric ``value`` and its interval (None: no interval)."""

    x: float
    value: float
    low: float | None = None
    high: float | None = None
    label: str = ""
    reference: bool = False  # the study's reference arm: drawn with a ring


@dataclass(frozen=True)
class TrendSeries:
    name: str
    points: tuple[TrendPoint, ...]


@dataclass(frozen=True)
class Level:
    """A horizontal line: an arm off the x axis (e.g. random weights)."""

    name: str
    value: float
    low: float | None = None
    high: float | None = None


@dataclass(frozen=True)
class TrendPanel:
    title: str  # the metric
    series: tuple[TrendSeries, ...]
    levels: tuple[Level, ...] = field(default_factory=tuple)


def _finite(value: float | None) -> bool:
    return value is not None and math.isfinite(value)


def trend_figure(
    panels: Sequence[TrendPanel], x_label: str, log_x: bool = False, title: str = ""
) -> Figure:
    """The figure: one panel per metric; lines connect each series' points in x order."""
    if not panels or not any(s.points for p in panels for s in p.series):
        raise ValueError("a trend plot needs at least one panel with one point")
    figure = Figure(figsize=(4.2 * len(panels) + 0.6, 3.8), layout="constrained")
    axes_list = figure.subplots(1, len(panels), squeeze=False)[0]
    xs = sorted({pt.x for p in panels for s in p.series for pt in s.points})
    log_x = log_x and all(x > 0 for x in xs)
    span = (xs[-1] - xs[0]) or 1.0
    for axes, panel in zip(axes_list, panels, strict=True):
        for i, series in enumerate(panel.series):
            points = sorted((p for p in series.points if _finite(p.value)), key=lambda p: p.x)
            if not points:
                continue
            colour, marker = COLOURS[i % len(COLOURS)], MARKERS[i % len(MARKERS)]
            # series side by side at each x, so that their intervals do not hide each other
            shift = (i - (len(panel.series) - 1) / 2) * 0.012
            x = [p.x * 10**shift if log_x else p.x + shift * span for p in points]
            y = [p.value for p in points]
            below = [p.value - p.low if _finite(p.low) else 0.0 for p in points]
            above = [p.high - p.value if _finite(p.high) else 0.0 for p in points]
            axes.errorbar(
                x,
                y,
                yerr=[below, above],
                color=colour,
                marker=marker,
                markersize=5,
                linewidth=1.5,
                capsize=3,
                label=series.name,
            )
            for p, at in zip(points, x, strict=True):
                if p.reference:
                    axes.plot(
                        [at],
                        [p.value],
                        "o",
                        markersize=11,
                        markerfacecolor="none",
                        markeredgecolor="#222222",
                        markeredgewidth=1.0,
                    )
        for j, level in enumerate(panel.levels):
            if not _finite(level.value):
                continue
            colour = COLOURS[(len(panel.series) + j) % len(COLOURS)]
            axes.axhline(level.value, color=colour, linestyle="--", linewidth=1.1, label=level.name)
            if _finite(level.low) and _finite(level.high):
                axes.axhspan(level.low, level.high, color=colour, alpha=0.12, linewidth=0)
        if log_x:
            axes.set_xscale("log")
            axes.xaxis.set_minor_locator(NullLocator())
        axes.xaxis.set_major_locator(FixedLocator(xs))
        axes.set_xticklabels([f"{x:g}" for x in xs], fontsize=8)
        axes.set_xlabel(x_label)
        axes.set_title(panel.title, fontsize=10)
        axes.grid(color="#e3e3e3", linewidth=0.6)
    handles, labels = axes_list[0].get_legend_handles_labels()
    if any(p.reference for pa in panels for s in pa.series for p in s.points):
        from matplotlib.lines import Line2D

        ring = Line2D(
            [],
            [],
            marker="o",
            markersize=9,
            markerfacecolor="none",
            markeredgecolor="#222222",
            linestyle="none",
        )
        handles, labels = [*handles, ring], [*labels, "reference arm"]
    figure.legend(
        handles,
        labels,
        loc="outside lower center",
        ncols=min(4, len(labels) or 1),
        fontsize=8,
        frameon=False,
    )
    if title:
        figure.suptitle(title, fontsize=11)
    return figure


def write_trend_plot(
    stem: str | Path,
    panels: Sequence[TrendPanel],
    x_label: str,
    log_x: bool = False,
    title: str = "",
) -> list[Path]:
    """``STEM.png`` and ``STEM.svg``; returns both paths."""
    figure = trend_figure(panels, x_label, log_x, title)
    stem = Path(stem)
    return [save_figure_atomic(figure, stem.with_suffix(f".{kind}")) for kind in ("png", "svg")]
