"""Fixtures for the visualisation tests: tiny random encoders and images of distinct patches."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from raddino.data.preprocess import PreprocessConfig
from raddino.models.encoder import RadDino
from raddino.models.vit import ViTConfig

PATCH = 14


@pytest.fixture(autouse=True)
def single_thread():
    """The models here are tiny: one intra-op thread is faster than two on a shared CPU."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def tiny_model(size: int = 56, seed: int = 0, zero_pos_embed: bool = False) -> RadDino:
    """A random 2-block, 32-dim ViT/14 whose processor keeps a ``size`` x ``size`` image as is.

    With ``zero_pos_embed`` the encoder is equivariant to permutations of the patches (attention
    and the per-token layers do not know where a token is), so circularly shifting an image by
    whole patches permutes its patch tokens.
    """
    torch.manual_seed(seed)
    config = ViTConfig(image_size=size, patch_size=PATCH, embed_dim=32, depth=2, num_heads=4)
    processor = PreprocessConfig(shortest_edge=size, crop_height=size, crop_width=size)
    model = RadDino.from_config(config, processor)
    if zero_pos_embed:
        with torch.no_grad():
            model.backbone.pos_embed.zero_()
    return model


def patchwork(rows: int, cols: int, seed: int = 0) -> np.ndarray:
    """uint8 (rows*14, cols*14): every patch its own random texture, so tokens are distinct."""
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (rows * PATCH, cols * PATCH), dtype=np.uint8)
