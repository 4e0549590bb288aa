"""Which encoder family a path holds, from its files alone.

- a folder whose ``config.json`` has ``architecture`` and ``pretrained_cfg`` (or the older
  single-dict layout with ``architecture``): a timm model;
- a folder whose ``config.json`` ``model_type`` is ``clip_vision_model`` or ``clip``: CLIP;
  ``siglip_vision_model`` or ``siglip``: SigLIP;
- ``timm:MODEL_NAME:PATH``: a bare timm state-dict file;
- anything else (``dinov2`` folders, DINOv2 files, raddino runs): not a foreign encoder, left to
  :mod:`raddino.models.formats`. A folder of another ``model_type`` is refused here, in one line
  naming every type raddino reads.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from raddino.models import formats
from raddino.models.adapters import clip, siglip, timm_vit

MODEL_TYPES = {
    clip.TOWER.vision_type: "clip",
    clip.TOWER.full_type: "clip",
    siglip.TOWER.vision_type: "siglip",
    siglip.TOWER.full_type: "siglip",
}
FAMILIES = ("clip", "siglip", "timm")


def adapter_family(source: str | os.PathLike) -> str | None:
    """ "clip", "siglip" or "timm" for a foreign encoder at ``source``, None for raddino's own
    formats. Raises ``WeightFormatError`` for a model folder of an unknown ``model_type``."""
    text = os.fspath(source)
    if timm_vit.is_spec(text):
        return "timm"
    path = Path(text)
    config_file = path / "config.json"
    if not path.is_dir() or formats.is_run_directory(path) or not config_file.is_file():
        return None
    try:
        config = json.loads(config_file.read_text())
    except (OSError, ValueError):
        return None  # formats reports an unreadable config.json
    if not isinstance(config, dict):
        return None
    if "architecture" in config and "model_type" not in config:
        return "timm"
    model_type = config.get("model_type")
    if model_type in MODEL_TYPES:
        return MODEL_TYPES[model_type]
    if model_type in formats.DINOV2_MODEL_TYPES:
        return None
    readable = (*formats.DINOV2_MODEL_TYPES, *MODEL_TYPES)
    raise formats.WeightFormatError(
        f"{config_file}: model_type {model_type!r} is not a DINOv2 model, nor a CLIP, SigLIP "
        f"or timm encoder (model_type one of {', '.join(readable)}; or timm's config.json "
        "with 'architecture' and 'pretrained_cfg')"
    )
