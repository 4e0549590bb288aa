"""What the transformers families (CLIP, SigLIP) share: the vision tower of a model folder, its
weights loaded strictly, its image processor read into a :class:`PreprocessConfig`.

A folder holds either the vision model alone (``model_type`` ``clip_vision_model`` /
``siglip_vision_model``) or the whole image-text model (``clip`` / ``siglip``), whose
``vision_config`` and ``vision_model.*`` weights are the tower; the text tower and the
projections are left out. Weights are matched by name after the ``vision_model.`` prefix, which
transformers 4 and 5 place differently, so both versions' folders load in either.
"""

from __future__ import annotations

import importlib
import json
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from raddino.data.preprocess import PreprocessConfig
from raddino.models import formats
from raddino.models.adapters.base import AdapterConfig, ForeignBackbone, import_library

StateDict = dict[str, torch.Tensor]
VISION_PREFIX = "vision_model."
# Keys of the config dict that say nothing about the architecture and change with the version
# of transformers that wrote it (kept out of AdapterConfig, so features stores stay comparable).
_VOLATILE_KEYS = ("transformers_version", "architectures", "torch_dtype", "dtype")


def read_config_json(directory: Path) -> dict:
    path = directory / "config.json"
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as error:
        raise formats.WeightFormatError(f"{path}: not a readable JSON config ({error})") from error


def vision_config_dict(config: dict, full_type: str) -> dict:
    """The vision tower's config dict of a vision-model or an image-text model config."""
    if config.get("model_type") == full_type:
        return dict(config.get("vision_config") or {})
    return dict(config)


def vision_state_dict(tensors: StateDict) -> StateDict:
    """The vision tower's tensors, keyed without the ``vision_model.`` prefix."""
    if any(key.startswith(VISION_PREFIX) for key in tensors):
        return {
            key.removeprefix(VISION_PREFIX): value
            for key, value in tensors.items()
            if key.startswith(VISION_PREFIX)
        }
    return dict(tensors)


def load_vision_weights(model: nn.Module, directory: Path) -> None:
    """Load the folder's vision tower into ``model`` strictly (readable error on a mismatch)."""
    expected = model.state_dict()
    prefix = VISION_PREFIX if any(k.startswith(VISION_PREFIX) for k in expected) else ""
    given = {
        prefix + key: value
        for key, value in vision_state_dict(formats.read_hf_tensors(directory)).items()
    }
    # position_ids was a saved buffer in older transformers; it is rebuilt, not loaded
    given = {k: v for k, v in given.items() if k in expected or not k.endswith("position_ids")}
    formats.check_keys(expected, given, str(directory))
    model.load_state_dict({k: v.float() if v.is_floating_point() else v for k, v in given.items()})


def hf_processor(
    data: dict,
    *,
    image_size: int,
    size: dict,
    center_crop: bool,
    mean: tuple[float, ...],
    std: tuple[float, ...],
    source: str,
) -> PreprocessConfig:
    """A transformers ``preprocessor_config.json`` dict -> :class:`PreprocessConfig`.

    ``size``, ``center_crop``, ``mean`` and ``std`` are the processor class's defaults (used for
    keys the file does not have); an empty ``data`` (no file) gives them at ``image_size``.
    ``size`` ``{"shortest_edge": s}`` resizes the short side (CLIP), ``{"height", "width"}``
    resizes to exactly that size (SigLIP); an int is a shortest edge, as transformers reads it.
    """
    given = data.get("size", size)
    if isinstance(given, int):
        given = {"shortest_edge": given}
    crop = data.get("crop_size", {"height": image_size, "width": image_size})
    if isinstance(crop, int):
        crop = {"height": crop, "width": crop}
    do_crop = bool(data.get("do_center_crop", center_crop))
    resize_size = None
    if set(given) == {"shortest_edge"}:
        edge = int(given["shortest_edge"])
    elif set(given) == {"height", "width"}:
        resize_size = (int(given["height"]), int(given["width"]))
        edge = min(resize_size)
        if not do_crop:  # an exact resize has a fixed size: a crop to it changes nothing
            do_crop, crop = True, {"height": resize_size[0], "width": resize_size[1]}
    else:
        raise formats.WeightFormatError(
            f"{source}: preprocessor_config.json size={given!r} is not supported "
            "(use shortest_edge, or height and width)"
        )
    try:
        return PreprocessConfig(
            shortest_edge=edge,
            crop_height=int(crop["height"]),
            crop_width=int(crop["width"]),
            resample=int(data.get("resample", 3)),
            rescale_factor=float(data.get("rescale_factor", 1 / 255))
            if data.get("do_rescale", True)
            else 1.0,
            image_mean=_triple(data.get("image_mean", mean)),
            image_std=_triple(data.get("image_std", std)),
            do_resize=bool(data.get("do_resize", True)),
            do_center_crop=do_crop,
            do_normalize=bool(data.get("do_normalize", True)),
            resize_size=resize_size,
        )
    except (ValueError, TypeError, KeyError) as error:
        raise formats.WeightFormatError(f"{source}: preprocessor_config.json: {error}") from error


