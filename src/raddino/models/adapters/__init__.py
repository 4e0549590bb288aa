"""Encoders from other libraries behind RAD-DINO's backbone interface.

One module per family (:mod:`.clip`, :mod:`.siglip`: transformers; :mod:`.timm_vit`: timm),
the interface they meet (:mod:`.base`) and the detection from files (:mod:`.detect`).
:class:`~raddino.models.encoder.RadDino` loads them by path like its own formats; transformers
and timm are imported only when such an encoder is read (``pip install 'raddino[adapters]'``).
"""

from __future__ import annotations

import os
from pathlib import Path

from raddino.data.preprocess import PreprocessConfig
from raddino.models.adapters import clip, siglip, timm_vit
from raddino.models.adapters.base import (
    AdapterConfig,
    AdapterDependencyError,
    ForeignBackbone,
)
from raddino.models.adapters.detect import FAMILIES, adapter_family

_MODULES = {"clip": clip, "siglip": siglip, "timm": timm_vit}

__all__ = [
    "FAMILIES",
    "AdapterConfig",
    "AdapterDependencyError",
    "ForeignBackbone",
    "adapter_family",
    "build_backbone",
    "load_adapter",
    "resolve_source",
    "weights_path",
]


def load_adapter(source: str | os.PathLike) -> tuple[ForeignBackbone, PreprocessConfig]:
    """The foreign encoder at ``source`` (see :func:`adapter_family`) with its weights, and its
    processor; in eval mode on the CPU, float32."""
    family = adapter_family(source)
    if family is None:
        raise ValueError(f"{os.fspath(source)}: not a CLIP, SigLIP or timm encoder")
    return _MODULES[family].load(os.fspath(source))


def build_backbone(config: AdapterConfig) -> ForeignBackbone:
    """A randomly initialised backbone of ``config``'s architecture (the library's own init,
    drawn from torch's global generator: seed it for a reproducible one)."""
    return _MODULES[config.family].build(config)


def weights_path(source: str | os.PathLike) -> str:
    """The file or folder behind ``source``: PATH of ``timm:MODEL_NAME:PATH``, else ``source``."""
    text = os.fspath(source)
    return str(timm_vit.parse_spec(text)[1]) if timm_vit.is_spec(text) else text


def resolve_source(source: str | os.PathLike) -> str:
    """``source`` with its path made absolute (``timm:MODEL_NAME:/abs/PATH`` for a spec)."""
    text = os.fspath(source)
    if timm_vit.is_spec(text):
        name, path = timm_vit.parse_spec(text)
        return f"{timm_vit.SPEC_PREFIX}{name}:{path.resolve()}"
    return str(Path(text).resolve())
