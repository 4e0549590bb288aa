"""The image-level features a probe reads, by name: ``cls``, ``cls+mean``, ``cls+gridN``.

Parsing and describing the names only (no torch), so that command lines, study files and
reports can check and print them; :func:`raddino.eval.feature_cache.pooled_features` computes
them.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

FEATURE_KINDS = "cls, cls+mean or cls+gridN (N a whole number >= 1, e.g. cls+grid4)"


@dataclass(frozen=True)
class FeatureKind:
    """How an image-level feature is pooled from the tokens: the CLS token, plus the mean patch
    token (``mean``) or the patch grid area-averaged to ``grid`` x ``grid`` cells."""

    mean: bool = False
    grid: int | None = None


def parse_feature_kind(kind: str) -> FeatureKind:
    """``cls`` / ``cls+mean`` / ``cls+gridN`` -> :class:`FeatureKind`; a clear error otherwise."""
    if kind == "cls":
        return FeatureKind()
    if kind == "cls+mean":
        return FeatureKind(mean=True)
    match = re.fullmatch(r"cls\+grid([0-9]+)", kind)
    if match is None or int(match.group(1)) < 1:
        raise ValueError(f"features {kind!r}: choose {FEATURE_KINDS}")
    return FeatureKind(grid=int(match.group(1)))


def describe_features(kind: str) -> str:
    """A feature kind in words, for reports: ``cls+grid4`` -> "CLS + patch tokens averaged over
    4 x 4 cells"."""
    pooling = parse_feature_kind(kind)
    if pooling.mean:
        return "CLS + mean patch token"
    if pooling.grid is not None:
        return f"CLS + patch tokens averaged over {pooling.grid} x {pooling.grid} cells"
    return "CLS token"
