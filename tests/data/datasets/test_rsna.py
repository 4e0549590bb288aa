"""RSNA Pneumonia on its real stage-2 labels (26,684 images, 6,012 positive, 9,555 boxes)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from raddino.data.datasets import IndexOptions, build_index, index_dataset
from raddino.data.datasets.index_table import IndexTable
from tests.data.datasets.conftest import link
from tests.data.datasets.files import read_csv, write_dicom, write_table

POSITIVE = "00436515-870c-4b36-a041-de91049b9ab4"  # two boxes in the published table
NEGATIVE = "0004cfab-14fd-4e49-80ba-63a80b6bddd6"


@pytest.fixture(scope="module")
def rsna_root(xrv_data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("rsna")
    link(xrv_data / "kaggle_stage_2_train_labels.csv.zip", root / "stage_2_train_labels.csv.zip")
    write_table(
        root / "stage_2_detailed_class_info.csv",
        ["patientId", "class"],
        [[POSITIVE, "Lung Opacity"], [NEGATIVE, "No Lung Opacity / Not Normal"]],
    )
    images = root / "stage_2_train_images"
    write_dicom(images / f"{POSITIVE}.dcm", patient_id=POSITIVE, age="32", sex="F", view="AP")
    write_dicom(images / f"{NEGATIVE}.dcm", patient_id=NEGATIVE, age="51", sex="F", view="PA")
    return root


@pytest.fixture(scope="module")
def rsna(rsna_root: Path) -> IndexTable:
    return build_index("rsna", rsna_root)


def test_counts_match_the_published_numbers(rsna: IndexTable) -> None:
    assert len(rsna) == 26_684
    assert int(rsna.label("Pneumonia").sum()) == 6_012
    assert sum(len(json.loads(b)) for b in rsna.column("boxes") if b) == 9_555
    assert len(rsna.missing) == 26_684 - 2


def test_boxes_classes_and_header_metadata(rsna: IndexTable) -> None:
    row = rsna.column("image_id").index(POSITIVE)
    boxes = json.loads(rsna.column("boxes")[row])
    assert [b["label"] for b in boxes] == ["Lung Opacity", "Lung Opacity"]
    assert boxes[0] == {"label": "Lung Opacity", "x": 264.0, "y": 152.0, "w": 213.0, "h": 379.0}
    assert rsna.column("class")[row] == "Lung Opacity"
    assert (rsna.column("view")[row], rsna.column("age")[row], rsna.column("sex")[row]) == (
        "AP", "32", "F",
    )  # fmt: skip
    negative = rsna.column("image_id").index(NEGATIVE)
    assert rsna.label("Pneumonia")[negative] == 0 and rsna.column("boxes")[negative] == ""


def test_frontal_only_keeps_frontal_and_unknown_views(rsna_root: Path, tmp_path: Path) -> None:
    write_dicom(rsna_root / "stage_2_train_images" / "lateral.dcm", view="LL")
    try:
        summary = index_dataset(
            "rsna", rsna_root, tmp_path / "rsna.csv", IndexOptions(frontal_only=True)
        )
    finally:
        (rsna_root / "stage_2_train_images" / "lateral.dcm").unlink()
    rows = read_csv(summary.manifest)
    assert {r["image_id"] for r in rows} == {POSITIVE, NEGATIVE}
