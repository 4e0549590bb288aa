"""The demo's numbers: paired differences from the comparison, the findings macro, examples.

``raddino compare`` gives each encoder's metric with its bootstrap interval and the difference
from the first encoder. The demo also wants differences from the *random* encoder and a macro
AUROC over the seven findings only (compare's macro row averages every binary target, ``sex``
included). Every encoder's estimates come from the same patient resamples, so both are computed
resample by resample by :mod:`raddino.eval.bootstrap`, the functions compare uses for its own
differences and macros.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from raddino.eval.bootstrap import Estimate, mean_of, paired_difference
from raddino.eval.compare import CompareReport
from raddino.eval.tables import format_number, format_percent, format_signed

MACRO_TARGET = "findings macro"
LINEAR = "linear"
SEGMENT = "segment (linear)"


def estimate_dict(estimate: Estimate) -> dict[str, float | None]:
    return estimate.to_dict()


def difference(a: Estimate, b: Estimate, level: float) -> dict:
    """a - b with its paired-bootstrap interval, as JSON; without an interval when the two lack
    common resamples (estimates without samples)."""
    if a.samples.shape != b.samples.shape or a.samples.size == 0:
        return Estimate(a.value - b.value, np.nan, np.nan).to_difference_dict()
    return paired_difference(a, b, level).to_difference_dict()


def comparison_pairs(labels: list[str], random_label: str) -> list[tuple[str, str]]:
    """(a, b) pairs reported as a - b: each learned encoder minus random, then the reference
    minus each other learned encoder (the ablation)."""
    learned = [label for label in labels if label != random_label]
    pairs = [(label, random_label) for label in learned if random_label in labels]
    pairs += [(learned[0], other) for other in learned[1:]]
    return pairs


def row_summary(
    task: str,
    target: str,
    metric: str,
    values: dict[str, Estimate],
    pairs: list[tuple[str, str]],
    level: float,
) -> dict:
    return {
        "task": task,
        "target": target,
        "metric": metric,
        "values": {label: estimate_dict(e) for label, e in values.items()},
        "differences": {
            f"{a} - {b}": difference(values[a], values[b], level)
            for a, b in pairs
            if a in values and b in values
        },
    }


def summarise_comparison(
    report: CompareReport,
    findings: list[str],
    random_label: str,
    dropped: dict[str, str],
    pairs: list[tuple[str, str]] | None = None,
) -> dict:
    """JSON-able rows (compare's and the findings macro) with differences, and the headline.

    ``pairs``: the (a, b) differences to report, kept where both encoders ran (default:
    :func:`comparison_pairs`); the headline compares the first encoder with random and with
    every other encoder it is paired with."""
    labels = [encoder["label"] for encoder in report.encoders]
    level = report.level
    if pairs is None:
        pairs = comparison_pairs(labels, random_label)
    pairs = [(a, b) for a, b in pairs if a in labels and b in labels]
    rows = [
        row_summary(r.task, r.target, r.metric, r.values, pairs, level)
        for r in report.rows
        if r.target != "macro"  # compare's macro includes sex; the findings macro replaces it
    ]
    macros: dict[tuple[str, str], dict[str, Estimate]] = {}
    for task in dict.fromkeys(r.task for r in report.rows if not r.task.startswith("segment")):
        for metric in ("auroc", "auprc"):
            per = [r for r in report.rows if r.task == task and r.metric == metric]
            per = [r for r in per if r.target in findings]
            if per:
                values = {lab: mean_of([r.values[lab] for r in per], level) for lab in labels}
                macros[(task, metric)] = values
                rows.append(row_summary(task, MACRO_TARGET, metric, values, pairs, level))
    mean_dice = next(
        (
            r.values
            for r in report.rows
            if r.task == SEGMENT and r.target == "mean" and r.metric == "dice"
        ),
        None,
    )
    versus = [b for a, b in pairs if a == labels[0] and b != random_label]
    headline = headline_summary(
        labels, random_label, macros.get((LINEAR, "auroc")), mean_dice, level, versus
    )
    return {
        "encoders": report.encoders,
        "reference": labels[0],
        "random": random_label,
        "interval_level": level,
        "n_resamples": report.n_resamples,
        "findings": findings,
        "dropped_targets": dropped,
        "notes": report.notes,
        "pairs": [f"{a} - {b}" for a, b in pairs],
        "rows": rows,
        "headline": headline,
    }


def headline_summary(
    labels: list[str],
    random_label: str,
    auroc: dict[str, Estimate] | None,
    dice: dict[str, Estimate] | None,
    level: float,
    versus: Sequence[str] = (),
) -> dict:
    """The plain answer: did the pre-trained encoder (the first) beat the random one? Then
    the same two metrics against each encoder of ``versus`` (key ``versus``)."""
    trained = labels[0]
    out: dict = {"trained": trained, "random": random_label}
    sentences = []
    for key, name, values in (
        ("macro_auroc", "findings macro AUROC (linear probe)", auroc),
        ("mean_dice", "mean Dice (linear segmentation head)", dice),
    ):
        if values is None or trained not in values or random_label not in values:
            continue
        d = difference(values[trained], values[random_label], level)
        out[key] = {
            "trained": estimate_dict(values[trained]),
            "random": estimate_dict(values[random_label]),
            "difference": d,
        }
        sentences.append(_sentence(name, values[trained], values[random_label], d, level))
    if "macro_auroc" in out:
        d = out["macro_auroc"]["difference"]
        out["beat_random"] = bool(d["significant"] and (d["value"] or 0) > 0)
        verdict = (
            f"The pre-trained encoder ({trained}) beat the random-initialised encoder of the "
            "same architecture."
            if out["beat_random"]
            else f"The pre-trained encoder ({trained}) did not clearly beat the random-initialised "
            "encoder of the same architecture on the findings."
        )
        sentences.insert(0, verdict)
    out["versus"] = {}
    for other in versus:
        for key, name, values in (
            ("macro_auroc", "findings macro AUROC", auroc),
            ("mean_dice", "mean Dice", dice),
        ):
            if values is None or trained not in values or other not in values:
                continue
            d = difference(values[trained], values[other], level)
            out["versus"].setdefault(other, {})[key] = d
            sentences.append(
                _sentence(f"{name}, {trained} vs {other}", values[trained], values[other], d, level)
            )
    out["statement"] = " ".join(sentences)
    return out


def _sentence(name: str, a: Estimate, b: Estimate, d: dict, level: float) -> str:
    if d["low"] is None:
        interval = "no interval"
    else:
        mark = "excludes 0" if d["significant"] else "includes 0"
        interval = (
            f"{format_percent(level)} CI [{format_signed(d['low'])}, {format_signed(d['high'])}], "
            f"{mark}"
        )
    name = name[0].upper() + name[1:]
    return (
        f"{name}: {format_number(a.value)} vs {format_number(b.value)} "
        f"({format_signed(d['value'])}; {interval})."
    )


def report_examples(subset: Path, predictions: dict[str, Path], n: int) -> list[dict[str, str]]:
    """The first ``n`` images of ``subset`` with their reference and every encoder's report."""
    from raddino.data.manifest import read_manifest
    from raddino.eval.report_generation.generate import read_predictions

    written = {
        label: {str(Path(p).resolve()): text for p, text in read_predictions(path).items()}
        for label, path in predictions.items()
    }
    examples = []
    for row in read_manifest(subset):
        key = str(Path(row["path"]).resolve())
        if not all(key in texts for texts in written.values()):
            continue
        example = {"image": Path(row["path"]).name, "reference": row.get("report", "")}
        example.update({label: texts[key] for label, texts in written.items()})
        examples.append(example)
        if len(examples) == n:
            break
    return examples
