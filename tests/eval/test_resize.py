"""Bilinear resizing as two matrix products against ``F.interpolate`` (the reference)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from raddino.eval.resize import interpolation_matrix, resize_bilinear

SHAPES = [
    ((8, 4, 10, 10), (160, 160)),  # the demo's linear head: patch grid -> mask size
    ((2, 3, 7, 13), (33, 20)),  # non-square, up in one axis and a non-integer factor
    ((1, 2, 12, 9), (5, 4)),  # down
    ((2, 2, 6, 6), (6, 6)),  # same size
    ((3, 1, 1), (4, 5)),  # a single row and column; any leading dimensions
]


def reference(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    batched = x.reshape(-1, 1, *x.shape[-2:])
    out = F.interpolate(batched, size=size, mode="bilinear", align_corners=False)
    return out.reshape(*x.shape[:-2], *size)


@pytest.mark.parametrize(("shape", "size"), SHAPES)
def test_values_and_gradients_equal_interpolate_in_float64(
    shape: tuple[int, ...], size: tuple[int, int]
) -> None:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(shape, dtype=torch.float64, generator=g, requires_grad=True)
    upstream = torch.randn(*shape[:-2], *size, dtype=torch.float64, generator=g)
    ours = resize_bilinear(x, size)
    (grad_ours,) = torch.autograd.grad(ours, x, upstream)
    theirs = reference(x, size)
    (grad_theirs,) = torch.autograd.grad(theirs, x, upstream)
    # each output sums at most 4 products of unit-range weights: float64 rounding is ~1e-16
    torch.testing.assert_close(ours, theirs, rtol=0, atol=1e-12)
    torch.testing.assert_close(grad_ours, grad_theirs, rtol=0, atol=1e-12)


def test_float32_is_within_rounding_of_float64() -> None:
    g = torch.Generator().manual_seed(1)
    x = torch.randn(8, 4, 10, 10, dtype=torch.float64, generator=g) * 30  # logit-like range
    exact = reference(x, (160, 160))
    ours = resize_bilinear(x.float(), (160, 160)).double()
    # weights and products rounded to float32 (eps 6e-8), a few terms: bound 1e-6 of the range
    assert (ours - exact).abs().max() <= 1e-6 * x.abs().max()
    assert resize_bilinear(x.float(), (160, 160)).dtype == torch.float32


@pytest.mark.parametrize(("source", "target"), [(10, 160), (13, 20), (12, 5), (1, 4)])
def test_each_output_is_a_convex_combination_of_at_most_two_inputs(
    source: int, target: int
) -> None:
    weights = interpolation_matrix(source, target)
    assert weights.shape == (target, source)
    assert (weights >= 0).all()
    torch.testing.assert_close(weights.sum(1), torch.ones(target, dtype=torch.float64))
    assert ((weights > 0).sum(1) <= 2).all()
