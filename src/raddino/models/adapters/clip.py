"""CLIP's image tower (transformers ``CLIPVisionModel``) as a backbone.

Outputs, as transformers computes them: ``cls`` is ``pooler_output`` (the class token after
``post_layernorm``, before the projection into the joint space); ``patches`` are
``last_hidden_state[:, 1:]``, the encoder's output, which CLIP does not normalise; ``layers[i]``
is block i's output (``hidden_states[i + 1]``), class token first.

Preprocessing: ``CLIPImageProcessor``'s shortest-edge resize (bicubic), centre crop and CLIP's
mean and std, from the folder's ``preprocessor_config.json`` (the processor's defaults at the
model's image size when there is none).
"""

from __future__ import annotations

from pathlib import Path

import torch

from raddino.data.preprocess import PreprocessConfig
from raddino.models.adapters.base import AdapterConfig
from raddino.models.adapters.hf_vision import HFVisionBackbone, Tower, build_tower, load_tower
from raddino.models.vit import BackboneOutput


class CLIPBackbone(HFVisionBackbone):
    def encode(self, images: torch.Tensor, layers: list[int]) -> BackboneOutput:
        out = self.run(images, layers)
        return self.assemble(
            images,
            pooled=out.pooler_output,
            tokens=out.last_hidden_state,
            layer_tokens={i: out.hidden_states[i + 1] for i in layers},
            prefix=1,
            class_token=True,
        )


TOWER = Tower(
    family="clip",
    vision_type="clip_vision_model",
    full_type="clip",
    config_class="CLIPVisionConfig",
    model_class="CLIPVisionModel",
    backbone=CLIPBackbone,
    resize="shortest_edge",
    center_crop=True,
    mean="OPENAI_CLIP_MEAN",
    std="OPENAI_CLIP_STD",
)


def build(config: AdapterConfig) -> CLIPBackbone:
    """A randomly initialised CLIP image tower of this architecture."""
    return build_tower(TOWER, config)


def load(directory: str | Path) -> tuple[CLIPBackbone, PreprocessConfig]:
    """A CLIP folder (``CLIPVisionModel`` or a whole ``CLIPModel``) -> backbone, processor."""
    return load_tower(TOWER, Path(directory))
