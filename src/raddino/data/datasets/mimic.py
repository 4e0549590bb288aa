"""MIMIC-CXR-JPG (PhysioNet): metadata, CheXpert/NegBio labels and the official split.

Layout (``ROOT`` = the ``mimic-cxr-jpg/2.x.0`` folder)::

    ROOT/mimic-cxr-2.0.0-metadata.csv.gz     dicom_id, subject_id, study_id, ViewPosition, ...
    ROOT/mimic-cxr-2.0.0-chexpert.csv.gz     subject_id, study_id, 14 labels (per study)
    ROOT/mimic-cxr-2.0.0-negbio.csv.gz       same columns, NegBio labeller
    ROOT/mimic-cxr-2.0.0-split.csv.gz        dicom_id, study_id, subject_id, split
    ROOT/files/p10/p10000032/s50414267/<dicom_id>.jpg

Labels are per study (every image of a study gets them), mapped by the `LabelPolicy`; studies
without a label row are unknown. Split: the official one (``validate`` -> ``val``). MIMIC-CXR
itself (DICOM) has the same tree: ``--set image=dcm``. Age and sex are not in MIMIC-CXR; give
MIMIC-IV's ``patients.csv.gz`` with ``--set patients=PATH`` (age at the study = anchor_age +
study year - anchor_year, both in MIMIC's shifted calendar).
"""

from __future__ import annotations

import os
from pathlib import Path

from raddino.data.datasets.chexpert import CHEXPERT_LABELS
from raddino.data.datasets.csv_tables import open_table, require_columns, table_header
from raddino.data.datasets.errors import DatasetLayoutError
from raddino.data.datasets.files import find_file
from raddino.data.datasets.index_table import IndexTable, TableBuilder
from raddino.data.datasets.labels import chexpert_style_labels
from raddino.data.datasets.metadata import normalise_sex, parse_age
from raddino.data.datasets.options import IndexOptions

NAME = "mimic-cxr"
OPTIONS = {
    "labeler": "chexpert (default) or negbio",
    "image": "jpg (MIMIC-CXR-JPG, default) or dcm (MIMIC-CXR DICOMs)",
    "patients": "MIMIC-IV patients.csv(.gz) for age and sex",
    "reports": "true: put each study's report text (files/pXX/pYYY/sZZZ.txt) in 'report'",
}
_SPLITS = {"train": "train", "validate": "val", "val": "val", "test": "test"}


def index(root: Path, options: IndexOptions) -> IndexTable:
    """Index MIMIC-CXR-JPG under ``root``."""
    labeler = options.choice("labeler", "chexpert", ("chexpert", "negbio"))
    suffix = options.choice("image", "jpg", ("jpg", "dcm"))
    with_reports = options.flag("reports", False)
    metadata = find_file(root, ["mimic-cxr-*-metadata.csv"], "MIMIC-CXR metadata table")
    labels_file = find_file(root, [f"mimic-cxr-*-{labeler}.csv"], f"MIMIC-CXR {labeler} labels")
    split_file = find_file(root, ["mimic-cxr-*-split.csv"], "MIMIC-CXR split table")
    require_columns(
        metadata, ("dicom_id", "subject_id", "study_id", "ViewPosition"), table_header(metadata)
    )
    require_columns(labels_file, ("subject_id", "study_id"), table_header(labels_file))
    require_columns(split_file, ("dicom_id", "split"), table_header(split_file))

    study_labels: dict[str, list[float]] = {}
    for line, row in enumerate(open_table(labels_file), start=2):
        source = f"{labels_file}: line {line}"
        study_labels[row["study_id"].strip()] = chexpert_style_labels(
            row, CHEXPERT_LABELS, options.labels, source
        )
    splits = {}
    for line, row in enumerate(open_table(split_file), start=2):
        value = row["split"].strip().lower()
        if value not in _SPLITS:
            raise DatasetLayoutError(f"{split_file}: line {line}: unknown split {value!r}")
        splits[row["dicom_id"].strip()] = _SPLITS[value]
    patients = _read_patients(options.extra.get("patients"))

    builder = TableBuilder(NAME, CHEXPERT_LABELS)
    unknown = [float("nan")] * len(CHEXPERT_LABELS)
    files = root / "files"
    for line, row in enumerate(open_table(metadata), start=2):
        dicom_id = row["dicom_id"].strip()
        subject = row["subject_id"].strip()
        study = row["study_id"].strip()
        if dicom_id not in splits:
            raise DatasetLayoutError(
                f"{metadata}: line {line}: dicom_id {dicom_id} is not in {split_file.name}"
            )
        folder = files / f"p{subject[:2]}" / f"p{subject}"
        path = folder / f"s{study}" / f"{dicom_id}.{suffix}"
        record = {
            "path": str(path),
            "split": splits[dicom_id],
            "patient_id": subject,
            "study_id": study,
            "view": row["ViewPosition"].strip().upper(),
            "image_id": dicom_id,
            "study_date": row.get("StudyDate", "").strip(),
        }
        if subject in patients:
            sex, anchor_age, anchor_year = patients[subject]
            record["sex"] = sex
            record["age"] = _age(anchor_age, anchor_year, record["study_date"])
        if with_reports:
            record["report"] = _report(folder / f"s{study}.txt")
        builder.add(record, study_labels.get(study, unknown), exists=os.path.exists(path))
    if patients:
        for name in ("sex", "age"):
            builder.columns.setdefault(name, [""] * len(builder))
    return builder.build()


def _read_patients(path: str | None) -> dict[str, tuple[str, str, str]]:
    """subject_id -> (sex, anchor_age, anchor_year) from MIMIC-IV ``patients.csv``."""
    if not path:
        return {}
    table = Path(path).expanduser()
    if not table.is_file():
        raise DatasetLayoutError(f"--set patients={path}: no such file")
    require_columns(
        table, ("subject_id", "gender", "anchor_age", "anchor_year"), table_header(table)
    )
    return {
        row["subject_id"].strip(): (
            normalise_sex(row["gender"]),
            row["anchor_age"].strip(),
            row["anchor_year"].strip(),
        )
        for row in open_table(table)
    }


def _age(anchor_age: str, anchor_year: str, study_date: str) -> str:
    try:
        years = int(anchor_age) + int(study_date[:4]) - int(anchor_year)
    except ValueError:
        return parse_age(anchor_age)
    return parse_age(years)


def _report(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8", errors="replace").strip()
    except OSError:
        return ""