def read_processor_json(directory: Path) -> dict:
    path = directory / "preprocessor_config.json"
    if not path.is_file():
        return {}
    try:
        return json.loads(path.read_text())
    except ValueError as error:
        raise formats.WeightFormatError(f"{path}: not readable JSON ({error})") from error


def _triple(values: float | list[float]) -> tuple[float, float, float]:
    values = [values] * 3 if isinstance(values, (int, float)) else list(values)
    return tuple(float(v) for v in values)


def adapter_config(family: str, vision: dict, source: str) -> AdapterConfig:
    """The pipeline's view of a transformers vision config dict."""
    settings = {
        k: v for k, v in vision.items() if k not in _VOLATILE_KEYS and not k.startswith("_")
    }
    try:
        return AdapterConfig(
            family=family,
            architecture=str(vision["model_type"]),
            image_size=int(vision["image_size"]),
            patch_size=int(vision["patch_size"]),
            embed_dim=int(vision["hidden_size"]),
            depth=int(vision["num_hidden_layers"]),
            library_config=json.dumps(settings, sort_keys=True),
        )
    except (KeyError, TypeError, ValueError) as error:
        raise formats.WeightFormatError(
            f"{source}: config.json lacks a usable {error} for the vision tower"
        ) from error


class HFVisionBackbone(ForeignBackbone):
    """A transformers vision model (``CLIPVisionModel``, ``SiglipVisionModel``) as a backbone.

    Subclasses say how the outputs map onto the ViT's: :meth:`encode`.
    """

    def __init__(self, model: nn.Module, config: AdapterConfig) -> None:
        super().__init__(config)
        self.model = model.eval()

    @property
    def tower(self) -> nn.Module:
        """The module holding embeddings/encoder/norms (transformers 4 nests it one deeper)."""
        return getattr(self.model, "vision_model", self.model)

    def run(self, images: torch.Tensor, layers: list[int]):
        """The library's forward pass; position embeddings are resampled only at another size."""
        side = self.config.image_size
        return self.model(
            pixel_values=images,
            output_hidden_states=bool(layers),
            interpolate_pos_encoding=tuple(images.shape[-2:]) != (side, side),
        )


@dataclass(frozen=True)
class Tower:
    """How one transformers family is read: its model types, classes and processor defaults.

    resize: "shortest_edge" (CLIPImageProcessor) or "square" (SiglipImageProcessor's height x
    width); mean / std: names of the constants in ``transformers.image_utils``.
    """

    family: str
    vision_type: str
    full_type: str
    config_class: str
    model_class: str
    backbone: type[HFVisionBackbone]
    resize: str
    center_crop: bool
    mean: str
    std: str


def build_tower(tower: Tower, config: AdapterConfig) -> HFVisionBackbone:
    """A randomly initialised vision tower of this architecture (the library's own init)."""
    transformers = import_library("transformers", f"a {tower.family} encoder")
    vision = getattr(transformers, tower.config_class).from_dict(config.settings)
    return tower.backbone(getattr(transformers, tower.model_class)(vision), config).eval()


def load_tower(tower: Tower, directory: Path) -> tuple[HFVisionBackbone, PreprocessConfig]:
    """A model folder -> its vision tower with the folder's weights, and its processor."""
    transformers = import_library("transformers", f"{directory}: a {tower.family} encoder")
    image_utils = importlib.import_module("transformers.image_utils")
    vision = vision_config_dict(read_config_json(directory), tower.full_type)
    vision["model_type"] = tower.vision_type
    try:  # the library's defaults filled in: a partial vision_config is complete in the dict
        vision = getattr(transformers, tower.config_class).from_dict(vision).to_dict()
    except (TypeError, ValueError) as error:
        raise formats.WeightFormatError(f"{directory}/config.json: {error}") from error
    config = adapter_config(tower.family, vision, str(directory))
    backbone = build_tower(tower, config)
    load_vision_weights(backbone.model, directory)
    side = config.image_size
    size = (
        {"shortest_edge": side}
        if tower.resize == "shortest_edge"
        else {"height": side, "width": side}
    )
    preprocess = hf_processor(
        read_processor_json(directory),
        image_size=side,
        size=size,
        center_crop=tower.center_crop,
        mean=tuple(getattr(image_utils, tower.mean)),
        std=tuple(getattr(image_utils, tower.std)),
        source=str(directory),
    )
    return backbone, preprocess
