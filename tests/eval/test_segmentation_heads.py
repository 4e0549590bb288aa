"""Segmentation heads: shapes, the UPerNet pyramid, block choices."""

from __future__ import annotations

import pytest
import torch

from raddino.eval.segmentation_heads import (
    LinearHead,
    UPerNet,
    build_head,
    linear_blocks,
    upernet_blocks,
)


def test_linear_head_is_batchnorm_and_one_by_one_conv_over_concatenated_blocks():
    head = LinearHead(embed_dim=16, num_layers=4, num_classes=3)
    maps = [torch.randn(2, 16, 5, 7) for _ in range(4)]
    assert head(maps).shape == (2, 3, 5, 7)
    assert head.norm.num_features == 64 and head.classifier.kernel_size == (1, 1)
    with pytest.raises(ValueError, match="expects 4 maps"):
        head(maps[:1])


def test_upernet_builds_four_scales_from_four_blocks():
    head = UPerNet(embed_dim=16, num_classes=2, channels=8).eval()
    maps = [torch.randn(2, 16, 8, 8) for _ in range(4)]
    sizes = [tuple(level.shape[-2:]) for level in head.pyramid(maps)]
    assert sizes == [(32, 32), (16, 16), (8, 8), (4, 4)]
    assert head(maps).shape == (2, 2, 32, 32)
    odd = [torch.randn(2, 16, 37, 37) for _ in range(4)]  # RAD-DINO's grid at 518 px
    assert head(odd).shape == (2, 2, 148, 148)


def test_upernet_uses_every_block():
    head = UPerNet(embed_dim=8, num_classes=1, channels=8).eval()
    maps = [torch.randn(1, 8, 6, 6) for _ in range(4)]
    reference = head(maps)
    for i in range(4):
        changed = list(maps)
        changed[i] = torch.randn(1, 8, 6, 6)
        assert not torch.allclose(head(changed), reference)


def test_block_choices():
    assert upernet_blocks(12) == (2, 5, 8, 11)
    assert upernet_blocks(24) == (5, 11, 17, 23)
    assert upernet_blocks(4) == (0, 1, 2, 3)
    with pytest.raises(ValueError, match="4 distinct blocks"):
        upernet_blocks(2)
    assert linear_blocks(12, 1) == (11,) and linear_blocks(12, 4) == (8, 9, 10, 11)
    with pytest.raises(ValueError, match="head"):
        build_head("fpn", 8, 1)
