"""The recipe key: presets of both recipes load, image-only configs are unchanged, bad values
and keys of the other recipe are refused by name."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from raddino.contrastive.config import ContrastiveConfig
from raddino.ssl.config import PRESETS_DIR, ConfigError, PretrainConfig, load_config

CONFIGS = PRESETS_DIR


def test_configs_without_a_recipe_are_the_image_only_recipe_and_write_no_recipe_key():
    config = load_config(CONFIGS / "tiny_cpu.yaml")
    assert isinstance(config, PretrainConfig) and config.recipe == "dino"
    assert "recipe" not in config.to_dict()  # run directories written before recipes existed
    assert load_config(None, ["recipe=dino"]) == load_config(None)


@pytest.mark.parametrize("preset", ["clip_tiny_cpu.yaml", "clip_vitb14_cxr.yaml"])
def test_contrastive_presets_load(preset: str):
    config = load_config(CONFIGS / preset)
    assert isinstance(config, ContrastiveConfig) and config.recipe == "contrastive"
    assert config.contrastive.objective == "clip"
    assert config.contrastive.initial_logit_scale() == pytest.approx(1 / 0.07)


@pytest.mark.parametrize(
    ("contrastive", "image_only"),
    [("clip_tiny_cpu.yaml", "tiny_cpu.yaml"), ("clip_vitb14_cxr.yaml", "vitb14_cxr.yaml")],
)
def test_each_contrastive_preset_trains_the_image_only_presets_vit(contrastive, image_only):
    clip, dino = load_config(CONFIGS / contrastive), load_config(CONFIGS / image_only)
    assert clip.model == dino.model
    for key in ("global_scale", "max_source_size", "flip_probability"):
        assert getattr(clip.crops, key) == getattr(dino.crops, key), key
    # one view per image, at least as large as the image-only recipe's global crops (the CPU
    # preset's is larger, to spend what the image-only recipe spends on its crops per step)
    assert clip.crops.global_size >= dino.crops.global_size
    assert clip.train.batch_size == dino.train.batch_size
    assert clip.train.steps == dino.train.steps  # the same images seen
    assert clip.train.precision == dino.train.precision


def test_contrastive_config_round_trips_through_yaml(tmp_path: Path):
    config = load_config(CONFIGS / "clip_tiny_cpu.yaml", ["train.steps=7", "text.depth=2"])
    path = tmp_path / "config.yaml"
    path.write_text(config.to_yaml())
    assert yaml.safe_load(path.read_text())["recipe"] == "contrastive"
    assert "local_number" not in yaml.safe_load(path.read_text())["crops"]
    assert load_config(path) == config


def test_the_initial_temperature_follows_the_objective_unless_set():
    siglip = load_config(None, ["recipe=contrastive", "contrastive.objective=siglip"])
    assert siglip.contrastive.initial_logit_scale() == 10.0
    fixed = load_config(None, ["recipe=contrastive", "contrastive.logit_scale_init=3"])
    assert fixed.contrastive.initial_logit_scale() == 3.0


def test_recipe_override_switches_recipe():
    config = load_config(None, ["recipe=contrastive", "text.width=64", "text.num_heads=4"])
    assert isinstance(config, ContrastiveConfig) and config.text.width == 64


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["recipe=clip"], r"recipe='clip': choose one of dino, contrastive"),
        (["text.vocab_size=0"], r"text\.vocab_size"),
        (["text.width=130", "text.num_heads=4"], r"text\.width=130 is not a multiple"),
        (["text.max_length=2"], r"text\.max_length"),
        (["text.dropout=1.0"], r"text\.dropout"),
        (["text.pooling=max"], r"text\.pooling"),
        (["text.widht=12"], r"did you mean 'text\.width'"),
        (["contrastive.objective=infonce"], r"contrastive\.objective"),
        (["contrastive.embed_dim=-1"], r"contrastive\.embed_dim"),
        (["contrastive.logit_scale_init=0"], r"contrastive\.logit_scale_init"),
        (["contrastive.max_logit_scale=5"], r"contrastive\.max_logit_scale=5\.0 must be >= "),
        (["crops.global_size=100"], r"crops\.global_size"),  # the shared rules apply
        (["optim.base_lr=-1"], r"optim\.base_lr"),
        (["train.strategy=fsdp"], r"train\.strategy"),
        (["crops.local_number=4"], r"crops\.local_number: used only by the image-only"),
        (["optim.freeze_last_layer_steps=3"], r"optim\.freeze_last_layer_steps"),
        (["model.init_head=head.safetensors"], r"model\.init_head"),
        (["loss.koleo_weight=0"], r"loss: a section of the image-only recipe"),
    ],
)
def test_bad_contrastive_values_name_the_key(overrides: list[str], message: str):
    with pytest.raises(ConfigError, match=message):
        load_config(None, ["recipe=contrastive", *overrides])


def test_contrastive_sections_are_unknown_to_the_image_only_recipe():
    with pytest.raises(ConfigError, match="unknown config key 'text'"):
        load_config(None, ["text.width=64"])
