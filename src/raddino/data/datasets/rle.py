"""Run-length encoded masks (SIIM-ACR, CANDID-PTX) to and from arrays, and mask PNGs.

Two formats:

* ``siim``: the SIIM-ACR Pneumothorax format. Pairs ``offset length``; each offset counts the
  pixels skipped since the end of the previous run (the first one from pixel 0).
* ``absolute``: the usual Kaggle format. Pairs ``start length`` with 1-based start positions.

In both, pixels are numbered column by column (``order="F"``: down the first column, then
the next), as those datasets do; ``order="C"`` numbers them row by row. ``-1`` or an empty
string is an empty mask.
"""

from __future__ import annotations

import io
from collections.abc import Iterable
from pathlib import Path

import numpy as np

__all__ = ["RLE_FORMATS", "RleError", "rle_decode", "rle_decode_union", "rle_encode"]

RLE_FORMATS = ("siim", "absolute")


class RleError(ValueError):
    """A run-length encoding that is malformed or does not fit the image."""


def is_empty_rle(text: str) -> bool:
    """Whether ``text`` encodes an empty mask (``-1`` or blank)."""
    stripped = text.strip()
    return not stripped or stripped == "-1"


def rle_decode(
    text: str, height: int, width: int, *, rle_format: str = "siim", order: str = "F"
) -> np.ndarray:
    """A (height, width) bool mask from one encoding."""
    mask = np.zeros(height * width, dtype=bool)
    _paint(mask, text, rle_format)
    return _unflatten(mask, height, width, order)


def rle_decode_union(
    texts: Iterable[str], height: int, width: int, *, rle_format: str = "siim", order: str = "F"
) -> np.ndarray:
    """The union of several encodings of one image (one row per region in SIIM files)."""
    mask = np.zeros(height * width, dtype=bool)
    for text in texts:
        _paint(mask, text, rle_format)
    return _unflatten(mask, height, width, order)


def rle_encode(mask: np.ndarray, *, rle_format: str = "siim", order: str = "F") -> str:
    """The encoding of a 2-D mask (nonzero = inside); ``-1`` for an empty mask."""
    _check_format(rle_format)
    if mask.ndim != 2:
        raise ValueError(f"mask must be 2-D, got shape {mask.shape}")
    flat = np.asarray(mask, dtype=bool).ravel(order=_order(order)).astype(np.int8)
    edges = np.diff(np.concatenate([[0], flat, [0]]))
    starts = np.flatnonzero(edges == 1)
    ends = np.flatnonzero(edges == -1)
    if starts.size == 0:
        return "-1"
    lengths = ends - starts
    if rle_format == "absolute":
        firsts = starts + 1
    else:
        previous_ends = np.concatenate([[0], ends[:-1]])
        firsts = starts - previous_ends
    return " ".join(f"{a} {b}" for a, b in zip(firsts.tolist(), lengths.tolist(), strict=True))


def mask_png_bytes(mask: np.ndarray) -> bytes:
    """A bool mask as an 8-bit grey PNG (0 outside, 255 inside)."""
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(np.where(mask, 255, 0).astype(np.uint8), mode="L").save(
        buffer, format="PNG", compress_level=6
    )
    return buffer.getvalue()


def read_mask_png(path: str | Path) -> np.ndarray:
    """A mask PNG as a bool array (nonzero = inside); :func:`raddino.data.io.read_mask`."""
    from raddino.data.io import read_mask

    return read_mask(path)


def _paint(mask: np.ndarray, text: str, rle_format: str) -> None:
    """Set the runs of ``text`` in the flat ``mask``."""
    _check_format(rle_format)
    if is_empty_rle(text):
        return
    try:
        values = np.array(text.split(), dtype=np.int64)
    except ValueError as error:
        raise RleError(f"not a run-length encoding: {text[:40]!r}...") from error
    if values.size % 2:
        raise RleError(f"odd number of values ({values.size}); expected start/length pairs")
    firsts, lengths = values[0::2], values[1::2]
    if (lengths < 0).any():
        raise RleError("negative run length")
    if rle_format == "absolute":
        if (firsts < 1).any():
            raise RleError("absolute run starts must be >= 1")
        starts = firsts - 1
    else:
        if (firsts < 0).any():
            raise RleError("negative offset in a SIIM-style encoding")
        # start_k = sum(offsets[:k+1]) + sum(lengths[:k])
        starts = np.cumsum(firsts) + np.concatenate([[0], np.cumsum(lengths)[:-1]])
    ends = starts + lengths
    if rle_format == "absolute" and (starts[1:] < ends[:-1]).any():
        raise RleError("runs overlap or are out of order (is it SIIM's relative format?)")
    if ends.size and ends.max() > mask.size:
        raise RleError(
            f"a run ends at pixel {int(ends.max())}, past the image's {mask.size} pixels "
            "(wrong image size or RLE format?)"
        )
    for start, end in zip(starts.tolist(), ends.tolist(), strict=True):
        mask[start:end] = True


def _unflatten(mask: np.ndarray, height: int, width: int, order: str) -> np.ndarray:
    return np.ascontiguousarray(mask.reshape((height, width), order=_order(order)))


def _order(order: str) -> str:
    if order not in ("C", "F"):
        raise ValueError(f"order={order!r}: use 'F' (column by column) or 'C' (row by row)")
    return order


def _check_format(rle_format: str) -> None:
    if rle_format not in RLE_FORMATS:
        raise ValueError(f"RLE format {rle_format!r}: choose one of {', '.join(RLE_FORMATS)}")
