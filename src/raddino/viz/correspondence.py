"""Figure 2 as a number: does a query patch's best match in another image lie on the same structure?

For every ordered pair of images (query q, target t) that both contain a structure (a nodule,
the heart...), the query token is q's patch most covered by the structure; t's patches are
ranked by cosine similarity to it. Two scores, averaged over pairs:

* ``auroc``: the structure's patches of t against t's *region* patches without structure
  (e.g. the lungs, so that "lung patch vs. not lung" does not count as finding a nodule);
* ``hit_rate``: how often t's most similar patch among region and structure patches is a
  structure patch; ``chance`` is what picking one of those patches at random gives.

A random encoder matches by brightness and position; an encoder that learned the structure
should score above it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from math import nan

import numpy as np
import torch
import torch.nn.functional as F

from raddino.eval.metrics import auroc
from raddino.models.encoder import ImageLike, RadDino
from raddino.viz.tokens import encode_patches, model_view

COVERED = 0.25
"""A patch belongs to the structure when the structure covers at least this share of it, or
when it is the image's most covered patch (a structure smaller than a patch still has one).
Patches partly covered otherwise count neither way."""


@dataclass(frozen=True)
class Correspondence:
    """Scores over ``pairs`` ordered (query, target) pairs; NaN when no pair qualified."""

    pairs: int
    auroc: float
    hit_rate: float
    chance: float


NO_PAIRS = Correspondence(0, nan, nan, nan)


def correspondence_from_tokens(
    tokens: torch.Tensor, structure: np.ndarray, region: np.ndarray
) -> Correspondence:
    """tokens (N, h, w, D); structure (N, h, w) share of each patch covered by the structure;
    region (N, h, w) bool, the patches a match may fall on besides the structure's own."""
    n = tokens.shape[0]
    if structure.shape != tokens.shape[:3] or region.shape != tokens.shape[:3]:
        raise ValueError(
            f"structure {structure.shape} and region {region.shape} must both be (N, h, w) = "
            f"{tuple(tokens.shape[:3])}, the patch grid of the tokens"
        )
    flat = F.normalize(tokens.reshape(n, -1, tokens.shape[-1]).float(), dim=-1)
    cover = structure.reshape(n, -1)
    most = cover.max(axis=1, keepdims=True)
    on = (cover > 0) & ((cover >= COVERED) | (cover == most))
    off = region.reshape(n, -1).astype(bool) & (cover == 0)
    aurocs, hits, chances = [], [], []
    for q in range(n):
        if not on[q].any():
            continue
        query = flat[q, int(np.argmax(cover[q]))]
        for t in range(n):
            if t == q or not on[t].any() or not off[t].any():
                continue
            score = (flat[t] @ query).numpy().astype(np.float64)
            keep = on[t] | off[t]
            label = on[t][keep].astype(np.int64)
            weights = np.ones((1, len(label)))  # one unweighted evaluation
            aurocs.append(float(auroc(label, score[keep], weights)[0]))
            hits.append(bool(label[int(np.argmax(score[keep]))]))
            chances.append(float(label.mean()))
    if not aurocs:
        return NO_PAIRS
    return Correspondence(
        len(aurocs), float(np.mean(aurocs)), float(np.mean(hits)), float(np.mean(chances))
    )


def _patch_cover(
    model: RadDino,
    masks: Sequence[ImageLike],
    grid: tuple[int, int],
    image_size: tuple[int, int],
    what: str,
) -> np.ndarray:
    """0/255 masks of an image of ``image_size`` (height, width) -> (h, w) share of each patch
    of the model's view that their union covers; ValueError naming ``what`` on a size mismatch."""
    union = None
    for mask in masks:
        view, size = model_view(model, mask)
        if size != image_size:
            raise ValueError(
                f"{what}: mask of {size[1]}x{size[0]} px for an image of "
                f"{image_size[1]}x{image_size[0]} px (width x height); masks must match their image"
            )
        inside = view[0] > 127  # the view is resized: threshold at half
        union = inside if union is None else union | inside
    if union is None:
        return np.zeros(grid, dtype=np.float32)
    return F.adaptive_avg_pool2d(union.float()[None, None], grid)[0, 0].numpy()


def structure_correspondence(
    model: RadDino,
    images: Sequence[ImageLike],
    structure_masks: Sequence[ImageLike],
    region_masks: Sequence[Sequence[ImageLike]],
    *,
    batch_size: int = 8,
) -> Correspondence:
    """Score ``model`` on images with their structure masks and, per image, the masks whose
    union is the region (e.g. both lungs). Masks are 8-bit images of the image's size (0 /
    255), seen through the model's own resize and crop."""
    if not len(images) == len(structure_masks) == len(region_masks):
        raise ValueError(
            f"got {len(images)} images, {len(structure_masks)} structure masks and "
            f"{len(region_masks)} region lists: one of each per image"
        )
    if not images:
        return NO_PAIRS
    views = [model_view(model, image) for image in images]
    tokens = encode_patches(model, [crop for crop, _ in views], batch_size=batch_size)
    if len({t.shape for t in tokens}) > 1:
        raise ValueError("images must all give the same patch grid (same size after resize)")
    grid = (int(tokens[0].shape[0]), int(tokens[0].shape[1]))
    sizes = [size for _, size in views]
    structure = np.stack(
        [
            _patch_cover(model, [mask], grid, size, f"structure mask {i}")
            for i, (mask, size) in enumerate(zip(structure_masks, sizes, strict=True))
        ]
    )
    region = np.stack(
        [
            _patch_cover(model, masks, grid, size, f"region mask of image {i}") >= 0.5
            for i, (masks, size) in enumerate(zip(region_masks, sizes, strict=True))
        ]
    )
    return correspondence_from_tokens(torch.stack(tokens), structure, region)
