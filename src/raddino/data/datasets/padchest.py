"""PadChest (BIMCV): the 160K labels table, its label lists and projections.

Layout::

    ROOT/PADCHEST_chest_x_ray_images_labels_160K_01.02.19.csv   (.gz accepted)
    ROOT/0/<ImageID>.png ... ROOT/54/...    16-bit PNGs, in ``ImageDir`` folders or flat

Labels: ``Labels`` holds a Python-style list (``['pleural effusion', 'cardiomegaly']``); every
distinct entry becomes a column (or only those of ``--set labels=a,b``), 1 when listed, 0 when
not, unknown (NaN) for rows without a label list. PadChest has no uncertain labels.
``label_method`` says whether a physician or the RNN labelled the row. View: ``Projection``
PA -> PA, AP and AP_horizontal -> AP, L -> LATERAL; COSTAL, EXCLUDE, UNK and any other value
kept as recorded (upper case), so the curators' excluded and unknown images never count as
frontal; blank -> unknown.
Split: none official; patients are split train/val/test by hash.
"""

from __future__ import annotations

import ast
import os
import re
from pathlib import Path

import numpy as np

from raddino.data.datasets.csv_tables import open_table, require_columns, table_header
from raddino.data.datasets.errors import DatasetLayoutError
from raddino.data.datasets.files import find_file, find_images_by_stem
from raddino.data.datasets.index_table import IndexTable, TableBuilder
from raddino.data.datasets.metadata import normalise_sex, parse_age
from raddino.data.datasets.options import IndexOptions

NAME = "padchest"
OPTIONS = {
    "csv": "path of the PADCHEST_*labels*.csv (default: found under the root)",
    "labels": "comma-separated labels to keep as columns (default: every label in the file)",
}
_VIEWS = {
    "PA": "PA",
    "PA_HORIZONTAL": "PA",
    "AP": "AP",
    "AP_HORIZONTAL": "AP",
    "L": "LATERAL",
}
"""Projections with a canonical view; every other value (COSTAL, EXCLUDE, UNK) stays as recorded."""
_COLUMNS = ("ImageID", "ImageDir", "PatientID", "Projection", "Labels")


def index(root: Path, options: IndexOptions) -> IndexTable:
    """Index PadChest under ``root``."""
    table = find_file(
        root,
        ["PADCHEST_chest_x_ray_images_labels_160K*.csv"],
        "PadChest labels table",
        options.extra.get("csv"),
    )
    require_columns(table, _COLUMNS, table_header(table))
    images = find_images_by_stem(root, [".png"])
    builder = TableBuilder(NAME)
    row_labels: list[tuple[str, ...] | None] = []
    for line, row in enumerate(open_table(table), start=2):
        image_id = row["ImageID"].strip()
        patient = row["PatientID"].strip()
        projection = row["Projection"].strip()
        study_date = row.get("StudyDate_DICOM", "").strip()
        found = images.get(image_id)
        builder.add(
            {
                "path": found or os.path.join(root, row["ImageDir"].strip(), image_id),
                "split": options.split_of(patient),
                "patient_id": patient,
                "study_id": row.get("StudyID", "").strip(),
                "view": _VIEWS.get(projection.upper(), projection.upper()),
                "projection": projection,
                "age": _age(row.get("PatientBirth", ""), study_date),
                "sex": normalise_sex(row.get("PatientSex_DICOM", "")),
                "label_method": row.get("MethodLabel", "").strip(),
                "image_id": image_id,
            },
            exists=bool(found),
        )
        row_labels.append(parse_label_list(row["Labels"], f"{table}: line {line}"))
    names = _label_names(row_labels, options.extra.get("labels"), table)
    builder.label_names = names
    return builder.build(_label_matrix(row_labels, names))


_QUOTED = re.compile(r"'([^']*)'|\"([^\"]*)\"")


def parse_label_list(text: str, source: str) -> tuple[str, ...] | None:
    """``"['a', ' b']"`` -> ``("a", "b")``; blank or ``nan`` -> None (unlabelled row)."""
    value = text.strip()
    if not value or value.lower() == "nan":
        return None
    if value.startswith("[") and value.endswith("]") and "\\" not in value:
        items = [a or b for a, b in _QUOTED.findall(value)]
        rest = _QUOTED.sub("", value[1:-1]).replace(",", "").strip()
        if not rest:
            return tuple(dict.fromkeys(v.strip() for v in items if v.strip()))
    try:
        parsed = ast.literal_eval(value)
    except (ValueError, SyntaxError) as error:
        raise DatasetLayoutError(
            f"{source}: column 'Labels': cannot parse {text[:60]!r}"
        ) from error
    if not isinstance(parsed, (list, tuple)) or not all(isinstance(v, str) for v in parsed):
        raise DatasetLayoutError(f"{source}: column 'Labels': expected a list of strings")
    return tuple(dict.fromkeys(v.strip() for v in parsed if v.strip()))


def _label_names(rows: list[tuple[str, ...] | None], wanted: str | None, table: Path) -> list[str]:
    present = sorted({label for labels in rows if labels for label in labels})
    if not wanted:
        return present
    names = [name.strip() for name in wanted.split(",") if name.strip()]
    unknown = [name for name in names if name not in present]
    if unknown:
        raise DatasetLayoutError(
            f"--set labels: {', '.join(map(repr, unknown))} never occur in {table.name}"
        )
    return names


def _label_matrix(rows: list[tuple[str, ...] | None], names: list[str]) -> np.ndarray:
    column = {name: j for j, name in enumerate(names)}
    matrix = np.zeros((len(rows), len(names)), dtype=np.float32)
    for i, labels in enumerate(rows):
        if labels is None:
            matrix[i] = np.nan
            continue
        for label in labels:
            j = column.get(label)
            if j is not None:
                matrix[i, j] = 1.0
    return matrix


def _age(birth_year: str, study_date: str) -> str:
    try:
        return parse_age(int(study_date[:4]) - int(float(birth_year)))
    except ValueError:
        return ""
