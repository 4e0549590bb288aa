"""Features once: encode a manifest's images into a cached features store, aligned with its rows.

The store lives in ``cache_root/<encoder label>-<key>``, where the key hashes the encoder's
fingerprint (weights, random seed, image size; for the pixel baseline its side, processor and
patch size) and the storage settings (patch tokens, layers, precision). Running an evaluation
again, or another evaluation needing the same features, reads the store instead of encoding; new
images are added to it (the store is resumable).
"""

from __future__ import annotations

import hashlib
import json
import re
import sys
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch

from raddino.eval.encoders import EncoderSpec
from raddino.eval.feature_kinds import FeatureKind, parse_feature_kind
from raddino.eval.pixels import PixelEncoder, encode_pixels_to_store
from raddino.features.encode import (
    EncodeOptions,
    PatchMode,
    encode_to_store,
    mean_patch_token,
)
from raddino.features.store import Features, ShardedArray, load_features
from raddino.models.encoder import RadDino
from raddino.precision import resolve_dtype


@dataclass(frozen=True)
class FeatureRequest:
    """What an evaluation needs from the store: patch tokens and extra blocks (0-based)."""

    patch_tokens: PatchMode = "none"
    layers: tuple[int, ...] = ()


@dataclass
class EncodedRows:
    """Features of manifest rows: ``row[i]`` is row i's index in ``features``, -1 if rejected."""

    features: Features
    row: np.ndarray
    store: Path
    rejects: dict[str, str]

    @property
    def valid(self) -> np.ndarray:
        """(N,) bool: manifest rows that have features."""
        return self.row >= 0


def store_directory(
    cache_root: str | Path, spec: EncoderSpec, request: FeatureRequest, options: EncodeOptions
) -> Path:
    """The cache directory for this encoder and these settings."""
    # the pixel baseline is computed on the CPU in float32 whatever the options say
    dtype = torch.float32 if spec.pixels else resolve_dtype(options.dtype, options.device)
    key = {
        "encoder": spec.fingerprint(),
        "patch_tokens": request.patch_tokens,
        "layers": sorted(set(request.layers)),
        "dtype": str(dtype),  # "torch.float32": the keys of existing caches
    }
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:12]
    slug = re.sub(r"[^A-Za-z0-9_.-]+", "_", spec.label).strip("_") or "encoder"
    return Path(cache_root) / f"{slug[:48]}-{digest}"


def _covered(store: Path, paths: Sequence[str]) -> Features | None:
    """The store's features when it already holds (or rejected) every path, else None."""
    if not (store / "index.csv").exists():
        return None
    features = load_features(store)
    done = set(features.paths) | {path for path, _ in features.rejects}
    return features if all(path in done for path in paths) else None


def encode_for_eval(
    spec: EncoderSpec,
    paths: Sequence[str],
    cache_root: str | Path,
    request: FeatureRequest,
    options: EncodeOptions,
    model: RadDino | PixelEncoder | None = None,
) -> EncodedRows:
    """Features of ``paths`` (manifest rows), encoding only what the cache lacks.

    ``model`` is ``spec.load()`` when the caller already has it. Layer indices must be
    non-negative (resolve them with the model's depth first).
    """
    if any(layer < 0 for layer in request.layers):
        raise ValueError(f"layers {request.layers}: resolve negative indices first")
    store = store_directory(cache_root, spec, request, options)
    wanted = list(dict.fromkeys(str(p) for p in paths))
    features = _covered(store, wanted)
    if features is None:
        encoder = model if model is not None else spec.load()
        print(f"encoding {len(wanted)} images with {spec.label} into {store}", file=sys.stderr)
        run = replace(options, patch_tokens=request.patch_tokens, layers=tuple(request.layers))
        if isinstance(encoder, PixelEncoder):
            encode_pixels_to_store(encoder, wanted, store, run, model_id=spec.fingerprint())
        else:
            encode_to_store(encoder, wanted, store, run, model_id=spec.fingerprint())
        features = load_features(store)
    position = {path: i for i, path in enumerate(features.paths)}
    rejects = {path: reason for path, reason in features.rejects}
    row = np.array([position.get(str(p), -1) for p in paths], dtype=np.int64)
    missing = [str(p) for p, r in zip(paths, row, strict=True) if r < 0 and str(p) not in rejects]
    if missing:
        raise RuntimeError(f"features store {store} lacks {len(missing)} images: {missing[:3]}")
    return EncodedRows(features, row, store, rejects)


