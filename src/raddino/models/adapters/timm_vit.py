"""A timm vision transformer as a backbone.

Two ways to name one:

- a folder in timm's Hub format (``config.json`` with ``architecture``, ``pretrained_cfg`` and
  ``model_args``, weights in ``model.safetensors`` or ``pytorch_model.bin``), as
  ``timm.models.push_to_hf`` / ``save_for_hf`` writes it;
- ``timm:MODEL_NAME:PATH``: a bare state-dict file (.safetensors, or .pth/.bin read without
  unpickling objects) of the timm model ``MODEL_NAME`` (``vit_small_patch16_224``, or with a
  pretrained tag, ``vit_small_patch16_224.augreg_in21k``) at its default arguments; the
  number of classes is read from the file's ``head.weight`` (none without one), the
  preprocessing from timm's registry entry of that name.

The model is built with ``timm.create_model(name, pretrained=False, **model_args)`` and its
weights are loaded strictly. Outputs, as timm computes them: ``cls`` is the pre-logits pooled
feature (``forward_head(forward_features(x), pre_logits=True)``: the class token, the average
or the attention pool, after ``fc_norm``); ``patches`` are ``forward_features(x)`` without its
prefix tokens; ``layers[i]`` is block i's output after the final norm
(``forward_intermediates(norm=True)``), prefix tokens first (the mean patch token in the class
slot of a model without a class token).

Preprocessing: ``resolve_data_config`` + ``create_transform``'s evaluation transform, i.e.
resize the short side to ``floor(input_size / crop_pct)`` (or both sides for ``crop_mode``
"squash"), centre crop to ``input_size``, ``mean`` / ``std``.
"""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

import torch
from torch import nn

from raddino.data.preprocess import PreprocessConfig
from raddino.models import formats
from raddino.models.adapters.base import AdapterConfig, ForeignBackbone, import_library
from raddino.models.vit import BackboneOutput

FAMILY = "timm"
SPEC_PREFIX = "timm:"
_INTERPOLATIONS = {"nearest": 0, "lanczos": 1, "bilinear": 2, "bicubic": 3}


class TimmViTBackbone(ForeignBackbone):
    def __init__(self, model: nn.Module, config: AdapterConfig) -> None:
        super().__init__(config)
        self.model = model.eval()
        self.class_token = getattr(model, "cls_token", None) is not None
        self.fixed_size = not getattr(model, "dynamic_img_size", False)

    def encode(self, images: torch.Tensor, layers: list[int]) -> BackboneOutput:
        side = self.config.image_size
        if self.fixed_size and tuple(images.shape[-2:]) != (side, side):
            raise ValueError(
                f"timm model {self.config.architecture} takes {side}x{side} inputs, got "
                f"{images.shape[-2]}x{images.shape[-1]} (it was built with a fixed input size; "
                "leave out --image-size)"
            )
        prefix = self.model.num_prefix_tokens
        if layers:
            tokens, intermediates = self.model.forward_intermediates(
                images, indices=layers, norm=True, output_fmt="NLC", return_prefix_tokens=True
            )
            joined = [
                torch.cat([item[1], item[0]], dim=1) if isinstance(item, tuple) else item
                for item in intermediates
            ]
            layer_tokens = dict(zip(layers, joined, strict=True))
        else:
            tokens, layer_tokens = self.model.forward_features(images), {}
        pooled = self.model.forward_head(tokens, pre_logits=True)
        return self.assemble(images, pooled, tokens, layer_tokens, prefix, self.class_token)


# --------------------------------------------------------------------------- configs


def is_spec(source: str) -> bool:
    """``timm:MODEL_NAME:PATH`` (and not a file that happens to be named so)."""
    return source.startswith(SPEC_PREFIX) and not Path(source).exists()


def parse_spec(source: str) -> tuple[str, Path]:
    """``timm:MODEL_NAME:PATH`` -> (MODEL_NAME, PATH)."""
    name, sep, path = source.removeprefix(SPEC_PREFIX).partition(":")
    if not (name and sep and path):
        raise formats.WeightFormatError(
            f"{source}: write a timm state-dict file as timm:MODEL_NAME:PATH, e.g. "
            "timm:vit_small_patch16_224:weights.safetensors"
        )
    return name, Path(path)


def read_folder_config(directory: Path) -> tuple[str, dict, dict]:
    """A timm Hub folder's config.json -> (architecture, model_args, pretrained_cfg).

    The older layout (one dict with ``architecture``, no ``pretrained_cfg``) is the
    pretrained cfg itself, as timm reads it.
    """
    path = directory / "config.json"
    try:
        config = json.loads(path.read_text())
    except (OSError, ValueError) as error:
        raise formats.WeightFormatError(f"{path}: not a readable JSON config ({error})") from error
    if "pretrained_cfg" in config:
        pretrained_cfg = dict(config["pretrained_cfg"])
    else:
        pretrained_cfg = {k: v for k, v in config.items() if k not in ("num_features",)}
    model_args = dict(config.get("model_args") or {})
    if "num_classes" in config:
        pretrained_cfg["num_classes"] = config["num_classes"]
    return str(config["architecture"]), model_args, pretrained_cfg


