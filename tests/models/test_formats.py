"""Weight formats: Hugging Face directories and official DINOv2 state dicts, strictly matched."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from raddino.models import formats
from raddino.models.encoder import RadDino
from raddino.models.vit import VisionTransformer, ViTConfig


def official_state_dict(seed: int = 0, **overrides) -> tuple[ViTConfig, dict[str, torch.Tensor]]:
    """A random backbone whose keys are exactly the official dinov2 ones."""
    torch.manual_seed(seed)
    fields = dict(image_size=56, embed_dim=128, depth=2, num_heads=2, interpolate_offset=0.1)
    config = ViTConfig(**{**fields, **overrides})
    model = VisionTransformer(config)
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if "gamma" in name or name in ("cls_token", "mask_token"):
                parameter.normal_()
    return config, model.state_dict()


# The official dinov2_vitb14 checkpoint's key set (dinov2/hub), for one block.
OFFICIAL_BLOCK_KEYS = {
    "norm1.weight", "norm1.bias", "attn.qkv.weight", "attn.qkv.bias", "attn.proj.weight",
    "attn.proj.bias", "ls1.gamma", "norm2.weight", "norm2.bias", "mlp.fc1.weight",
    "mlp.fc1.bias", "mlp.fc2.weight", "mlp.fc2.bias", "ls2.gamma",
}  # fmt: skip


def test_parameter_names_are_the_official_dinov2_names():
    _, state = official_state_dict()
    top = {k for k in state if not k.startswith("blocks.")}
    assert top == {
        "cls_token", "pos_embed", "mask_token", "patch_embed.proj.weight",
        "patch_embed.proj.bias", "norm.weight", "norm.bias",
    }  # fmt: skip
    assert {k.removeprefix("blocks.0.") for k in state if k.startswith("blocks.0.")} == (
        OFFICIAL_BLOCK_KEYS
    )


@pytest.mark.parametrize("suffix", [".safetensors", ".pth"])
def test_official_state_dict_round_trips_through_export(tmp_path: Path, suffix: str):
    _, state = official_state_dict()
    source = tmp_path / f"backbone{suffix}"
    formats.save_dinov2_file(state, source)
    model = RadDino.from_pretrained(source)
    assert model.config.embed_dim == 128 and model.config.depth == 2 and model.config.num_heads == 2
    exported = model.export(tmp_path / f"again{suffix}", format="dinov2")
    if suffix == ".safetensors":
        again = load_file(str(exported))
    else:
        again = torch.load(exported, weights_only=True)
    assert set(again) == set(state)
    for key in state:
        assert torch.equal(again[key], state[key]), key


def test_official_config_inferred_from_shapes():
    config, state = official_state_dict(num_register_tokens=4, ffn="swiglu", mlp_ratio=4.0)
    inferred = formats.infer_dinov2_config(state, "test")
    assert inferred.num_register_tokens == 4
    assert inferred.ffn == "swiglu" and inferred.ffn_hidden_dim == config.ffn_hidden_dim
    assert (inferred.interpolate_offset, inferred.interpolate_antialias) == (0.0, True)
    assert inferred.image_size == 56 and inferred.patch_size == 14


def test_training_checkpoint_prefixes_and_chunks_are_understood(tmp_path: Path):
    _, state = official_state_dict()
    wrapped = {
        "teacher": {
            f"backbone.{k}".replace("blocks.1.", "blocks.0.1."): v for k, v in state.items()
        }
    }
    wrapped["teacher"]["dino_head.mlp.0.weight"] = torch.zeros(2, 2)
    torch.save(wrapped, tmp_path / "teacher_checkpoint.pth")
    model = RadDino.from_pretrained(tmp_path / "teacher_checkpoint.pth")
    assert torch.equal(
        model.backbone.state_dict()["blocks.1.attn.qkv.weight"], state["blocks.1.attn.qkv.weight"]
    )


def test_missing_and_unexpected_keys_are_listed(tmp_path: Path):
    _, state = official_state_dict()
    del state["blocks.1.ls2.gamma"]
    state["blocks.1.extra.weight"] = torch.zeros(1)
    save_file(state, str(tmp_path / "bad.safetensors"))
    with pytest.raises(formats.WeightFormatError) as info:
        RadDino.from_pretrained(tmp_path / "bad.safetensors")
    message = str(info.value)
    assert "bad.safetensors" in message
    assert "missing keys: blocks.1.ls2.gamma" in message
    assert "unexpected keys: blocks.1.extra.weight" in message


class CodeOnUnpickle:
    """Unpickling this calls a function: what weights_only=True exists to prevent."""

    def __reduce__(self):
        return (print, ("unpickled!",))


def test_pickled_objects_are_refused(tmp_path: Path):
    torch.save({"cls_token": CodeOnUnpickle()}, tmp_path / "evil.pth")
    with pytest.raises(formats.WeightFormatError, match="weights_only=True"):
        RadDino.from_pretrained(tmp_path / "evil.pth")


def test_corrupt_safetensors_names_the_file(tmp_path: Path):
    (tmp_path / "broken.safetensors").write_bytes(b"\x00\x01garbage")
    with pytest.raises(formats.WeightFormatError, match=r"broken\.safetensors"):
        RadDino.from_pretrained(tmp_path / "broken.safetensors")


def test_directory_without_config_is_explained(tmp_path: Path):
    (tmp_path / "weights.bin").write_bytes(b"")
    with pytest.raises(formats.WeightFormatError, match=r"no config\.json"):
        RadDino.from_pretrained(tmp_path)


def test_non_dinov2_hf_config_is_refused(tmp_path: Path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "vit", "hidden_size": 8}))
    with pytest.raises(formats.WeightFormatError, match="not a DINOv2 model"):
        RadDino.from_pretrained(tmp_path)


def test_hf_and_official_names_are_inverse_mappings():
    config, state = official_state_dict(ffn="swiglu")
    back = formats.hf_to_dinov2(formats.dinov2_to_hf(state, config))
    assert set(back) == set(state)
    assert all(torch.equal(back[k], state[k]) for k in state)
