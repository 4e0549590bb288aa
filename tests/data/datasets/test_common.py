"""Label policies, metadata parsing, patient splits, tables and options shared by indexers."""

from __future__ import annotations

import gzip
import math
import zipfile
from pathlib import Path

import pytest

from raddino.data.datasets import build_index, get_spec
from raddino.data.datasets.common import (
    DatasetLayoutError,
    IndexOptions,
    LabelPolicy,
    TableBuilder,
    chexpert_style_labels,
    find_file,
    open_table,
    parse_age,
    split_by_patient,
)

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


@pytest.mark.parametrize(
    ("text", "years"),
    [("57", "57"), ("045Y", "45"), ("006M", "0.50"), ("85 or more", "85"), ("", ""), ("x", "")],
)
def test_parse_age(text: str, years: str) -> None:
    assert parse_age(text) == years


def test_patient_split_is_stable_and_close_to_the_fractions() -> None:
    patients = [f"patient{i}" for i in range(20_000)]
    splits = [split_by_patient(p, 0.1, 0.2, seed=0) for p in patients]
    assert splits == [split_by_patient(p, 0.1, 0.2, seed=0) for p in patients]
    assert abs(splits.count("test") / len(splits) - 0.2) < 0.01
    assert abs(splits.count("val") / len(splits) - 0.1) < 0.01
    # Another seed moves patients; a patient's split never depends on the others.
    assert splits != [split_by_patient(p, 0.1, 0.2, seed=1) for p in patients]
    assert split_by_patient("patient7", 0.1, 0.2, seed=0) == splits[7]


def test_tables_read_plain_gzip_and_zip_with_stripped_header(tmp_path: Path) -> None:
    text = "ImageId, EncodedPixels\na,-1\nb,1 2\n"
    (tmp_path / "t.csv").write_text(text)
    with gzip.open(tmp_path / "t.csv.gz", "wt") as handle:
        handle.write(text)
    with zipfile.ZipFile(tmp_path / "t.csv.zip", "w") as archive:
        archive.writestr("inner/t.csv", text)
    for name in ("t.csv", "t.csv.gz", "t.csv.zip"):
        rows = list(open_table(tmp_path / name))
        assert rows == [
            {"ImageId": "a", "EncodedPixels": "-1"},
            {"ImageId": "b", "EncodedPixels": "1 2"},
        ]


def test_find_file_looks_one_level_down_and_names_what_it_looked_for(tmp_path: Path) -> None:
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "train.csv.gz").write_bytes(b"")
    assert find_file(tmp_path, ["train.csv"], "train table") == tmp_path / "sub" / "train.csv.gz"
    with pytest.raises(DatasetLayoutError, match=r"cannot find the labels table.*valid.csv"):
        find_file(tmp_path, ["valid.csv"], "labels table")


def test_options_validate_fractions_and_dataset_settings(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="leaves no training data"):
        IndexOptions(val_fraction=0.5, test_fraction=0.5)
    with pytest.raises(ValueError, match=r"unknown --set key\(s\) colour \(valid: csv\)"):
        build_index("nih", tmp_path, IndexOptions(extra={"colour": "red"}))
    with pytest.raises(ValueError, match="choose one of any, majority, all"):
        build_index("vindr", tmp_path, IndexOptions(extra={"rule": "most"}))
    with pytest.raises(ValueError, match="unknown dataset 'mnist'"):
        get_spec("mnist")
    with pytest.raises(DatasetLayoutError, match="no such directory"):
        build_index("nih", tmp_path / "absent")


def test_table_builder_fills_columns_added_later() -> None:
    builder = TableBuilder("demo", ["A"])
    builder.add({"path": "/a.png"}, [1.0])
    builder.add({"path": "/b.png", "view": "PA"}, [0.0], exists=False)
    table = builder.build()
    assert table.columns["view"] == ["", "PA"]
    assert table.missing == [1]
    assert table.label("A").tolist() == [1.0, 0.0]
    assert table.select([1]).columns["path"] == ["/b.png"]
    assert table.select([1]).missing == [0]
