"""The interface every foreign encoder meets: :class:`AdapterConfig` and :class:`ForeignBackbone`.

A foreign backbone wraps another library's vision transformer (CLIP, SigLIP, timm) and answers
what the rest of raddino asks of :class:`~raddino.models.vit.VisionTransformer`: a forward pass
``(images, masks=None, layers=()) -> BackboneOutput``, ``resolve_layers``, ``patch_size``,
``embed_dim`` and a ``config`` with ``depth``, ``patch_size``, ``num_register_tokens``,
``embed_dim`` and ``to_dict()``.

The token layout of ``BackboneOutput.layers`` is the ViT's: ``(B, 1 + R + h*w, D)`` with a class
slot first, then ``R = config.num_register_tokens`` other prefix tokens, then the patches. A
model without a class token (SigLIP, timm's average-pooled ViTs) gets the layer's mean patch
token in that slot.
"""

from __future__ import annotations

import importlib
import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from types import ModuleType

import torch
from torch import nn

from raddino.models.vit import BackboneOutput

ADAPTERS_EXTRA = "pip install 'raddino[adapters]'"


class AdapterDependencyError(ValueError):
    """The library that reads an encoder family is not installed; names the fix."""


def import_library(name: str, what: str) -> ModuleType:
    """``import name``, or a one-line error saying that ``what`` needs it and how to get it."""
    try:
        return importlib.import_module(name)
    except ImportError as error:
        raise AdapterDependencyError(
            f"{what} needs the '{name}' package, which is not installed ({ADAPTERS_EXTRA})"
        ) from error


@dataclass(frozen=True)
class AdapterConfig:
    """A foreign encoder's architecture, as the pipeline reads it.

    family: "clip", "siglip" or "timm"; architecture: the model_type or timm model name;
    image_size: the (square) input side it was built for; num_register_tokens: prefix tokens
    besides the class slot (timm's register tokens); library_config: the library's own config
    as JSON, enough to rebuild the architecture (random initialisation, features meta).
    """

    family: str
    architecture: str
    image_size: int
    patch_size: int
    embed_dim: int
    depth: int
    num_register_tokens: int = 0
    library_config: str = "{}"

    @property
    def grid_size(self) -> int:
        """Patches per side at ``image_size``."""
        return self.image_size // self.patch_size

    @property
    def settings(self) -> dict:
        """``library_config`` parsed."""
        return json.loads(self.library_config)

    def to_dict(self) -> dict:
        data = asdict(self)
        data["library_config"] = self.settings
        return data


def resolve_layer_indices(layers: Sequence[int], depth: int) -> list[int]:
    """Block indices, negative ones counted from the end, validated (as the ViT's)."""
    resolved = []
    for index in layers:
        if not -depth <= index < depth:
            raise ValueError(f"layer {index} out of range for a {depth}-block ViT")
        resolved.append(index % depth)
    return resolved


class ForeignBackbone(nn.Module):
    """Base of the adapters: subclasses implement :meth:`encode`.

    ``forward`` accepts the ViT's arguments; iBOT masks have no meaning for these encoders
    and are refused.
    """

    def __init__(self, config: AdapterConfig) -> None:
        super().__init__()
        self.config = config

    @property
    def patch_size(self) -> int:
        return self.config.patch_size

    @property
    def embed_dim(self) -> int:
        return self.config.embed_dim

    def resolve_layers(self, layers: Sequence[int]) -> list[int]:
        return resolve_layer_indices(layers, self.config.depth)

    def forward(
        self,
        images: torch.Tensor,
        masks: torch.Tensor | None = None,
        layers: Sequence[int] = (),
    ) -> BackboneOutput:
        """images: (B, 3, H, W) normalised pixels; layers: block indices to return as well."""
        if masks is not None:
            raise ValueError(f"a {self.config.family} encoder takes no patch masks")
        return self.encode(images, sorted(set(self.resolve_layers(layers))))

    def encode(self, images: torch.Tensor, layers: list[int]) -> BackboneOutput:
        """The forward pass; ``layers`` are sorted, non-negative and unique."""
        raise NotImplementedError

    def assemble(
        self,
        images: torch.Tensor,
        pooled: torch.Tensor,
        tokens: torch.Tensor,
        layer_tokens: dict[int, torch.Tensor],
        prefix: int,
        class_token: bool,
    ) -> BackboneOutput:
        """Name the outputs. ``tokens`` and each of ``layer_tokens``: (B, prefix + h*w, D), the
        class token first when ``class_token``; ``pooled``: (B, D), the image embedding."""
        start = 1 if class_token else 0
        patch = self.patch_size
        return BackboneOutput(
            cls=pooled,
            registers=tokens[:, start:prefix],
            patches=tokens[:, prefix:],
            grid=(images.shape[-2] // patch, images.shape[-1] // patch),
            layers={
                index: layer if class_token else with_mean_slot(layer, prefix)
                for index, layer in layer_tokens.items()
            },
        )


def with_mean_slot(tokens: torch.Tensor, prefix: int) -> torch.Tensor:
    """(B, prefix + N, D) -> (B, 1 + prefix + N, D): the mean patch token as the class slot."""
    return torch.cat([tokens[:, prefix:].mean(dim=1, keepdim=True), tokens], dim=1)
