"""Features once: a cache keyed by encoder and settings, rows aligned with the manifest."""

from __future__ import annotations

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
