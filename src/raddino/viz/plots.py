"""Pre-training curves: one panel per metric, one line per run, from ``RUN/metrics.jsonl``
(read by :func:`raddino.ssl.metrics.read_metrics`)."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

from raddino.ssl.metrics import read_metrics
from raddino.viz.tokens import save_figure_atomic

DEFAULT_KEYS = ("loss", "dino_global", "dino_local", "ibot", "koleo", "teacher_entropy")


def smooth(values: np.ndarray, weight: float) -> np.ndarray:
    """TensorBoard-style exponential moving average (debiased); ``weight`` 0 leaves values as is.

    Non-finite values (a diverged step) are passed through and do not enter the average.
    """
    if weight <= 0:
        return values
    result = np.empty_like(values)
    average, norm = 0.0, 0.0
    for index, value in enumerate(values):
        if math.isfinite(value):
            average = weight * average + (1 - weight) * value
            norm = weight * norm + (1 - weight)
            result[index] = average / norm
        else:
            result[index] = value
    return result


def plot_training_curves(
    runs: Mapping[str, Path],
    out: Path,
    keys: Sequence[str] = DEFAULT_KEYS,
    *,
    smoothing: float = 0.0,
) -> Path:
    """Plot ``keys`` against ``step`` for each run (label -> run directory or metrics.jsonl).

    Keys that no run logged (e.g. ``ibot`` with its weight at 0) get no panel; a run lacking a
    key is left out of that panel. ``smoothing`` in [0, 1) draws an exponential moving average
    over a faint raw curve. The format follows ``out``'s suffix; written atomically.
    """
    if not runs:
        raise ValueError("no runs to plot")
    if not 0.0 <= smoothing < 1.0:
        raise ValueError(f"smoothing must be in [0, 1), got {smoothing}")
    series: dict[str, dict[str, tuple[np.ndarray, np.ndarray]]] = {key: {} for key in keys}
    for label, run in runs.items():
        rows = sorted(read_metrics(run, missing_ok=False), key=lambda row: row["step"])
        for key in keys:
            points = [
                (row["step"], float(row[key]))
                for row in rows
                if isinstance(row.get(key), (int, float)) and not isinstance(row[key], bool)
            ]
            if points:
                table = np.asarray(points, dtype=np.float64)
                steps, values = table[:, 0], table[:, 1]
                series[key][label] = (steps, values)
    present = [key for key in keys if series[key]]
    if not present:
        raise ValueError(f"none of the runs logged any of {list(keys)}")

    columns = min(3, len(present))
    rows_count = math.ceil(len(present) / columns)
    figure = Figure(figsize=(4.2 * columns, 3.0 * rows_count), layout="constrained")
    axes = figure.subplots(rows_count, columns, squeeze=False)
    colours = {label: f"C{index % 10}" for index, label in enumerate(runs)}
    for axis in axes.flat[len(present) :]:
        axis.set_axis_off()
    for axis, key in zip(axes.flat, present, strict=False):
        for label, (steps, values) in series[key].items():
            if smoothing > 0:
                axis.plot(steps, values, color=colours[label], alpha=0.25, linewidth=0.8)
            axis.plot(steps, smooth(values, smoothing), color=colours[label], label=label)
        axis.set_title(key, fontsize=10)
        axis.set_xlabel("step")
        axis.grid(alpha=0.3)
    if len(runs) > 1:
        handles = [Line2D([], [], color=colours[label], label=label) for label in runs]
        figure.legend(handles=handles, loc="outside right upper", fontsize=8)
    return save_figure_atomic(figure, Path(out))
