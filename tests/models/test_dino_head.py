"""DINO heads in the official key layout."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from raddino.models.dino_head import DINOHead, HeadConfig, load_head_file


def test_official_key_layout_and_shapes():
    head = DINOHead(768)
    shapes = {k: tuple(v.shape) for k, v in head.state_dict().items()}
    assert shapes == {
        "mlp.0.weight": (2048, 768), "mlp.0.bias": (2048,),
        "mlp.2.weight": (2048, 2048), "mlp.2.bias": (2048,),
        "mlp.4.weight": (256, 2048), "mlp.4.bias": (256,),
        "last_layer.weight_g": (65536, 1), "last_layer.weight_v": (65536, 256),
    }  # fmt: skip


def test_prototype_layer_is_weight_normalised():
    torch.manual_seed(0)
    head = DINOHead(16, HeadConfig(out_dim=10, hidden_dim=8, bottleneck_dim=4))
    with torch.no_grad():
        head.last_layer.weight_v.mul_(7.0)  # the scale of v must not matter
        head.last_layer.weight_g.fill_(2.0)
    bottleneck = torch.nn.functional.normalize(head.mlp(torch.randn(3, 16)), dim=-1)
    logits = head.last_layer(bottleneck)
    rows = head.last_layer.weight_v / head.last_layer.weight_v.norm(dim=1, keepdim=True)
    assert torch.allclose(logits, 2.0 * bottleneck @ rows.T, atol=1e-6)
    assert logits.abs().max() <= 2.0 + 1e-5  # unit vectors times g


def test_head_file_round_trip_and_prefix(tmp_path: Path):
    head = DINOHead(32, HeadConfig(out_dim=50, hidden_dim=24, bottleneck_dim=8))
    save_file(
        {f"dino_head.{k}": v for k, v in head.state_dict().items()}, str(tmp_path / "h.safetensors")
    )
    loaded = load_head_file(tmp_path / "h.safetensors")
    assert loaded.config == head.config
    x = torch.randn(2, 32)
    assert torch.equal(loaded(x), head(x))


def test_head_file_with_missing_keys_names_the_file(tmp_path: Path):
    state = DINOHead(32, HeadConfig(out_dim=50, hidden_dim=24, bottleneck_dim=8)).state_dict()
    del state["last_layer.weight_g"]
    save_file(state, str(tmp_path / "broken_head.safetensors"))
    with pytest.raises(ValueError, match=r"broken_head\.safetensors"):
        load_head_file(tmp_path / "broken_head.safetensors")
