"""VinDr-CXR: per-radiologist annotations -> image labels by a stated rule, plus boxes.

Two layouts are recognised::

    PhysioNet (vindr-cxr/1.0.0)                     Kaggle (VinBigData challenge)
    ROOT/annotations/image_labels_train.csv          ROOT/train.csv   image_id, class_name,
        image_id, rad_ID, 28 labels (0/1)                class_id, rad_id, x_min, y_min,
    ROOT/annotations/image_labels_test.csv               x_max, y_max (one row per box or
        image_id, 28 labels (consensus)                  "No finding", per radiologist)
    ROOT/annotations/annotations_{train,test}.csv    ROOT/train/<image_id>.dicom
    ROOT/{train,test}/<image_id>.dicom

Each training image was read by three radiologists. Rule (``--set rule=``): a label is 1 when
``any`` reader marked it, when a ``majority`` (more than half; the default) did, or when
``all`` did; otherwise 0. "No finding" is then 1 exactly when no other label is 1. PhysioNet
test labels are the published consensus, used as they are. Boxes (every reader's, with
``reader``) go to the ``boxes`` column. Split: PhysioNet train/test with ``val_fraction`` of
train moved to val; Kaggle (train only) split train/val/test by image. Age and sex come from
the DICOM headers (``--set headers=false`` skips reading them).
"""

from __future__ import annotations

import json
import os
from collections import defaultdict
from pathlib import Path

from raddino.data.datasets.csv_tables import open_table, require_columns, table_header
from raddino.data.datasets.errors import DatasetLayoutError
from raddino.data.datasets.files import find_images_by_stem
from raddino.data.datasets.headers import image_header
from raddino.data.datasets.index_table import IndexTable, TableBuilder
from raddino.data.datasets.options import IndexOptions

NAME = "vindr-cxr"
OPTIONS = {
    "rule": "any, majority (default) or all: how reader labels combine",
    "headers": "true (default): read age and sex from the DICOM headers",
}
RULES = ("any", "majority", "all")
KAGGLE_LABELS = (
    "Aortic enlargement",
    "Atelectasis",
    "Calcification",
    "Cardiomegaly",
    "Consolidation",
    "ILD",
    "Infiltration",
    "Lung Opacity",
    "Nodule/Mass",
    "Other lesion",
    "Pleural effusion",
    "Pleural thickening",
    "Pneumothorax",
    "Pulmonary fibrosis",
    "No finding",
)
NO_FINDING = "No finding"


def index(root: Path, options: IndexOptions) -> IndexTable:
    """Index VinDr-CXR (PhysioNet or Kaggle layout) under ``root``."""
    rule = options.choice("rule", "majority", RULES)
    headers = options.flag("headers", True)
    images = find_images_by_stem(root, [".dicom", ".dcm", ".png", ".jpg"])
    annotations = root / "annotations"
    if _table(annotations / "image_labels_train.csv"):
        parts = _physionet(annotations, rule)
    elif kaggle := _table(root / "train.csv"):
        parts = [_kaggle(kaggle, rule)]
    else:
        raise DatasetLayoutError(
            f"{root}: not a VinDr-CXR folder (expected annotations/image_labels_train.csv "
            "or the Kaggle train.csv)"
        )
    names = [n for n in dict.fromkeys(n for part in parts for n in part.names) if n != NO_FINDING]
    names.append(NO_FINDING)

    builder = TableBuilder(NAME, names)
    for part in parts:
        for image_id, labels in part.labels.items():
            if part.split == "test":
                split = "test"
            elif part.has_test:
                split = options.split_of(image_id, test=False)
            else:
                split = options.split_of(image_id)
            found = images.get(image_id)
            record = {
                "path": found or os.path.join(root, part.folder, f"{image_id}.dicom"),
                "split": split,
                "patient_id": image_id,
                "image_id": image_id,
                "readers": str(part.readers.get(image_id, "")),
            }
            if found and headers:
                header = image_header(found)
                record.update({k: header.get(k, "") for k in ("age", "sex", "view")})
            if part.boxes.get(image_id):
                record["boxes"] = json.dumps(part.boxes[image_id], separators=(",", ":"))
            builder.add(record, [labels.get(name, 0.0) for name in names], exists=bool(found))
    return builder.build()


class _Part:
    """Image labels, reader counts and boxes of one split of the dataset."""

    def __init__(self, split: str, folder: str, has_test: bool, names: list[str]) -> None:
        self.split = split
        self.folder = folder
        self.has_test = has_test
        self.names = names
        self.labels: dict[str, dict[str, float]] = {}
        self.readers: dict[str, int] = {}
        self.boxes: dict[str, list[dict]] = defaultdict(list)


