"""Markdown and JSON output of evaluation results."""

from __future__ import annotations

import json
import math
import os
from collections.abc import Sequence
from pathlib import Path

from raddino.atomic import write_bytes_atomic
from raddino.eval.bootstrap import Estimate

METRIC_NAMES = {
    "auroc": "AUROC",
    "auprc": "AUPRC",
    "mae": "MAE",
    "r2": "R²",
    "pearson_r": "Pearson r",
    "dice": "Dice",
    "iou": "IoU",
}
PROTOCOL_NAMES = {
    "linear": "linear probe (logistic regression; ridge regression for continuous targets)",
    "knn": "weighted k-NN",
}


def format_number(value: float | None, digits: int = 3) -> str:
    """``0.912``; ``n/a`` for a missing or non-finite value."""
    if value is None or not math.isfinite(value):
        return "n/a"
    return f"{value:.{digits}f}"


def format_signed(value: float | None, digits: int = 3) -> str:
    """A difference with its sign: ``+0.031``, ``-0.004``; ``n/a`` when missing or non-finite."""
    if value is None or not math.isfinite(value):
        return "n/a"
    return f"{value:+.{digits}f}"


def format_interval(
    value: float | None,
    low: float | None,
    high: float | None,
    digits: int = 3,
    *,
    signed: bool = False,
) -> str:
    """``0.912 [0.890, 0.931]`` (``+0.021 [-0.004, +0.045]`` when ``signed``); the value alone
    when either end of the interval is missing or non-finite."""
    number = format_signed if signed else format_number
    text = number(value, digits)
    if low is None or high is None or not (math.isfinite(low) and math.isfinite(high)):
        return text
    return f"{text} [{number(low, digits)}, {number(high, digits)}]"


def format_estimate(estimate: Estimate, digits: int = 3) -> str:
    """``0.912 [0.890, 0.931]``."""
    return format_interval(estimate.value, estimate.low, estimate.high, digits)


def format_percent(fraction: float | None, digits: int = 0) -> str:
    """A fraction as a percentage: ``95%`` (``41.7%`` with ``digits=1``); ``n/a`` when missing."""
    if fraction is None or not math.isfinite(fraction):
        return "n/a"
    return f"{fraction:.{digits}%}"


def format_counts(counts: dict[str, int]) -> str:
    """Images of one split: ``35 (17/18)`` (known, then positive/negative) for a binary target,
    ``35`` otherwise."""
    if "positive" in counts:
        return f"{counts['known']} ({counts['positive']}/{counts['negative']})"
    return str(counts["known"])


def format_hyper(hyper: dict[str, float]) -> str:
    parts = []
    for key, value in hyper.items():
        if key.startswith("val_"):
            continue
        parts.append(f"{key}={value:g}")
    return ", ".join(parts)


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """A GitHub-flavoured Markdown table; ``|`` in cells is escaped."""

    def line(cells: Sequence[str]) -> str:
        return "| " + " | ".join(str(c).replace("|", "\\|") for c in cells) + " |"

    return "\n".join([line(header), line(["---"] * len(header)), *(line(r) for r in rows)])


def to_jsonable(value: object) -> object:
    """Estimates, numpy scalars, non-finite floats (-> null), paths, containers -> JSON types."""
    if isinstance(value, Estimate):
        return value.to_dict()
    if isinstance(value, dict):
        return {str(k): to_jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_jsonable(v) for v in value]
    if isinstance(value, os.PathLike):
        return str(value)
    if hasattr(value, "item") and callable(value.item):  # numpy / torch scalars
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def write_json(path: str | Path, data: object) -> Path:
    """``data`` as indented JSON (:func:`to_jsonable`), written atomically."""
    return write_bytes_atomic(path, (json.dumps(to_jsonable(data), indent=2) + "\n").encode())


def write_text(path: str | Path, text: str) -> Path:
    """``text`` ending in one newline, written atomically."""
    return write_bytes_atomic(path, (text if text.endswith("\n") else text + "\n").encode())


def interval_note(n_resamples: int, level: float) -> str:
    return (
        f"Intervals: {format_percent(level)} percentile bootstrap over {n_resamples} resamples "
        "of test patients (all images of a drawn patient)."
    )
