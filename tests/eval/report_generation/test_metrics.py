"""BLEU, ROUGE-L and clinical P/R/F1 on texts with known answers."""

from __future__ import annotations

import numpy as np
import pytest

from raddino.eval.report_generation.metrics import (
    bleu_scores,
    clinical_scores,
    evaluate_reports,
    most_common_report,
    rouge_l,
)

TEXTS = [
    "The heart is enlarged. Small right pleural effusion.",
    "No acute cardiopulmonary abnormality. Lungs are clear.",
]


def test_identical_texts_score_bleu_100_and_rouge_1():
    assert bleu_scores(TEXTS, TEXTS) == pytest.approx({"bleu1": 100.0, "bleu4": 100.0})
    assert rouge_l(TEXTS, TEXTS) == pytest.approx(1.0)


def test_disjoint_texts_score_near_zero():
    other = ["alpha beta gamma delta epsilon zeta", "eta theta iota kappa lambda mu"]
    assert bleu_scores(other, TEXTS)["bleu4"] < 1.0
    assert bleu_scores(other, TEXTS)["bleu1"] < 1.0
    assert rouge_l(other, TEXTS) == 0.0


def test_rouge_l_of_a_half_overlap():
    # LCS 2 of 4 tokens both ways: P = R = F = 0.5
    assert rouge_l(["a b x y"], ["a b c d"]) == pytest.approx(0.5)


def test_clinical_micro_and_macro_scores():
    reference = np.array([[1, 0], [1, 1], [0, 1]], dtype=bool)
    predicted = np.array([[1, 1], [0, 1], [0, 1]], dtype=bool)
    scores = clinical_scores(predicted, reference, ["a", "b"])
    # a: tp 1 fn 1 -> P 1, R .5, F 2/3; b: tp 2 fp 1 -> P 2/3, R 1, F .8
    assert scores["per_finding"]["a"]["f1"] == pytest.approx(2 / 3)
    assert scores["per_finding"]["b"]["f1"] == pytest.approx(0.8)
    assert scores["macro"]["f1"] == pytest.approx((2 / 3 + 0.8) / 2)
    # micro: tp 3, fp 1, fn 1 -> P = R = F = 0.75
    assert scores["micro"] == pytest.approx({"precision": 0.75, "recall": 0.75, "f1": 0.75})


def test_findings_absent_everywhere_do_not_enter_the_macro_average():
    none = np.zeros((2, 2), dtype=bool)
    reference = np.array([[1, 0], [0, 0]], dtype=bool)
    scores = clinical_scores(reference, reference, ["a", "b"])
    assert list(scores["per_finding"]) == ["a"] and scores["macro"]["f1"] == 1.0
    assert clinical_scores(none, none, ["a", "b"])["micro"]["f1"] == 0.0


def test_evaluate_reports_uses_the_labeller():
    result = evaluate_reports(
        ["No effusion. Cardiomegaly.", "Possible pneumothorax."],
        ["Small effusion. Cardiomegaly.", "Right pneumothorax."],
    )
    per = result["clinical"]["per_finding"]
    assert per["cardiomegaly"]["f1"] == 1.0
    assert per["pleural effusion"]["recall"] == 0.0
    assert per["pneumothorax"]["recall"] == 0.0  # uncertain is not positive by default
    lenient = evaluate_reports(
        ["Possible pneumothorax."], ["Right pneumothorax."], uncertain_as_positive=True
    )
    assert lenient["clinical"]["micro"]["f1"] == 1.0


def test_mismatched_lengths_are_refused():
    with pytest.raises(ValueError, match="predictions"):
        evaluate_reports(["a"], ["a", "b"])


def test_most_common_report():
    assert most_common_report(["b", "a", "a", "b", "c", "a"]) == "a"
    # no text repeats: the first report of the most common finding set (here: no finding)
    reports = ["Cardiomegaly.", "No effusion.", "Heart size is normal.", "Small effusion."]
    assert most_common_report(reports) == "No effusion."
