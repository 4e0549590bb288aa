"""SIIM-ACR Pneumothorax on its real RLE table (12,047 images, 2,669 with pneumothorax)."""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from raddino.data.datasets import IndexOptions, build_index, index_dataset
from raddino.data.datasets.csv_tables import open_table
from raddino.data.datasets.errors import DatasetLayoutError
from raddino.data.datasets.index_table import IndexTable
from raddino.data.datasets.rle import read_mask_png
from tests.data.datasets.conftest import link
from tests.data.datasets.files import read_csv, write_dicom

MULTI = "1.2.276.0.7230010.3.1.4.8323329.3514.1517875178.176496"  # several regions
SINGLE = "1.2.276.0.7230010.3.1.4.8323329.13666.1517875247.117800"
NEGATIVE = "1.2.276.0.7230010.3.1.4.8323329.6904.1517875201.850819"


def plain_decode(text: str, size: int = 1024) -> np.ndarray:
    """SIIM's decoding written out step by step (column-major, relative offsets)."""
    flat = np.zeros(size * size, dtype=bool)
    values = [int(v) for v in text.split()]
    position = 0
    for offset, length in zip(values[0::2], values[1::2], strict=True):
        position += offset
        flat[position : position + length] = True
        position += length
    return flat.reshape(size, size).T


@pytest.fixture(scope="module")
def encodings(xrv_data: Path) -> dict[str, list[str]]:
    table: dict[str, list[str]] = {}
    for row in open_table(xrv_data / "siim-pneumothorax-train-rle.csv.gz"):
        table.setdefault(row["ImageId"], []).append(row["EncodedPixels"])
    return table


@pytest.fixture(scope="module")
def siim_root(xrv_data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("siim")
    link(xrv_data / "siim-pneumothorax-train-rle.csv.gz", root / "train-rle.csv.gz")
    blank = np.zeros((1024, 1024), dtype=np.uint8)
    for name in (MULTI, SINGLE):  # PNG copies of the 1024 x 1024 images
        folder = root / "png-images-train"
        folder.mkdir(exist_ok=True)
        Image.fromarray(blank).save(folder / f"{name}.png")
    study = root / "dicom-images-train" / "1.2.3" / "1.2.3.4"
    write_dicom(study / f"{NEGATIVE}.dcm", patient_id="p-17", age="38", sex="M", view="PA")
    return root


@pytest.fixture(scope="module")
def siim(siim_root: Path) -> IndexTable:
    return build_index("siim", siim_root)


def test_counts_match_the_published_numbers(siim: IndexTable) -> None:
    assert len(siim) == 12_047
    assert int(siim.label("Pneumothorax").sum()) == 2_669
    assert len(siim.missing) == 12_047 - 3


def test_masks_are_drawn_from_every_region_of_an_image(
    siim_root: Path, encodings: dict[str, list[str]], tmp_path: Path
) -> None:
    summary = index_dataset("siim", siim_root, tmp_path / "siim.csv")
    rows = {r["image_id"]: r for r in read_csv(summary.manifest)}
    assert set(rows) == {MULTI, SINGLE, NEGATIVE} and summary.masks == 3
    assert len(encodings[MULTI]) >= 3
    for name in (MULTI, SINGLE):
        expected = np.zeros((1024, 1024), dtype=bool)
        for text in encodings[name]:
            expected |= plain_decode(text)
        mask = read_mask_png(tmp_path / rows[name]["mask_pneumothorax"])
        np.testing.assert_array_equal(mask, expected)
        assert rows[name]["Pneumothorax"] == "1"
    negative = rows[NEGATIVE]
    # The negative image is an 8x8 DICOM: its mask has the image's size and is empty.
    empty = read_mask_png(tmp_path / negative["mask_pneumothorax"])
    assert empty.shape == (8, 8) and not empty.any()
    assert (negative["Pneumothorax"], negative["patient_id"], negative["sex"]) == ("0", "p-17", "M")


def test_positive_only_masks_and_wrong_format_errors(siim_root: Path, tmp_path: Path) -> None:
    summary = index_dataset(
        "siim", siim_root, tmp_path / "a" / "siim.csv", IndexOptions(extra={"masks": "positive"})
    )
    rows = {r["image_id"]: r for r in read_csv(summary.manifest)}
    assert rows[NEGATIVE]["mask_pneumothorax"] == "" and rows[MULTI]["mask_pneumothorax"]
    with pytest.raises(DatasetLayoutError, match=r"ImageId 1\.2\..*out of order"):
        index_dataset(
            "siim", siim_root, tmp_path / "b" / "siim.csv", IndexOptions(extra={"rle": "absolute"})
        )


def test_header_with_a_leading_space_is_accepted(xrv_data: Path) -> None:
    with gzip.open(xrv_data / "siim-pneumothorax-train-rle.csv.gz", "rt") as handle:
        assert handle.readline().startswith("ImageId, EncodedPixels")
