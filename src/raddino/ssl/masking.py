"""DINOv2 block-wise patch masking for iBOT, and the collate rule that decides which crops get it.

:class:`BlockMasking` reproduces ``dinov2/data/masking.py: MaskingGenerator`` and
:func:`sample_batch_masks` the masking half of ``dinov2/data/collate.py: collate_data_and_cast``.
All randomness comes from the ``numpy.random.Generator`` passed in (DINOv2 uses Python's global
``random``), so a seeded generator gives the same masks on every run and in every worker.
"""

from __future__ import annotations

import math

import numpy as np
import torch

# DINOv2 tries at most this many random rectangles before giving up on the next block.
_ATTEMPTS_PER_BLOCK = 10


def _uniform(rng: np.random.Generator, low: float, high: float) -> float:
    """Python's ``random.uniform`` formula: also defined (and used by DINOv2) when low > high."""
    return low + (high - low) * float(rng.random())


def _check_grid(grid: tuple[int, int]) -> tuple[int, int]:
    try:
        height, width = grid
    except (TypeError, ValueError):
        raise ValueError(f"grid must be a pair (h, w) of positive integers, got {grid!r}") from None
    for value in (height, width):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
            raise ValueError(f"grid must be a pair (h, w) of positive integers, got {grid!r}")
    return int(height), int(width)


def _check_rng(rng: np.random.Generator) -> None:
    if not isinstance(rng, np.random.Generator):
        raise ValueError(
            f"rng must be a numpy.random.Generator (np.random.default_rng(seed)), "
            f"got {type(rng).__name__}"
        )


class BlockMasking:
    """Masks of rectangular blocks on an (h, w) patch grid, DINOv2's ``MaskingGenerator``.

    ``mask = BlockMasking((h, w))(n_masked, rng)`` adds random blocks until ``n_masked`` cells
    are masked: each block draws an area ``U(min_patches, budget)`` with ``budget = min(cells
    still to mask, max_patches)`` and a log-uniform aspect ratio in ``[min_aspect, max_aspect]``,
    is rounded to a rectangle strictly smaller than the grid on both sides, placed uniformly, and
    kept only if the cells it newly masks number between 1 and ``budget``. After 10 rejected
    rectangles masking stops, so the result may hold fewer than ``n_masked`` cells; it never
    holds more. Rounding and overlap mean a block may add fewer than ``min_patches`` cells.
    """

    def __init__(
        self,
        grid: tuple[int, int],
        min_patches: int = 4,
        max_patches: int | None = None,
        min_aspect: float = 0.3,
        max_aspect: float | None = None,
    ) -> None:
        self.grid = _check_grid(grid)
        n_cells = self.grid[0] * self.grid[1]
        if isinstance(min_patches, bool) or not isinstance(min_patches, int) or min_patches < 1:
            raise ValueError(f"min_patches must be a positive integer, got {min_patches!r}")
        if max_patches is None:
            max_patches = n_cells
        if isinstance(max_patches, bool) or not isinstance(max_patches, int) or max_patches < 1:
            raise ValueError(f"max_patches must be a positive integer or None, got {max_patches!r}")
        if not (
            isinstance(min_aspect, (int, float)) and min_aspect > 0 and math.isfinite(min_aspect)
        ):
            raise ValueError(f"min_aspect must be a finite positive number, got {min_aspect!r}")
        if max_aspect is None:
            max_aspect = 1.0 / min_aspect
        if not (isinstance(max_aspect, (int, float)) and math.isfinite(max_aspect)):
            raise ValueError(f"max_aspect must be a finite number or None, got {max_aspect!r}")
        if max_aspect < min_aspect:
            raise ValueError(
                f"max_aspect ({max_aspect}) must be at least min_aspect ({min_aspect})"
            )
        self.min_patches = min_patches
        self.max_patches = max_patches
        self.min_aspect = float(min_aspect)
        self.max_aspect = float(max_aspect)
        self._log_aspect = (math.log(self.min_aspect), math.log(self.max_aspect))

    def __repr__(self) -> str:
        return (
            f"BlockMasking(grid={self.grid}, min_patches={self.min_patches}, "
            f"max_patches={self.max_patches}, min_aspect={self.min_aspect:g}, "
            f"max_aspect={self.max_aspect:g})"
        )

    def __call__(self, n_masked: int, rng: np.random.Generator) -> np.ndarray:
        """(h, w) bool with at most ``n_masked`` True cells (usually exactly ``n_masked``)."""
        n_cells = self.grid[0] * self.grid[1]
        if (
            isinstance(n_masked, bool)
            or not isinstance(n_masked, (int, np.integer))
            or not 0 <= n_masked <= n_cells
        ):
            raise ValueError(f"n_masked must be an integer in [0, {n_cells}], got {n_masked!r}")
        _check_rng(rng)
        mask = np.zeros(self.grid, dtype=bool)
        count = 0
        while count < n_masked:
            added = self._add_block(mask, min(n_masked - count, self.max_patches), rng)
            if added == 0:
                break
            count += added
        return mask

    def _add_block(self, mask: np.ndarray, budget: int, rng: np.random.Generator) -> int:
        """Mask one random rectangle adding 1..budget new cells; returns how many (0: gave up)."""
        height, width = self.grid
        for _ in range(_ATTEMPTS_PER_BLOCK):
            area = _uniform(rng, self.min_patches, budget)
            aspect = math.exp(_uniform(rng, *self._log_aspect))
            block_h = round(math.sqrt(area * aspect))
            block_w = round(math.sqrt(area / aspect))
            if block_h >= height or block_w >= width:
                continue
            top = int(rng.integers(0, height - block_h, endpoint=True))
            left = int(rng.integers(0, width - block_w, endpoint=True))
            window = mask[top : top + block_h, left : left + block_w]
            added = block_h * block_w - int(window.sum())
            if 0 < added <= budget:
                window[...] = True
                return added
        return 0


