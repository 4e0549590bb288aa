"""The study's table: every arm's metrics and its paired difference from the reference arm.

Differences and macros are taken resample by resample (:mod:`raddino.eval.bootstrap`) from the
samples each arm's evaluation stored, after :func:`raddino.study.evaluation.check_pairing` has
confirmed that every arm was measured on the same test images with the same resamples. Written
as ``table.csv`` (one line per arm and metric, full precision), ``table.md`` and ``study.json``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from raddino.atomic import write_csv_atomic
from raddino.demo.document import Block, to_markdown
from raddino.eval.bootstrap import Estimate, mean_of, paired_difference
from raddino.eval.tables import (
    METRIC_NAMES,
    format_estimate,
    format_interval,
    format_percent,
    format_signed,
    write_json,
    write_text,
)
from raddino.study.evaluation import ArmResult, check_pairing
from raddino.study.spec import BINARY_METRICS, SEGMENT, MetricKey

CSV_HEADER = [
    "task", "target", "metric", "arm", "value", "low", "high", "difference", "difference_low",
    "difference_high", "difference_excludes_0", "undefined_resamples",
]  # fmt: skip


@dataclass
class TableRow:
    task: str
    target: str
    metric: str
    values: dict[str, Estimate]  # arm -> estimate
    differences: dict[str, Estimate] = field(default_factory=dict)  # arm - reference
    members: tuple[str, ...] = ()  # a macro's targets

    @property
    def key(self) -> MetricKey:
        return MetricKey(self.task, self.target, self.metric)


@dataclass
class StudyTable:
    arms: list[str]
    reference: str
    level: float
    n_resamples: int
    rows: list[TableRow]
    notes: list[str] = field(default_factory=list)

    def row(self, key: MetricKey) -> TableRow | None:
        return next((r for r in self.rows if r.key == key), None)

    def to_dict(self) -> dict:
        return {
            "arms": self.arms,
            "reference": self.reference,
            "interval_level": self.level,
            "n_resamples": self.n_resamples,
            "rows": [
                {
                    "task": r.task,
                    "target": r.target,
                    "metric": r.metric,
                    "members": list(r.members) or None,
                    "values": r.values,
                    "differences": {
                        f"{arm} - {self.reference}": d.to_difference_dict()
                        for arm, d in r.differences.items()
                    },
                }
                for r in self.rows
            ],
            "notes": self.notes,
        }


def metric_label(key: MetricKey) -> str:
    """``findings AUROC (linear)``, ``mean Dice (segmentation)``."""
    task = "segmentation" if key.task == SEGMENT else key.task
    return f"{key.target.replace('_', ' ')} {METRIC_NAMES.get(key.metric, key.metric)} ({task})"


def build_table(
    results: Sequence[ArmResult], reference: str, macros: dict[str, tuple[str, ...]]
) -> StudyTable:
    """Rows of every metric any arm has (the study's macros first), each arm's estimate and its
    paired difference from ``reference``."""
    check_pairing(results)
    arms = [r.arm for r in results]
    if reference not in arms:
        raise ValueError(f"the reference arm {reference!r} has no results")
    part = next(iter(results[0].pairing.values()))
    level, n_resamples = part["level"], part["n_resamples"]
    notes = list(dict.fromkeys(n for r in results for n in r.notes))
    keys = list(dict.fromkeys(row.key for r in results for row in r.rows))
    rows: list[TableRow] = []
    tasks = list(dict.fromkeys(task for task, _, _ in keys if task != SEGMENT))
    for task in tasks:
        for macro, members in macros.items():
            for metric in BINARY_METRICS:
                present = [m for m in members if (task, m, metric) in keys]
                if len(present) < len(members):
                    left_out = [m for m in members if m not in present]
                    notes.append(
                        f"macro {macro!r} ({task}) averages {len(present)} of its "
                        f"{len(members)} targets: {left_out} could not be probed"
                    )
                if not present:
                    continue
                values = {
                    r.arm: mean_of([r.row((task, m, metric)).estimate for m in present], level)
                    for r in results
                }
                rows.append(TableRow(task, macro, metric, values, members=tuple(present)))
    for key in keys:
        values = {r.arm: r.row(key).estimate for r in results if r.row(key) is not None}
        rows.append(TableRow(*key, values=values))
    for row in rows:
        base = row.values.get(reference)
        for arm, estimate in row.values.items():
            if arm != reference and base is not None:
                row.differences[arm] = paired_difference(estimate, base, level)
    return StudyTable(arms, reference, level, n_resamples, rows, list(dict.fromkeys(notes)))


# --------------------------------------------------------------------------- writing


def _number(value: float | None) -> str:
    return "" if value is None or not math.isfinite(value) else f"{value:.6g}"


def csv_rows(table: StudyTable) -> list[list[str]]:
    lines = []
    for row in table.rows:
        for arm in table.arms:
            e = row.values.get(arm)
            if e is None:
                continue
            d = row.differences.get(arm)
            lines.append(
                [
                    row.task,
                    row.target,
                    row.metric,
                    arm,
                    _number(e.value),
                    _number(e.low),
                    _number(e.high),
                    _number(d.value) if d else "",
                    _number(d.low) if d else "",
                    _number(d.high) if d else "",
                    ("yes" if d.excludes(0.0) else "no") if d else "",
                    str(e.undefined),
                ]
            )
    return lines


def difference_text(d: Estimate | None) -> str:
    """``+0.021 [-0.004, +0.045]``, `` *`` appended when the interval excludes 0."""
    if d is None:
        return ""
    text = format_interval(d.value, d.low, d.high, signed=True)
    return text + (" *" if d.excludes(0.0) else "")


def legend_text(table: StudyTable) -> str:
    level = format_percent(table.level)
    return (
        f"Each value: test metric [{level} CI over patients, {table.n_resamples} bootstrap "
        f"resamples]. Δ: the arm minus the reference arm {table.reference}, with the "
        f"{level} interval of that difference taken resample by resample (every arm is "
        "measured on the same test patients with the same resamples); * marks an interval "
        "that excludes 0. AUROC, AUPRC, R², Pearson r, Dice, IoU: higher is better; MAE: lower."
    )


def headline_block(table: StudyTable, metrics: Sequence[MetricKey], arms: dict[str, dict]) -> Block:
    """Arms as rows, each headline metric with its difference from the reference."""
    header = ["arm", "group", "images", "steps", "pre-train px", "eval px"]
    for key in metrics:
        header += [metric_label(key), "Δ"]
    rows = []
    for arm in table.arms:
        info = arms.get(arm, {})
        name = f"{arm} (reference)" if arm == table.reference else arm
        cells = [
            name,
            info.get("group", ""),
            str(info.get("train_images", "")),
            str(info.get("steps", "")),
            "" if info.get("random_init") else str(info.get("pretrain_size", "")),
            str(info.get("image_size", "")),
        ]
        for key in metrics:
            row = table.row(key)
            e = row.values.get(arm) if row else None
            cells += [
                format_estimate(e) if e else "n/a",
                difference_text(row.differences.get(arm)) if row else "",
            ]
        rows.append(cells)
    return Block("table", header=header, rows=rows)


def full_block(table: StudyTable) -> Block:
    """Every metric as a row, the arms as columns: ``value [CI] (Δ diff*)``."""
    header = ["task", "target", "metric", *table.arms]
    rows = []
    for row in table.rows:
        cells = [row.task, row.target, METRIC_NAMES.get(row.metric, row.metric)]
        for arm in table.arms:
            e = row.values.get(arm)
            cell = format_estimate(e) if e else "n/a"
            d = row.differences.get(arm)
            if d is not None:
                cell += f" (Δ {format_signed(d.value)}{'*' if d.excludes(0.0) else ''})"
            cells.append(cell)
        rows.append(cells)
    return Block("table", header=header, rows=rows)


def statements(table: StudyTable, metrics: Sequence[MetricKey]) -> list[str]:
    """One neutral sentence per arm and headline metric: the difference and whether its
    interval excludes 0 (null results are stated as such)."""
    lines = []
    for key in metrics:
        row = table.row(key)
        if row is None:
            lines.append(f"{metric_label(key)}: not measured (see the notes)")
            continue
        for arm, d in row.differences.items():
            if not math.isfinite(d.value):
                verdict = "undefined"
            elif d.excludes(0.0):
                verdict = "higher than the reference" if d.value > 0 else "lower than the reference"
            else:
                verdict = "no difference shown (the interval includes 0)"
            lines.append(
                f"{metric_label(key)}, {arm} - {table.reference}: {difference_text(d)}: {verdict}"
            )
    return lines


def write_table(
    table: StudyTable,
    out: Path,
    title: str,
    metrics: Sequence[MetricKey],
    arms: dict[str, dict],
) -> dict[str, Path]:
    """``table.csv``, ``table.md`` and ``study.json`` in ``out``."""
    blocks = [
        Block("p", legend_text(table)),
        Block("h2", "Headline metrics"),
        headline_block(table, metrics, arms),
        Block("h2", "Every metric"),
        full_block(table),
    ]
    if table.notes:
        blocks += [Block("h2", "Notes"), Block("list", items=table.notes)]
    return {
        "csv": write_csv_atomic(out / "table.csv", CSV_HEADER, csv_rows(table)),
        "markdown": write_text(out / "table.md", to_markdown(title, blocks)),
        "json": write_json(out / "study.json", {**table.to_dict(), "arm_settings": arms}),
    }