def combine_votes(votes: dict[str, int], readers: int, rule: str) -> dict[str, float]:
    """Label -> 1/0 from reader votes; "No finding" = 1 when no other label is 1."""
    if rule == "any":
        needed = 1
    elif rule == "majority":
        needed = readers // 2 + 1
    elif rule == "all":
        needed = readers
    else:
        raise ValueError(f"rule={rule!r}: choose one of {', '.join(RULES)}")
    labels = {
        name: 1.0 if count >= max(needed, 1) else 0.0
        for name, count in votes.items()
        if name != NO_FINDING
    }
    labels[NO_FINDING] = 0.0 if any(v == 1.0 for v in labels.values()) else 1.0
    return labels


def _kaggle(table: Path, rule: str) -> _Part:
    require_columns(table, ("image_id", "class_name", "rad_id"), table_header(table))
    part = _Part("train", "train", has_test=False, names=list(KAGGLE_LABELS))
    marks: dict[str, dict[str, set[str]]] = defaultdict(lambda: defaultdict(set))
    readers: dict[str, set[str]] = defaultdict(set)
    for line, row in enumerate(open_table(table), start=2):
        image_id, label, reader = (row[k].strip() for k in ("image_id", "class_name", "rad_id"))
        readers[image_id].add(reader)
        marks[image_id][label].add(reader)
        box = _box(row, label, reader, f"{table}: line {line}")
        if box:
            part.boxes[image_id].append(box)
    part.names.extend(sorted({n for m in marks.values() for n in m} - set(part.names)))
    for image_id, by_label in marks.items():
        votes = {label: len(who) for label, who in by_label.items()}
        part.readers[image_id] = len(readers[image_id])
        part.labels[image_id] = combine_votes(votes, len(readers[image_id]), rule)
    return part


def _physionet(folder: Path, rule: str) -> list[_Part]:
    table = _table(folder / "image_labels_train.csv")
    assert table is not None
    header = table_header(table)
    reader_column = next((c for c in ("rad_ID", "rad_id") if c in header), None)
    require_columns(table, ("image_id", reader_column or "rad_ID"), header)
    names = [c for c in header if c not in ("image_id", reader_column)]
    train = _Part("train", "train", has_test=True, names=names)
    votes: dict[str, dict[str, int]] = defaultdict(lambda: defaultdict(int))
    counts: dict[str, int] = defaultdict(int)
    for line, row in enumerate(open_table(table), start=2):
        image_id = row["image_id"].strip()
        counts[image_id] += 1
        for name in names:
            if _binary(row[name], f"{table}: line {line}", name):
                votes[image_id][name] += 1
            else:
                votes[image_id].setdefault(name, 0)
    for image_id, by_label in votes.items():
        train.readers[image_id] = counts[image_id]
        train.labels[image_id] = combine_votes(by_label, counts[image_id], rule)
    _add_boxes(train, _table(folder / "annotations_train.csv"))
    parts = [train]

    table = _table(folder / "image_labels_test.csv")
    if table:
        header = table_header(table)
        require_columns(table, ("image_id",), header)
        names = [c for c in header if c not in ("image_id", "rad_ID", "rad_id")]
        test = _Part("test", "test", has_test=True, names=names)
        for line, row in enumerate(open_table(table), start=2):
            source = f"{table}: line {line}"
            image_id = row["image_id"].strip()
            test.labels[image_id] = {n: float(_binary(row[n], source, n)) for n in names}
        _add_boxes(test, _table(folder / "annotations_test.csv"))
        parts.append(test)
    return parts


def _table(path: Path) -> Path | None:
    """``path``, or its .gz/.zip twin, when one exists."""
    for suffix in ("", ".gz", ".zip"):
        candidate = path.with_name(path.name + suffix)
        if candidate.is_file():
            return candidate
    return None


def _add_boxes(part: _Part, table: Path | None) -> None:
    if table is None:
        return
    require_columns(table, ("image_id", "class_name"), table_header(table))
    for line, row in enumerate(open_table(table), start=2):
        reader = (row.get("rad_id") or row.get("rad_ID") or "").strip()
        box = _box(row, row["class_name"].strip(), reader, f"{table}: line {line}")
        if box:
            part.boxes[row["image_id"].strip()].append(box)


def _box(row: dict[str, str], label: str, reader: str, source: str) -> dict | None:
    values = [row.get(k, "").strip() for k in ("x_min", "y_min", "x_max", "y_max")]
    if not all(values):
        return None
    try:
        x0, y0, x1, y1 = (float(v) for v in values)
    except ValueError as error:
        raise DatasetLayoutError(f"{source}: unreadable box {values}") from error
    box = {"label": label, "x": x0, "y": y0, "w": x1 - x0, "h": y1 - y0}
    if reader:
        box["reader"] = reader
    return box


def _binary(value: str, source: str, column: str) -> bool:
    text = value.strip()
    if text in ("1", "1.0"):
        return True
    if text in ("0", "0.0", ""):
        return False
    raise DatasetLayoutError(f"{source}: column {column!r}: expected 0 or 1, got {value!r}")
