"""SIIM-ACR Pneumothorax Segmentation: RLE masks -> PNG masks, image labels.

Layout (the Kaggle/SIIM download)::

    ROOT/train-rle.csv          (stage 1) or stage_2_train.csv: ImageId, EncodedPixels
    ROOT/dicom-images-train/<study>/<series>/<ImageId>.dcm   (found anywhere under ROOT)

An image may have several rows (one per pneumothorax region; their union is the mask) or one
row with ``-1`` (no pneumothorax). Label ``Pneumothorax``: 1 when any region is encoded.
Masks (``mask_pneumothorax``) are drawn at the image's size read from its header (1024 x 1024
when the header has none), in SIIM's format (``--set rle=absolute`` for 1-based absolute
starts). ``--set masks=positive`` writes masks only for positive images, ``none`` skips them.
Split: none official; patients (DICOM PatientID, else the image) are split by hash.
"""

from __future__ import annotations

import os
from pathlib import Path

from raddino.data.datasets.csv_tables import open_table, require_columns, table_header
from raddino.data.datasets.files import find_file, find_images_by_stem
from raddino.data.datasets.headers import image_header
from raddino.data.datasets.index_table import IndexTable, PendingMask, TableBuilder
from raddino.data.datasets.options import IndexOptions
from raddino.data.datasets.rle import RLE_FORMATS, is_empty_rle

NAME = "siim-acr"
LABELS = ("Pneumothorax",)
DEFAULT_SIZE = 1024
OPTIONS = {
    "csv": "path of train-rle.csv / stage_2_train.csv (default: found under the root)",
    "rle": "siim (relative offsets, default) or absolute (1-based starts)",
    "masks": "all (default), positive or none",
    "headers": "true (default): read patient, view, age, sex and size from the DICOM headers",
}


def index(root: Path, options: IndexOptions) -> IndexTable:
    """Index SIIM-ACR Pneumothorax under ``root``."""
    rle_format = options.choice("rle", "siim", RLE_FORMATS)
    which_masks = options.choice("masks", "all", ("all", "positive", "none"))
    headers = options.flag("headers", True)
    table = find_file(
        root,
        ["train-rle.csv", "stage_2_train.csv", "train_rle.csv"],
        "SIIM-ACR RLE table",
        options.extra.get("csv"),
    )
    require_columns(table, ("ImageId", "EncodedPixels"), table_header(table))
    encodings: dict[str, list[str]] = {}
    first_line: dict[str, int] = {}
    for line, row in enumerate(open_table(table), start=2):
        image_id = row["ImageId"].strip()
        first_line.setdefault(image_id, line)
        rles = encodings.setdefault(image_id, [])
        if not is_empty_rle(row["EncodedPixels"]):
            rles.append(row["EncodedPixels"].strip())
    images = find_images_by_stem(root, [".dcm", ".dicom", ".png", ".jpg"])

    builder = TableBuilder(NAME, LABELS)
    for image_id, rles in encodings.items():
        found = images.get(image_id)
        header = image_header(found) if found and headers else {}
        patient = header.get("patient_id") or image_id
        record = {
            "path": found or os.path.join(root, "dicom-images-train", f"{image_id}.dcm"),
            "split": options.split_of(patient),
            "patient_id": patient,
            "image_id": image_id,
            "view": header.get("view", ""),
            "age": header.get("age", ""),
            "sex": header.get("sex", ""),
        }
        row = builder.add(record, [1.0 if rles else 0.0], exists=bool(found))
        if found and (which_masks == "all" or (which_masks == "positive" and rles)):
            height = int(header.get("height") or DEFAULT_SIZE)
            width = int(header.get("width") or DEFAULT_SIZE)
            source = f"{table}: ImageId {image_id} (line {first_line[image_id]})"
            builder.masks.append(
                PendingMask(row, "pneumothorax", rles, height, width, rle_format, source)
            )
    return builder.build()
