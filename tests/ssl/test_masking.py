"""DINOv2 block masking and collate masking: statistics, guarantees and determinism."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch

from raddino.ssl.masking import BlockMasking, sample_batch_masks

GRID = (14, 14)  # 224 px / patch 16
N_PATCHES = GRID[0] * GRID[1]


@pytest.fixture(scope="module")
def many_batches() -> torch.Tensor:
    """2000 batches of 8 global crops with the DINOv2 defaults: (2000, 8, N)."""
    rng = np.random.default_rng(1234)
    return torch.stack([sample_batch_masks(8, GRID, rng) for _ in range(2000)])


def test_exactly_int_batch_times_probability_images_are_masked_in_every_batch(
    many_batches: torch.Tensor,
):
    assert many_batches.shape == (2000, 8, N_PATCHES) and many_batches.dtype == torch.bool
    masked_per_batch = many_batches.any(dim=2).sum(dim=1)
    assert (masked_per_batch == 4).all()  # int(8 * 0.5)
    rng = np.random.default_rng(0)
    for batch_size, probability in [(6, 0.3), (5, 1.0), (7, 0.0), (1, 0.5)]:
        masks = sample_batch_masks(batch_size, GRID, rng, probability=probability)
        assert masks.shape == (batch_size, N_PATCHES)
        assert masks.any(dim=1).sum().item() == int(batch_size * probability)


def test_masked_rows_are_spread_over_all_positions(many_batches: torch.Tensor):
    # Rows are shuffled: each position is masked about half the time (4 of 8), not the first 4.
    frequency = many_batches.any(dim=2).float().mean(dim=0)
    assert torch.allclose(frequency, torch.full((8,), 0.5), atol=0.05)


def test_mean_masked_ratio_is_the_middle_of_ratio_range(many_batches: torch.Tensor):
    counts = many_batches.sum(dim=2).flatten()
    ratios = counts[counts > 0].double() / N_PATCHES
    # E[int(N * U(0.1, 0.5))] / N = 0.3 - about 0.5 / N; masking may also under-shoot slightly.
    # The standard error of the mean of 8000 ratios is about 0.0013; tolerance 0.01.
    assert abs(ratios.mean().item() - 0.3) < 0.01
    assert ratios.min().item() >= int(0.1 * N_PATCHES) / N_PATCHES - 0.02
    assert ratios.max().item() <= 0.5


def test_ratios_are_stratified_by_linspace(many_batches: torch.Tensor):
    # 4 masked images draw from [0.1, 0.2], [0.2, 0.3], [0.3, 0.4], [0.4, 0.5].
    bounds = np.linspace(0.1, 0.5, 5)
    counts = many_batches.sum(dim=2)
    sorted_counts = torch.stack([row[row > 0].sort().values for row in counts])  # (2000, 4)
    # Guaranteed: masks never exceed the request, so the i-th smallest count never exceeds the
    # top of stratum i.
    upper = torch.tensor([int(N_PATCHES * bound) for bound in bounds[1:]])
    assert (sorted_counts <= upper).all()
    # Statistical: the i-th smallest ratio averages the middle of stratum i (i.i.d. U(0.1, 0.5)
    # draws would give 0.18 for the smallest instead of 0.15).
    middles = torch.tensor((bounds[:-1] + bounds[1:]) / 2)
    mean_ratios = sorted_counts.double().mean(dim=0) / N_PATCHES
    assert torch.allclose(mean_ratios, middles, atol=0.01)


def test_every_masked_image_has_at_least_min_patches(many_batches: torch.Tensor):
    # Requests are >= int(0.1 * N) = 19 >> min_patches = 4, and a rejected block is retried, so
    # a masked image always ends with at least min_patches cells.
    counts = many_batches.sum(dim=2)
    assert (counts[counts > 0] >= 4).all()


class RecordingMasking(BlockMasking):
    """BlockMasking that records (budget, cells added) for every block it places."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.blocks: list[tuple[int, int]] = []

    def _add_block(self, mask, budget, rng):
        added = super()._add_block(mask, budget, rng)
        self.blocks.append((budget, added))
        return added


