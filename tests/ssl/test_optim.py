"""Parameter groups: layer-wise lr decay, patch-embedding multiplier, weight-decay exclusions."""

from __future__ import annotations

import pytest
import torch

from raddino.models.dino_head import HeadConfig
from raddino.models.vit import ViTConfig
from raddino.ssl.config import LossSection, OptimSection
from raddino.ssl.meta_arch import StudentTeacher
from raddino.ssl.optim import apply_schedule, build_optimizer, param_groups
from raddino.ssl.schedules import ScheduleValues


@pytest.fixture(scope="module")
def branch():
    config = ViTConfig(image_size=32, patch_size=8, embed_dim=32, depth=3, num_heads=2)
    return StudentTeacher(config, HeadConfig(16, 16, 8), LossSection()).student


def settings_of(branch, optim) -> dict[str, tuple[float, float, bool]]:
    by_param = {}
    for group in param_groups(branch, optim):
        for parameter in group["params"]:
            by_param[id(parameter)] = (group["lr_mult"], group["wd_mult"], group["is_last_layer"])
    return {name: by_param[id(p)] for name, p in branch.named_parameters()}


def test_layerwise_decay_and_patch_embedding_multiplier(branch):
    s = settings_of(branch, OptimSection(layerwise_decay=0.5, patch_embed_lr_mult=0.2))
    depth = 3  # layer ids: 0 embeddings, 1..3 blocks, 4 final norm
    assert s["backbone.cls_token"][0] == pytest.approx(0.5 ** (depth + 1))
    assert s["backbone.patch_embed.proj.weight"][0] == pytest.approx(0.5 ** (depth + 1) * 0.2)
    assert s["backbone.blocks.0.attn.qkv.weight"][0] == pytest.approx(0.5**3)
    assert s["backbone.blocks.2.mlp.fc1.weight"][0] == pytest.approx(0.5**1)
    assert s["backbone.norm.weight"][0] == pytest.approx(1.0)
    assert s["dino_head.mlp.0.weight"][0] == 1.0


def test_weight_decay_skips_biases_norms_and_layerscale_but_not_tokens(branch):
    s = settings_of(branch, OptimSection())
    assert s["backbone.blocks.0.attn.qkv.bias"][1] == 0.0
    assert s["backbone.blocks.0.norm1.weight"][1] == 0.0
    assert s["backbone.blocks.0.ls1.gamma"][1] == 0.0
    assert s["backbone.pos_embed"][1] == 1.0 and s["backbone.cls_token"][1] == 1.0
    assert s["dino_head.last_layer.weight_g"][2] and s["dino_head.last_layer.weight_v"][2]
    assert not s["dino_head.mlp.0.weight"][2]


def test_schedule_is_applied_per_group(branch):
    optimizer = build_optimizer(branch, OptimSection(layerwise_decay=0.5))
    apply_schedule(optimizer, ScheduleValues(lr=1.0, last_layer_lr=0.0, weight_decay=0.1,
                                             momentum=0.99, teacher_temp=0.07))  # fmt: skip
    for group in optimizer.param_groups:
        expected = 0.0 if group["is_last_layer"] else group["lr_mult"]
        assert group["lr"] == pytest.approx(expected)
        assert group["weight_decay"] == pytest.approx(0.1 * group["wd_mult"])


def test_the_optimiser_is_pytorchs_fused_adamw_on_cpu(branch):
    optimizer = build_optimizer(branch, OptimSection())
    assert isinstance(optimizer, torch.optim.AdamW) and optimizer.defaults["fused"]
    assert sum(len(g["params"]) for g in optimizer.param_groups) == len(list(branch.parameters()))
