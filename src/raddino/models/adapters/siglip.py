"""SigLIP's image tower (transformers ``SiglipVisionModel``) as a backbone.

SigLIP has no class token. Outputs, as transformers computes them: ``cls`` is ``pooler_output``,
the attention-pooling head's embedding (the mean patch token for a tower built without the head,
``vision_use_head=False``); ``patches`` are ``last_hidden_state``, every token after
``post_layernorm``; ``layers[i]`` is block i's output (``hidden_states[i + 1]``) after
``post_layernorm`` too, with its mean patch token in the class slot.

Preprocessing: ``SiglipImageProcessor``'s resize to a square height x width (bicubic, aspect
ratio not kept, no crop) and mean = std = 0.5, from the folder's ``preprocessor_config.json``.
"""

from __future__ import annotations

from pathlib import Path

import torch

from raddino.data.preprocess import PreprocessConfig
from raddino.models.adapters.base import AdapterConfig
from raddino.models.adapters.hf_vision import HFVisionBackbone, Tower, build_tower, load_tower
from raddino.models.vit import BackboneOutput


class SiglipBackbone(HFVisionBackbone):
    def encode(self, images: torch.Tensor, layers: list[int]) -> BackboneOutput:
        out = self.run(images, layers)
        tokens = out.last_hidden_state
        last = self.config.depth - 1
        norm = self.tower.post_layernorm
        pooled = out.pooler_output if out.pooler_output is not None else tokens.mean(dim=1)
        return self.assemble(
            images,
            pooled=pooled,
            tokens=tokens,
            layer_tokens={
                i: tokens if i == last else norm(out.hidden_states[i + 1]) for i in layers
            },
            prefix=0,
            class_token=False,
        )


TOWER = Tower(
    family="siglip",
    vision_type="siglip_vision_model",
    full_type="siglip",
    config_class="SiglipVisionConfig",
    model_class="SiglipVisionModel",
    backbone=SiglipBackbone,
    resize="square",
    center_crop=False,
    mean="IMAGENET_STANDARD_MEAN",
    std="IMAGENET_STANDARD_STD",
)


def build(config: AdapterConfig) -> SiglipBackbone:
    """A randomly initialised SigLIP image tower of this architecture."""
    return build_tower(TOWER, config)


def load(directory: str | Path) -> tuple[SiglipBackbone, PreprocessConfig]:
    """A SigLIP folder (``SiglipVisionModel`` or a whole ``SiglipModel``) -> backbone, processor."""
    return load_tower(TOWER, Path(directory))
