"""Manifest rows with reports, and their image tokens from the features store (features once)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from raddino.data.manifest import read_manifest
from raddino.eval.encoders import EncoderSpec
from raddino.eval.feature_cache import EncodedRows, FeatureRequest, encode_for_eval
from raddino.eval.report_generation.model import pool_patch_grid
from raddino.features.encode import EncodeOptions


@dataclass
class ReportRows:
    """Image paths and report texts of manifest rows (reports may be empty when unknown)."""

    paths: list[str]
    reports: list[str]

    def __len__(self) -> int:
        return len(self.paths)


def read_report_rows(
    manifest: str | Path, split: str | None = None, require_report: bool = True
) -> ReportRows:
    """Rows of ``split`` (all rows when None or when the manifest has no ``split`` column)."""
    rows = read_manifest(manifest)
    if rows and require_report and "report" not in rows[0]:
        raise ValueError(f"{manifest}: no 'report' column (free-text reports are needed)")
    if split is not None and rows and "split" in rows[0]:
        rows = [r for r in rows if (r.get("split") or "").strip() == split]
    if require_report:
        rows = [r for r in rows if (r.get("report") or "").strip()]
    if not rows:
        what = f"split {split!r}" if split else "any row"
        raise ValueError(f"{manifest}: no rows with a report in {what}")
    return ReportRows([r["path"] for r in rows], [(r.get("report") or "").strip() for r in rows])


class ImageTokens:
    """Patch tokens of encoded images as (B, M, D) tensors, pooled to ``pool`` x ``pool``."""

    def __init__(self, encoded: EncodedRows, pool: int) -> None:
        if encoded.features.patches is None:
            raise ValueError(f"features store {encoded.store} has no full patch tokens")
        self.encoded = encoded
        self.pool = pool

    @property
    def dim(self) -> int:
        return int(self.encoded.features.cls.shape[1])

    @property
    def valid(self) -> np.ndarray:
        """(N,) bool: rows whose image could be encoded."""
        return self.encoded.valid

    def __call__(self, rows: Sequence[int]) -> torch.Tensor:
        """Tokens (len(rows), M, D) float32 of manifest rows."""
        index = self.encoded.row[np.asarray(rows, dtype=np.int64)]
        if np.any(index < 0):
            raise ValueError("some rows have no features (rejected images)")
        grid = torch.from_numpy(np.asarray(self.encoded.features.patches[index], np.float32))
        return pool_patch_grid(grid, self.pool)


def encode_images(
    encoder: EncoderSpec, paths: Sequence[str], cache: str | Path, options: EncodeOptions
) -> EncodedRows:
    """Full patch grids of ``paths``, read from (or added to) the features cache."""
    return encode_for_eval(encoder, paths, cache, FeatureRequest(patch_tokens="full"), options)
