"""The demo's numbers: a findings-only macro and paired differences from the random encoder."""

from __future__ import annotations

import numpy as np
import pytest

from raddino.demo.summary import comparison_pairs, summarise_comparison
from raddino.eval.bootstrap import Estimate
from raddino.eval.compare import CompareReport, ComparisonRow

LABELS = ["ssl", "no-ibot", "random"]


def estimate(samples: list[float]) -> Estimate:
    s = np.array(samples)
    return Estimate(float(s.mean()), float(s.min()), float(s.max()), s)


def by(ssl: list[float], ablation: list[float], random: list[float]) -> dict[str, list[float]]:
    """Per-resample values of each encoder."""
    return {"ssl": ssl, "no-ibot": ablation, "random": random}


def row(task: str, target: str, metric: str, by_label: dict[str, list[float]]) -> ComparisonRow:
    return ComparisonRow(task, target, metric, {k: estimate(v) for k, v in by_label.items()})


@pytest.fixture
def report() -> CompareReport:
    rows = [
        row("linear", "nodule", "auroc", by([0.8, 0.9], [0.7, 0.7], [0.5, 0.6])),
        row("linear", "effusion", "auroc", by([0.6, 0.7], [0.6, 0.6], [0.5, 0.4])),
        row("linear", "sex", "auroc", by([0.1, 0.1], [0.1, 0.1], [0.9, 0.9])),
        row("linear", "macro", "auroc", by([0.0, 0.0], [0.0, 0.0], [0.0, 0.0])),
        row("segment (linear)", "mean", "dice", by([0.7] * 2, [0.7] * 2, [0.69, 0.71])),
    ]
    encoders = [
        {"label": label, "source": label, "random_init": label == "random"} for label in LABELS
    ]
    return CompareReport(encoders, rows, n_resamples=2, level=0.95)


def test_pairs_are_learned_minus_random_then_reference_minus_ablation():
    assert comparison_pairs(LABELS, "random") == [
        ("ssl", "random"), ("no-ibot", "random"), ("ssl", "no-ibot")
    ]  # fmt: skip


def test_findings_macro_averages_the_findings_resample_by_resample(report: CompareReport):
    summary = summarise_comparison(report, ["nodule", "effusion"], "random", {})
    macro = [r for r in summary["rows"] if r["target"] == "findings macro"]
    assert [(r["task"], r["metric"]) for r in macro] == [("linear", "auroc")]
    values = macro[0]["values"]
    # ssl resamples: (0.8 + 0.6) / 2 = 0.7 and (0.9 + 0.7) / 2 = 0.8; sex is left out
    assert values["ssl"]["value"] == pytest.approx(0.75)
    assert values["ssl"]["low"] == pytest.approx(0.7025) and values["ssl"]["high"] == pytest.approx(
        0.7975
    )
    difference = macro[0]["differences"]["ssl - random"]
    # per resample: 0.7 - 0.5 = 0.2 and 0.8 - 0.5 = 0.3
    assert difference["value"] == pytest.approx(0.25)
    assert difference["significant"] and difference["low"] > 0
    assert not any(r["target"] == "macro" for r in summary["rows"])  # compare's (sex included)


def test_headline_says_whether_the_trained_encoder_beat_random(report: CompareReport):
    headline = summarise_comparison(report, ["nodule", "effusion"], "random", {})["headline"]
    assert headline["beat_random"]
    assert headline["statement"].startswith(
        "The pre-trained encoder (ssl) beat the random-initialised"
    )
    assert "Findings macro AUROC (linear probe): 0.750 vs 0.500 (+0.250" in headline["statement"]
    assert "Mean Dice (linear segmentation head): 0.700 vs 0.700 (+0.000" in headline["statement"]
    assert not headline["mean_dice"]["difference"]["significant"]


def test_explicit_pairs_keep_those_whose_encoders_ran_and_the_headline_compares_them(
    report: CompareReport,
):
    pairs = [("ssl", "language"), ("ssl", "random"), ("ssl", "no-ibot")]
    summary = summarise_comparison(report, ["nodule", "effusion"], "random", {}, pairs)
    assert summary["pairs"] == ["ssl - random", "ssl - no-ibot"]  # no 'language' encoder ran
    versus = summary["headline"]["versus"]
    assert set(versus) == {"no-ibot"}
    # findings macro per resample: ssl 0.7, 0.8; no-ibot (0.7 + 0.6) / 2 = 0.65, 0.65
    assert versus["no-ibot"]["macro_auroc"]["value"] == pytest.approx(0.1)
    assert (
        "Findings macro AUROC, ssl vs no-ibot: 0.750 vs 0.650 (+0.100"
        in (summary["headline"]["statement"])
    )
