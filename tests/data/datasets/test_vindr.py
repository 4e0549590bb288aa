"""VinDr-CXR: reader votes -> image labels on the real Kaggle table and the PhysioNet layout."""

from __future__ import annotations

import csv
import gzip
import json
from collections import defaultdict
from pathlib import Path

import numpy as np
import pytest

from raddino.data.datasets import IndexOptions, build_index
from raddino.data.datasets.index_table import IndexTable
from raddino.data.datasets.vindr import combine_votes
from tests.data.datasets.conftest import link
from tests.data.datasets.files import write_dicom, write_table

LAID = "9a5094b2563a1ef3ff50dc5c7ff71345"


@pytest.fixture(scope="module")
def kaggle_root(xrv_data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("vinbigdata")
    link(xrv_data / "vinbigdata-train.csv.gz", root / "train.csv.gz")
    write_dicom(root / "train" / f"{LAID}.dicom", age="045Y", sex="F")
    return root


@pytest.fixture(scope="module")
def raw_rows(kaggle_root: Path) -> list[dict[str, str]]:
    with gzip.open(kaggle_root / "train.csv.gz", "rt", newline="") as handle:
        return list(csv.DictReader(handle))


@pytest.fixture(scope="module")
def tables(kaggle_root: Path) -> dict[str, IndexTable]:
    return {
        rule: build_index("vindr", kaggle_root, IndexOptions(extra={"rule": rule}))
        for rule in ("any", "majority", "all")
    }


def test_images_readers_and_splits(tables: dict[str, IndexTable]) -> None:
    table = tables["majority"]
    assert len(table) == 15_000
    assert set(table.column("readers")) == {"3"}
    assert set(table.column("split")) == {"train", "val", "test"}
    assert table.label_names[-1] == "No finding" and len(table.label_names) == 15


def test_rules_count_reader_votes(
    tables: dict[str, IndexTable], raw_rows: list[dict[str, str]]
) -> None:
    votes: dict[tuple[str, str], set[str]] = defaultdict(set)
    for row in raw_rows:
        votes[(row["image_id"], row["class_name"])].add(row["rad_id"])
    for rule, needed in (("any", 1), ("majority", 2), ("all", 3)):
        table = tables[rule]
        for name in ("Cardiomegaly", "Aortic enlargement", "Pneumothorax"):
            expected = sum(
                1 for (_, label), who in votes.items() if label == name and len(who) >= needed
            )
            assert int(table.label(name).sum()) == expected, (rule, name)
    any_, majority, all_ = (tables[r].labels[:, :-1].sum() for r in ("any", "majority", "all"))
    assert any_ > majority > all_ > 0


def test_no_finding_is_one_exactly_when_nothing_else_is(tables: dict[str, IndexTable]) -> None:
    for table in tables.values():
        findings = table.labels[:, :-1]
        assert not np.isnan(table.labels).any()
        np.testing.assert_array_equal(table.label("No finding"), (findings.sum(1) == 0) * 1.0)


def test_boxes_and_header_metadata(
    tables: dict[str, IndexTable], raw_rows: list[dict[str, str]]
) -> None:
    table = tables["majority"]
    boxes = [json.loads(b) for b in table.column("boxes") if b]
    assert sum(len(b) for b in boxes) == sum(1 for r in raw_rows if r["x_min"])
    row = table.column("image_id").index(LAID)
    first = next(b for b in json.loads(table.column("boxes")[row]) if b["label"] == "Cardiomegaly")
    assert first["x"] == 691.0 and first["w"] == 1653.0 - 691.0 and first["reader"] == "R10"
    assert (table.column("age")[row], table.column("sex")[row]) == ("45", "F")
    assert len(table.missing) == 15_000 - 1


def test_combine_votes_rules() -> None:
    votes = {"Nodule/Mass": 2, "Cardiomegaly": 1, "No finding": 1}
    assert combine_votes(votes, 3, "any") == {"Nodule/Mass": 1, "Cardiomegaly": 1, "No finding": 0}
    assert combine_votes(votes, 3, "majority") == {
        "Nodule/Mass": 1, "Cardiomegaly": 0, "No finding": 0,
    }  # fmt: skip
    assert combine_votes(votes, 3, "all") == {"Nodule/Mass": 0, "Cardiomegaly": 0, "No finding": 1}


def test_physionet_layout_uses_reader_rows_and_test_consensus(tmp_path: Path) -> None:
    labels = ["Aortic enlargement", "Nodule/Mass", "COPD", "No finding"]
    write_table(
        tmp_path / "annotations" / "image_labels_train.csv",
        ["image_id", "rad_ID", *labels],
        [
            ["img1", "R1", 1, 1, 0, 0],
            ["img1", "R2", 1, 0, 0, 0],
            ["img1", "R3", 0, 0, 0, 1],
            ["img2", "R1", 0, 0, 0, 1],
            ["img2", "R4", 0, 0, 1, 0],
            ["img2", "R5", 0, 0, 0, 1],
        ],
    )
    write_table(
        tmp_path / "annotations" / "image_labels_test.csv",
        ["image_id", *labels],
        [["img3", 0, 1, 1, 0]],
    )
    write_table(
        tmp_path / "annotations" / "annotations_train.csv",
        ["image_id", "rad_id", "class_name", "x_min", "y_min", "x_max", "y_max"],
        [
            ["img1", "R1", "Nodule/Mass", 10, 20, 30, 50],
            ["img1", "R3", "No finding", "", "", "", ""],
        ],
    )
    write_dicom(tmp_path / "train" / "img1.dicom")
    write_dicom(tmp_path / "test" / "img3.dicom")
    table = build_index("vindr", tmp_path, IndexOptions(val_fraction=0.0))
    rows = {
        image: dict(zip(table.label_names, table.labels[i].tolist(), strict=True))
        for i, image in enumerate(table.column("image_id"))
    }
    assert rows["img1"] == {"Aortic enlargement": 1, "Nodule/Mass": 0, "COPD": 0, "No finding": 0}
    assert rows["img2"] == {"Aortic enlargement": 0, "Nodule/Mass": 0, "COPD": 0, "No finding": 1}
    assert rows["img3"] == {"Aortic enlargement": 0, "Nodule/Mass": 1, "COPD": 1, "No finding": 0}
    assert dict(zip(table.column("image_id"), table.column("split"), strict=True)) == {
        "img1": "train", "img2": "train", "img3": "test",
    }  # fmt: skip
    box = json.loads(table.column("boxes")[table.column("image_id").index("img1")])
    assert box == [
        {"label": "Nodule/Mass", "x": 10.0, "y": 20.0, "w": 20.0, "h": 30.0, "reader": "R1"}
    ]
    assert [table.column("image_id")[i] for i in table.missing] == ["img2"]
