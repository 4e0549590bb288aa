"""BRAX (Brazilian labeled chest X-ray dataset, PhysioNet): the master spreadsheet.

Layout (``ROOT`` = the ``brax/1.1.0`` folder)::

    ROOT/master_spreadsheet_update.csv   DicomPath, PngPath, PatientID, AccessionNumber,
                                         PatientSex, PatientAge, ViewPosition, 14 labels, ...
    ROOT/images/id_<patient>/Study_<...>/Series_<...>/image-<...>.dcm   (and .png)

``DicomPath``/``PngPath`` are relative to ``ROOT``. Labels: the 14 CheXpert observations,
1 / 0 / -1 / blank, mapped by the `LabelPolicy`. Image: ``--set image=auto`` (default) takes
the DICOM when it exists and the PNG otherwise; ``dicom`` or ``png`` forces one. Split: none
official; patients are split train/val/test by hash.
"""

from __future__ import annotations

import os
from pathlib import Path, PurePosixPath

from raddino.data.datasets.chexpert import CHEXPERT_LABELS
from raddino.data.datasets.csv_tables import open_table, require_columns, table_header
from raddino.data.datasets.errors import DatasetLayoutError
from raddino.data.datasets.files import find_file
from raddino.data.datasets.index_table import IndexTable, TableBuilder
from raddino.data.datasets.labels import chexpert_style_labels
from raddino.data.datasets.metadata import normalise_sex, parse_age
from raddino.data.datasets.options import IndexOptions

NAME = "brax"
OPTIONS = {
    "csv": "path of master_spreadsheet_update.csv (default: found under the root)",
    "image": "auto (DICOM if present, else PNG; default), dicom or png",
}
_VIEWS = {"PA": "PA", "AP": "AP", "L": "LATERAL", "LL": "LATERAL", "RL": "LATERAL"}


def index(root: Path, options: IndexOptions) -> IndexTable:
    """Index BRAX under ``root``."""
    choice = options.choice("image", "auto", ("auto", "dicom", "png"))
    table = find_file(
        root,
        ["master_spreadsheet_update.csv", "master_spreadsheet.csv"],
        "BRAX master spreadsheet",
        options.extra.get("csv"),
    )
    header = table_header(table)
    require_columns(table, ("PatientID",), header)
    path_columns = [c for c in ("DicomPath", "PngPath") if c in header]
    if not path_columns:
        raise DatasetLayoutError(f"{table}: needs a 'DicomPath' or 'PngPath' column")
    if not any(name in header for name in CHEXPERT_LABELS):
        raise DatasetLayoutError(f"{table}: none of the CheXpert label columns is present")
    base = table.parent
    builder = TableBuilder(NAME, CHEXPERT_LABELS)
    for line, row in enumerate(open_table(table), start=2):
        source = f"{table}: line {line}"
        path, exists = _choose_image(base, row, choice, source)
        patient = row["PatientID"].strip()
        view = row.get("ViewPosition", "").strip().upper()
        builder.add(
            {
                "path": path,
                "split": options.split_of(patient),
                "patient_id": patient,
                "study_id": row.get("AccessionNumber", "").strip(),
                "view": _VIEWS.get(view, view),
                "age": parse_age(row.get("PatientAge", "")),
                "sex": normalise_sex(row.get("PatientSex", "")),
            },
            chexpert_style_labels(row, CHEXPERT_LABELS, options.labels, source),
            exists=exists,
        )
    return builder.build()


def _choose_image(base: Path, row: dict[str, str], choice: str, source: str) -> tuple[str, bool]:
    """The image path of a row and whether it exists."""
    dicom = _resolve(base, row.get("DicomPath", ""))
    png = _resolve(base, row.get("PngPath", ""))
    if choice == "dicom":
        candidates = [dicom]
    elif choice == "png":
        candidates = [png]
    else:
        candidates = [dicom, png]
    candidates = [c for c in candidates if c]
    if not candidates:
        raise DatasetLayoutError(f"{source}: no {'/'.join(choice.split())} path in the row")
    for candidate in candidates:
        if os.path.exists(candidate):
            return candidate, True
    return candidates[0], False


def _resolve(base: Path, value: str) -> str:
    value = value.strip()
    if not value:
        return ""
    return str(base.joinpath(*PurePosixPath(value.replace("\\", "/")).parts))
