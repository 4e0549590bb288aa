"""RadDino against the official pipeline: transformers Dinov2Model + BitImageProcessor."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from raddino.models.encoder import RadDino
from tests.conftest import make_hf_model, synthetic_radiograph

ATOL = 1e-4


def reference_outputs(hf_dir: Path, images: list[Image.Image], size: int | None = None):
    """CLS (B, D) and patch tokens (B, N, D) from transformers on its own preprocessing."""
    from transformers import AutoModel, BitImageProcessor

    from raddino.data.preprocess import PreprocessConfig

    kwargs = PreprocessConfig().to_hf_dict()
    kwargs.pop("image_processor_type")
    if size is not None:
        kwargs.update(size={"shortest_edge": size}, crop_size={"height": size, "width": size})
    pixels = BitImageProcessor(**kwargs)(images=images, return_tensors="pt")["pixel_values"]
    model = AutoModel.from_pretrained(hf_dir).eval()
    with torch.no_grad():
        hidden = model(pixel_values=pixels).last_hidden_state
    return pixels, hidden[:, 0], hidden[:, 1:]


@pytest.fixture(scope="module")
def rad_dino_hf_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A random transformers Dinov2Model with RAD-DINO's exact config (ViT-B/14, 518 px)."""
    return make_hf_model(tmp_path_factory.mktemp("rad_dino_hf"))


def test_rad_dino_sized_model_matches_transformers_end_to_end(rad_dino_hf_dir: Path):
    images = [
        Image.fromarray(synthetic_radiograph(600, 500, seed=1)),
        Image.fromarray(synthetic_radiograph(700, 900, seed=2)).convert("RGB"),
    ]
    _, cls_ref, patches_ref = reference_outputs(rad_dino_hf_dir, images)
    model = RadDino.from_pretrained(rad_dino_hf_dir)
    cls, patches = model.extract_features(images)
    assert cls.shape == (2, 768) and patches.shape == (2, 768, 37, 37)
    assert (cls - cls_ref).abs().max().item() <= ATOL
    grid_ref = patches_ref.transpose(1, 2).reshape(2, 768, 37, 37)
    assert (patches - grid_ref).abs().max().item() <= ATOL


@pytest.mark.parametrize(("height", "width"), [(224, 224), (224, 308), (350, 182)])
def test_interpolated_position_embeddings_match_transformers(small_hf_dir: Path, height, width):
    from transformers import AutoModel

    torch.manual_seed(0)
    pixels = torch.randn(2, 3, height, width)
    with torch.no_grad():
        ref = AutoModel.from_pretrained(small_hf_dir).eval()(pixel_values=pixels).last_hidden_state
    out = RadDino.from_pretrained(small_hf_dir).encode(pixels)
    assert out.grid == (height // 14, width // 14)
    assert (out.cls - ref[:, 0]).abs().max().item() <= ATOL
    assert (out.patches - ref[:, 1:]).abs().max().item() <= ATOL


def test_preprocessing_at_224_matches_transformers(small_hf_dir: Path):
    from raddino.data.preprocess import PreprocessConfig

    images = [Image.fromarray(synthetic_radiograph(300, 260, seed=3))]
    _, cls_ref, _ = reference_outputs(small_hf_dir, images, size=224)
    config = PreprocessConfig(shortest_edge=224, crop_height=224, crop_width=224)
    model = RadDino.from_pretrained(small_hf_dir, preprocess_config=config)
    assert (model.extract_cls_token(images) - cls_ref).abs().max().item() <= ATOL


def test_save_pretrained_loads_in_transformers_with_identical_outputs(
    small_hf_dir: Path, tmp_path: Path
):
    from transformers import AutoModel

    model = RadDino.from_pretrained(small_hf_dir)
    model.save_pretrained(tmp_path / "saved")
    reloaded = AutoModel.from_pretrained(tmp_path / "saved").eval()
    pixels = torch.randn(2, 3, 518, 518)
    with torch.no_grad():
        ref = reloaded(pixel_values=pixels).last_hidden_state
        out = model.encode(pixels)
    assert torch.allclose(out.cls, ref[:, 0], atol=ATOL)
    assert torch.allclose(out.patches, ref[:, 1:], atol=ATOL)
    again = RadDino.from_pretrained(tmp_path / "saved")
    assert again.preprocess_config == model.preprocess_config
    for key, value in model.backbone.state_dict().items():
        assert torch.equal(again.backbone.state_dict()[key], value), key


def test_registers_model_matches_transformers(tmp_path: Path):
    from transformers import Dinov2WithRegistersConfig, Dinov2WithRegistersModel

    torch.manual_seed(0)
    config = Dinov2WithRegistersConfig(
        hidden_size=64, num_hidden_layers=2, num_attention_heads=4, image_size=56, patch_size=14,
        num_register_tokens=4,
    )  # fmt: skip
    reference = Dinov2WithRegistersModel(config).eval()
    reference.save_pretrained(tmp_path)
    model = RadDino.from_pretrained(tmp_path)
    for size in [(56, 56), (42, 70)]:
        pixels = torch.randn(1, 3, *size)
        with torch.no_grad():
            ref = reference(pixel_values=pixels).last_hidden_state
        out = model.encode(pixels)
        assert torch.allclose(out.registers, ref[:, 1:5], atol=ATOL)
        assert torch.allclose(out.patches, ref[:, 5:], atol=ATOL)


def test_api_accepts_paths_and_mixed_batches(small_hf_dir: Path, tmp_path: Path):
    grey = synthetic_radiograph(560, 600)
    Image.fromarray(grey).save(tmp_path / "a.png")
    model = RadDino.from_pretrained(small_hf_dir)
    from_path = model.extract_cls_token(tmp_path / "a.png")
    batch = model.extract_cls_token([str(tmp_path / "a.png"), grey, Image.fromarray(grey)])
    assert batch.shape == (3, 64)
    assert torch.allclose(batch, from_path.expand(3, -1), atol=1e-5)
    assert model.extract_patch_tokens(grey).shape == (1, 64, 37, 37)


def test_encode_keeps_gradients_and_returns_intermediate_layers(small_hf_dir: Path):
    model = RadDino.from_pretrained(small_hf_dir)
    pixels = torch.randn(1, 3, 518, 518, requires_grad=True)
    out = model.encode(pixels, layers=[0, 1])
    out.cls.sum().backward()
    assert pixels.grad is not None and sorted(out.layers) == [0, 1]


def test_rgba_image_is_composited_on_white_like_transformers(small_hf_dir: Path):
    rgba = np.zeros((520, 520, 4), dtype=np.uint8)
    rgba[..., 3] = 0  # fully transparent black -> white
    model = RadDino.from_pretrained(small_hf_dir)
    pixels = model.preprocess(Image.fromarray(rgba))
    white = (1.0 - 0.5307) / 0.2583
    assert torch.allclose(pixels, torch.full_like(pixels, white), atol=1e-5)
