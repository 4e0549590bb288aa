"""Figure 2 as a number: scores on tokens with a known answer, and end to end on a tiny model."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from raddino.viz.correspondence import correspondence_from_tokens, structure_correspondence
from tests.viz.conftest import PATCH, tiny_model


def grids(n: int = 4, h: int = 3, w: int = 3) -> tuple[np.ndarray, np.ndarray]:
    """Image i has its structure on patch (i % h, i % w); the region is every patch."""
    structure = np.zeros((n, h, w))
    for i in range(n):
        structure[i, i % h, i % w] = 1.0
    return structure, np.ones((n, h, w), dtype=bool)


def tokens_along(structure: np.ndarray, sign: float, seed: int = 0) -> torch.Tensor:
    """Background tokens in the positive orthant of dims 1..5; structure tokens sign * e0."""
    g = torch.Generator().manual_seed(seed)
    tokens = torch.rand(*structure.shape, 6, generator=g)
    tokens[..., 0] = 0
    tokens[torch.from_numpy(structure > 0)] = torch.tensor([sign, 0, 0, 0, 0, 0])
    return tokens


def test_structure_tokens_alike_score_one_and_unlike_score_zero():
    structure, region = grids()
    alike = correspondence_from_tokens(tokens_along(structure, 1.0), structure, region)
    assert alike.pairs == 4 * 3  # every ordered pair of distinct images
    assert alike.auroc == 1.0 and alike.hit_rate == 1.0
    assert alike.chance == pytest.approx(1 / 9)  # one structure patch among 9 candidates
    # Structures of even images point along +e0, of odd ones along -e0; the background is e1
    # (cosine 0 to both). A query finds the structure of the one target of its own parity
    # (cosine 1 > 0) and loses it in the two of the other (cosine -1 < 0).
    mixed = torch.zeros(4, 3, 3, 6)
    mixed[..., 1] = 1.0
    for i in range(4):
        mixed[i, i % 3, i % 3] = torch.tensor([1.0 if i % 2 == 0 else -1.0, 0, 0, 0, 0, 0])
    parity = correspondence_from_tokens(mixed, structure, region)
    assert parity.auroc == pytest.approx(1 / 3) and parity.hit_rate == pytest.approx(1 / 3)


def test_scores_ignore_token_scale_and_patches_outside_the_region():
    structure, region = grids()
    tokens = tokens_along(structure, 1.0, seed=3)
    base = correspondence_from_tokens(tokens, structure, region)
    scaled = correspondence_from_tokens(tokens * torch.rand(4, 3, 3, 1) * 5, structure, region)
    assert scaled == base
    # Outside the region a background patch more similar than the structure would win; it is
    # not a candidate, so nothing changes.
    narrow = region.copy()
    narrow[:, 2, 0] = False
    decoy = tokens.clone()
    decoy[:, 2, 0] = torch.tensor([1.0, 0, 0, 0, 0, 0])
    result = correspondence_from_tokens(decoy, structure, narrow)
    assert result.auroc == 1.0 and result.hit_rate == 1.0
    assert result.chance == pytest.approx(1 / 8)


def test_images_without_the_structure_make_no_pairs():
    structure, region = grids(n=3)
    structure[1:] = 0  # only image 0 has it: no target for it, and no query elsewhere
    result = correspondence_from_tokens(tokens_along(structure, 1.0), structure, region)
    assert result.pairs == 0 and math.isnan(result.auroc) and math.isnan(result.hit_rate)


def test_mismatched_grids_are_refused():
    structure, region = grids()
    with pytest.raises(ValueError, match=r"\(N, h, w\) = \(4, 2, 2\)"):
        correspondence_from_tokens(torch.zeros(4, 2, 2, 6), structure, region)


def test_a_model_finds_the_same_patch_in_other_images_end_to_end():
    # Without position embeddings the encoder is equivariant to permuting patches: one textured
    # patch on a flat background gives the same token wherever it is, so every match is exact.
    model = tiny_model(56, zero_pos_embed=True)
    texture = np.random.default_rng(0).integers(0, 256, (PATCH, PATCH), dtype=np.uint8)
    images, masks, lungs = [], [], []
    for row, col in [(0, 1), (2, 3), (3, 0)]:
        image = np.full((56, 56), 90, dtype=np.uint8)
        mask = np.zeros((56, 56), dtype=np.uint8)
        image[row * PATCH : (row + 1) * PATCH, col * PATCH : (col + 1) * PATCH] = texture
        mask[row * PATCH : (row + 1) * PATCH, col * PATCH : (col + 1) * PATCH] = 255
        images.append(image)
        masks.append(mask)
        lungs.append([np.full((56, 56), 255, dtype=np.uint8)])  # region: the whole image
    result = structure_correspondence(model, images, masks, lungs)
    assert result.pairs == 6
    assert result.auroc == 1.0 and result.hit_rate == 1.0
    assert result.chance == pytest.approx(1 / 16)
    # The region is the union of its masks: three strips that each cover under half of the
    # patches of column 1 (x 14-27) still make the whole image.
    strips = []
    for start, stop in [(0, 19), (19, 23), (23, 56)]:
        strip = np.zeros((56, 56), dtype=np.uint8)
        strip[:, start:stop] = 255
        strips.append(strip)
    assert structure_correspondence(model, images, masks, [strips] * 3) == result
    assert structure_correspondence(model, [], [], []).pairs == 0
    with pytest.raises(ValueError, match="one of each per image"):
        structure_correspondence(model, images, masks[:2], lungs)
    small = [*masks[:2], masks[2][:42]]  # the third mask is cut short
    with pytest.raises(ValueError, match=r"structure mask 2: mask of 56x42 px .* 56x56 px"):
        structure_correspondence(model, images, small, lungs)
