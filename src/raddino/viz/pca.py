"""PCA of patch tokens shown as RGB, DINOv2's visualisation of what a backbone groups together.

One PCA is fitted over the patch tokens of all images together, so a colour means the same
direction in feature space in every image. Its first three components become red, green and
blue, each scaled to [0, 255] between its 1st and 99th percentile over all images.

Signs: a principal direction's sign is arbitrary, so each component is signed to make the
centre of the images (the middle half of the patch grid in each direction) score higher on
average than the border. The colours are then deterministic, and the first component is high on
the central body of a chest radiograph and low on the air and collimation around it.

Background removal (``background_threshold=T``, DINOv2's recipe): the first component, signed
and scaled as above to [0, 1], splits the patches; those at or below ``T`` are background and
become black, and the three RGB components are fitted again on the foreground patches only, so
that the colours spend their range on the anatomy.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from matplotlib.figure import Figure

from raddino.models.encoder import ImageLike, RadDino
from raddino.viz.tokens import encode_patches, grey, model_view, save_figure_atomic

LOW_PERCENTILE = 1.0
HIGH_PERCENTILE = 99.0
COMPONENTS = 3


def principal_components(tokens: torch.Tensor, count: int) -> torch.Tensor:
    """tokens (N, D) -> projections (N, count) float64 onto the leading principal directions.

    SVD of the centred tokens; missing components (rank below ``count``) are zeros.
    """
    centred = tokens.double() - tokens.double().mean(0, keepdim=True)
    _, _, directions = torch.linalg.svd(centred, full_matrices=False)
    projections = centred @ directions[:count].T
    if projections.shape[1] < count:
        pad = projections.new_zeros(projections.shape[0], count - projections.shape[1])
        projections = torch.cat([projections, pad], dim=1)
    return projections


def central_mask(height: int, width: int) -> torch.Tensor:
    """(h, w) bool: the middle half of the grid in each direction."""
    rows = torch.zeros(height, dtype=torch.bool)
    cols = torch.zeros(width, dtype=torch.bool)
    rows[height // 4 : height - height // 4] = True
    cols[width // 4 : width - width // 4] = True
    return rows[:, None] & cols[None, :]


def orient(projections: torch.Tensor, central: torch.Tensor) -> torch.Tensor:
    """Flip components (N, K) so central patches (N,) bool score higher on average than the rest.

    When every patch (or none) is central, the sign makes the third moment positive instead.
    """
    if central.all() or not central.any():
        score = (projections**3).sum(0)
    else:
        score = projections[central].mean(0) - projections[~central].mean(0)
    signs = torch.where(score < 0, -1.0, 1.0).to(projections.dtype)
    return projections * signs


def robust_unit_scale(values: torch.Tensor) -> torch.Tensor:
    """(N, K) -> [0, 1] per column, from its 1st percentile (0) to its 99th (1), clipped."""
    array = values.numpy()
    low = np.percentile(array, LOW_PERCENTILE, axis=0)
    high = np.percentile(array, HIGH_PERCENTILE, axis=0)
    span = np.where(high - low > 1e-12, high - low, 1.0)
    return torch.from_numpy(np.clip((array - low) / span, 0.0, 1.0))


def pca_rgb_from_tokens(
    tokens: Sequence[torch.Tensor], *, background_threshold: float | None = None
) -> list[np.ndarray]:
    """Patch tokens (h, w, D) per image -> RGB maps (h, w, 3) uint8 from one joint PCA.

    ``background_threshold`` in [0, 1]: see the module docstring; background patches are black.
    """
    if not tokens:
        raise ValueError("no images to fit the PCA on")
    if background_threshold is not None and not 0.0 <= background_threshold <= 1.0:
        raise ValueError(f"background threshold must be in [0, 1], got {background_threshold}")
    shapes = [tuple(t.shape[:2]) for t in tokens]
    flat = torch.cat([t.reshape(-1, t.shape[-1]).double() for t in tokens])
    central = torch.cat([central_mask(h, w).reshape(-1) for h, w in shapes])

    foreground = torch.ones(flat.shape[0], dtype=torch.bool)
    if background_threshold is not None:
        first = robust_unit_scale(orient(principal_components(flat, 1), central))[:, 0]
        foreground = first > background_threshold
        if int(foreground.sum()) < COMPONENTS:
            raise ValueError(
                f"background threshold {background_threshold} leaves {int(foreground.sum())} "
                "foreground patches; lower it"
            )
    projections = orient(principal_components(flat[foreground], COMPONENTS), central[foreground])
    colours = torch.zeros(flat.shape[0], COMPONENTS, dtype=torch.float64)
    colours[foreground] = robust_unit_scale(projections)
    rgb = (colours * 255.0).round().to(torch.uint8)

    maps = []
    start = 0
    for height, width in shapes:
        maps.append(rgb[start : start + height * width].reshape(height, width, 3).numpy())
        start += height * width
    return maps


@torch.inference_mode()
def pca_rgb(
    model: RadDino,
    images: Sequence[ImageLike],
    *,
    background_threshold: float | None = None,
    batch_size: int = 8,
) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Images -> (model input views (H, W) uint8, RGB PCA maps (h, w, 3) uint8 per image).

    Images are paths, PIL images, arrays or tensors; one PCA over all their patch tokens.
    """
    crops = [model_view(model, image)[0] for image in images]
    tokens = encode_patches(model, crops, batch_size=batch_size)
    maps = pca_rgb_from_tokens(tokens, background_threshold=background_threshold)
    return [grey(crop) for crop in crops], maps


def upsample_nearest(grid: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """(h, w, ...) -> (H, W, ...) by nearest neighbour: pixel (i, j) takes cell (i*h//H, j*w//W)."""
    height, width = size
    rows = np.arange(height) * grid.shape[0] // height
    cols = np.arange(width) * grid.shape[1] // width
    return grid[rows[:, None], cols[None, :]]


def save_pca_figure(
    views: Sequence[np.ndarray],
    rgb_maps: Sequence[np.ndarray],
    out: Path,
    *,
    titles: Sequence[str] | None = None,
    columns: int = 6,
) -> Path:
    """A grid of up to ``columns`` images per row, each view above its nearest-upsampled map.

    The format follows ``out``'s suffix; the file is written atomically.
    """
    if len(views) != len(rgb_maps) or not views:
        raise ValueError(f"need one map per view, got {len(views)} views, {len(rgb_maps)} maps")
    if titles is not None and len(titles) != len(views):
        raise ValueError(f"titles: expected {len(views)}, got {len(titles)}")
    columns = min(columns, len(views))
    bands = math.ceil(len(views) / columns)
    figure = Figure(figsize=(2.4 * columns, 4.8 * bands), layout="constrained")
    axes = figure.subplots(2 * bands, columns, squeeze=False)
    for axis in axes.flat:
        axis.set_axis_off()
    for index, (view, rgb) in enumerate(zip(views, rgb_maps, strict=True)):
        band, column = divmod(index, columns)
        axes[2 * band, column].imshow(view, cmap="gray", vmin=0, vmax=255)
        axes[2 * band + 1, column].imshow(upsample_nearest(rgb, view.shape[:2]))
        if titles:
            axes[2 * band, column].set_title(titles[index], fontsize=8)
    return save_figure_atomic(figure, Path(out))