def create(name: str, model_args: dict, pretrained_cfg: dict | None, what: str) -> nn.Module:
    """``timm.create_model(name, pretrained=False, ...)``; errors name ``what``."""
    timm = import_library("timm", what)
    kwargs = dict(model_args)
    if pretrained_cfg is not None:
        known = {field.name for field in dataclasses.fields(timm.models.PretrainedCfg)}
        kwargs["pretrained_cfg"] = {k: v for k, v in pretrained_cfg.items() if k in known}
    try:
        return timm.create_model(name, pretrained=False, **kwargs)
    except (RuntimeError, TypeError, ValueError, KeyError, AssertionError) as error:
        raise formats.WeightFormatError(
            f"{what}: timm cannot build {name!r} ({type(error).__name__}: {error})"
        ) from error


def adapter_config(model: nn.Module, name: str, settings: dict, what: str) -> AdapterConfig:
    """Check ``model`` is a ViT raddino can read and describe it."""
    embed = getattr(model, "patch_embed", None)
    if not (
        hasattr(model, "num_prefix_tokens")
        and hasattr(model, "forward_intermediates")
        and embed is not None
        and hasattr(model, "blocks")
    ):
        raise formats.WeightFormatError(
            f"{what}: timm model {name!r} is not a vision transformer with patch tokens"
        )
    patch = tuple(embed.patch_size)
    size = tuple(embed.img_size) if embed.img_size is not None else None
    if patch[0] != patch[1] or size is None or size[0] != size[1]:
        raise formats.WeightFormatError(
            f"{what}: timm model {name!r} has patches {patch} and input {size}; raddino reads "
            "square patches of a square input"
        )
    embed_dim = int(model.embed_dim)
    pooled_dim = int(getattr(model, "head_hidden_size", embed_dim) or embed_dim)
    if pooled_dim != embed_dim:
        raise formats.WeightFormatError(
            f"{what}: timm model {name!r} pools to {pooled_dim} features, its tokens have "
            f"{embed_dim}; raddino needs one width for both"
        )
    has_class = getattr(model, "cls_token", None) is not None
    return AdapterConfig(
        family=FAMILY,
        architecture=name,
        image_size=int(size[0]),
        patch_size=int(patch[0]),
        embed_dim=embed_dim,
        depth=len(model.blocks),
        num_register_tokens=int(model.num_prefix_tokens) - int(has_class),
        library_config=json.dumps(settings, sort_keys=True),
    )


def timm_processor(model: nn.Module, what: str) -> PreprocessConfig:
    """timm's evaluation transform for ``model`` (its pretrained cfg) as a PreprocessConfig."""
    timm = import_library("timm", what)
    data = timm.data.resolve_data_config({}, model=model)
    _, height, width = data["input_size"]
    crop_pct = data.get("crop_pct") or timm.data.DEFAULT_CROP_PCT
    mode = data.get("crop_mode") or "center"
    scale = (math.floor(height / crop_pct), math.floor(width / crop_pct))
    interpolation = _INTERPOLATIONS.get(data.get("interpolation", "bilinear"))
    if interpolation is None or mode not in ("center", "squash"):
        raise formats.WeightFormatError(
            f"{what}: timm preprocessing with interpolation {data.get('interpolation')!r} and "
            f"crop_mode {mode!r} is not supported (use {sorted(_INTERPOLATIONS)} and 'center' "
            "or 'squash')"
        )
    if mode == "center" and scale[0] != scale[1]:
        raise formats.WeightFormatError(
            f"{what}: timm's centre crop of a non-square input {height}x{width} is not supported"
        )
    return PreprocessConfig(
        shortest_edge=scale[0],
        crop_height=int(height),
        crop_width=int(width),
        resample=interpolation,
        rescale_factor=1 / 255,
        image_mean=tuple(float(m) for m in data["mean"]),
        image_std=tuple(float(s) for s in data["std"]),
        resize_size=scale if mode == "squash" else None,
        crop_rounding="round",  # torchvision's CenterCrop
    )


# --------------------------------------------------------------------------- loading


def build(config: AdapterConfig) -> TimmViTBackbone:
    """A randomly initialised timm model of this architecture (timm's own init)."""
    settings = config.settings
    model = create(
        settings["architecture"],
        settings["model_args"],
        settings.get("pretrained_cfg"),
        f"timm model {config.architecture}",
    )
    return TimmViTBackbone(model, config)


def load(source: str) -> tuple[TimmViTBackbone, PreprocessConfig]:
    """A timm Hub folder or a ``timm:MODEL_NAME:PATH`` spec -> backbone, processor."""
    if is_spec(source):
        name, path = parse_spec(source)
        what = f"{path} (timm {name})"
        tensors = formats.read_tensors(path)
        head = tensors.get("head.weight")
        model_args = {"num_classes": int(head.shape[0]) if head is not None else 0}
        pretrained_cfg = None
    else:
        path = Path(source)
        what = str(path)
        name, model_args, pretrained_cfg = read_folder_config(path)
        tensors = formats.read_hf_tensors(path)
    model = create(name, model_args, pretrained_cfg, what)
    if int(model_args.get("in_chans", 3)) != 3:
        raise formats.WeightFormatError(
            f"{what}: timm model {name!r} takes {model_args['in_chans']} channels; raddino "
            "feeds 3-channel images"
        )
    settings = {"architecture": name, "model_args": model_args, "pretrained_cfg": pretrained_cfg}
    config = adapter_config(model, name, settings, what)
    formats.check_keys(model.state_dict(), tensors, what)
    model.load_state_dict(
        {k: v.float() if v.is_floating_point() else v for k, v in tensors.items()}
    )
    return TimmViTBackbone(model, config), timm_processor(model, what)
