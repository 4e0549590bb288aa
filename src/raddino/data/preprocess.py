"""The RAD-DINO image processor: shortest-edge resize, centre crop, rescale, normalise.

Matches transformers' ``BitImageProcessor`` as configured by microsoft/rad-dino
(``preprocessor_config.json``): the resize is torchvision's antialiased resize on uint8 tensors,
the same operation that processor runs, so pixel values agree to float rounding. The work is
split in two so that the expensive half runs in data-loader workers:

* :func:`load_crop`: an image file -> the uint8 (C, crop_h, crop_w) crop the model sees, C in
  {1, 3} (:func:`read_uint8`, then :func:`resize_and_crop`).
* :func:`model_input`: uint8 crops (B, C, h, w) -> normalised float (B, 3, h, w) on the model's
  device, grey replicated to RGB (:func:`normalize`).

Every path from a file to the model (``RadDino.preprocess``, ``raddino encode``, the figures and
overlays) goes through these two.

Grey images stay single-channel until :func:`normalize`, which is exact because converting grey
to RGB replicates the channel and resizing acts on channels independently.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from torchvision.transforms import InterpolationMode
from torchvision.transforms.v2 import functional as TF

from raddino.data.io import DEFAULT_MAX_PIXELS, read_image, to_uint8

# PIL resample codes used in preprocessor_config.json.
_RESAMPLE = {
    0: InterpolationMode.NEAREST,
    1: InterpolationMode.LANCZOS,
    2: InterpolationMode.BILINEAR,
    3: InterpolationMode.BICUBIC,
}
_RESAMPLE_NAMES = {"nearest": 0, "lanczos": 1, "bilinear": 2, "bicubic": 3}
CropRounding = Literal["floor", "round"]


@dataclass(frozen=True)
class PreprocessConfig:
    """RAD-DINO's processor settings (the defaults are microsoft/rad-dino's)."""

    shortest_edge: int = 518
    crop_height: int = 518
    crop_width: int = 518
    resample: int = 3  # PIL code: 3 = bicubic
    rescale_factor: float = 1 / 255
    image_mean: tuple[float, float, float] = (0.5307, 0.5307, 0.5307)
    image_std: tuple[float, float, float] = (0.2583, 0.2583, 0.2583)
    do_resize: bool = True
    do_center_crop: bool = True
    do_normalize: bool = True
    # Other encoders' processors (raddino.models.adapters): resize_size (H, W) resizes to exactly
    # that size, aspect ratio not kept (SigLIP, timm's "squash"), instead of the shortest edge;
    # crop_rounding "round" places an odd crop margin as torchvision's CenterCrop does (timm),
    # "floor" as transformers does. Left out of to_dict() at their defaults.
    resize_size: tuple[int, int] | None = None
    crop_rounding: CropRounding = "floor"

    def __post_init__(self) -> None:
        if self.resample not in _RESAMPLE:
            raise ValueError(f"preprocess resample={self.resample!r}: use one of {_RESAMPLE_NAMES}")
        for key in ("shortest_edge", "crop_height", "crop_width"):
            if getattr(self, key) <= 0:
                raise ValueError(f"preprocess {key}={getattr(self, key)!r} must be positive")
        if any(s <= 0 for s in self.image_std):
            raise ValueError(f"preprocess image_std={self.image_std!r} must be positive")
        if self.resize_size is not None:
            size = tuple(int(side) for side in self.resize_size)
            if len(size) != 2 or min(size) <= 0:
                raise ValueError(f"preprocess resize_size={self.resize_size!r}: use (H, W) > 0")
            object.__setattr__(self, "resize_size", size)
        if self.crop_rounding not in ("floor", "round"):
            raise ValueError(
                f"preprocess crop_rounding={self.crop_rounding!r}: use 'floor' or 'round'"
            )

    @property
    def output_size(self) -> tuple[int, int] | None:
        """(H, W) of every preprocessed image, or None when it depends on the input."""
        if self.do_center_crop:
            return (self.crop_height, self.crop_width)
        return None

    @classmethod
    def from_hf_dict(cls, data: dict) -> PreprocessConfig:
        """Read a Hugging Face ``preprocessor_config.json`` dict (BitImageProcessor keys)."""
        size = data.get("size", {"shortest_edge": 518})
        if isinstance(size, int):
            size = {"shortest_edge": size}
        if "shortest_edge" not in size:
            raise ValueError(
                f"preprocessor_config.json: size={size!r} is not supported; "
                "RAD-DINO resizes by 'shortest_edge'"
            )
        crop = data.get("crop_size", {"height": 518, "width": 518})
        if isinstance(crop, int):
            crop = {"height": crop, "width": crop}
        mean = data.get("image_mean", cls.image_mean)
        std = data.get("image_std", cls.image_std)
        if isinstance(mean, (int, float)):
            mean = [mean] * 3
        if isinstance(std, (int, float)):
            std = [std] * 3
        return cls(
            shortest_edge=int(size["shortest_edge"]),
            crop_height=int(crop["height"]),
            crop_width=int(crop["width"]),
            resample=int(data.get("resample", 3)),
            rescale_factor=float(data.get("rescale_factor", 1 / 255)),
            image_mean=tuple(float(m) for m in mean),
            image_std=tuple(float(s) for s in std),
            do_resize=bool(data.get("do_resize", True)),
            do_center_crop=bool(data.get("do_center_crop", True)),
            do_normalize=bool(data.get("do_normalize", True)),
        )

    def to_hf_dict(self) -> dict:
        """A ``preprocessor_config.json`` dict that transformers' BitImageProcessor reads."""
        return {
            "image_processor_type": "BitImageProcessor",
            "do_convert_rgb": True,
            "do_resize": self.do_resize,
            "size": (
                {"height": self.resize_size[0], "width": self.resize_size[1]}
                if self.resize_size
                else {"shortest_edge": self.shortest_edge}
            ),
            "resample": self.resample,
            "do_center_crop": self.do_center_crop,
            "crop_size": {"height": self.crop_height, "width": self.crop_width},
            "do_rescale": True,
            "rescale_factor": self.rescale_factor,
            "do_normalize": self.do_normalize,
            "image_mean": list(self.image_mean),
            "image_std": list(self.image_std),
        }

    @classmethod
    def from_file(cls, path: str | Path) -> PreprocessConfig:
        try:
            return cls.from_hf_dict(json.loads(Path(path).read_text()))
        except (ValueError, KeyError, TypeError) as error:
            raise ValueError(f"{path}: {error}") from error

    def to_dict(self) -> dict:
        """All fields, except resize_size and crop_rounding at their defaults: RAD-DINO's
        dict (in features stores and caches' fingerprints) stays as it was before they came."""
        data = asdict(self)
        if self.resize_size is None:
            del data["resize_size"]
        else:
            data["resize_size"] = list(self.resize_size)
        if self.crop_rounding == "floor":
            del data["crop_rounding"]
        return data


