"""Metadata from an image file's header, without decoding its pixels."""

from __future__ import annotations

import os
import warnings
from pathlib import Path

from raddino.data.datasets.metadata import normalise_sex, parse_age

__all__ = ["image_header"]


def image_header(path: str | os.PathLike) -> dict[str, str]:
    """Metadata from an image header without decoding pixels.

    DICOM: ``patient_id``, ``age``, ``sex``, ``view``, ``height``, ``width``; PNG/JPEG: the
    size only. Unreadable files give ``{}``.
    """
    name = os.fspath(path)
    suffix = Path(name).suffix.lower()
    if suffix in (".png", ".jpg", ".jpeg"):
        from PIL import Image

        try:
            with Image.open(name) as image:
                width, height = image.size
        except (OSError, ValueError):
            return {}
        return {"height": str(height), "width": str(width)}
    import pydicom

    tags = ["PatientID", "PatientAge", "PatientSex", "ViewPosition", "Rows", "Columns"]
    # Real headers break the standard now and then (RSNA's PatientAge "51" is not a valid AS):
    # take the values as they are, without a warning per file.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            ds = pydicom.dcmread(name, stop_before_pixels=True, specific_tags=tags, force=True)
            out = {
                "patient_id": str(ds.get("PatientID", "") or "").strip(),
                "age": parse_age(str(ds.get("PatientAge", "") or "")),
                "sex": normalise_sex(str(ds.get("PatientSex", "") or "")),
                "view": str(ds.get("ViewPosition", "") or "").strip().upper(),
            }
            if ds.get("Rows") and ds.get("Columns"):
                out["height"], out["width"] = str(int(ds.Rows)), str(int(ds.Columns))
        except Exception:  # an unreadable header just means "no metadata"
            return {}
    return out
