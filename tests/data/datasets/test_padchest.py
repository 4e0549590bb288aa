"""PadChest on its real 160K labels table: label lists, projections, patients and studies."""

from __future__ import annotations

import ast
import csv
import gzip
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from raddino.data.datasets import IndexOptions, build_index
from raddino.data.datasets.errors import DatasetLayoutError
from raddino.data.datasets.index_table import IndexTable
from raddino.data.datasets.padchest import parse_label_list
from tests.data.datasets.conftest import link
from tests.data.datasets.files import write_png, write_table

CSV = "PADCHEST_chest_x_ray_images_labels_160K_01.02.19.csv.gz"
NESTED = ("0", "20536686640136348236148679891455886468_k6ga29.png")
FLAT = "135803415504923515076821959678074435083_fzis7d.png"


@pytest.fixture(scope="module")
def padchest_root(xrv_data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("padchest")
    link(xrv_data / CSV, root / CSV)
    write_png(root / NESTED[0] / NESTED[1])
    write_png(root / "images" / FLAT)
    return root


@pytest.fixture(scope="module")
def raw_rows(xrv_data: Path) -> list[dict[str, str]]:
    with gzip.open(xrv_data / CSV, "rt", newline="") as handle:
        return list(csv.DictReader(handle))


@pytest.fixture(scope="module")
def padchest(padchest_root: Path) -> IndexTable:
    return build_index("padchest", padchest_root)


def test_images_patients_and_studies(padchest: IndexTable) -> None:
    # Published: 160,868 images of 67,625 patients in 109,931 studies; the 160K table
    # (01.02.19) lists 160,861 of the images.
    assert len(padchest) == 160_861
    assert len(set(padchest.column("patient_id"))) == 67_625
    assert len(set(padchest.column("study_id"))) == 109_931


def test_projections_become_views(padchest: IndexTable, raw_rows: list[dict[str, str]]) -> None:
    raw = Counter(r["Projection"] for r in raw_rows)
    views = Counter(padchest.column("view"))
    assert views["PA"] == raw["PA"] + raw["PA_horizontal"]
    assert views["AP"] == raw["AP"] + raw["AP_horizontal"]
    assert views["LATERAL"] == raw["L"]
    assert views["COSTAL"] == raw["COSTAL"] == 630
    assert views["EXCLUDE"] == raw["EXCLUDE"] == 11 and views["UNK"] == raw["UNK"] == 8
    assert views[""] == 0  # every row of the real table records a projection


def test_excluded_and_unknown_projections_never_pass_the_frontal_filter(tmp_path: Path) -> None:
    # The real table's 36 columns; the Projection values are the real file's, plus a blank one.
    header = [
        "", "ImageID", "ImageDir", "StudyDate_DICOM", "StudyID", "PatientID", "PatientBirth",
        "PatientSex_DICOM", "ViewPosition_DICOM", "Projection", "MethodProjection", "Pediatric",
        "Modality_DICOM", "Manufacturer_DICOM", "PhotometricInterpretation_DICOM",
        "PixelRepresentation_DICOM", "PixelAspectRatio_DICOM", "SpatialResolution_DICOM",
        "BitsStored_DICOM", "WindowCenter_DICOM", "WindowWidth_DICOM", "Rows_DICOM",
        "Columns_DICOM", "XRayTubeCurrent_DICOM", "Exposure_DICOM", "ExposureInuAs_DICOM",
        "ExposureTime", "RelativeXRayExposure_DICOM", "ReportID", "Report", "MethodLabel",
        "Labels", "Localizations", "LabelsLocalizationsBySentence", "labelCUIS",
        "LocalizationsCUIS",
    ]  # fmt: skip
    projections = ["PA", "AP_horizontal", "L", "COSTAL", "EXCLUDE", "UNK", ""]
    rows = []
    for i, projection in enumerate(projections):
        row = dict.fromkeys(header, "")
        row.update(
            {"": i, "ImageID": f"image{i}.png", "ImageDir": "0", "StudyDate_DICOM": "20140915",
             "StudyID": f"study{i}", "PatientID": f"patient{i}", "PatientBirth": "1930.0",
             "PatientSex_DICOM": "F", "Projection": projection, "MethodLabel": "Physician",
             "Labels": "['normal']"}
        )  # fmt: skip
        rows.append([row[name] for name in header])
    write_table(tmp_path / CSV, header, rows)
    table = build_index("padchest", tmp_path)
    assert table.column("view") == ["PA", "AP", "LATERAL", "COSTAL", "EXCLUDE", "UNK", ""]
    assert table.column("projection") == projections
    frontal = build_index("padchest", tmp_path, IndexOptions(frontal_only=True))
    assert frontal.column("image_id") == ["image0.png", "image1.png", "image6.png"]
    assert "frontal only: dropped 4 non-frontal rows; kept 1 rows" in " ".join(frontal.notes)


def test_label_lists_become_columns(padchest: IndexTable, raw_rows: list[dict[str, str]]) -> None:
    unlabelled = [i for i, r in enumerate(raw_rows) if r["Labels"] in ("", "nan")]
    assert len(unlabelled) == 103
    assert np.isnan(padchest.labels[unlabelled]).all()
    labelled = np.ones(len(raw_rows), dtype=bool)
    labelled[unlabelled] = False
    assert not np.isnan(padchest.labels[labelled]).any()
    lists = [ast.literal_eval(r["Labels"]) for i, r in enumerate(raw_rows) if labelled[i]]
    assert padchest.label_names == sorted({v.strip() for vs in lists for v in vs if v.strip()})
    for i in (1, 2, 500, 150_000):
        listed = {v.strip() for v in ast.literal_eval(raw_rows[i]["Labels"]) if v.strip()}
        positives = {n for n, v in zip(padchest.label_names, padchest.labels[i], strict=True) if v}
        assert positives == listed
    normal = int((padchest.label("normal") == 1).sum())
    assert normal == sum(1 for vs in lists if "normal" in {v.strip() for v in vs})


def test_metadata_and_both_folder_layouts(padchest: IndexTable) -> None:
    first = padchest.column("image_id").index(NESTED[1])
    assert padchest.column("age")[first] == "84"  # born 1930, studied 2014
    assert padchest.column("sex")[first] == "F"
    assert padchest.column("label_method")[first] == "Physician"
    assert padchest.label("normal")[first] == 1
    present = {
        padchest.column("image_id")[i] for i in set(range(len(padchest))) - set(padchest.missing)
    }
    assert present == {NESTED[1], FLAT}


def test_chosen_labels_only(raw_rows: list[dict[str, str]], tmp_path: Path) -> None:
    head = raw_rows[:2000]
    write_table(tmp_path / CSV, list(head[0]), [list(r.values()) for r in head])
    options = IndexOptions(extra={"labels": "pleural effusion,cardiomegaly"})
    table = build_index("padchest", tmp_path, options)
    assert table.label_names == ["pleural effusion", "cardiomegaly"]
    assert int(table.label("cardiomegaly").sum()) == sum(
        "'cardiomegaly'" in r["Labels"] for r in head
    )
    with pytest.raises(DatasetLayoutError, match="'pleural efusion' never occur"):
        build_index("padchest", tmp_path, IndexOptions(extra={"labels": "pleural efusion"}))


def test_label_list_parser() -> None:
    assert parse_label_list("['a', ' b', 'a']", "x") == ("a", "b")
    assert parse_label_list('["crohn\'s disease"]', "x") == ("crohn's disease",)
    assert parse_label_list("[]", "x") == ()
    assert parse_label_list("nan", "x") is None
    with pytest.raises(DatasetLayoutError, match="x: column 'Labels'"):
        parse_label_list("[oops", "x")
