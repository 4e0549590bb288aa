"""The student branch's stacked head call: the same logits as one head call per input."""

from __future__ import annotations

import pytest
import torch

from raddino.models.dino_head import HeadConfig
from raddino.models.vit import ViTConfig
from raddino.ssl.config import LossSection
from raddino.ssl.meta_arch import StudentTeacher


@pytest.mark.parametrize("separate_ibot_head", [False, True])
def test_branch_logits_equal_one_head_call_per_input(separate_ibot_head):
    torch.manual_seed(0)
    config = ViTConfig(image_size=32, patch_size=8, embed_dim=32, depth=2, num_heads=2)
    meta = StudentTeacher(config, HeadConfig(64, 16, 8), LossSection(), separate_ibot_head)
    branch = meta.student.eval().double()  # float64: the comparison sees the logic, not rounding
    globals_ = torch.randn(4, 3, 32, 32, dtype=torch.float64)
    locals_ = torch.randn(6, 3, 16, 16, dtype=torch.float64)
    masks = torch.rand(4, 16) < 0.4
    masks[0] = False  # an unmasked crop contributes no patch row

    global_cls, global_logits, local_logits, patch_logits = branch(globals_, locals_, masks)

    patch_head = branch.ibot_head if separate_ibot_head else branch.dino_head
    out = branch.backbone(globals_, masks=masks)
    torch.testing.assert_close(global_cls, out.cls)
    torch.testing.assert_close(global_logits, branch.dino_head(out.cls))
    torch.testing.assert_close(local_logits, branch.dino_head(branch.backbone(locals_).cls))
    torch.testing.assert_close(patch_logits, patch_head(out.patches[masks]))
    assert patch_logits.shape == (int(masks.sum()), 64)
    _, _, no_locals, _ = branch(globals_, None, masks)
    assert no_locals is None
