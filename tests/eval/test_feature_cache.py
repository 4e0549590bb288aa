"""Features once: a cache keyed by encoder and settings, rows aligned with the manifest."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
import torch

from raddino.eval.encoders import EncoderSpec
from raddino.eval.feature_cache import (
    FeatureRequest,
    encode_for_eval,
    pooled_features,
    pooled_request,
    store_directory,
)
from raddino.eval.feature_kinds import describe_features
from raddino.features.encode import EncodeOptions

OPTIONS = EncodeOptions(num_workers=0, progress=False)


def image_paths(manifest: Path) -> list[str]:
    return [str(manifest.parent / f"img{i:02d}.png") for i in range(24)]


def test_features_are_encoded_once_and_aligned(tiny_vit_dir, disk_cohort, tmp_path, capsys):
    spec = EncoderSpec(str(tiny_vit_dir), image_size=56)
    paths = image_paths(disk_cohort)
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"not a png")
    rows = [paths[3], str(broken), paths[0], paths[3]]
    encoded = encode_for_eval(spec, rows, tmp_path, pooled_request("cls+mean"), OPTIONS)
    assert "encoding 3 images" in capsys.readouterr().err
    assert list(encoded.valid) == [True, False, True, True]
    x = pooled_features(encoded, np.array([0, 2, 3]), "cls+mean")
    assert x.shape == (3, 64) and np.array_equal(x[0], x[2])
    assert "broken.png" in next(iter(encoded.rejects))

    again = encode_for_eval(spec, rows[:3], tmp_path, pooled_request("cls+mean"), OPTIONS)
    assert "encoding" not in capsys.readouterr().err
    assert again.store == encoded.store
    assert np.array_equal(pooled_features(again, np.array([0]), "cls"), x[:1, :32])


def test_store_directory_depends_on_encoder_and_settings(tiny_vit_dir, tmp_path):
    spec = EncoderSpec(str(tiny_vit_dir))
    base = store_directory(tmp_path, spec, FeatureRequest(), OPTIONS)
    assert base == store_directory(tmp_path, spec, FeatureRequest(), OPTIONS)
    others = {
        store_directory(tmp_path, spec, FeatureRequest("full", (1,)), OPTIONS),
        store_directory(tmp_path, spec.as_random(), FeatureRequest(), OPTIONS),
        store_directory(
            tmp_path, EncoderSpec(str(tiny_vit_dir), image_size=56), FeatureRequest(), OPTIONS
        ),
        store_directory(tmp_path, spec, FeatureRequest(), EncodeOptions(dtype=torch.bfloat16)),
    }
    assert base not in others and len(others) == 4


def test_random_baseline_has_the_architecture_not_the_weights(tiny_vit_dir):
    spec = EncoderSpec.parse(f"trained={tiny_vit_dir}", image_size=56)
    assert spec.name == "trained" and spec.label == "trained"
    random = EncoderSpec.parse(f"random:{tiny_vit_dir}", image_size=56, seed=3)
    assert random.random_init and random.label == f"random-init({tiny_vit_dir.name})"
    trained, baseline = spec.load(), random.load()
    assert trained.config == baseline.config
    assert baseline.preprocess_config.crop_height == 56
    assert not torch.equal(
        trained.backbone.blocks[0].attn.qkv.weight, baseline.backbone.blocks[0].attn.qkv.weight
    )
    assert torch.equal(random.load().backbone.pos_embed, baseline.backbone.pos_embed)  # seeded
    with pytest.raises(FileNotFoundError, match="no such file"):
        EncoderSpec.parse(str(tiny_vit_dir / "missing"))
    with pytest.raises(ValueError, match="multiple of the patch size"):
        EncoderSpec(str(tiny_vit_dir), image_size=50).load()


def test_full_store_serves_cls_mean_probes(tiny_vit_dir, disk_cohort, tmp_path):
    """A full-token store (no stored means) gives the CLS + mean features of a pooled store,
    bit for bit (the demo's tables must not depend on which store a probe reads)."""
    spec = EncoderSpec(str(tiny_vit_dir), image_size=56)
    rows = image_paths(disk_cohort)[:4]
    index = np.arange(4)
    pooled = encode_for_eval(spec, rows, tmp_path, pooled_request("cls+mean"), OPTIONS)
    full = encode_for_eval(spec, rows, tmp_path, FeatureRequest("full"), OPTIONS)
    expected = pooled_features(pooled, index, "cls+mean")
    assert full.features.patch_mean is None
    assert np.array_equal(pooled_features(full, index, "cls+mean"), expected)


def reference_grid(patches: np.ndarray, side: int) -> np.ndarray:
    """(n, D, h, w) -> (n, D * side²): cell (i, j) the plain mean over rows
    [floor(i h / side), ceil((i + 1) h / side)) and the columns likewise, written out in loops."""
    n, dim, height, width = patches.shape
    patches = patches.astype(np.float64)
    cells = np.zeros((n, dim, side, side))
    for i in range(side):
        top, bottom = (i * height) // side, -((-(i + 1) * height) // side)
        for j in range(side):
            left, right = (j * width) // side, -((-(j + 1) * width) // side)
            cells[:, :, i, j] = patches[:, :, top:bottom, left:right].mean((2, 3))
    return cells.reshape(n, -1)


def test_grid_features_average_the_patch_grid_over_cells(tiny_vit_dir, disk_cohort, tmp_path):
    """cls+gridN: CLS then the (D, h, w) patch grid averaged over N x N cells, flattened channel
    by channel; cells overlap where N does not divide the grid, as adaptive average pooling's
    do. Compared with loops over the cell bounds in float64: the float32 means of at most 16
    values differ from them by rounding only (1e-5 of values of order 1)."""
    spec = EncoderSpec(str(tiny_vit_dir), image_size=56)
    rows = image_paths(disk_cohort)[:5]
    index = np.array([4, 0, 2])
    assert pooled_request("cls+grid2") == FeatureRequest("full")
    encoded = encode_for_eval(spec, rows, tmp_path, pooled_request("cls+grid2"), OPTIONS)
    patches = np.array(encoded.features.patches[index], dtype=np.float32)
    dim, height, width = patches.shape[1:]
    assert (height, width) == (4, 4)  # 56 px, patch 14
    cls = pooled_features(encoded, index, "cls")
    for side in (1, 2, 3, 4):
        x = pooled_features(encoded, index, f"cls+grid{side}")
        assert x.shape == (3, dim + dim * side**2) and x.dtype == np.float32
        assert np.array_equal(x[:, :dim], cls)
        np.testing.assert_allclose(x[:, dim:], reference_grid(patches, side), rtol=0, atol=1e-5)
    # one cell is the mean patch token, up to the order of the float32 sums
    np.testing.assert_allclose(
        pooled_features(encoded, index, "cls+grid1"),
        pooled_features(encoded, index, "cls+mean"),
        rtol=0,
        atol=1e-5,
    )
    with pytest.raises(ValueError, match="only 4 x 4"):
        pooled_features(encoded, index, "cls+grid5")


@pytest.mark.parametrize("kind", ["cls+grid0", "cls+grid", "grid2", "cls+grid2x", "cls+max"])
def test_unknown_feature_kinds_are_named(kind):
    with pytest.raises(ValueError, match=rf"features '{re.escape(kind)}': choose cls, cls\+mean"):
        pooled_request(kind)


def test_grid_features_need_the_patch_grid(tiny_vit_dir, disk_cohort, tmp_path):
    spec = EncoderSpec(str(tiny_vit_dir), image_size=56)
    rows = image_paths(disk_cohort)[:2]
    pooled = encode_for_eval(spec, rows, tmp_path, pooled_request("cls+mean"), OPTIONS)
    with pytest.raises(ValueError, match="has no patch grid"):
        pooled_features(pooled, np.arange(2), "cls+grid2")


def test_feature_kinds_are_described_for_reports():
    assert describe_features("cls") == "CLS token"
    assert describe_features("cls+mean") == "CLS + mean patch token"
    assert describe_features("cls+grid4") == "CLS + patch tokens averaged over 4 x 4 cells"
