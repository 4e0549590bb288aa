"""NIH ChestX-ray14 on its real Data_Entry_2017 table (112,120 images, 30,805 patients)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from raddino.data.datasets import IndexOptions, build_index, index_dataset
from raddino.data.datasets.csv_tables import open_table
from raddino.data.datasets.index_table import IndexTable
from tests.data.datasets.conftest import link
from tests.data.datasets.files import read_csv, write_png, write_table

# Published counts (NIH Clinical Center's README of ChestX-ray14).
PUBLISHED_LABEL_COUNTS = {
    "Atelectasis": 11_559, "Cardiomegaly": 2_776, "Effusion": 13_317, "Infiltration": 19_894,
    "Mass": 5_782, "Nodule": 6_331, "Pneumonia": 1_431, "Pneumothorax": 5_302,
    "Consolidation": 4_667, "Edema": 2_303, "Emphysema": 2_516, "Fibrosis": 1_686,
    "Pleural_Thickening": 3_385, "Hernia": 227, "No Finding": 60_361,
}  # fmt: skip
LAID = ["00000001_000.png", "00000013_005.png", "00000013_026.png", "00030805_000.png"]


@pytest.fixture(scope="module")
def nih_root(xrv_data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("nih")
    link(xrv_data / "Data_Entry_2017_v2020.csv.gz", root / "Data_Entry_2017_v2020.csv.gz")
    link(xrv_data / "BBox_List_2017.csv.gz", root / "BBox_List_2017.csv.gz")
    for i, name in enumerate(LAID):
        write_png(root / f"images_{i + 1:03d}" / "images" / name, seed=i)
    return root


@pytest.fixture(scope="module")
def nih(nih_root: Path) -> IndexTable:
    return build_index("nih", nih_root)


def test_rows_patients_and_label_counts_match_the_published_numbers(nih: IndexTable) -> None:
    assert len(nih) == 112_120
    assert len(set(nih.column("patient_id"))) == 30_805
    counts = {name: int((nih.label(name) == 1).sum()) for name in nih.label_names}
    assert counts == PUBLISHED_LABEL_COUNTS
    assert set(nih.column("view")) == {"PA", "AP"}
    assert set(nih.column("sex")) == {"M", "F"}


def test_boxes_match_the_published_bbox_list(nih: IndexTable) -> None:
    boxes = [json.loads(b) for b in nih.column("boxes") if b]
    assert len(boxes) == 880  # images with boxes
    assert sum(len(b) for b in boxes) == 984
    first = nih.column("boxes")[nih.column("image_id").index("00013118_008.png")]
    box = json.loads(first)[0]
    assert box.pop("label") == "Atelectasis"
    assert box == pytest.approx(
        {"x": 225.0847, "y": 547.0192, "w": 86.7797, "h": 79.1864}, rel=1e-5
    )


def test_missing_images_are_reported_and_found_ones_resolved(nih: IndexTable) -> None:
    assert len(nih.missing) == 112_120 - len(LAID)
    missing = set(nih.missing)
    present = [nih.column("image_id")[i] for i in range(len(nih)) if i not in missing]
    assert sorted(present) == sorted(LAID)
    for i, name in enumerate(nih.column("image_id")):
        if name in LAID:
            assert Path(nih.column("path")[i]).is_file()


def test_hash_split_keeps_patients_together(nih: IndexTable) -> None:
    split_of: dict[str, set[str]] = {}
    for patient, split in zip(nih.column("patient_id"), nih.column("split"), strict=True):
        split_of.setdefault(patient, set()).add(split)
    assert all(len(s) == 1 for s in split_of.values())
    fractions = {s: nih.column("split").count(s) / len(nih) for s in ("train", "val", "test")}
    assert fractions["test"] == pytest.approx(0.1, abs=0.02)
    assert "patient-level hash split" in " ".join(nih.notes)


def test_official_lists_decide_the_test_split(xrv_data: Path, tmp_path: Path) -> None:
    rows = [
        r for r in open_table(xrv_data / "Data_Entry_2017_v2020.csv.gz") if r["Image Index"] in LAID
    ]
    write_table(tmp_path / "Data_Entry_2017.csv", list(rows[0]), [list(r.values()) for r in rows])
    (tmp_path / "test_list.txt").write_text("00000013_005.png\n00000013_026.png\n")
    (tmp_path / "train_val_list.txt").write_text("00000001_000.png\n00030805_000.png\n")
    table = build_index("nih", tmp_path, IndexOptions(val_fraction=0.0))
    splits = dict(zip(table.column("image_id"), table.column("split"), strict=True))
    assert splits == {
        "00000001_000.png": "train", "00000013_005.png": "test", "00000013_026.png": "test",
        "00030805_000.png": "train",
    }  # fmt: skip
    assert table.notes == []


def test_manifest_lists_present_images_and_reports_missing_ones(
    nih_root: Path, tmp_path: Path
) -> None:
    summary = index_dataset("nih", nih_root, tmp_path / "out" / "nih.csv")
    rows = read_csv(summary.manifest)
    assert summary.rows == len(rows) == len(LAID)
    assert all((summary.manifest.parent / r["path"]).is_file() for r in rows)
    assert not Path(rows[0]["path"]).is_absolute()
    first = next(r for r in rows if r["image_id"] == "00000001_000.png")
    assert (first["Cardiomegaly"], first["Effusion"], first["age"], first["sex"]) == (
        "1", "0", "57", "M",
    )  # fmt: skip
    missing = read_csv(summary.missing_report)
    assert len(missing) == summary.missing == 112_120 - len(LAID)
    assert missing[0]["reason"] == "file not found"
    report = json.loads(summary.summary.read_text())
    assert report["rows_written"] == len(LAID) and report["missing_images"] == summary.missing
