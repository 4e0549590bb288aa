"""NIH ChestX-ray14: ``Data_Entry_2017*.csv``, ``BBox_List_2017.csv``, official split lists.

Layout (as downloaded from the NIH Box folder or Kaggle)::

    ROOT/Data_Entry_2017_v2020.csv        (or Data_Entry_2017.csv; .gz accepted)
    ROOT/BBox_List_2017.csv               optional: 984 boxes on 880 images
    ROOT/train_val_list.txt               optional: official patient-wise split
    ROOT/test_list.txt
    ROOT/images_001/images/00000001_000.png ...   (PNGs anywhere under ROOT)

Labels: the 14 findings and "No Finding" from ``Finding Labels`` (``|``-separated), 1 or 0.
Split: ``test`` from ``test_list.txt``; the rest is ``train``, with ``val_fraction`` of its
patients moved to ``val``. Without the lists, patients are split train/val/test by hash.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from raddino.data.datasets.csv_tables import open_table, require_columns, table_header
from raddino.data.datasets.errors import DatasetLayoutError
from raddino.data.datasets.files import find_file, find_images_by_stem
from raddino.data.datasets.index_table import IndexTable, TableBuilder
from raddino.data.datasets.metadata import normalise_sex, parse_age
from raddino.data.datasets.options import IndexOptions

NAME = "nih"
FINDINGS = (
    "Atelectasis",
    "Cardiomegaly",
    "Effusion",
    "Infiltration",
    "Mass",
    "Nodule",
    "Pneumonia",
    "Pneumothorax",
    "Consolidation",
    "Edema",
    "Emphysema",
    "Fibrosis",
    "Pleural_Thickening",
    "Hernia",
)
LABELS = (*FINDINGS, "No Finding")
OPTIONS = {"csv": "path of Data_Entry_2017*.csv (default: found under the root)"}
_ENTRY_COLUMNS = ("Image Index", "Finding Labels", "Patient ID", "Patient Age", "Patient Gender")


def index(root: Path, options: IndexOptions) -> IndexTable:
    """Index NIH ChestX-ray14 under ``root``."""
    entries = find_file(
        root,
        ["Data_Entry_2017_v2020.csv", "Data_Entry_2017.csv"],
        "NIH Data_Entry_2017 table",
        options.extra.get("csv"),
    )
    require_columns(entries, _ENTRY_COLUMNS, table_header(entries))
    boxes = _read_boxes(root)
    test_names, has_lists = _read_split_lists(root)
    images = find_images_by_stem(root, [".png"])

    images_dir = os.path.join(root, "images")
    builder = TableBuilder(NAME, LABELS)
    if not has_lists:
        builder.notes.append("no train_val_list.txt/test_list.txt: patient-level hash split")
    for line, row in enumerate(open_table(entries), start=2):
        name = row["Image Index"].strip()
        found = images.get(name)
        patient = row["Patient ID"].strip()
        if has_lists:
            split = "test" if name in test_names else options.split_of(patient, test=False)
        else:
            split = options.split_of(patient)
        record = {
            "path": found or os.path.join(images_dir, name),
            "split": split,
            "patient_id": patient,
            "view": row.get("View Position", "").strip().upper(),
            "age": parse_age(row["Patient Age"]),
            "sex": normalise_sex(row["Patient Gender"]),
            "follow_up": row.get("Follow-up #", "").strip(),
            "image_id": name,
        }
        if name in boxes:
            record["boxes"] = json.dumps(boxes[name], separators=(",", ":"))
        builder.add(
            record, _labels(row["Finding Labels"], f"{entries}: line {line}"), exists=bool(found)
        )
    return builder.build()


def _labels(text: str, source: str) -> list[float]:
    names = {part.strip() for part in text.split("|") if part.strip()}
    unknown = names - set(LABELS)
    if unknown:
        raise DatasetLayoutError(
            f"{source}: column 'Finding Labels': unknown label(s) {', '.join(sorted(unknown))}"
        )
    return [1.0 if label in names else 0.0 for label in LABELS]


def _read_boxes(root: Path) -> dict[str, list[dict]]:
    """Image name -> boxes ``{"label", "x", "y", "w", "h"}`` in pixels of the 1024 PNG."""
    try:
        path = find_file(root, ["BBox_List_2017.csv"], "NIH bounding boxes")
    except DatasetLayoutError:
        return {}
    boxes: dict[str, list[dict]] = {}
    for line, row in enumerate(open_table(path), start=2):
        try:
            x, y, w, h = (float(row[key]) for key in ("Bbox [x", "y", "w", "h]"))
        except (KeyError, ValueError) as error:
            raise DatasetLayoutError(f"{path}: line {line}: unreadable box ({error})") from error
        box = {"label": row["Finding Label"].strip(), "x": x, "y": y, "w": w, "h": h}
        boxes.setdefault(row["Image Index"].strip(), []).append(box)
    return boxes


def _read_split_lists(root: Path) -> tuple[set[str], bool]:
    """Names in ``test_list.txt`` and whether both official lists exist."""
    train_val = root / "train_val_list.txt"
    test = root / "test_list.txt"
    if not (train_val.is_file() and test.is_file()):
        return set(), False
    return {line.strip() for line in test.read_text().splitlines() if line.strip()}, True