def sample_batch_masks(
    batch_size: int,
    grid: tuple[int, int],
    rng: np.random.Generator,
    probability: float = 0.5,
    ratio_range: tuple[float, float] = (0.1, 0.5),
    masker: BlockMasking | None = None,
) -> torch.Tensor:
    """iBOT masks for a batch of global crops: (batch_size, h * w) bool, row-major patches.

    DINOv2 collate semantics (``batch_size`` counts every global crop, i.e. 2 x images):
    ``n = int(batch_size * probability)`` crops are masked with ratios stratified by
    ``bounds = linspace(ratio_min, ratio_max, n + 1)`` (crop i asks for
    ``int(h * w * U(bounds[i], bounds[i + 1]))`` patches), the other crops get no mask, and the
    rows are shuffled with ``rng``, so the two crops of an image are masked independently.
    """
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
    height, width = _check_grid(grid)
    _check_rng(rng)
    if not (isinstance(probability, (int, float)) and 0.0 <= probability <= 1.0):
        raise ValueError(f"probability must be in [0, 1], got {probability!r}")
    try:
        ratio_min, ratio_max = (float(value) for value in ratio_range)
    except (TypeError, ValueError):
        raise ValueError(f"ratio_range must be a pair (min, max), got {ratio_range!r}") from None
    if not 0.0 <= ratio_min <= ratio_max <= 1.0:
        raise ValueError(f"ratio_range must satisfy 0 <= min <= max <= 1, got {ratio_range!r}")
    n_patches = height * width
    if masker is None:
        # DINOv2's train.py passes max_num_patches=0.5 * img // p * img // p, which by operator
        # precedence is ((0.5 * img) // p * img) // p: N/2 at 224/16 (98) and 224/14 (128), but
        # 666 instead of 684 at 518/14. We cap at int(N / 2); pass
        # BlockMasking(grid, max_patches=666) to reproduce DINOv2 at 518/14 exactly.
        masker = BlockMasking((height, width), max_patches=int(0.5 * n_patches))
    elif not isinstance(masker, BlockMasking) or masker.grid != (height, width):
        raise ValueError(
            f"masker must be a BlockMasking for grid {(height, width)}, got {masker!r}"
        )

    n_masked_images = int(batch_size * probability)
    bounds = np.linspace(ratio_min, ratio_max, n_masked_images + 1)
    masks = np.zeros((batch_size, height, width), dtype=bool)
    for index in range(n_masked_images):
        ratio = _uniform(rng, float(bounds[index]), float(bounds[index + 1]))
        masks[index] = masker(int(n_patches * ratio), rng)
    masks = masks[rng.permutation(batch_size)]
    return torch.from_numpy(masks.reshape(batch_size, n_patches))
