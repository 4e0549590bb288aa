"""The two towers, the text tower's pooling, and the optimiser's parameter groups."""

from __future__ import annotations

import math

import pytest
import torch

from raddino.contrastive.config import ContrastiveSection, TextSection
from raddino.contrastive.model import ImageTextModel, TextTower
from raddino.contrastive.optim import param_groups
from raddino.models.vit import vit_config
from raddino.ssl.config import OptimSection

TEXT = TextSection(vocab_size=50, max_length=16, width=32, depth=1, num_heads=2, mlp_dim=64)


def tiny_model(objective: str = "clip") -> ImageTextModel:
    torch.manual_seed(0)
    vision = vit_config("tiny", depth=2, embed_dim=48, num_heads=2, patch_size=8, image_size=32)
    return ImageTextModel(vision, TEXT, ContrastiveSection(objective, embed_dim=16), 50, 0)


def test_the_text_tower_has_no_segment_embedding():
    segment = TextTower(TEXT, vocab_size=50, pad_id=0).encoder.embeddings.token_type_embeddings
    assert not segment.weight.requires_grad and torch.count_nonzero(segment.weight) == 0


@pytest.mark.parametrize("pooling", ["mean", "cls"])
def test_padding_does_not_change_a_reports_embedding(pooling: str):
    torch.manual_seed(0)
    tower = TextTower(TextSection(**{**vars(TEXT), "pooling": pooling}), 50, pad_id=0).eval()
    ids = torch.tensor([[2, 7, 9, 11, 3]])
    padded = torch.tensor([[2, 7, 9, 11, 3, 0, 0, 0]])
    mask = torch.tensor([[1, 1, 1, 1, 1, 0, 0, 0]])
    with torch.no_grad():
        short = tower(ids, torch.ones_like(ids))
        long = tower(padded, mask)
    # the padded keys get zero attention weight: float32 rounding of the same sums
    assert torch.allclose(short, long, atol=1e-6)


def test_embeddings_are_unit_vectors_and_t_starts_where_the_objective_says():
    for objective, t in (("clip", 1 / 0.07), ("siglip", 10.0)):
        model = tiny_model(objective)
        out = model(torch.randn(3, 3, 32, 32), torch.randint(4, 50, (3, 16)), torch.ones(3, 16))
        assert out.image.shape == out.text.shape == (3, 16)
        assert torch.allclose(out.image.norm(dim=-1), torch.ones(3), atol=1e-6)
        assert out.logit_scale.item() == pytest.approx(t)
        assert (out.logit_bias is None) == (objective == "clip")


def test_the_logit_scale_is_clamped_at_its_maximum():
    model = tiny_model()
    with torch.no_grad():
        model.logit_scale.fill_(math.log(500.0))
    model.clamp_logit_scale()
    assert model.logit_scale.exp().item() == pytest.approx(100.0)


def test_parameter_groups():
    model = tiny_model("siglip")
    groups = param_groups(model, OptimSection(layerwise_decay=0.5, patch_embed_lr_mult=0.1))
    settings = {id(p): (g["lr_mult"], g["wd_mult"]) for g in groups for p in g["params"]}
    named = dict(model.named_parameters())
    # frozen: the mask token (no masked image modelling) and the segment embedding
    assert id(named["vision.mask_token"]) not in settings
    assert id(named["text.encoder.embeddings.token_type_embeddings.weight"]) not in settings
    # no weight decay below 2 dimensions: biases, norms, the logit scale and bias
    for name in ("logit_scale", "logit_bias", "vision.norm.weight", "vision.blocks.0.attn.qkv.bias",
                 "text.encoder.embeddings.LayerNorm.weight"):  # fmt: skip
        assert settings[id(named[name])][1] == 0.0, name
    assert settings[id(named["text_proj.weight"])] == (1.0, 1.0)
    # layer-wise decay on the image tower only (depth 2: block 1 -> 0.5 ** 1, patch embed x 0.1)
    assert settings[id(named["vision.blocks.1.mlp.fc1.weight"])][0] == pytest.approx(0.5)
    assert settings[id(named["vision.patch_embed.proj.weight"])][0] == pytest.approx(0.5**3 * 0.1)
    assert settings[id(named["text.encoder.encoder.layer.0.output.dense.weight"])][0] == 1.0
