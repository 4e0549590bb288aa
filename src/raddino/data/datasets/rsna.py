"""RSNA Pneumonia Detection Challenge (stage 2): labels, boxes and detailed classes.

Layout (the Kaggle download)::

    ROOT/stage_2_train_labels.csv            patientId, x, y, width, height, Target
    ROOT/stage_2_detailed_class_info.csv     optional: patientId, class
    ROOT/stage_2_train_images/<patientId>.dcm

One row per image (``patientId`` names an image). Label ``Pneumonia``: ``Target`` (1 when the
image has at least one "Lung Opacity" box). Boxes go to ``boxes``; the detailed class (Normal /
No Lung Opacity / Not Normal / Lung Opacity) to ``class``. View, age and sex come from the
DICOM headers (``--set headers=false`` skips them). Split: none official (the stage-2 test
labels were never released); images are split train/val/test by hash.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from raddino.data.datasets.csv_tables import open_table, require_columns, table_header
from raddino.data.datasets.errors import DatasetLayoutError
from raddino.data.datasets.files import find_file, find_images_by_stem
from raddino.data.datasets.headers import image_header
from raddino.data.datasets.index_table import IndexTable, TableBuilder
from raddino.data.datasets.options import IndexOptions

NAME = "rsna-pneumonia"
LABELS = ("Pneumonia",)
OPTIONS = {
    "csv": "path of stage_2_train_labels.csv (default: found under the root)",
    "headers": "true (default): read view, age and sex from the DICOM headers",
}


def index(root: Path, options: IndexOptions) -> IndexTable:
    """Index the RSNA Pneumonia challenge data under ``root``."""
    headers = options.flag("headers", True)
    table = find_file(
        root,
        ["stage_2_train_labels.csv", "stage_1_train_labels.csv"],
        "RSNA train labels",
        options.extra.get("csv"),
    )
    require_columns(
        table, ("patientId", "x", "y", "width", "height", "Target"), table_header(table)
    )
    targets: dict[str, float] = {}
    boxes: dict[str, list[dict]] = {}
    for line, row in enumerate(open_table(table), start=2):
        source = f"{table}: line {line}"
        image_id = row["patientId"].strip()
        target = row["Target"].strip()
        if target not in ("0", "1"):
            raise DatasetLayoutError(f"{source}: column 'Target': expected 0 or 1, got {target!r}")
        targets[image_id] = max(targets.get(image_id, 0.0), float(target))
        if target == "1":
            try:
                x, y, w, h = (float(row[k]) for k in ("x", "y", "width", "height"))
            except ValueError as error:
                raise DatasetLayoutError(f"{source}: unreadable box") from error
            box = {"label": "Lung Opacity", "x": x, "y": y, "w": w, "h": h}
            boxes.setdefault(image_id, []).append(box)
    classes = _detailed_classes(table.parent)
    images = find_images_by_stem(root, [".dcm", ".png", ".jpg"])

    builder = TableBuilder(NAME, LABELS)
    for image_id, target in targets.items():
        found = images.get(image_id)
        record = {
            "path": found or os.path.join(root, "stage_2_train_images", f"{image_id}.dcm"),
            "split": options.split_of(image_id),
            "patient_id": image_id,
            "image_id": image_id,
            "class": classes.get(image_id, ""),
        }
        if found and headers:
            header = image_header(found)
            record.update({k: header.get(k, "") for k in ("view", "age", "sex")})
        if image_id in boxes:
            record["boxes"] = json.dumps(boxes[image_id], separators=(",", ":"))
        builder.add(record, [target], exists=bool(found))
    return builder.build()


def _detailed_classes(folder: Path) -> dict[str, str]:
    for name in ("stage_2_detailed_class_info.csv", "stage_1_detailed_class_info.csv"):
        for suffix in ("", ".gz", ".zip"):
            path = folder / (name + suffix)
            if path.is_file():
                require_columns(path, ("patientId", "class"), table_header(path))
                return {r["patientId"].strip(): r["class"].strip() for r in open_table(path)}
    return {}
