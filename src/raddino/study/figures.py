"""The study's plots: each ``plots`` entry of the study file as a trend plot
(:mod:`raddino.viz.trends`), and a forest plot of every arm's difference from the reference
(:mod:`raddino.viz.forest`). PNG for the report, SVG for a paper."""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

from raddino.study.plan import ArmPlan
from raddino.study.spec import X_AXES, MetricKey, Plot, StudySpec
from raddino.study.table import StudyTable, metric_label

LOWER_IS_BETTER = ("mae",)


def _bound(value: float) -> float | None:
    return float(value) if math.isfinite(value) else None


def trend_panels(plot: Plot, plans: Sequence[ArmPlan], table: StudyTable, reference: str):
    """One panel per metric: arms with a ``group`` as lines over ``plot.x``, arms with random
    weights as horizontal levels. Arms with neither are not drawn (they are in the table)."""
    from raddino.viz.trends import Level, TrendPanel, TrendPoint, TrendSeries

    panels = []
    groups = plot.series or tuple(
        dict.fromkeys(g for p in plans if not p.arm.random_init for g in p.arm.groups)
    )
    for key in plot.metrics:
        row = table.row(key)
        if row is None:
            continue
        series = []
        for group in groups:
            points = []
            for p in plans:
                e = row.values.get(p.name)
                if group not in p.arm.groups or p.arm.random_init or e is None:
                    continue
                points.append(
                    TrendPoint(
                        p.x(plot.x),
                        e.value,
                        _bound(e.low),
                        _bound(e.high),
                        p.name,
                        reference=p.name == reference,
                    )
                )
            series.append(TrendSeries(group, tuple(points)))
        levels = tuple(
            Level(f"{p.name} (random weights)", e.value, _bound(e.low), _bound(e.high))
            for p in plans
            if p.arm.random_init and (e := row.values.get(p.name)) is not None
        )
        panels.append(TrendPanel(metric_label(key), tuple(series), levels))
    return panels


def draw_plots(
    spec: StudySpec, plans: Sequence[ArmPlan], table: StudyTable, folder: Path
) -> tuple[list[dict], list[str]]:
    """Write every plot; returns their listing (``png``/``svg`` relative to the study folder,
    a caption) and notes on plots that had nothing to draw."""
    from raddino.viz.trends import write_trend_plot

    folder.mkdir(parents=True, exist_ok=True)
    figures, notes = [], []
    for plot in spec.plots:
        panels = [p for p in trend_panels(plot, plans, table, spec.reference) if p.series]
        if not any(s.points for p in panels for s in p.series):
            notes.append(f"plot {plot.name!r}: no arm has a group to draw a line of; skipped")
            continue
        png, svg = write_trend_plot(
            folder / plot.name, panels, X_AXES[plot.x], plot.log_x, plot.title
        )
        caption = plot.title or f"{', '.join(p.title for p in panels)} against {X_AXES[plot.x]}"
        caption += (
            f" ({format_level(table.level)} intervals over test patients; one line per group "
            "of arms, dashed: random weights)"
        )
        figures.append(_listing(plot.name, png, svg, folder, caption))
    forest = forest_plot(spec, table, folder)
    if forest is not None:
        figures.append(forest)
    return figures, notes


def format_level(level: float) -> str:
    return f"{level:.0%}"


def forest_plot(spec: StudySpec, table: StudyTable, folder: Path) -> dict | None:
    """Each arm's paired difference from the reference, one colour per headline metric (those
    where higher is better, so right of 0 always means better than the reference)."""
    from raddino.viz.forest import Difference, ForestRow, write_forest_plot

    keys: list[MetricKey] = [k for k in spec.metrics if k.metric not in LOWER_IS_BETTER]
    arms = [a for a in table.arms if a != table.reference]
    if not keys or not arms:
        return None
    rows = []
    for arm in arms:
        differences = {}
        for key in keys:
            row = table.row(key)
            d = row.differences.get(arm) if row else None
            if d is not None and math.isfinite(d.value):
                differences[metric_label(key)] = Difference(d.value, _bound(d.low), _bound(d.high))
        rows.append(ForestRow(f"{arm} - {table.reference}", differences))
    comparisons = [metric_label(k) for k in keys]
    title = f"difference from the reference arm {table.reference}"
    png = write_forest_plot(folder / "differences.png", rows, comparisons, title)
    svg = write_forest_plot(folder / "differences.svg", rows, comparisons, title)
    caption = (
        f"Each arm minus the reference {table.reference}, paired over the same test patients "
        f"and resamples ({format_level(table.level)} intervals; filled: the interval excludes 0)"
    )
    return _listing("differences", png, svg, folder, caption)


def _listing(name: str, png: Path, svg: Path, folder: Path, caption: str) -> dict:
    root = folder.parent
    return {
        "name": name,
        "png": str(png.relative_to(root)),
        "svg": str(svg.relative_to(root)),
        "caption": caption,
    }