def shortest_edge_size(height: int, width: int, shortest_edge: int) -> tuple[int, int]:
    """Output (H, W) of a shortest-edge resize; the long side is truncated like torchvision."""
    if height <= width:
        return shortest_edge, int(shortest_edge * width / height)
    return int(shortest_edge * height / width), shortest_edge


def resized_size(height: int, width: int, config: PreprocessConfig) -> tuple[int, int]:
    """(H, W) of an image of height x width after the processor's resize (before the crop)."""
    if not config.do_resize:
        return height, width
    if config.resize_size is not None:
        return config.resize_size
    return shortest_edge_size(height, width, config.shortest_edge)


def crop_start(size: int, crop: int, rounding: CropRounding = "floor") -> int:
    """Where a centred crop of ``crop`` pixels starts in ``size`` (0 after padding a smaller
    image). An odd margin: "floor" (transformers) or Python's round (torchvision's CenterCrop)."""
    margin = max(size - crop, 0) / 2.0
    return round(margin) if rounding == "round" else int(margin)


def center_crop(
    image: torch.Tensor, height: int, width: int, rounding: CropRounding = "floor"
) -> torch.Tensor:
    """Centre crop (..., H, W) -> (..., height, width), zero-padding inputs that are too small."""
    in_h, in_w = image.shape[-2:]
    if height > in_h or width > in_w:
        pad_left = (width - in_w) // 2 if width > in_w else 0
        pad_top = (height - in_h) // 2 if height > in_h else 0
        pad_right = (width - in_w + 1) // 2 if width > in_w else 0
        pad_bottom = (height - in_h + 1) // 2 if height > in_h else 0
        image = TF.pad(image, [pad_left, pad_top, pad_right, pad_bottom], fill=0)
        in_h, in_w = image.shape[-2:]
    top = crop_start(in_h, height, rounding)
    left = crop_start(in_w, width, rounding)
    return image[..., top : top + height, left : left + width]


