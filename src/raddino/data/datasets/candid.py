"""CANDID-PTX: pneumothorax, chest tube and acute rib fracture labels and RLE masks.

Layout (as distributed after the data use agreement)::

    ROOT/Pneumothorax_reports.csv   SOPInstanceUID, filename, EncodedPixels, Report
                                    (every image; EncodedPixels -1 = no pneumothorax)
    ROOT/chest_tube.csv             anon_SOPUID, <annotation ref>, mask_rle (one row per tube)
    ROOT/acute_rib_fracture.csv     anon_SOPUID, <annotation ref>, mask_rle (one per fracture)
    ROOT/<images folder>/<SOPInstanceUID>[.dcm]

Images are the SOP Instance UIDs of ``Pneumothorax_reports.csv``. Labels: ``Pneumothorax``
(an encoded region), ``Chest Tube`` and ``Rib Fracture`` (listed in their file), 1 or 0.
Masks ``mask_pneumothorax``, ``mask_chest_tube``, ``mask_rib_fracture``: union of the image's
regions, drawn at the image's size from its header, in SIIM's RLE format (``--set
rle=absolute`` for 1-based absolute starts; a wrong format shows up as runs past the image).
``report`` holds the report text. Patient: the ``filename`` prefix (``P<id>_...``), else the
DICOM PatientID. Split: none official; patients are split train/val/test by hash.
"""

from __future__ import annotations

import os
from pathlib import Path

from raddino.data.datasets.csv_tables import open_table, require_columns, table_header
from raddino.data.datasets.errors import DatasetLayoutError
from raddino.data.datasets.files import find_file, find_images_by_stem
from raddino.data.datasets.headers import image_header
from raddino.data.datasets.index_table import IndexTable, PendingMask, TableBuilder
from raddino.data.datasets.options import IndexOptions
from raddino.data.datasets.rle import RLE_FORMATS, is_empty_rle

NAME = "candid-ptx"
LABELS = ("Pneumothorax", "Chest Tube", "Rib Fracture")
STRUCTURES = {
    "Pneumothorax": "pneumothorax",
    "Chest Tube": "chest_tube",
    "Rib Fracture": "rib_fracture",
}
OPTIONS = {
    "rle": "siim (relative offsets, default) or absolute (1-based starts)",
    "masks": "all (default), positive or none",
}
_ID_COLUMNS = ("SOPInstanceUID", "anon_SOPUID", "SOPUID")
_RLE_COLUMNS = ("EncodedPixels", "mask_rle", "rle")


def index(root: Path, options: IndexOptions) -> IndexTable:
    """Index CANDID-PTX under ``root``."""
    rle_format = options.choice("rle", "siim", RLE_FORMATS)
    which_masks = options.choice("masks", "all", ("all", "positive", "none"))
    reports_table = find_file(root, ["Pneumothorax_reports.csv"], "CANDID-PTX pneumothorax table")
    pneumothorax, extra = _read_regions(reports_table, with_extra=True)
    tables = {"Pneumothorax": reports_table}
    regions = {"Pneumothorax": pneumothorax}
    for label, names in (
        ("Chest Tube", ["chest_tube.csv"]),
        ("Rib Fracture", ["acute_rib_fracture.csv", "Rib_fracture_mask_rle.csv"]),
    ):
        tables[label] = find_file(root, names, f"CANDID-PTX {label.lower()} table")
        regions[label], _ = _read_regions(tables[label], with_extra=False)
    images = find_images_by_stem(root, [".dcm", ".dicom", ".png", ".jpg"], bare_uid_names=True)

    builder = TableBuilder(NAME, LABELS)
    for image_id in pneumothorax:
        found = images.get(image_id)
        header = image_header(found) if found else {}
        filename, report = extra.get(image_id, ("", ""))
        patient = filename.split("_")[0] if "_" in filename else header.get("patient_id", "")
        patient = patient or image_id
        record = {
            "path": found or os.path.join(root, "dataset", image_id),
            "split": options.split_of(patient),
            "patient_id": patient,
            "image_id": image_id,
            "view": header.get("view", ""),
            "age": header.get("age", ""),
            "sex": header.get("sex", ""),
            "report": report,
        }
        labels = [1.0 if regions[label].get(image_id) else 0.0 for label in LABELS]
        row = builder.add(record, labels, exists=bool(found))
        if not found or which_masks == "none" or "height" not in header:
            continue
        for label, positive in zip(LABELS, labels, strict=True):
            if which_masks == "positive" and not positive:
                continue
            builder.masks.append(
                PendingMask(
                    row,
                    STRUCTURES[label],
                    regions[label].get(image_id, []),
                    int(header["height"]),
                    int(header["width"]),
                    rle_format,
                    f"{tables[label]}: image {image_id}",
                )
            )
    return builder.build()


def _read_regions(
    table: Path, *, with_extra: bool
) -> tuple[dict[str, list[str]], dict[str, tuple[str, str]]]:
    """Image -> encodings (empty list: listed without a region); image -> (filename, report)."""
    header = table_header(table)
    id_column = next((c for c in _ID_COLUMNS if c in header), None)
    rle_column = next((c for c in _RLE_COLUMNS if c in header), None)
    if id_column is None or rle_column is None:
        raise DatasetLayoutError(
            f"{table}: needs an image id column ({' or '.join(_ID_COLUMNS)}) and an RLE column "
            f"({' or '.join(_RLE_COLUMNS)}); found {', '.join(header)}"
        )
    require_columns(table, (id_column, rle_column), header)
    regions: dict[str, list[str]] = {}
    extra: dict[str, tuple[str, str]] = {}
    for row in open_table(table):
        image_id = row[id_column].strip()
        encodings = regions.setdefault(image_id, [])
        if not is_empty_rle(row[rle_column]):
            encodings.append(row[rle_column].strip())
        if with_extra and image_id not in extra:
            report = (row.get("Report") or row.get("report") or "").strip()
            extra[image_id] = ((row.get("filename") or "").strip(), report)
    return regions, extra
