"""Preprocessing parity with transformers' BitImageProcessor as microsoft/rad-dino configures it."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from raddino.data.io import DEFAULT_MAX_PIXELS
from raddino.data.preprocess import (
    PreprocessConfig,
    center_crop,
    load_crop,
    model_input,
    shortest_edge_size,
)
from raddino.features.encode import ImageFiles
from raddino.models.encoder import RadDino
from raddino.models.vit import ViTConfig
from tests.conftest import synthetic_radiograph

SIZES = [(518, 518), (600, 500), (500, 600), (1024, 768), (300, 900), (2048, 1700), (519, 520)]


def hf_processor(pil: bool = False):
    import transformers

    kwargs = PreprocessConfig().to_hf_dict()
    kwargs.pop("image_processor_type")
    cls = transformers.BitImageProcessorPil if pil else transformers.BitImageProcessor
    return cls(**kwargs)


@pytest.fixture(scope="module")
def encoder() -> RadDino:
    return RadDino.from_config(ViTConfig(embed_dim=32, depth=1, num_heads=2))


def pil_images(mode: str) -> list[Image.Image]:
    images = []
    for seed, (h, w) in enumerate(SIZES):
        grey = synthetic_radiograph(h, w, seed)
        if mode == "L":
            images.append(Image.fromarray(grey))
        elif mode == "RGB":
            images.append(Image.fromarray(np.stack([grey, grey[::-1], 255 - grey], axis=-1)))
        else:  # RGBA with partial transparency
            alpha = np.full_like(grey, 200)
            images.append(Image.fromarray(np.stack([grey, grey, 255 - grey, alpha], axis=-1)))
    return images


@pytest.mark.parametrize("mode", ["L", "RGB", "RGBA"])
def test_pixel_values_match_bit_image_processor(encoder: RadDino, mode: str):
    processor = hf_processor()
    for image in pil_images(mode):
        ours = encoder.preprocess(image)
        theirs = processor(images=image, return_tensors="pt")["pixel_values"]
        assert ours.shape == theirs.shape == (1, 3, 518, 518)
        assert (ours - theirs).abs().max().item() <= 1e-4, image.size


def test_pil_backend_differs_by_resampling_rounding_only(encoder: RadDino):
    """transformers' PIL backend resizes with PIL, not torchvision: at most a few grey levels."""
    processor = hf_processor(pil=True)
    one_level = 1 / 255 / 0.2583
    for image in pil_images("L"):
        ours = encoder.preprocess(image)
        theirs = torch.as_tensor(np.asarray(processor(images=image)["pixel_values"][0]))[None]
        diff = (ours - theirs).abs()
        assert diff.max().item() <= 3 * one_level + 1e-5, image.size
        assert diff.mean().item() <= 0.5 * one_level, image.size


def test_grey_input_becomes_three_identical_channels(encoder: RadDino):
    pixels = encoder.preprocess(Image.fromarray(synthetic_radiograph(600, 500)))
    assert torch.equal(pixels[0, 0], pixels[0, 1]) and torch.equal(pixels[0, 0], pixels[0, 2])


def test_sixteen_bit_input_is_min_max_scaled_first(encoder: RadDino):
    grey = synthetic_radiograph(600, 500).astype(np.uint16) * 100 + 1000
    expected = np.round((grey - grey.min()) / (grey.max() - grey.min()) * 255).astype(np.uint8)
    assert torch.equal(encoder.preprocess(grey), encoder.preprocess(expected))


def test_arrays_tensors_and_pil_agree(encoder: RadDino):
    grey = synthetic_radiograph(640, 700)
    from_pil = encoder.preprocess(Image.fromarray(grey))
    assert torch.equal(encoder.preprocess(grey), from_pil)
    assert torch.equal(encoder.preprocess(torch.from_numpy(grey)), from_pil)
    assert torch.equal(encoder.preprocess(torch.from_numpy(grey)[None]), from_pil)


@pytest.mark.parametrize("kind", ["grey16.png", "rgb.jpg"])
def test_shared_loader_gives_the_tensor_of_rad_dino_preprocess_and_the_encode_dataset(
    encoder: RadDino, tmp_path, kind: str
):
    grey = synthetic_radiograph(640, 560)
    path = tmp_path / kind
    if kind == "grey16.png":
        Image.fromarray(grey.astype(np.uint16) * 200 + 300).save(path)
    else:
        Image.fromarray(np.stack([grey, grey[::-1], 255 - grey], axis=-1)).save(path)
    config = encoder.preprocess_config
    crop = load_crop(path, config)
    assert crop.dtype == torch.uint8 and crop.shape[-2:] == (518, 518)
    _, dataset_crop, reason = ImageFiles([str(path)], config, DEFAULT_MAX_PIXELS)[0]
    assert reason is None and torch.equal(dataset_crop, crop)
    assert torch.equal(encoder.preprocess_uint8(path), crop)
    pixels = model_input(crop[None], config)
    assert pixels.shape == (1, 3, 518, 518) and pixels.dtype == torch.float32
    assert torch.equal(encoder.preprocess(path), pixels)
    assert torch.equal(encoder.preprocess(str(path)), pixels)


def test_model_input_mixes_grey_and_colour_crops_as_rgb():
    config = PreprocessConfig(crop_height=8, crop_width=8)
    grey = torch.arange(64, dtype=torch.uint8).reshape(1, 8, 8)
    colour = torch.stack([grey[0], 255 - grey[0], grey[0] // 2])
    mixed = model_input([grey, colour], config)
    assert torch.equal(mixed[0], model_input(grey.expand(3, -1, -1)[None], config)[0])
    assert torch.equal(mixed[1], model_input(colour[None], config)[0])
    with pytest.raises(ValueError, match="differ in size"):
        model_input([grey, grey[:, :4]], config)


def test_shortest_edge_size_truncates_the_long_side_like_torchvision():
    assert shortest_edge_size(600, 500, 518) == (int(518 * 600 / 500), 518)
    assert shortest_edge_size(500, 600, 518) == (518, int(518 * 600 / 500))
    assert shortest_edge_size(518, 518, 518) == (518, 518)


def test_center_crop_pads_small_images():
    image = torch.ones(1, 10, 20, dtype=torch.uint8)
    crop = center_crop(image, 14, 14)
    assert crop.shape == (1, 14, 14)
    assert crop[0, 0].sum() == 0 and crop[0, 7, 7] == 1


def test_preprocessor_config_json_round_trip(tmp_path):
    config = PreprocessConfig(
        shortest_edge=224, crop_height=224, crop_width=224, image_mean=(0.5,) * 3
    )
    path = tmp_path / "preprocessor_config.json"
    import json

    path.write_text(json.dumps(config.to_hf_dict()))
    assert PreprocessConfig.from_file(path) == config


def test_unsupported_processor_size_names_the_file(tmp_path):
    path = tmp_path / "preprocessor_config.json"
    path.write_text('{"size": {"height": 224, "width": 224}}')
    with pytest.raises(ValueError, match=r"preprocessor_config\.json"):
        PreprocessConfig.from_file(path)
