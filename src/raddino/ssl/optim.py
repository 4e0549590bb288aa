"""AdamW parameter groups of the DINOv2 recipe and their per-step settings.

* layer-wise lr decay: backbone parameter of layer ``i`` gets ``decay ** (L + 1 - i)``, with
  layer 0 = embeddings (patch, position, CLS, mask, register tokens), ``i + 1`` = block ``i``,
  ``L + 1`` = the final norm; heads get 1;
* patch embedding: lr further multiplied by ``patch_embed_lr_mult``;
* no weight decay on biases, norms and LayerScale (``gamma``) — tokens stay decayed, as in DINOv2;
* the heads' ``last_layer`` follows its own lr schedule (0 while frozen).
"""

from __future__ import annotations

import re

import torch
from torch import nn

from raddino.adamw import build_adamw
from raddino.ssl.config import OptimSection
from raddino.ssl.schedules import ScheduleValues

_EMBEDDING_NAMES = ("pos_embed", "patch_embed", "mask_token", "cls_token", "register_tokens")


def backbone_layer_id(name: str, depth: int) -> int:
    """0 for embeddings, i + 1 for ``blocks.i``, depth + 1 for the rest (the final norm)."""
    if name.startswith(_EMBEDDING_NAMES):
        return 0
    if match := re.match(r"blocks\.(\d+)\.", name):
        return int(match.group(1)) + 1
    return depth + 1


def param_groups(branch: nn.Module, optim: OptimSection) -> list[dict]:
    """AdamW groups of a student ``Branch`` (backbone + heads), merged by equal settings."""
    depth = len(branch.backbone.blocks)
    merged: dict[tuple[float, float, bool], dict] = {}
    for full_name, parameter in branch.named_parameters():
        if not parameter.requires_grad:
            continue
        part, _, name = full_name.partition(".")
        lr_mult = 1.0
        if part == "backbone":
            lr_mult = optim.layerwise_decay ** (depth + 1 - backbone_layer_id(name, depth))
            if name.startswith("patch_embed"):
                lr_mult *= optim.patch_embed_lr_mult
        no_decay = name.endswith(".bias") or "norm" in name or "gamma" in name
        wd_mult = 0.0 if no_decay else 1.0
        key = (lr_mult, wd_mult, "last_layer" in name)
        group = merged.setdefault(
            key,
            {"params": [], "lr_mult": lr_mult, "wd_mult": wd_mult, "is_last_layer": key[2]},
        )
        group["params"].append(parameter)
    return list(merged.values())


def build_optimizer(branch: nn.Module, optim: OptimSection) -> torch.optim.AdamW:
    return build_adamw(param_groups(branch, optim), (optim.beta1, optim.beta2))


def apply_schedule(optimizer: torch.optim.Optimizer, values: ScheduleValues) -> None:
    """Set every group's lr and weight decay for this step."""
    for group in optimizer.param_groups:
        lr = values.last_layer_lr if group["is_last_layer"] else values.lr
        group["lr"] = lr * group["lr_mult"]
        group["weight_decay"] = values.weight_decay * group["wd_mult"]
