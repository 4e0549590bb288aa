"""CheXpert (Stanford): ``train.csv`` / ``valid.csv`` (and ``test_labels.csv`` when present).

Layout (either the full or the "small" download)::

    ROOT/CheXpert-v1.0-small/train.csv     (ROOT may also be the CheXpert-v1.0* folder itself)
    ROOT/CheXpert-v1.0-small/valid.csv
    ROOT/CheXpert-v1.0-small/train/patient00001/study1/view1_frontal.jpg ...

``Path`` in the CSVs starts with the CheXpert folder's name. Labels: the 14 CheXpert
observations, 1 / 0 / -1 (uncertain) / blank (not mentioned), mapped by the `LabelPolicy`.
View: ``LATERAL``, or a frontal image's ``AP/PA`` as recorded (``AP``, ``PA``, ``LL``, ``RL``;
``FRONTAL`` when blank), so ``--frontal-only`` keeps only AP, PA and unrecorded projections.
Split: ``train.csv`` -> train, ``valid.csv`` -> val, ``test_labels.csv``/``test.csv`` -> test.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from raddino.data.datasets.csv_tables import open_table, require_columns, table_header
from raddino.data.datasets.errors import DatasetLayoutError
from raddino.data.datasets.files import find_file
from raddino.data.datasets.index_table import IndexTable, TableBuilder
from raddino.data.datasets.labels import chexpert_style_labels
from raddino.data.datasets.metadata import normalise_sex, parse_age
from raddino.data.datasets.options import IndexOptions

NAME = "chexpert"
CHEXPERT_LABELS = (
    "No Finding",
    "Enlarged Cardiomediastinum",
    "Cardiomegaly",
    "Lung Opacity",
    "Lung Lesion",
    "Edema",
    "Consolidation",
    "Pneumonia",
    "Atelectasis",
    "Pneumothorax",
    "Pleural Effusion",
    "Pleural Other",
    "Fracture",
    "Support Devices",
)
"""The observations of the CheXpert labeller (also used by MIMIC-CXR-JPG and BRAX)."""
OPTIONS = {"csv": "path of train.csv (default: found under the root)"}
_PATIENT_RE = re.compile(r"^patient\d+$")


def index(root: Path, options: IndexOptions) -> IndexTable:
    """Index CheXpert under ``root``."""
    train = find_file(root, ["train.csv"], "CheXpert train.csv", options.extra.get("csv"))
    tables = [(train, "train")]
    for names, split in ((["valid.csv"], "val"), (["test_labels.csv", "test.csv"], "test")):
        for name in names:
            candidate = _sibling(train, name)
            if candidate is not None:
                tables.append((candidate, split))
                break
    builder = TableBuilder(NAME, CHEXPERT_LABELS)
    for table, split in tables:
        header = table_header(table)
        require_columns(table, ("Path",), header)
        folder = str(table.parent)
        if not any(name in header for name in CHEXPERT_LABELS):
            raise DatasetLayoutError(f"{table}: none of the CheXpert label columns is present")
        for line, row in enumerate(open_table(table), start=2):
            source = f"{table}: line {line}"
            path = _image_path(folder, table.parent.name, row["Path"])
            parts = row["Path"].strip().split("/")
            patient = next((p for p in parts if _PATIENT_RE.match(p)), "")
            if not patient:
                raise DatasetLayoutError(
                    f"{source}: no patientNNNNN folder in Path {row['Path']!r}"
                )
            study = next((p for p in parts if p.startswith("study")), "")
            values = chexpert_style_labels(row, CHEXPERT_LABELS, options.labels, source)
            builder.add(
                {
                    "path": path,
                    "split": split,
                    "patient_id": patient,
                    "study_id": f"{patient}/{study}" if study else "",
                    "view": _view(row),
                    "age": parse_age(row.get("Age", "")),
                    "sex": normalise_sex(row.get("Sex", "")),
                },
                values,
                exists=os.path.exists(path),
            )
    return builder.build()


def _sibling(table: Path, name: str) -> Path | None:
    for suffix in ("", ".gz", ".zip"):
        candidate = table.with_name(name + suffix)
        if candidate.is_file():
            return candidate
    return None


def _image_path(folder: str, name: str, value: str) -> str:
    """``Path`` entries start with the CheXpert folder's name; resolve against its parent."""
    parts = value.strip().replace("\\", "/").split("/")
    if parts[0] == name:
        return os.path.join(os.path.dirname(folder), *parts)
    if parts[0].startswith("CheXpert-v1.0"):
        # The CSV names another copy (e.g. "CheXpert-v1.0" while the folder is the small one).
        return os.path.join(folder, *parts[1:])
    return os.path.join(folder, *parts)


def _view(row: dict[str, str]) -> str:
    """``LATERAL``; for frontal images the ``AP/PA`` field as recorded (``AP``, ``PA``, and the
    ``LL`` / ``RL`` of 17 frontal rows in train.csv), ``FRONTAL`` only when it is blank."""
    kind = row.get("Frontal/Lateral", "").strip().lower()
    projection = row.get("AP/PA", "").strip().upper()
    if kind == "lateral":
        return "LATERAL"
    if kind == "frontal":
        return projection or "FRONTAL"
    return projection
