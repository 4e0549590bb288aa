"""The rule-based labeller on hand-written sentences: negation, uncertainty, several findings."""

from __future__ import annotations

import pytest

from raddino.eval.report_generation.labeller import NEGATIVE, POSITIVE, UNCERTAIN, label_report


def mentioned(text: str) -> dict[str, int]:
    return {k: v for k, v in label_report(text).items() if v is not None}


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("No pneumothorax.", {"pneumothorax": NEGATIVE}),
        ("There is a small right apical pneumothorax.", {"pneumothorax": POSITIVE}),
        ("No pleural effusion.", {"pleural effusion": NEGATIVE}),
        ("Possible effusion.", {"pleural effusion": UNCERTAIN}),
        ("Pneumothorax cannot be excluded.", {"pneumothorax": UNCERTAIN}),
        ("Effusion is not seen.", {"pleural effusion": NEGATIVE}),
        ("The previously seen effusion has resolved.", {"pleural effusion": NEGATIVE}),
        ("Heart size is normal.", {"cardiomegaly": NEGATIVE}),
        ("The heart is mildly enlarged.", {"cardiomegaly": POSITIVE}),
        ("Without evidence of edema.", {"edema": NEGATIVE}),
        ("Findings suggestive of pneumonia.", {"pneumonia": UNCERTAIN}),
        (
            "No focal consolidation to suggest pneumonia.",
            {"consolidation": NEGATIVE, "pneumonia": NEGATIVE},
        ),
    ],
)
def test_single_findings(text, expected):
    assert mentioned(text) == expected


def test_negation_covers_a_list_but_stops_at_the_clause():
    assert mentioned("No pleural effusion or pneumothorax.") == {
        "pleural effusion": NEGATIVE,
        "pneumothorax": NEGATIVE,
    }
    assert mentioned("No effusion, but there is a right pneumothorax.") == {
        "pleural effusion": NEGATIVE,
        "pneumothorax": POSITIVE,
    }


def test_several_findings_in_one_report():
    text = (
        "Mild cardiomegaly. Small left pleural effusion. Right lower lobe atelectasis versus "
        "pneumonia. No pneumothorax. Left subclavian catheter tip in the SVC."
    )
    assert mentioned(text) == {
        "cardiomegaly": POSITIVE,
        "pleural effusion": POSITIVE,
        "atelectasis": UNCERTAIN,
        "pneumonia": UNCERTAIN,
        "pneumothorax": NEGATIVE,
        "support devices": POSITIVE,
    }


def test_positive_mention_wins_over_negative_elsewhere():
    assert mentioned("No effusion on the left. Small right effusion.") == {
        "pleural effusion": POSITIVE
    }


def test_unmentioned_findings_are_none_and_unknown_names_fail():
    assert label_report("Normal chest.", ["edema"]) == {"edema": None}
    with pytest.raises(ValueError, match="unknown findings"):
        label_report("x", ["pneumonitis"])
