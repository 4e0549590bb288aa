"""Fixtures for pre-training tests: a folder of small radiograph-like PNGs and a tiny config."""

from __future__ import annotations

from pathlib import Path

import pytest
from PIL import Image

from tests.conftest import synthetic_radiograph

# A ViT small enough that a step takes milliseconds: 32 px global crops of 8 px patches (4 x 4).
TINY_OVERRIDES = [
    "model.arch=tiny", "model.depth=2", "model.embed_dim=48", "model.num_heads=2",
    "model.patch_size=8", "model.image_size=32", "model.layerscale=0.1",
    "head.out_dim=64", "head.hidden_dim=64", "head.bottleneck_dim=32",
    "crops.global_size=32", "crops.local_size=16", "crops.local_number=2",
    "crops.max_source_size=96", "train.batch_size=4", "train.num_workers=0",
    "train.steps=6", "train.checkpoint_every=2", "train.tensorboard=false",
    "optim.warmup_steps=2", "optim.freeze_last_layer_steps=2", "teacher.temp_warmup_steps=3",
]  # fmt: skip


@pytest.fixture(scope="session")
def pretrain_images(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("pretrain_images")
    for index in range(24):
        image = synthetic_radiograph(120 + 4 * index, 100 + 3 * index, seed=index)
        Image.fromarray(image).save(folder / f"{index:02d}.png")
    return folder
