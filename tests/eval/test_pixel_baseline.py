"""The raw-pixel baseline: features equal to an independent numpy/PIL calculation, cached like an
encoder's, and a column of ``raddino compare`` (probes and masks) next to the encoders."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from raddino.cli.main import main
from raddino.data.preprocess import PreprocessConfig
from raddino.eval.encoders import EncoderSpec, borrow_preprocessing
from raddino.eval.feature_cache import (
    FeatureRequest,
    encode_for_eval,
    pooled_features,
    pooled_request,
    store_directory,
)
from raddino.eval.pixels import DEFAULT_SIDE
from raddino.features.encode import EncodeOptions
from tests.conftest import synthetic_radiograph

OPTIONS = EncodeOptions(num_workers=0, progress=False, batch_size=2)
COMMON = ["--image-size", "56", "--workers", "0", "--no-progress", "--bootstrap", "50"]


def area_average(grey: np.ndarray, side: int) -> np.ndarray:
    """Exact area average of (H, W) to (side, side), independently of the code under test: each
    pixel repeated side x side times makes every output cell a whole H x W block."""
    height, width = grey.shape
    fine = np.repeat(np.repeat(grey, side, axis=0), side, axis=1)
    return fine.reshape(side, height, side, width).mean(axis=(1, 3))


def centre_crop(array: np.ndarray, size: int) -> np.ndarray:
    top, left = (array.shape[0] - size) // 2, (array.shape[1] - size) // 2
    return array[top : top + size, left : left + size]


@pytest.fixture
def unresized_images(tmp_path: Path) -> list[str]:
    """Images whose shorter side is 56 px (no resize at --image-size 56, only a centre crop):
    grey 56x56, grey 56x70, grey 71x56, RGB 56x64 (its grey level is the channel mean)."""
    paths = []
    for i, (h, w) in enumerate([(56, 56), (56, 70), (71, 56)]):
        paths.append(str(tmp_path / f"grey{i}.png"))
        Image.fromarray(synthetic_radiograph(h, w, seed=i)).save(paths[-1])
    grey = synthetic_radiograph(56, 64, seed=9)
    rgb = np.stack([grey, grey[::-1], 255 - grey], axis=-1)
    paths.append(str(tmp_path / "colour.png"))
    Image.fromarray(rgb).save(paths[-1])
    return paths


def expected_crop(path: str) -> np.ndarray:
    """(56, 56) float64 grey levels in [0, 1] of the centre crop, read with PIL and numpy."""
    with Image.open(path) as image:
        pixels = np.asarray(image, dtype=np.float64)
    if pixels.ndim == 3:
        pixels = pixels.mean(axis=2)
    return centre_crop(pixels, 56) / 255.0


@pytest.mark.parametrize("side", [1, 7, 16, 56])
def test_thumbnail_is_the_area_average_of_the_crop(unresized_images, tmp_path, side):
    """Sides dividing the crop (7, 56, 1) and not (16: cells of 3.5 pixels, cut pixels count
    by the fraction inside)."""
    spec = EncoderSpec("", image_size=56, pixels=side)
    encoded = encode_for_eval(spec, unresized_images, tmp_path / "cache", FeatureRequest(), OPTIONS)
    x = pooled_features(encoded, np.arange(len(unresized_images)))
    assert x.shape == (4, side * side) and x.dtype == np.float32
    for row, path in enumerate(unresized_images):
        expected = area_average(expected_crop(path), side).reshape(-1)
        np.testing.assert_allclose(x[row], expected, rtol=0, atol=1e-6, err_msg=path)


def test_patch_grid_is_the_crop_averaged_over_each_patch(unresized_images, tmp_path):
    """One value per 14 x 14 patch (RAD-DINO's patch size): a 4 x 4 grid at 56 px; the mean
    patch token of a pooled store equals the one read from the full grid, bit for bit."""
    spec = EncoderSpec("", image_size=56, pixels=DEFAULT_SIDE)
    full = encode_for_eval(spec, unresized_images, tmp_path, FeatureRequest("full"), OPTIONS)
    patches = np.asarray(full.features.patches[np.arange(4)])
    assert patches.shape == (4, 1, 4, 4)
    for row, path in enumerate(unresized_images):
        crop = expected_crop(path)
        expected = [[crop[14 * i : 14 * i + 14, 14 * j : 14 * j + 14].mean() for j in range(4)]
                    for i in range(4)]  # fmt: skip
        np.testing.assert_allclose(patches[row, 0], expected, rtol=0, atol=1e-6, err_msg=path)
    pooled = encode_for_eval(spec, unresized_images, tmp_path, pooled_request("cls+mean"), OPTIONS)
    assert pooled.store != full.store
    rows = np.arange(4)
    from_pooled = pooled_features(pooled, rows, "cls+mean")
    assert from_pooled.shape == (4, DEFAULT_SIDE**2 + 1)
    assert np.array_equal(from_pooled, pooled_features(full, rows, "cls+mean"))
    np.testing.assert_allclose(from_pooled[:, -1], patches.mean(axis=(1, 2, 3)), atol=1e-6)


def test_resized_images_go_through_the_encoders_processor(tmp_path):
    """A resize and crop checked against transformers' BitImageProcessor (the official one)."""
    import transformers

    config = PreprocessConfig(shortest_edge=56, crop_height=56, crop_width=56)
    kwargs = {**config.to_hf_dict(), "do_normalize": False}
    kwargs.pop("image_processor_type")
    processor = transformers.BitImageProcessor(**kwargs)
    paths = []
    for i, (h, w) in enumerate([(90, 70), (200, 260)]):
        paths.append(str(tmp_path / f"big{i}.png"))
        Image.fromarray(synthetic_radiograph(h, w, seed=i)).save(paths[-1])
    spec = EncoderSpec("", image_size=56, pixels=8)
    encoded = encode_for_eval(spec, paths, tmp_path / "cache", FeatureRequest(), OPTIONS)
    x = pooled_features(encoded, np.arange(2))
    for row, path in enumerate(paths):
        with Image.open(path) as image:
            crop = processor(images=image, return_tensors="np")["pixel_values"][0]
        assert crop.shape == (3, 56, 56)
        expected = area_average(crop.astype(np.float64).mean(axis=0), 8).reshape(-1)
        np.testing.assert_allclose(x[row], expected, rtol=0, atol=1e-5, err_msg=path)


def test_pixel_features_are_cached_under_their_side_and_processor(
    tiny_vit_dir, disk_cohort, tmp_path, capsys
):
    paths = [str(disk_cohort.parent / f"img{i:02d}.png") for i in range(6)]
    spec = EncoderSpec(str(tiny_vit_dir), image_size=56).as_pixels(8)
    first = encode_for_eval(spec, paths, tmp_path, FeatureRequest(), OPTIONS)
    assert "encoding 6 images with pixels 8x8" in capsys.readouterr().err
    again = encode_for_eval(spec, paths, tmp_path, FeatureRequest(), OPTIONS)
    assert "encoding" not in capsys.readouterr().err and again.store == first.store
    meta = json.loads((first.store / "meta.json").read_text())
    assert meta["model_config"]["side"] == 8 and meta["preprocess"]["crop_height"] == 56

    def store(s: EncoderSpec, options: EncodeOptions = OPTIONS) -> Path:
        return store_directory(tmp_path, s, FeatureRequest(), options)

    assert store(spec, EncodeOptions(dtype=torch.bfloat16)) == first.store  # always float32
    others = {
        store(spec.as_pixels(16)),
        store(EncoderSpec(str(tiny_vit_dir), image_size=112).as_pixels(8)),
        store(EncoderSpec(str(tiny_vit_dir), image_size=56)),
    }
    assert first.store not in others and len(others) == 3
    # RAD-DINO's processor at 56 px is this tiny model's: same crops, same features, one store
    assert store(EncoderSpec("", image_size=56, pixels=8)) == first.store


def test_pixel_specs_parse_label_and_borrow_the_first_encoders_processor(tiny_vit_dir):
    spec = EncoderSpec.parse("pixels:16", image_size=56)
    assert (spec.pixels, spec.source, spec.label) == (16, "", "pixels 16x16")
    named = EncoderSpec.parse("raw=pixels:8")
    assert (named.pixels, named.label) == (8, "raw")
    model = EncoderSpec.parse(str(tiny_vit_dir), image_size=56)
    borrowed = borrow_preprocessing([spec, model, named])
    assert [s.source for s in borrowed] == [str(tiny_vit_dir), str(tiny_vit_dir), str(tiny_vit_dir)]
    assert borrowed[0].load().preprocess_config == model.load().preprocess_config
    assert borrowed[0].describe()["pixels"] == 16
    assert "raw pixels: 16x16 grey thumbnail" in borrowed[0].describe()["source"]
    with pytest.raises(ValueError, match="no architecture"):
        spec.as_random()
    for bad in ("pixels:0", "pixels:-1", "pixels:x", "pixels:"):
        with pytest.raises(ValueError, match=f"encoder {bad}: the thumbnail side"):
            EncoderSpec.parse(bad)
    with pytest.raises(ValueError, match="larger than the 56x56 crop"):
        EncoderSpec.parse("pixels:57", image_size=56).load()


def test_compare_with_pixel_baseline_has_a_pixel_column_for_probes_and_masks(
    tiny_vit_dir, disk_cohort, tmp_path, capsys
):
    out = tmp_path / "compare"
    args = ["compare", "--models", str(tiny_vit_dir), "--pixel-baseline", "--manifest",
            str(disk_cohort), "--out", str(out), "--targets", "left", "--protocols", "linear",
            "--masks", "disk", "--epochs", "2", "--overlays", "0", *COMMON]  # fmt: skip
    assert main(args) == 0
    report = json.loads((out / "compare.json").read_text())
    labels = [e["label"] for e in report["encoders"]]
    assert labels == [tiny_vit_dir.name, "pixels 16x16"]
    assert report["encoders"][1]["pixels"] == 16
    assert {row["task"] for row in report["rows"]} == {"linear", "segment (linear)"}
    for row in report["rows"]:
        assert set(row["values"]) == set(labels)
        difference = row["differences"]["pixels 16x16"]
        value, reference = row["values"]["pixels 16x16"], row["values"][tiny_vit_dir.name]
        assert difference["value"] == pytest.approx(value["value"] - reference["value"])
        assert difference["low"] <= difference["value"] <= difference["high"]
    markdown = (out / "compare.md").read_text()
    header = next(line for line in markdown.splitlines() if line.startswith("| task |"))
    assert header.endswith(f"| {tiny_vit_dir.name} | pixels 16x16 |"), header
    assert "raw pixels: 16x16 grey thumbnail" in markdown
    probe = json.loads((out / "pixels_16x16" / "probe.json").read_text())
    assert probe["protocols"]["linear"]["targets"]["left"]["metrics"]["auroc"]["value"] > 0.5
    assert (out / "pixels_16x16" / "segment" / "segment.md").exists()
    assert "comparison:" in capsys.readouterr().out


def test_compare_takes_pixels_as_a_model(tiny_vit_dir, disk_cohort, tmp_path):
    out = tmp_path / "compare"
    args = ["compare", "--models", f"vit={tiny_vit_dir}", "pixels=pixels:8", "--manifest",
            str(disk_cohort), "--out", str(out), "--targets", "left", "--protocols", "knn",
            *COMMON]  # fmt: skip
    assert main(args) == 0
    report = json.loads((out / "compare.json").read_text())
    assert [e["label"] for e in report["encoders"]] == ["vit", "pixels"]
    assert all(set(row["differences"]) == {"pixels"} for row in report["rows"])


@pytest.mark.parametrize("side", ["0", "-1", "x", "57"])
def test_bad_pixel_baseline_side_is_refused_naming_the_option(
    tiny_vit_dir, disk_cohort, tmp_path, capsys, side
):
    args = ["compare", "--models", str(tiny_vit_dir), "--pixel-baseline", side, "--manifest",
            str(disk_cohort), "--out", str(tmp_path / "out"), "--targets", "left",
            *COMMON]  # fmt: skip
    assert main(args) == 2
    error = capsys.readouterr().err.strip()
    assert len(error.splitlines()) == 1, error
    assert error.startswith(f"raddino compare: error: --pixel-baseline {side}: "), error
    assert not (tmp_path / "out").exists()  # refused before anything was encoded


def test_pixel_baseline_refuses_heads_that_need_transformer_blocks(
    tiny_vit_dir, disk_cohort, tmp_path, capsys
):
    args = ["compare", "--models", str(tiny_vit_dir), "--pixel-baseline", "--manifest",
            str(disk_cohort), "--out", str(tmp_path / "out"), "--masks", "disk",
            "--head", "upernet", *COMMON]  # fmt: skip
    assert main(args) == 2
    error = capsys.readouterr().err.strip()
    assert len(error.splitlines()) == 1 and "--head linear --linear-layers 1" in error, error
    assert not (tmp_path / "out").exists()


def test_the_cli_default_side_is_the_librarys():
    from raddino.cli.compare import PIXEL_SIDE

    assert PIXEL_SIDE == DEFAULT_SIDE
