"""Small files in official dataset layouts: PNGs, DICOMs with headers, CSV tables."""

from __future__ import annotations

import csv
import gzip
import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

SECONDARY_CAPTURE = "1.2.840.10008.5.1.4.1.1.7"


def write_png(path: Path, height: int = 8, width: int = 8, seed: int = 0) -> Path:
    """A tiny grey PNG at ``path`` (folders created)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = np.random.default_rng(seed).integers(0, 256, (height, width), dtype=np.uint8)
    Image.fromarray(pixels).save(path)
    return path


def write_dicom(
    path: Path,
    pixels: np.ndarray | None = None,
    *,
    photometric: str = "MONOCHROME2",
    bits_stored: int | None = None,
    patient_id: str = "",
    age: str = "",
    sex: str = "",
    view: str = "",
    sop_uid: str | None = None,
) -> Path:
    """A single-frame uncompressed DICOM (uint8/uint16 pixels; 8x8 zeros by default)."""
    if pixels is None:
        pixels = np.zeros((8, 8), dtype=np.uint16)
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = SECONDARY_CAPTURE
    meta.MediaStorageSOPInstanceUID = sop_uid or generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = SECONDARY_CAPTURE
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.Modality = "CR"
    with warnings.catch_warnings():  # RSNA-style ages ("51") are not valid AS values
        warnings.simplefilter("ignore")
        for keyword, value in (
            ("PatientID", patient_id),
            ("PatientAge", age),
            ("PatientSex", sex),
            ("ViewPosition", view),
        ):
            if value:
                setattr(ds, keyword, value)
    ds.Rows, ds.Columns = pixels.shape
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = photometric
    ds.BitsAllocated = pixels.dtype.itemsize * 8
    ds.BitsStored = bits_stored or ds.BitsAllocated
    ds.HighBit = ds.BitsStored - 1
    ds.PixelRepresentation = 0
    ds.PixelData = pixels.astype(pixels.dtype.newbyteorder("<")).tobytes()
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)
    return path


def write_table(path: Path, header: Sequence[str], rows: Sequence[Sequence[object]]) -> Path:
    """A CSV (gzip when ``path`` ends with .gz)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "wt", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(header)
        writer.writerows([["" if v is None else v for v in row] for row in rows])
    return path


def read_csv(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as handle:
        return list(csv.DictReader(handle))


def encode_siim(mask: np.ndarray) -> str:
    """SIIM-ACR's run-length format, written out plainly (independent of raddino's encoder).

    Pixels are numbered column by column; each pair is (pixels skipped since the previous
    run ended, run length).
    """
    flat = [bool(v) for v in np.asarray(mask).T.reshape(-1)]
    pairs = []
    position = 0
    last_end = 0
    while position < len(flat):
        if flat[position]:
            start = position
            while position < len(flat) and flat[position]:
                position += 1
            pairs += [start - last_end, position - start]
            last_end = position
        else:
            position += 1
    return " ".join(map(str, pairs)) if pairs else "-1"


def disc(height: int, width: int, cy: float, cx: float, radius: float) -> np.ndarray:
    yy, xx = np.mgrid[0:height, 0:width]
    return (yy - cy) ** 2 + (xx - cx) ** 2 <= radius**2
