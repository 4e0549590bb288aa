"""Run-length decoding against masks drawn in the test, and on SIIM-ACR's real encodings."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from raddino.data.datasets.csv_tables import open_table
from raddino.data.datasets.rle import (
    RleError,
    is_empty_rle,
    rle_decode,
    rle_decode_union,
    rle_encode,
)
from tests.data.datasets.files import disc, encode_siim


def drawn_masks() -> list[np.ndarray]:
    height, width = 37, 53
    rectangle = np.zeros((height, width), dtype=bool)
    rectangle[5:20, 30:50] = True
    corners = np.zeros((height, width), dtype=bool)
    corners[0, 0] = corners[-1, -1] = corners[0, -1] = corners[-1, 0] = True
    stripes = np.zeros((height, width), dtype=bool)
    stripes[:, ::3] = True
    full = np.ones((height, width), dtype=bool)
    return [disc(height, width, 18, 20, 9), rectangle, corners, stripes, full]


@pytest.mark.parametrize("index", range(5))
def test_siim_decoding_reproduces_masks_drawn_in_the_test(index: int) -> None:
    mask = drawn_masks()[index]
    encoded = encode_siim(mask)  # the test's own plain implementation of the format
    decoded = rle_decode(encoded, *mask.shape)
    assert decoded.dtype == bool and decoded.shape == mask.shape
    np.testing.assert_array_equal(decoded, mask)
    assert rle_encode(mask) == encoded


def test_union_of_regions_is_their_logical_or() -> None:
    a = disc(40, 40, 10, 10, 6)
    b = disc(40, 40, 25, 28, 8)
    union = rle_decode_union([encode_siim(a), "-1", encode_siim(b)], 40, 40)
    np.testing.assert_array_equal(union, a | b)


def test_absolute_format_uses_one_based_starts_column_by_column() -> None:
    mask = np.zeros((4, 3), dtype=bool)
    mask[1:3, 0] = True  # pixels 1, 2 (column-major)
    mask[0, 2] = True  # pixel 8
    assert rle_encode(mask, rle_format="absolute") == "2 2 9 1"
    np.testing.assert_array_equal(rle_decode("2 2 9 1", 4, 3, rle_format="absolute"), mask)
    # Row by row, pixels (0, 2) and (1, 0) are neighbours: one run.
    assert rle_encode(mask, rle_format="absolute", order="C") == "3 2 7 1"
    np.testing.assert_array_equal(
        rle_decode("3 2 7 1", 4, 3, rle_format="absolute", order="C"), mask
    )


def test_absolute_runs_out_of_order_are_refused() -> None:
    with pytest.raises(RleError, match="out of order"):
        rle_decode("10 2 3 1", 5, 5, rle_format="absolute")


def test_empty_encodings() -> None:
    assert is_empty_rle("-1") and is_empty_rle(" -1 ") and is_empty_rle("")
    assert not rle_decode("-1", 5, 5).any()
    assert rle_encode(np.zeros((3, 3))) == "-1"


@pytest.mark.parametrize(
    ("text", "message"),
    [("1 2 3", "odd number"), ("0 30", "past the image"), ("a b", "not a run-length"),
     ("5 -1", "negative run length")],
)  # fmt: skip
def test_malformed_encodings_are_refused(text: str, message: str) -> None:
    with pytest.raises(RleError, match=message):
        rle_decode(text, 5, 5)


def test_real_siim_encodings_fit_1024_images_and_cover_their_runs(xrv_data: Path) -> None:
    rows = list(open_table(xrv_data / "siim-pneumothorax-train-rle.csv.gz"))
    encoded = [r["EncodedPixels"] for r in rows if not is_empty_rle(r["EncodedPixels"])]
    assert len(encoded) > 3000
    for text in encoded[::40]:
        mask = rle_decode(text, 1024, 1024)
        lengths = np.array(text.split(), dtype=np.int64)[1::2]
        assert mask.sum() == lengths.sum()  # runs never overlap
        assert rle_encode(mask) == text.strip()
