"""Configs: presets load, overrides are typed, bad keys and values are named."""

from __future__ import annotations

from pathlib import Path

import pytest

from raddino.ssl.config import ConfigError, load_config

CONFIGS = Path(__file__).parents[2] / "configs"


@pytest.mark.parametrize("preset", ["tiny_cpu.yaml", "vitb14_cxr.yaml"])
def test_presets_load(preset):
    config = load_config(CONFIGS / preset)
    assert config.train.steps > 0


def test_paper_preset_values():
    config = load_config(CONFIGS / "vitb14_cxr.yaml")
    assert config.train.batch_size == 40 and config.crops.high_res_size == 518
    assert config.head.out_dim == 65536 and config.model.patch_size == 14


def test_overrides_are_typed():
    config = load_config(
        None, ["optim.base_lr=1e-3", "crops.global_scale=[0.4, 1]", "train.deterministic=true"]
    )
    assert config.optim.base_lr == 1e-3
    assert config.crops.global_scale == (0.4, 1.0)
    assert config.train.deterministic is True


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("optim.base_lrr=1", "did you mean 'optim.base_lr'"),
        ("train.precision=fp8", "train.precision"),
        ("train.steps=ten", "train.steps"),
        ("masking.probability=1.5", "masking.probability"),
        ("crops.global_size=100", "crops.global_size"),
        ("crops.rotation_degrees=-5", "crops.rotation_degrees"),
        ("crops.rotation_degrees=120", "crops.rotation_degrees"),
        ("nonsense", "key=value"),
    ],
)
def test_bad_overrides_name_the_key(override, message):
    with pytest.raises(ConfigError, match=message):
        load_config(None, [override])


def test_resolved_config_round_trips_through_yaml(tmp_path):
    config = load_config(CONFIGS / "tiny_cpu.yaml", ["train.steps=7"])
    path = tmp_path / "config.yaml"
    path.write_text(config.to_yaml())
    assert load_config(path) == config


def test_precision_auto_is_bf16_exactly_where_the_device_computes_it_natively(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import torch

    from raddino import devices
    from raddino.ssl.run import training_precision

    assert load_config(None, ["train.precision=auto"]).train.precision == "auto"
    cpu = torch.device("cpu")
    for native, expected in ((True, torch.bfloat16), (False, torch.float32)):
        monkeypatch.setattr(devices, "cpu_has_native_bf16", lambda native=native: native)
        assert training_precision("auto", cpu) == expected
        for fixed, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16)):
            assert training_precision(fixed, cpu) == dtype
    with pytest.raises(ConfigError, match=r"train\.precision"):
        load_config(None, ["train.precision=fp8"])
