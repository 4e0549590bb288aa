"""Nearest studies: the stored images whose image-level token is closest to a query's by cosine.

An image-level token is the CLS token or the mean patch token (what DINOv2's linear evaluation
concatenates); cosine similarity in float64, so the ranking does not depend on the BLAS a
machine uses. Ties are broken by the lower row, so the order is deterministic.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from raddino.features.encode import mean_patch_token
from raddino.features.store import ShardedArray

CHUNK_ROWS = 4096  # rows normalised at a time: float64 copies stay small for large stores
NORM_EPS = 1e-12  # as F.normalize: the smallest norm a token is divided by


def unit_rows(tokens: np.ndarray) -> np.ndarray:
    """(N, D) -> (N, D) float64 rows of unit L2 norm (norms below 1e-12 count as 1e-12)."""
    rows = np.asarray(tokens, dtype=np.float64)
    norms = np.linalg.norm(rows, axis=1, keepdims=True)
    return rows / np.maximum(norms, NORM_EPS)


def cosine_to_rows(query: np.ndarray, bank: np.ndarray) -> np.ndarray:
    """Cosine similarity (N,) float64 of one token (D,) to each row of ``bank`` (N, D)."""
    bank = np.asarray(bank)
    if bank.ndim != 2 or bank.shape[1] != np.asarray(query).reshape(-1).shape[0]:
        raise ValueError(
            f"bank of shape {bank.shape} does not hold {np.asarray(query).size}-dim tokens"
        )
    unit = unit_rows(np.asarray(query).reshape(1, -1))[0]
    out = np.empty(len(bank), np.float64)
    for start in range(0, len(bank), CHUNK_ROWS):
        out[start : start + CHUNK_ROWS] = unit_rows(bank[start : start + CHUNK_ROWS]) @ unit
    return np.clip(out, -1.0, 1.0)


def cosine_neighbours(
    query: np.ndarray, bank: np.ndarray, k: int, exclude: Sequence[int] = ()
) -> tuple[np.ndarray, np.ndarray]:
    """The ``k`` rows of ``bank`` (N, D) most similar to ``query`` (D,) by cosine.

    Rows in ``exclude`` (e.g. the query's own) are skipped; fewer than ``k`` come back when the
    bank is smaller. Returns (rows (k,) int64, similarities (k,) float64), most similar first,
    ties broken by the lower row.
    """
    if k < 0:
        raise ValueError(f"k must be >= 0, got {k}")
    similarity = cosine_to_rows(query, bank)
    keep = np.ones(len(similarity), dtype=bool)
    keep[np.asarray(list(exclude), dtype=np.int64)] = False
    rows = np.flatnonzero(keep)
    order = np.lexsort((rows, -similarity[rows]))[:k]  # last key first: similarity, then row
    chosen = rows[order]
    return chosen.astype(np.int64), similarity[chosen]


def mean_patch_tokens(
    patches: np.ndarray | ShardedArray, rows: Sequence[int] | None = None, chunk: int = 64
) -> np.ndarray:
    """Mean patch token (n, D) float32 of stored grids (N, D, h, w), a chunk at a time.

    Averaged with the encoder's :func:`~raddino.features.encode.mean_patch_token`, so the means
    equal a pooled store's bit for bit. ``rows``: which grids (default all).
    """
    rows = np.arange(len(patches)) if rows is None else np.asarray(rows, dtype=np.int64)
    out = np.empty((len(rows), patches.shape[1]), np.float32)
    for start in range(0, len(rows), chunk):
        block = np.asarray(patches[rows[start : start + chunk]], dtype=np.float32)
        tokens = torch.from_numpy(block).flatten(2).transpose(1, 2).contiguous()  # (n, h*w, D)
        out[start : start + len(block)] = mean_patch_token(tokens).numpy()
    return out
