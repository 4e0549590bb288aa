"""Targets and splits from manifest columns."""

from __future__ import annotations

import numpy as np
import pytest

from raddino.data.manifest import ManifestError
from raddino.data.splits import split_by_patient
from raddino.eval.splits import make_splits
from raddino.eval.targets import parse_target_specs, read_target, read_targets


def rows_with(**columns: list[str]) -> list[dict[str, str]]:
    n = len(next(iter(columns.values())))
    return [{"path": f"/x/{i}.png", **{k: v[i] for k, v in columns.items()}} for i in range(n)]


def test_kinds_are_guessed_from_values():
    rows = rows_with(
        effusion=["1", "0", "", "1"], sex=["F", "M", "M", ""], age=["31", "45.5", "", "70"]
    )
    effusion, sex, age = read_targets(rows, parse_target_specs("effusion,sex,age"))
    assert effusion.kind == "binary" and np.isnan(effusion.values[2])
    assert list(effusion.known) == [True, True, False, True]
    assert sex.kind == "binary" and sex.positive == "M" and list(sex.values[:3]) == [0, 1, 1]
    assert age.kind == "continuous" and age.values[1] == 45.5 and np.isnan(age.values[2])


def test_explicit_kind_overrides_the_guess():
    rows = rows_with(grade=["1", "0", "1"])
    assert read_target(rows, "grade", "continuous").kind == "continuous"
    assert parse_target_specs(["a:binary", "b"]) == [("a", "binary"), ("b", None)]
    with pytest.raises(ValueError, match="binary' or 'continuous"):
        parse_target_specs("a:ordinal")


def test_missing_columns_are_all_named():
    rows = rows_with(effusion=["1", "0"])
    with pytest.raises(ManifestError, match=r"lacks column\(s\) 'age', 'bmi'"):
        read_targets(rows, parse_target_specs("effusion,age,bmi"), source="cohort.csv")


def test_uncertain_and_multiclass_columns_are_refused_with_advice():
    with pytest.raises(ValueError, match="uncertain"):
        read_target(rows_with(x=["1", "0", "-1"]), "x")
    with pytest.raises(ValueError, match="one 0/1 column per class"):
        read_target(rows_with(view=["AP", "PA", "LL"]), "view")
    with pytest.raises(ValueError, match="continuous but has the value 'old'"):
        read_target(rows_with(age=["3", "old", "5"]), "age", "continuous")


def test_splits_without_a_split_column_keep_patients_together():
    rows = [{"path": f"/x/{i}.png", "patient_id": f"p{i // 3}"} for i in range(600)]
    splits = make_splits(rows, seed=0)
    counts = splits.counts()
    assert counts["train"] > counts["test"] > counts["val"] > 0
    for patient in set(splits.groups):
        assert len(set(splits.split[splits.groups == patient])) == 1
    assert any("no split column" in note for note in splits.notes)


def test_a_validation_split_is_carved_from_training_patients_when_missing():
    rows = [
        {"path": f"/x/{i}.png", "split": "test" if i < 100 else "train", "patient_id": str(i)}
        for i in range(500)
    ]
    splits = make_splits(rows)
    assert splits.counts()["val"] > 0 and splits.counts()["test"] == 100
    assert not np.any(splits.split[:100] == "val")


def test_the_validation_carve_out_works_on_splits_drawn_by_the_same_hash():
    # An index with no validation share: its test patients hold the bottom 20% of the hash.
    rows = [
        {
            "path": f"/x/{i}.png",
            "patient_id": f"p{i}",
            "split": split_by_patient(f"p{i}", 0, 0.2, 0),
        }
        for i in range(1000)
    ]
    splits = make_splits(rows, val_fraction=0.1, test_fraction=0.2, seed=0)
    counts = splits.counts()
    assert 90 < counts["val"] < 160  # the top 0.1 / 0.8 of the hash: about 125 patients
    assert counts["test"] == sum(row["split"] == "test" for row in rows)


def test_bad_split_values_are_refused_with_the_line():
    rows = [{"path": "/x/0.png", "split": "train"}, {"path": "/x/1.png", "split": "holdout"}]
    with pytest.raises(ManifestError, match="line 3: split 'holdout'"):
        make_splits(rows, source="cohort.csv")
