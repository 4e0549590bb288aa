"""Label policies: CheXpert-style cells to 1 / 0 / NaN."""

from __future__ import annotations

import math

import pytest

from raddino.data.datasets.errors import DatasetLayoutError
from raddino.data.datasets.labels import LabelPolicy, chexpert_style_labels

NAMES = ["No Finding", "Edema", "Pneumonia", "Support Devices"]


def labels(row: dict[str, str], **policy) -> list[float]:
    return chexpert_style_labels(row, NAMES, LabelPolicy(**policy), "test.csv: line 2")


def same(a: list[float], b: list[float]) -> bool:
    return all((math.isnan(x) and math.isnan(y)) or x == y for x, y in zip(a, b, strict=True))


@pytest.mark.parametrize(
    ("uncertain", "expected"), [("nan", math.nan), ("zero", 0.0), ("one", 1.0)]
)
def test_uncertain_label_follows_the_policy(uncertain: str, expected: float) -> None:
    row = {"Edema": "-1.0", "Pneumonia": "1.0", "Support Devices": "0.0"}
    assert same(labels(row, uncertain=uncertain), [0.0, expected, 1.0, 0.0])


def test_blank_labels_are_unknown_by_default_and_zero_on_request() -> None:
    row = {"Edema": "", "Pneumonia": "0", "Support Devices": ""}
    assert same(labels(row), [math.nan, math.nan, 0.0, math.nan])
    assert same(labels(row, unmentioned="zero"), [0.0, 0.0, 0.0, 0.0])


def test_no_finding_makes_blank_findings_negative_but_not_support_devices() -> None:
    row = {"No Finding": "1.0", "Edema": "", "Pneumonia": "", "Support Devices": ""}
    assert same(labels(row), [1.0, 0.0, 0.0, math.nan])
    assert same(labels(row, no_finding_negative=False), [1.0, math.nan, math.nan, math.nan])


def test_a_positive_finding_makes_blank_no_finding_negative() -> None:
    assert same(labels({"Pneumonia": "1"}), [0.0, math.nan, 1.0, math.nan])
    # An uncertain finding alone says nothing about "No Finding".
    assert same(labels({"Pneumonia": "-1"}), [math.nan, math.nan, math.nan, math.nan])
    # A positive support device is not a finding.
    assert same(labels({"Support Devices": "1"}), [math.nan, math.nan, math.nan, 1.0])


def test_no_finding_rule_runs_before_the_uncertain_policy() -> None:
    # uncertain -> 1 must not turn "No Finding" to 0: the rule sees the raw -1.
    assert same(labels({"Pneumonia": "-1"}, uncertain="one"), [math.nan, math.nan, 1.0, math.nan])


def test_bad_label_value_names_file_line_and_column() -> None:
    with pytest.raises(DatasetLayoutError, match=r"test.csv: line 2: column 'Edema'.*'2'"):
        labels({"Edema": "2"})


def test_label_policy_rejects_unknown_choices() -> None:
    with pytest.raises(ValueError, match="uncertain='maybe'"):
        LabelPolicy(uncertain="maybe")
    with pytest.raises(ValueError, match="unmentioned='one'"):
        LabelPolicy(unmentioned="one")