def test_block_masking_never_exceeds_the_request_and_blocks_respect_max_patches():
    masker = RecordingMasking(GRID, max_patches=20)
    rng = np.random.default_rng(7)
    exact = 0
    for n_masked in list(range(N_PATCHES + 1)) * 3:
        mask = masker(n_masked, rng)
        assert mask.shape == GRID and mask.dtype == bool
        assert mask.sum() <= n_masked
        exact += int(mask.sum() == n_masked)
    # Under-shooting (10 rejected rectangles in a row) is rare except for very large requests.
    assert exact / (3 * (N_PATCHES + 1)) > 0.6
    assert masker.blocks
    for budget, added in masker.blocks:
        assert budget <= 20  # min(cells still to mask, max_patches)
        assert 0 <= added <= budget


def test_block_masking_zero_request_is_empty_and_consumes_no_randomness():
    masker = BlockMasking(GRID)
    rng = np.random.default_rng(3)
    state = rng.bit_generator.state
    assert not masker(0, rng).any()
    assert rng.bit_generator.state == state


def test_masks_are_deterministic_for_a_seed_and_leave_global_rngs_alone():
    random.seed(0)
    np.random.seed(0)
    python_state, numpy_state = random.getstate(), np.random.get_state()
    first = sample_batch_masks(16, GRID, np.random.default_rng(42))
    second = sample_batch_masks(16, GRID, np.random.default_rng(42))
    other = sample_batch_masks(16, GRID, np.random.default_rng(43))
    assert torch.equal(first, second)
    assert not torch.equal(first, other)
    assert random.getstate() == python_state
    assert all(
        np.array_equal(a, b) if isinstance(a, np.ndarray) else a == b
        for a, b in zip(np.random.get_state(), numpy_state, strict=True)
    )


def test_default_masker_caps_blocks_at_half_the_grid():
    grid = (37, 37)  # 518 px / patch 14: we cap at int(1369 / 2) = 684 (DINOv2's formula: 666)
    explicit = BlockMasking(grid, max_patches=684)
    default = sample_batch_masks(6, grid, np.random.default_rng(5))
    assert torch.equal(
        default, sample_batch_masks(6, grid, np.random.default_rng(5), masker=explicit)
    )
    dinov2 = sample_batch_masks(
        6, grid, np.random.default_rng(5), masker=BlockMasking(grid, max_patches=666)
    )
    assert dinov2.shape == default.shape


def test_block_masking_repr_and_defaults():
    masker = BlockMasking((4, 6))
    assert masker.grid == (4, 6) and masker.max_patches == 24
    assert masker.min_aspect == pytest.approx(0.3) and masker.max_aspect == pytest.approx(1 / 0.3)
    assert "BlockMasking(grid=(4, 6)" in repr(masker)


@pytest.mark.parametrize(
    ("kwargs", "parameter"),
    [
        ({"grid": (0, 4)}, "grid"),
        ({"grid": (4,)}, "grid"),
        ({"grid": (4, 4), "min_patches": 0}, "min_patches"),
        ({"grid": (4, 4), "max_patches": 0}, "max_patches"),
        ({"grid": (4, 4), "min_aspect": -1.0}, "min_aspect"),
        ({"grid": (4, 4), "min_aspect": 2.0, "max_aspect": 1.0}, "max_aspect"),
    ],
)
def test_block_masking_rejects_bad_arguments(kwargs: dict, parameter: str):
    with pytest.raises(ValueError, match=parameter):
        BlockMasking(**kwargs)


def test_masking_calls_reject_bad_arguments():
    rng = np.random.default_rng(0)
    with pytest.raises(ValueError, match="n_masked"):
        BlockMasking((4, 4))(17, rng)
    with pytest.raises(ValueError, match="rng"):
        BlockMasking((4, 4))(3, random.Random(0))
    with pytest.raises(ValueError, match="batch_size"):
        sample_batch_masks(0, (4, 4), rng)
    with pytest.raises(ValueError, match="probability"):
        sample_batch_masks(4, (4, 4), rng, probability=1.5)
    with pytest.raises(ValueError, match="ratio_range"):
        sample_batch_masks(4, (4, 4), rng, ratio_range=(0.5, 0.1))
    with pytest.raises(ValueError, match="masker"):
        sample_batch_masks(4, (4, 4), rng, masker=BlockMasking((5, 5)))