def pooled_features(
    encoded: EncodedRows, rows: np.ndarray, kind: str = "cls", blocks: Sequence[int] = ()
) -> np.ndarray:
    """Image-level features (len(rows), F) of manifest rows as in DINOv2's linear evaluation.

    kind (:func:`parse_feature_kind`): ``cls``; ``cls+mean``, CLS concatenated with the mean
    patch token; ``cls+gridN``, CLS concatenated with the patch grid (D, h, w) area-averaged to
    (D, N, N) and flattened (D N² values), which keeps where things are as a thumbnail does (a
    full store only). blocks: extra intermediate blocks whose features are concatenated before
    the last block's.
    """
    pooling = parse_feature_kind(kind)
    features = encoded.features
    index = encoded.row[rows]
    if np.any(index < 0):
        raise ValueError("pooled_features: some rows have no features (rejected images)")
    parts: list[np.ndarray] = []
    for block in blocks:
        layer = (features.layers or {}).get(block)
        if layer is None:
            raise ValueError(f"features store {encoded.store} has no block {block}")
        parts.append(layer.cls[index])
        parts += _pooled_patches(pooling, layer.patch_mean, layer.patches, index, encoded.store)
    parts.append(features.cls[index])
    parts += _pooled_patches(pooling, features.patch_mean, features.patches, index, encoded.store)
    return np.concatenate(parts, axis=1).astype(np.float32, copy=False)


def _pooled_patches(
    pooling: FeatureKind,
    means: np.ndarray | None,
    patches: np.ndarray | ShardedArray | None,
    index: np.ndarray,
    store: Path,
) -> list[np.ndarray]:
    """What ``pooling`` adds to the CLS token: nothing, [(n, D) means] or [(n, D N²) grids]."""
    if pooling.mean:
        return [_patch_mean(means, patches, index, store)]
    if pooling.grid is not None:
        return [_patch_grid(patches, index, store, pooling.grid)]
    return []


def _patch_grid(
    patches: np.ndarray | ShardedArray | None, index: np.ndarray, store: Path, side: int
) -> np.ndarray:
    """(len(index), D * side²) patch grids (N, D, h, w) area-averaged to (side, side) cells
    (``adaptive_avg_pool2d``: cell i covers rows [floor(i h / side), ceil((i + 1) h / side))),
    flattened channel by channel, a chunk of rows at a time."""
    if patches is None:
        raise ValueError(
            f"features store {store} has no patch grid (cls+gridN needs full patch tokens)"
        )
    height, width = patches.shape[2:]
    if side > min(height, width):
        raise ValueError(
            f"features cls+grid{side}: the patch grid of {store} is only {height} x {width}"
        )
    chunks = [
        torch.nn.functional.adaptive_avg_pool2d(
            torch.from_numpy(np.array(patches[index[start : start + 256]], dtype=np.float32)),
            side,
        )
        .flatten(1)
        .numpy()
        for start in range(0, len(index), 256)
    ]
    empty = np.zeros((0, patches.shape[1] * side**2), np.float32)
    return np.concatenate(chunks) if chunks else empty


def _patch_mean(
    means: np.ndarray | None,
    patches: np.ndarray | ShardedArray | None,
    index: np.ndarray,
    store: Path,
) -> np.ndarray:
    """(len(index), D) mean patch tokens: stored (pooled stores), or averaged from the stored
    (N, D, h, w) grid (full stores), a chunk of rows at a time, with the encoder's
    :func:`mean_patch_token`, so both stores give bit-identical means."""
    if means is not None:
        return means[index]
    if patches is None:
        raise ValueError(f"features store {store} has no patch tokens")
    chunks = [
        mean_patch_token(
            torch.from_numpy(np.array(patches[index[start : start + 256]], dtype=np.float32))
            .flatten(2)
            .transpose(1, 2)  # (n, h*w, D), the encoder's token layout: the same summation order
            .contiguous()
        ).numpy()
        for start in range(0, len(index), 256)
    ]
    return np.concatenate(chunks) if chunks else np.zeros((0, patches.shape[1]), np.float32)


def pooled_request(kind: str, blocks: Sequence[int] = ()) -> FeatureRequest:
    """The store settings :func:`pooled_features` needs."""
    pooling = parse_feature_kind(kind)
    mode = "full" if pooling.grid is not None else "pooled" if pooling.mean else "none"
    return FeatureRequest(mode, tuple(blocks))
