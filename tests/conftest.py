"""Shared fixtures: randomly initialised models written in the real weight formats."""

from __future__ import annotations

import os

# As the CLI does: idle OpenMP threads sleep instead of spinning (set before torch loads).
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import tempfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from raddino.models.formats import RAD_DINO_HF_CONFIG

# raddino's attention kernel is built into a cache of this session's, not the user's.
_KERNEL_CACHE = tempfile.TemporaryDirectory(prefix="raddino-test-cache-")
os.environ["RADDINO_CACHE_DIR"] = _KERNEL_CACHE.name

SMALL_HF_CONFIG = dict(
    RAD_DINO_HF_CONFIG, hidden_size=64, num_hidden_layers=2, num_attention_heads=4
)


def randomize_small_parameters(model: torch.nn.Module) -> None:
    """Give LayerScale, CLS and mask tokens non-trivial values so tests can see them."""
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if any(
                key in name for key in ("lambda1", "mask_token", "cls_token", "register_tokens")
            ):
                parameter.normal_(0.0, 0.5)


def make_hf_model(directory: Path, seed: int = 0, **overrides) -> Path:
    """Save a random transformers Dinov2Model (RAD-DINO's config unless overridden)."""
    from transformers import Dinov2Config, Dinov2Model

    torch.manual_seed(seed)
    model = Dinov2Model(Dinov2Config(**{**RAD_DINO_HF_CONFIG, **overrides})).eval()
    randomize_small_parameters(model)
    model.save_pretrained(directory)
    return directory


@pytest.fixture(scope="session")
def small_hf_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 2-layer, 64-dim Dinov2Model at 518 px in the Hugging Face format."""
    return make_hf_model(tmp_path_factory.mktemp("small_hf"), **SMALL_HF_CONFIG)


def onednn_fuses_bf16() -> bool:
    """oneDNN Graph has bf16 kernels to fuse on this CPU: AVX-512 or better (measured with
    ONEDNN_MAX_CPU_ISA: AVX512_CORE fuses, AVX2 and AVX2_VNNI_2 fuse nothing and the engine
    falls back to eager). Both CPUs the project runs on (Zen 4, Xeon with AMX) have it."""
    check = getattr(torch.cpu, "_is_avx512_supported", None)
    return bool(check is None or check())


def synthetic_radiograph(height: int, width: int, seed: int = 0) -> np.ndarray:
    """A smooth grey uint8 image (H, W) with structure at several scales."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width] / max(height, width)
    image = (
        120
        + 80 * np.sin(6 * xx + 3 * yy)
        + 30 * np.cos(25 * yy)
        + rng.normal(0, 12, (height, width))
    )
    return np.clip(image, 0, 255).astype(np.uint8)


@pytest.fixture
def image_folder(tmp_path: Path) -> Path:
    """Five PNG radiographs of different sizes."""
    folder = tmp_path / "images"
    folder.mkdir()
    for index, (h, w) in enumerate([(600, 500), (518, 518), (300, 700), (800, 640), (520, 519)]):
        Image.fromarray(synthetic_radiograph(h, w, seed=index)).save(folder / f"img{index}.png")
    return folder
