"""AdamW parameter groups of the language-supervised recipe and their per-step settings.

* the image tower follows the image-only recipe's rules (:func:`raddino.ssl.optim.
  backbone_layer_id`): layer-wise lr decay and the patch-embedding multiplier, so a run
  continued from DINOv2 weights (``model.init``) treats them as the image-only recipe does;
* the text tower, the projections, the logit scale and bias learn at the full rate;
* no weight decay on parameters of fewer than 2 dimensions: biases, norms, LayerScale, the
  logit scale and bias (as CLIP and open_clip; for the ViT the same parameters as
  :mod:`raddino.ssl.optim` excludes by name).
"""

from __future__ import annotations

import torch

from raddino.adamw import build_adamw
from raddino.contrastive.model import ImageTextModel
from raddino.ssl.config import OptimSection
from raddino.ssl.optim import backbone_layer_id


def param_groups(model: ImageTextModel, optim: OptimSection) -> list[dict]:
    """AdamW groups, merged by equal (lr multiplier, weight-decay multiplier)."""
    depth = len(model.vision.blocks)
    merged: dict[tuple[float, float], dict] = {}
    for full_name, parameter in model.named_parameters():
        if not parameter.requires_grad:
            continue
        lr_mult = 1.0
        part, _, name = full_name.partition(".")
        if part == "vision":
            lr_mult = optim.layerwise_decay ** (depth + 1 - backbone_layer_id(name, depth))
            if name.startswith("patch_embed"):
                lr_mult *= optim.patch_embed_lr_mult
        wd_mult = 0.0 if parameter.ndim < 2 else 1.0
        group = merged.setdefault(
            (lr_mult, wd_mult), {"params": [], "lr_mult": lr_mult, "wd_mult": wd_mult}
        )
        group["params"].append(parameter)
    return list(merged.values())


def build_optimizer(model: ImageTextModel, optim: OptimSection) -> torch.optim.AdamW:
    return build_adamw(param_groups(model, optim), (optim.beta1, optim.beta2))


def set_lr_and_weight_decay(optimizer: torch.optim.Optimizer, lr: float, wd: float) -> None:
    """This step's settings on every group (times its multipliers)."""
    for group in optimizer.param_groups:
        group["lr"] = lr * group["lr_mult"]
        group["weight_decay"] = wd * group["wd_mult"]
