"""Datasets without bundled metadata, on small files in their official layouts."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from raddino.data.datasets import IndexOptions, LabelPolicy, build_index, index_dataset
from raddino.data.datasets.chexpert import CHEXPERT_LABELS
from raddino.data.datasets.errors import DatasetLayoutError
from raddino.data.datasets.rle import read_mask_png
from tests.data.datasets.files import (
    disc,
    encode_siim,
    read_csv,
    write_dicom,
    write_png,
    write_table,
)

# ----------------------------------------------------------------------------- MIMIC-CXR-JPG

META = ["dicom_id", "subject_id", "study_id", "PerformedProcedureStepDescription",
        "ViewPosition", "Rows", "Columns", "StudyDate", "StudyTime"]  # fmt: skip


def mimic_root(root: Path) -> Path:
    write_table(
        root / "mimic-cxr-2.0.0-metadata.csv.gz",
        META,
        [
            ["d1", "10000032", "50414267", "PA+LAT", "PA", 3056, 2544, "21800506", "1"],
            ["d2", "10000032", "50414267", "PA+LAT", "LATERAL", 3056, 2544, "21800506", "1"],
            ["d3", "10000764", "57375967", "AP", "AP", 3056, 2544, "21321015", "1"],
            ["d4", "19999987", "58971208", "AP", "", 3056, 2544, "21450809", "1"],
        ],
    )  # fmt: skip
    chexpert = {"Edema": "-1.0", "No Finding": "", "Pneumonia": "1.0"}
    write_table(
        root / "mimic-cxr-2.0.0-chexpert.csv.gz",
        ["subject_id", "study_id", *CHEXPERT_LABELS],
        [
            ["10000032", "50414267", *(chexpert.get(n, "") for n in CHEXPERT_LABELS)],
            [
                "10000764",
                "57375967",
                *("1.0" if n == "No Finding" else "" for n in CHEXPERT_LABELS),
            ],
        ],
    )
    write_table(
        root / "mimic-cxr-2.0.0-negbio.csv.gz",
        ["subject_id", "study_id", *CHEXPERT_LABELS],
        [["10000032", "50414267", *("0.0" for _ in CHEXPERT_LABELS)]],
    )
    write_table(
        root / "mimic-cxr-2.0.0-split.csv.gz",
        ["dicom_id", "study_id", "subject_id", "split"],
        [["d1", "50414267", "10000032", "train"], ["d2", "50414267", "10000032", "train"],
         ["d3", "57375967", "10000764", "validate"], ["d4", "58971208", "19999987", "test"]],
    )  # fmt: skip
    for dicom_id, subject, study in (
        ("d1", "10000032", "50414267"),
        ("d3", "10000764", "57375967"),
    ):
        write_png(
            root / "files" / f"p{subject[:2]}" / f"p{subject}" / f"s{study}" / f"{dicom_id}.jpg"
        )
    (root / "files/p10/p10000032/s50414267.txt").write_text("FINDINGS: Lungs are clear.\n")
    write_table(
        root / "patients.csv.gz",
        ["subject_id", "gender", "anchor_age", "anchor_year", "anchor_year_group", "dod"],
        [["10000032", "F", 52, 2180, "2014 - 2016", ""]],
    )
    return root


def test_mimic_paths_splits_and_study_labels(tmp_path: Path) -> None:
    root = mimic_root(tmp_path)
    options = IndexOptions(extra={"patients": str(root / "patients.csv.gz"), "reports": "true"})
    table = build_index("mimic-cxr", root, options)
    by_id = {d: i for i, d in enumerate(table.column("image_id"))}
    assert table.column("path")[by_id["d1"]] == str(root / "files/p10/p10000032/s50414267/d1.jpg")
    assert [table.column("split")[by_id[d]] for d in ("d1", "d2", "d3", "d4")] == [
        "train", "train", "val", "test",
    ]  # fmt: skip
    assert sorted(table.column("image_id")[i] for i in table.missing) == ["d2", "d4"]
    # Both images of a study share its labels; uncertain -> unknown; study without labels.
    for image in ("d1", "d2"):
        row = dict(zip(table.label_names, table.labels[by_id[image]].tolist(), strict=True))
        assert row["Pneumonia"] == 1 and math.isnan(row["Edema"]) and row["No Finding"] == 0
    assert np.isnan(table.labels[by_id["d4"]]).all()
    assert table.label("Edema")[by_id["d3"]] == 0  # "No Finding" = 1 makes blanks negative
    assert (table.column("age")[by_id["d1"]], table.column("sex")[by_id["d1"]]) == ("52", "F")
    assert table.column("report")[by_id["d1"]] == "FINDINGS: Lungs are clear."
    assert table.column("view")[by_id["d2"]] == "LATERAL"


def test_mimic_negbio_and_dicom_options(tmp_path: Path) -> None:
    root = mimic_root(tmp_path)
    negbio = build_index("mimic", root, IndexOptions(extra={"labeler": "negbio"}))
    assert (negbio.labels[:2] == 0).all()
    dicoms = build_index("mimic", root, IndexOptions(extra={"image": "dcm"}))
    assert dicoms.column("path")[0].endswith("s50414267/d1.dcm")
    assert len(dicoms.missing) == 4


def test_mimic_split_table_must_cover_every_image(tmp_path: Path) -> None:
    root = mimic_root(tmp_path)
    write_table(root / "mimic-cxr-2.0.0-split.csv.gz", ["dicom_id", "split"], [["d1", "train"]])
    with pytest.raises(DatasetLayoutError, match=r"metadata.csv.gz: line 3: dicom_id d2"):
        build_index("mimic", root)


# ----------------------------------------------------------------------------- BRAX


def test_brax_prefers_dicoms_maps_views_and_labels(tmp_path: Path) -> None:
    header = ["DicomPath", "PngPath", "PatientID", "AccessionNumber", "PatientSex", "PatientAge",
              "ViewPosition", *CHEXPERT_LABELS]  # fmt: skip
    labels_a = [
        "1.0" if n == "Cardiomegaly" else "-1.0" if n == "Edema" else "" for n in CHEXPERT_LABELS
    ]
    write_table(
        tmp_path / "master_spreadsheet_update.csv",
        header,
        [
            ["images/id_1/Study_1/Series_1/image-1.dcm", "images/id_1/Study_1/Series_1/image-1.png",
             "1", "A1", "F", "070Y", "PA", *labels_a],
            ["images/id_1/Study_1/Series_2/image-2.dcm", "images/id_1/Study_1/Series_2/image-2.png",
             "1", "A1", "F", "070Y", "L", *labels_a],
            ["images/id_2/Study_9/Series_1/image-9.dcm", "images/id_2/Study_9/Series_1/image-9.png",
             "2", "A9", "M", "85 or more", "AP", *("" for _ in CHEXPERT_LABELS)],
        ],
    )  # fmt: skip
    write_dicom(tmp_path / "images/id_1/Study_1/Series_1/image-1.dcm")
    write_png(tmp_path / "images/id_1/Study_1/Series_1/image-1.png")
    write_png(tmp_path / "images/id_1/Study_1/Series_2/image-2.png")
    table = build_index("brax", tmp_path, IndexOptions(labels=LabelPolicy(uncertain="one")))
    paths = [Path(p).name for p in table.column("path")]
    assert paths == ["image-1.dcm", "image-2.png", "image-9.dcm"]
    assert table.missing == [2]
    assert table.column("view") == ["PA", "LATERAL", "AP"]
    assert table.column("age") == ["70", "70", "85"]
    edema = table.label("Edema")
    assert edema[0] == edema[1] == 1 and np.isnan(edema[2])  # uncertain -> 1; unmentioned
    assert table.label("Cardiomegaly")[0] == 1 and table.label("No Finding")[0] == 0
    assert len(set(table.column("split")[:2])) == 1  # one patient, one split
    png = build_index("brax", tmp_path, IndexOptions(extra={"image": "png"}))
    assert Path(png.column("path")[0]).name == "image-1.png"
    frontal = build_index("brax", tmp_path, IndexOptions(frontal_only=True))
    assert frontal.column("view") == ["PA", "AP"]


# ----------------------------------------------------------------------------- CANDID-PTX


def test_candid_labels_masks_patients_and_reports(tmp_path: Path) -> None:
    size = (60, 40)
    uids = ["1.2.826.0.1.3680043.8.498.1001", "1.2.826.0.1.3680043.8.498.1002",
            "1.2.826.0.1.3680043.8.498.1003"]  # fmt: skip
    lung_a, lung_b = disc(*size, 20, 15, 8), disc(*size, 45, 25, 6)
    tube_1, tube_2 = np.zeros(size, dtype=bool), np.zeros(size, dtype=bool)
    tube_1[5:50, 30] = True
    tube_2[10, 2:35] = True
    write_table(
        tmp_path / "Pneumothorax_reports.csv",
        ["SOPInstanceUID", "filename", "EncodedPixels", "Report"],
        [
            [uids[0], "P101_a.dcm", encode_siim(lung_a), "Large left pneumothorax."],
            [uids[0], "P101_a.dcm", encode_siim(lung_b), "Large left pneumothorax."],
            [uids[1], "P101_b.dcm", "-1", "No pneumothorax."],
            [uids[2], "P202_c.dcm", "-1", "Clear."],
        ],
    )
    write_table(
        tmp_path / "chest_tube.csv",
        ["anon_SOPUID", "anon_annotation_ref", "mask_rle"],
        [[uids[1], "t1", encode_siim(tube_1)], [uids[1], "t2", encode_siim(tube_2)]],
    )
    write_table(tmp_path / "acute_rib_fracture.csv", ["anon_SOPUID", "ref", "mask_rle"], [])
    for uid in uids[:2]:  # files named by the bare UID, as distributed
        write_dicom(tmp_path / "dataset" / uid, np.zeros(size, dtype=np.uint16), sop_uid=uid)

    summary = index_dataset("candid", tmp_path, tmp_path / "out" / "candid.csv")
    rows = {r["image_id"]: r for r in read_csv(summary.manifest)}
    assert set(rows) == set(uids[:2]) and summary.missing == 1
    first, second = rows[uids[0]], rows[uids[1]]
    assert (first["Pneumothorax"], first["Chest Tube"], first["Rib Fracture"]) == ("1", "0", "0")
    assert (second["Pneumothorax"], second["Chest Tube"]) == ("0", "1")
    assert first["patient_id"] == second["patient_id"] == "P101"
    assert first["report"] == "Large left pneumothorax."
    out = tmp_path / "out"
    np.testing.assert_array_equal(read_mask_png(out / first["mask_pneumothorax"]), lung_a | lung_b)
    np.testing.assert_array_equal(read_mask_png(out / second["mask_chest_tube"]), tube_1 | tube_2)
    assert not read_mask_png(out / second["mask_pneumothorax"]).any()
    assert not read_mask_png(out / first["mask_rib_fracture"]).any()
