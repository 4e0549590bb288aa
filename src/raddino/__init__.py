"""raddino: RAD-DINO image encoders for radiographs — encode, pre-train, evaluate, visualise."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"
__all__ = ["Features", "RadDino", "ViTConfig", "VisionTransformer", "load_features", "vit_config"]

_EXPORTS = {
    "Features": "raddino.features.store",
    "load_features": "raddino.features.store",
    "RadDino": "raddino.models.encoder",
    "ViTConfig": "raddino.models.vit",
    "VisionTransformer": "raddino.models.vit",
    "vit_config": "raddino.models.vit",
}

if TYPE_CHECKING:
    from raddino.features.store import Features, load_features
    from raddino.models.encoder import RadDino
    from raddino.models.vit import VisionTransformer, ViTConfig, vit_config


def __getattr__(name: str) -> Any:
    """Import the public API lazily, so ``import raddino`` (and the CLI) start fast."""
    if name in _EXPORTS:
        import importlib

        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'raddino' has no attribute {name!r}")
