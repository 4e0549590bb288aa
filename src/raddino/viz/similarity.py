"""Patch similarity maps: the RAD-DINO paper's Figure 2.

A query patch is picked on one radiograph; the map of a target radiograph is the cosine
similarity between that patch's final token and each of the target's patch tokens, (h, w) in
[-1, 1]. Patches that the encoder represents alike (the same anatomy, e.g. a clavicle head or a
costophrenic angle) light up in every image.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle

from raddino.data.preprocess import PreprocessConfig, crop_start, resized_size
from raddino.features.store import ShardedArray
from raddino.models.encoder import ImageLike, RadDino
from raddino.viz.tokens import encode_patches, grey, model_view, save_figure_atomic

HEATMAP_CMAP = "turbo"
HEATMAP_ALPHA = 0.5
NORM_EPS = 1e-12  # F.normalize's default eps: the smallest norm a token is divided by


class PointOutsideError(ValueError):
    """The query point is not on the image, or is cut away by the centre crop."""


@dataclass
class SimilarityMaps:
    """Similarity of one query patch to every patch of the query and target images.

    Images are the model's input views (after resize and crop), uint8 (H, W); maps are float32
    (h, w) cosine similarities on the patch grid, so one map cell covers H / h pixels.
    """

    query_image: np.ndarray
    query_patch: tuple[int, int]
    target_images: list[np.ndarray]
    maps: list[np.ndarray]
    query_map: np.ndarray


def _crop_offset(resized: int, crop: int, config: PreprocessConfig) -> int:
    """Where the crop's first pixel lies in the resized image (negative: zero padding)."""
    if crop > resized:
        return -((crop - resized) // 2)
    return crop_start(resized, crop, config.crop_rounding)


def point_to_patch(
    point: tuple[float, float],
    image_size: tuple[int, int],
    config: PreprocessConfig,
    patch_size: int,
) -> tuple[int, int]:
    """(x, y) in pixels of the original image -> (row, col) of the patch that covers it.

    ``x`` is the column and ``y`` the row, pixel centres at integers (fractions allowed);
    ``image_size`` is the original (height, width). The point goes through the processor's
    resize (shortest edge or exact size; ``u = (x + 0.5) * resized_w / width``, the mapping
    torchvision's resize uses) and centre crop (or padding; ``left`` rounded as the processor
    rounds it), then ``col = floor((u - left) / patch_size)``.
    Raises :class:`PointOutsideError` (a ValueError) when the point is off the image or cut
    away by the crop.
    """
    x, y = float(point[0]), float(point[1])
    height, width = image_size
    if not (math.isfinite(x) and math.isfinite(y)):
        raise PointOutsideError(f"point ({x}, {y}) is not finite")
    if not (0 <= x <= width - 1 and 0 <= y <= height - 1):
        raise PointOutsideError(
            f"point ({x:g}, {y:g}) is outside the image: x must be in [0, {width - 1}] and "
            f"y in [0, {height - 1}] for a {width}x{height} (width x height) image"
        )
    resized_h, resized_w = resized_size(height, width, config)
    if config.do_center_crop:
        crop_h, crop_w = config.crop_height, config.crop_width
    else:
        crop_h, crop_w = resized_h, resized_w
    u = (x + 0.5) * resized_w / width - _crop_offset(resized_w, crop_w, config)
    v = (y + 0.5) * resized_h / height - _crop_offset(resized_h, crop_h, config)
    grid_h, grid_w = crop_h // patch_size, crop_w // patch_size
    col, row = math.floor(u / patch_size), math.floor(v / patch_size)
    if not (0 <= row < grid_h and 0 <= col < grid_w):
        raise PointOutsideError(
            f"point ({x:g}, {y:g}) of the {width}x{height} image is cut away by the model's "
            f"centre crop ({crop_w}x{crop_h} of the image resized to {resized_w}x{resized_h}); "
            "pick a point nearer the centre"
        )
    return row, col


def _cosine_map(tokens: torch.Tensor, query: torch.Tensor) -> np.ndarray:
    """tokens (h, w, D), unit query (D,) -> cosine similarities (h, w) float32 in [-1, 1]."""
    similarity = F.normalize(tokens, dim=-1) @ query
    return similarity.clamp(-1.0, 1.0).numpy().astype(np.float32)


@torch.inference_mode()
def patch_similarity(
    model: RadDino,
    query: ImageLike,
    point: tuple[float, float],
    targets: Sequence[ImageLike],
    *,
    batch_size: int = 8,
) -> SimilarityMaps:
    """Cosine similarity between the query image's patch at ``point`` and every target patch.

    ``point`` is (x, y) in pixels of the original query image (see :func:`point_to_patch`).
    Images are paths, PIL images, arrays or tensors (anything :class:`RadDino` accepts); tokens
    are the backbone's final normalised patch tokens, computed on the model's device and dtype.
    """
    query_crop, original = model_view(model, query)
    row, col = point_to_patch(point, original, model.preprocess_config, model.config.patch_size)
    target_crops = [model_view(model, target)[0] for target in targets]
    tokens = encode_patches(model, [query_crop, *target_crops], batch_size=batch_size)
    query_token = F.normalize(tokens[0][row, col], dim=0)
    return SimilarityMaps(
        query_image=grey(query_crop),
        query_patch=(row, col),
        target_images=[grey(crop) for crop in target_crops],
        maps=[_cosine_map(t, query_token) for t in tokens[1:]],
        query_map=_cosine_map(tokens[0], query_token),
    )


def similarity_to_grids(
    query: np.ndarray, grids: np.ndarray | Sequence[np.ndarray] | ShardedArray
) -> np.ndarray:
    """Cosine similarity of one token to every token of stored grids: the maps of
    :func:`patch_similarity`, computed from a features store instead of the model.

    ``query``: (D,); ``grids``: (n, D, h, w) in the store's layout, an array, a memory-mapped
    :class:`~raddino.features.store.ShardedArray` or a sequence of (D, h, w) arrays. Grids are
    read one at a time, so a memory-mapped store is never copied whole. Returns (n, h, w)
    float32 in [-1, 1]; both sides are normalised as ``F.normalize`` does (norms below 1e-12
    count as 1e-12), so a zero token has similarity 0 everywhere.
    """
    query = np.asarray(query, dtype=np.float32).reshape(-1)
    unit = query / max(float(np.linalg.norm(query.astype(np.float64))), NORM_EPS)
    unit = unit.astype(np.float32)
    count = len(grids)
    maps: np.ndarray | None = None
    for index in range(count):
        grid = np.asarray(grids[index], dtype=np.float32)
        if grid.ndim != 3 or grid.shape[0] != unit.shape[0]:
            raise ValueError(
                f"grid {index} has shape {grid.shape}; expected ({unit.shape[0]}, h, w) for a "
                f"{unit.shape[0]}-dim query token"
            )
        if maps is None:
            maps = np.empty((count, *grid.shape[1:]), np.float32)
        elif grid.shape[1:] != maps.shape[1:]:
            raise ValueError(f"grid {index} is {grid.shape[1:]}, the first {maps.shape[1:]}")
        flat = grid.reshape(grid.shape[0], -1)  # (D, h*w)
        # einsum, not BLAS: one thread, so a busy second core cannot stall it (on a loaded
        # 2-core machine OpenBLAS's two-thread gemv took 8-16 ms a grid, einsum 0.1-0.2 ms)
        norms = np.sqrt(np.einsum("dk,dk->k", flat, flat))
        cosine = np.einsum("d,dk->k", unit, flat) / np.maximum(norms, NORM_EPS)
        maps[index] = np.clip(cosine, -1.0, 1.0).reshape(grid.shape[1:])
    if maps is None:
        return np.zeros((0, 0, 0), np.float32)
    return maps


def similarity_maps_from_tokens(
    query_image: np.ndarray,
    query_grid: np.ndarray,
    query_patch: tuple[int, int],
    target_images: Sequence[np.ndarray],
    target_grids: np.ndarray | Sequence[np.ndarray] | ShardedArray,
) -> SimilarityMaps:
    """:class:`SimilarityMaps` from stored tokens, as :func:`patch_similarity` makes them with
    the model: the same figure (:func:`save_similarity_figure`) from a features store.

    ``query_image`` / ``target_images``: the model's views, uint8 (H, W); ``query_grid``:
    (D, h, w) tokens of the query; ``target_grids``: (n, D, h, w); ``query_patch``: (row, col).
    """
    row, col = query_patch
    height, width = query_grid.shape[1:]
    if not (0 <= row < height and 0 <= col < width):
        raise PointOutsideError(f"patch (row {row}, col {col}) is off the {height}x{width} grid")
    if len(target_images) != len(target_grids):
        raise ValueError(f"{len(target_images)} target views for {len(target_grids)} grids")
    query = np.asarray(query_grid[:, row, col], dtype=np.float32)
    return SimilarityMaps(
        query_image=query_image,
        query_patch=(row, col),
        target_images=list(target_images),
        maps=list(similarity_to_grids(query, target_grids)),
        query_map=similarity_to_grids(query, [query_grid])[0],
    )


def similarity_titles(
    query_name: str, target_names: Sequence[str], maps: SimilarityMaps
) -> list[str]:
    """Panel titles of ``raddino similarity``'s figure: the query's file name, then each
    target's with the maximum of its map."""
    return [f"{query_name} (query)"] + [
        f"{name} (max {grid.max():.2f})" for name, grid in zip(target_names, maps.maps, strict=True)
    ]


def upsample_bilinear(grid: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """(h, w) map -> (H, W) by bilinear interpolation (half-pixel centres), float32."""
    tensor = torch.from_numpy(np.ascontiguousarray(grid, dtype=np.float32))[None, None]
    return F.interpolate(tensor, size=size, mode="bilinear", align_corners=False)[0, 0].numpy()


def save_similarity_figure(
    maps: SimilarityMaps, out: Path, *, titles: Sequence[str] | None = None
) -> Path:
    """:func:`similarity_figure` written to ``out``; the format follows its suffix (.png, .pdf,
    .svg...); the file is written atomically."""
    return save_figure_atomic(similarity_figure(maps, titles=titles), Path(out))


def similarity_figure(maps: SimilarityMaps, *, titles: Sequence[str] | None = None) -> Figure:
    """One row: the query view with its patch outlined, then each target view with its map.

    Maps are bilinearly upsampled to the view and alpha-blended over it; a cross marks each
    target's most similar patch. All targets share one colour scale (their overall minimum to
    maximum, shown by the colour bar) so colours compare across panels. ``titles``, when
    given, name every panel, query first.
    """
    count = 1 + len(maps.maps)
    if titles is not None and len(titles) != count:
        raise ValueError(
            f"titles: expected {count} (query first, then each target), got {len(titles)}"
        )
    grid_h, grid_w = maps.query_map.shape
    patch_h = maps.query_image.shape[0] / grid_h
    patch_w = maps.query_image.shape[1] / grid_w
    row, col = maps.query_patch

    figure = Figure(figsize=(3.2 * count + 0.8, 3.6), layout="constrained")
    axes = figure.subplots(1, count, squeeze=False)[0]
    for axis in axes:
        axis.set_axis_off()
    axes[0].imshow(maps.query_image, cmap="gray", vmin=0, vmax=255)
    axes[0].add_patch(
        Rectangle(
            (col * patch_w - 0.5, row * patch_h - 0.5),
            patch_w,
            patch_h,
            fill=False,
            edgecolor="red",
            linewidth=1.5,
        )
    )
    axes[0].set_title(titles[0] if titles else f"query patch (row {row}, col {col})", fontsize=9)

    if maps.maps:
        low = float(min(m.min() for m in maps.maps))
        high = float(max(m.max() for m in maps.maps))
        if high - low < 1e-6:
            low, high = low - 1e-3, high + 1e-3
        shown = None
        for index, (image, grid) in enumerate(zip(maps.target_images, maps.maps, strict=True)):
            axis = axes[index + 1]
            height, width = image.shape
            axis.imshow(image, cmap="gray", vmin=0, vmax=255)
            shown = axis.imshow(
                upsample_bilinear(grid, (height, width)),
                cmap=HEATMAP_CMAP,
                alpha=HEATMAP_ALPHA,
                vmin=low,
                vmax=high,
            )
            best_row, best_col = np.unravel_index(int(np.argmax(grid)), grid.shape)
            cell_h, cell_w = height / grid.shape[0], width / grid.shape[1]
            axis.plot(
                (best_col + 0.5) * cell_w - 0.5,
                (best_row + 0.5) * cell_h - 0.5,
                marker="+",
                color="white",
                markersize=10,
                markeredgewidth=1.5,
            )
            title = titles[index + 1] if titles else f"target {index + 1} (max {grid.max():.2f})"
            axis.set_title(title, fontsize=9)
        colorbar = figure.colorbar(shown, ax=list(axes), shrink=0.8)
        colorbar.set_label("cosine similarity to the query patch")
    return figure
