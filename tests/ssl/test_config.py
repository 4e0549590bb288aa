"""Configs: presets load, overrides are typed, bad keys and values are named."""

from __future__ import annotations

import pytest

from raddino.ssl.config import PRESETS_DIR, ConfigError, load_config

CONFIGS = PRESETS_DIR


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


def test_presets_load_by_name_from_any_directory(tmp_path, monkeypatch):
    from raddino.ssl.config import preset_names, resolve_config_path

    monkeypatch.chdir(tmp_path)  # nothing here but the test
    assert {"tiny_cpu", "clip_tiny_cpu", "vitb14_cxr", "clip_vitb14_cxr"} <= set(preset_names())
    assert resolve_config_path("tiny_cpu") == resolve_config_path("tiny_cpu.yaml")
    assert load_config("tiny_cpu").to_dict() == load_config(PRESETS_DIR / "tiny_cpu.yaml").to_dict()
    assert load_config("clip_tiny_cpu").recipe == "contrastive"


def test_a_file_beats_a_preset_name_and_an_unknown_name_lists_the_presets(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "tiny_cpu").write_text("train:\n  steps: 3\n")
    assert load_config("tiny_cpu").train.steps == 3
    with pytest.raises(
        ConfigError, match=r"--config tiny_gpu: no such config file .*presets: .*tiny_cpu"
    ):
        load_config("tiny_gpu")
    with pytest.raises(ConfigError, match="no such config file"):
        load_config("sub/tiny_cpu.yaml")