def resize_and_crop(image: torch.Tensor, config: PreprocessConfig) -> torch.Tensor:
    """uint8 (C, H, W) -> uint8 (C, crop_h, crop_w): shortest-edge (or exact-size) resize, then
    centre crop."""
    if image.dtype != torch.uint8 or image.ndim != 3:
        raise ValueError(
            "resize_and_crop expects a uint8 (C, H, W) tensor, "
            f"got {image.dtype} {tuple(image.shape)}"
        )
    height, width = image.shape[-2:]
    size = resized_size(height, width, config)
    if size != (height, width):
        image = TF.resize(
            image, list(size), interpolation=_RESAMPLE[config.resample], antialias=True
        )
    if config.do_center_crop:
        image = center_crop(image, config.crop_height, config.crop_width, config.crop_rounding)
    return image.contiguous()


def normalize(batch: torch.Tensor, config: PreprocessConfig, dtype=torch.float32) -> torch.Tensor:
    """uint8 (B, C, H, W), C in {1, 3} -> (B, 3, H, W) ``(x * rescale - mean) / std`` in ``dtype``.

    The arithmetic is done in float32 (on the batch's device) before the final cast.
    """
    if batch.ndim != 4 or batch.shape[1] not in (1, 3):
        raise ValueError(f"normalize expects (B, 1|3, H, W), got {tuple(batch.shape)}")
    pixels = batch.to(torch.float32) * config.rescale_factor
    if config.do_normalize:
        mean = torch.tensor(config.image_mean, device=batch.device).view(1, 3, 1, 1)
        std = torch.tensor(config.image_std, device=batch.device).view(1, 3, 1, 1)
        pixels = (pixels - mean) / std
    elif pixels.shape[1] == 1:
        pixels = pixels.expand(-1, 3, -1, -1)
    return pixels.to(dtype)


def array_to_chw_uint8(image: np.ndarray) -> torch.Tensor:
    """uint8 (H, W) or (H, W, 3) array -> uint8 (C, H, W) tensor, C in {1, 3}."""
    if image.dtype != np.uint8:
        raise ValueError(f"expected a uint8 image, got {image.dtype}")
    if not image.flags.writeable:  # e.g. np.asarray(PIL image); torch wants writable memory
        image = image.copy()
    if image.ndim == 2:
        return torch.from_numpy(np.ascontiguousarray(image)).unsqueeze(0)
    if image.ndim == 3 and image.shape[2] == 3:
        return torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1).contiguous()
    raise ValueError(f"expected an image of shape (H, W) or (H, W, 3), got {image.shape}")


def read_uint8(
    path: str | os.PathLike[str], *, max_pixels: int = DEFAULT_MAX_PIXELS
) -> torch.Tensor:
    """An image file -> uint8 (C, H, W), C in {1, 3}, at its own size.

    Decoded by :func:`raddino.data.io.read_image`, then min-max scaled to [0, 255] unless it is
    already 8-bit (the model card's recipe, :func:`raddino.data.io.to_uint8`). Raises an
    ``ImageReadError`` naming the file.
    """
    image = read_image(path, max_pixels=max_pixels)
    return array_to_chw_uint8(to_uint8(image, source=os.fsdecode(path)))


def load_crop(
    path: str | os.PathLike[str],
    config: PreprocessConfig,
    *,
    max_pixels: int = DEFAULT_MAX_PIXELS,
) -> torch.Tensor:
    """An image file -> the uint8 (C, crop_h, crop_w) crop the model sees, C in {1, 3}."""
    return resize_and_crop(read_uint8(path, max_pixels=max_pixels), config)


def model_input(
    crops: torch.Tensor | Sequence[torch.Tensor],
    config: PreprocessConfig,
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """uint8 crops -> the model's pixel values (B, 3, H, W) in ``dtype`` on ``device``.

    ``crops``: a batch (B, C, H, W) or a sequence of (C, H, W), C in {1, 3}, all of one size;
    grey and colour crops may be mixed. Normalised on ``device`` (:func:`normalize`); a copy from
    pinned host memory to a GPU does not block.
    """
    if not isinstance(crops, torch.Tensor):
        crops = stack_crops(crops)
    device = torch.device(device)
    batch = crops.to(device, non_blocking=device.type != "cpu")
    return normalize(batch, config, dtype)


def stack_crops(crops: Sequence[torch.Tensor]) -> torch.Tensor:
    """uint8 (C, H, W) crops of one size -> (B, C, H, W); grey crops are replicated to RGB
    when the batch also holds colour ones."""
    if not crops:
        raise ValueError("no images to stack")
    shapes = {tuple(c.shape[-2:]) for c in crops}
    if len(shapes) > 1:
        raise ValueError(
            f"preprocessed images differ in size {sorted(shapes)}; enable the centre crop"
        )
    channels = max(c.shape[0] for c in crops)
    return torch.stack([c.expand(channels, -1, -1) for c in crops])
