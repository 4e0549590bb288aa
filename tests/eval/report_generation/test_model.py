"""Projector shapes, pooling, and splicing of image tokens at the placeholder."""

from __future__ import annotations

import pytest
import torch

from raddino.eval.report_generation.lm import load_lm
from raddino.eval.report_generation.model import (
    IGNORE_INDEX,
    Projector,
    ReportModel,
    ReportModelConfig,
    pool_patch_grid,
)
from tests.eval.report_generation.conftest import REPORTS


@pytest.fixture
def model(tiny_lm_dir) -> ReportModel:
    torch.manual_seed(0)
    lm, tokenizer = load_lm(tiny_lm_dir)
    return ReportModel(ReportModelConfig(encoder_dim=16, lm_dim=32), lm, tokenizer)


def test_projector_maps_encoder_tokens_to_lm_width():
    projector = Projector(16, 32, hidden=24)
    assert projector(torch.randn(3, 5, 16)).shape == (3, 5, 32)
    assert projector.fc1.out_features == 24


def test_pooling_gives_pool_squared_tokens_in_row_major_order():
    grid = torch.arange(2 * 3 * 4 * 4, dtype=torch.float32).reshape(2, 3, 4, 4)
    assert torch.equal(pool_patch_grid(grid, 0), grid.flatten(2).transpose(1, 2))
    pooled = pool_patch_grid(grid, 2)
    assert pooled.shape == (2, 4, 3)
    assert torch.allclose(pooled[0, 0, 0], grid[0, 0, :2, :2].mean())
    assert torch.allclose(pooled[0, 1, 0], grid[0, 0, :2, 2:].mean())


def test_prompt_needs_exactly_one_placeholder():
    with pytest.raises(ValueError, match="<image>"):
        ReportModelConfig(encoder_dim=4, lm_dim=4, prompt="Findings:")
    with pytest.raises(ValueError, match="<image>"):
        ReportModelConfig(encoder_dim=4, lm_dim=4, prompt="<image> <image>")


def test_image_embeddings_are_spliced_at_the_placeholder(model: ReportModel):
    images = torch.randn(2, 6, 16)
    targets = model.target_ids(list(REPORTS))
    embeds, mask, labels = model.build_inputs(images, targets)
    p = model.image_position
    assert p == len(model.prefix_ids) and model.prefix_ids[0] == model.tokenizer.bos_token_id
    prompt_len = p + 6 + len(model.suffix_ids)
    assert embeds.shape == (2, prompt_len + max(map(len, targets)), 32)
    # the image slots hold the projected tokens, the text slots the LM's embeddings
    assert torch.allclose(embeds[:, p : p + 6], model.projector(images))
    table = model.lm.get_input_embeddings().weight
    assert torch.allclose(embeds[0, :p], table[model.prefix_ids])
    assert torch.allclose(embeds[1, p + 6 : prompt_len], table[model.suffix_ids])
    # loss only on the report tokens (+ EOS); padding masked out
    for b, ids in enumerate(targets):
        assert ids[-1] == model.eos_id
        assert (labels[b, :prompt_len] == IGNORE_INDEX).all()
        assert labels[b, prompt_len : prompt_len + len(ids)].tolist() == ids
        assert (labels[b, prompt_len + len(ids) :] == IGNORE_INDEX).all()
        assert mask[b].sum() == prompt_len + len(ids)


def test_generation_prompt_has_no_targets(model: ReportModel):
    embeds, mask, labels = model.build_inputs(torch.randn(3, 4, 16))
    assert labels is None
    assert embeds.shape[:2] == mask.shape == (3, model.image_position + 4 + len(model.suffix_ids))


def test_loss_depends_on_the_image(model: ReportModel):
    a = model(torch.randn(1, 4, 16), [REPORTS[0]])
    b = model(torch.randn(1, 4, 16) * 5, [REPORTS[0]])
    assert torch.isfinite(a) and not torch.isclose(a, b)


def test_targets_are_truncated_to_max_target_tokens(tiny_lm_dir):
    lm, tokenizer = load_lm(tiny_lm_dir)
    model = ReportModel(ReportModelConfig(16, 32, max_target_tokens=5), lm, tokenizer)
    assert [len(t) for t in model.target_ids(list(REPORTS))] == [5, 5]
