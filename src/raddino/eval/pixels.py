"""The raw-pixel baseline: an "encoder" whose features are the image's own grey levels.

No table should credit an encoder with what raw pixels already give, so ``pixels:SIDE`` stands
wherever an encoder spec does (``raddino probe``/``segment --model``, ``compare --models``), and
``compare --pixel-baseline SIDE`` adds it next to the encoders. It decodes each image and resizes
and centre-crops it exactly as the encoder whose processor it borrows (``EncoderSpec.as_pixels``;
RAD-DINO's processor when there is none), at the evaluation image size, then:

* image-level feature (what probes read as the CLS token): the crop's grey level (mean over its
  channels, divided by 255: [0, 1]) area-averaged to SIDE x SIDE and flattened row by row, SIDE²
  values. Area average: output cell (i, j) is the mean of the crop over the rectangle
  [i H/SIDE, (i+1) H/SIDE) x [j W/SIDE, (j+1) W/SIDE), a pixel cut by the rectangle's edge
  weighted by the fraction of it inside (exact for any SIDE up to the crop's sides).
* patch grid (what segmentation heads read as patch tokens): one value per patch, the mean grey
  level of the patch's P x P pixels, on the encoder's patch grid (H // P, W // P): the image at
  the patch grid's resolution. The mean patch token is the mean grey level of that grid, so
  ``cls+mean`` features are the thumbnail and one number, and ``cls+gridN`` ones the thumbnail
  and that grid averaged over N x N cells.

The values are stored unstandardised: the linear probe standardises each feature column on the
train + val images, the k-NN probe centres and L2-normalises rows and the linear segmentation
head starts with BatchNorm, so a rescaling of the grey levels would not change their results.
Segmentation takes the linear head over one map only: raw pixels have no transformer blocks for
``--linear-layers N`` or UPerNet to read.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

from raddino.data.preprocess import PreprocessConfig
from raddino.features.encode import EncodeOptions, PatchMode, mean_patch_token, write_decoded
from raddino.features.store import FeatureStoreWriter, StoreSummary

if TYPE_CHECKING:
    from raddino.eval.encoders import EncoderSpec
    from raddino.eval.segment import SegmentConfig

PIXELS_PREFIX = "pixels:"
DEFAULT_SIDE = 16
# Part of the features' fingerprint: change it whenever the features computed here change.
RECIPE = "grey=channel mean/255; thumbnail=exact area average; grid=patch mean; v1"


def parse_side(text: str | int, what: str) -> int:
    """A thumbnail side (pixels) as written on the command line; ``what`` names it in errors."""
    digits = str(text).strip()
    if not (digits.isascii() and digits.isdigit()) or int(digits) < 1:
        raise ValueError(
            f"{what}: the thumbnail side must be a whole number of pixels >= 1, got {text!r}"
        )
    return int(digits)


def check_side(side: int, preprocess: PreprocessConfig, what: str) -> None:
    """Refuse a thumbnail larger than the crop every image is resized to."""
    height, width = preprocess.output_size or (preprocess.shortest_edge,) * 2
    if side > min(height, width):
        raise ValueError(
            f"{what}: a {side}x{side} thumbnail is larger than the {height}x{width} crop the "
            f"images are resized to; choose a side from 1 to {min(height, width)}"
        )


def area_weights(n_in: int, n_out: int) -> torch.Tensor:
    """(n_out, n_in) float64 weights of an exact area-average downsample of one axis.

    Scaled by n_out, output cell i covers [i n_in, (i+1) n_in) and input pixel j covers
    [j n_out, (j+1) n_out); the weight is their overlap / n_in (integers until that division),
    so every row sums to 1.
    """
    cells = torch.arange(n_out, dtype=torch.int64)[:, None]
    pixels = torch.arange(n_in, dtype=torch.int64)[None, :]
    overlap = torch.minimum((cells + 1) * n_in, (pixels + 1) * n_out) - torch.maximum(
        cells * n_in, pixels * n_out
    )
    return overlap.clamp(min=0).to(torch.float64) / n_in


def grey_levels(crops: torch.Tensor) -> torch.Tensor:
    """uint8 (B, C, H, W), C in {1, 3} -> float64 (B, H, W) in [0, 1]: channel mean / 255."""
    return crops.to(torch.float64).mean(dim=1) / 255.0


def thumbnails(grey: torch.Tensor, side: int) -> torch.Tensor:
    """(B, H, W) -> (B, side * side): area averages, flattened row by row."""
    rows = area_weights(grey.shape[1], side)
    columns = area_weights(grey.shape[2], side)
    return torch.einsum("ih,bhw,jw->bij", rows, grey, columns).flatten(1)


def patch_grid(grey: torch.Tensor, patch_size: int) -> torch.Tensor:
    """(B, H, W) -> (B, 1, H // P, W // P): the mean of each whole P x P patch (pixels beyond
    the last whole patch are left out, as the ViT's strided patch embedding leaves them)."""
    batch, height, width = grey.shape
    h, w = height // patch_size, width // patch_size
    cut = grey[:, : h * patch_size, : w * patch_size]
    return cut.reshape(batch, h, patch_size, w, patch_size).mean(dim=(2, 4)).unsqueeze(1)


@dataclass(frozen=True)
class PixelConfig:
    """What evaluation code reads from an encoder's config: one map ("block" 0) of one value per
    patch, on the patch grid of ``patch_size``."""

    side: int
    patch_size: int
    depth: int = 1
    embed_dim: int = 1

    def to_dict(self) -> dict:
        return {**asdict(self), "recipe": RECIPE}


@dataclass(frozen=True)
class PixelEncoder:
    """The raw-pixel baseline at one processor: :func:`pixel_features` of resized crops."""

    config: PixelConfig
    preprocess_config: PreprocessConfig

    @property
    def embed_dim(self) -> int:
        return self.config.embed_dim

    def features(self, crops: torch.Tensor, patch_tokens: PatchMode) -> dict[str, np.ndarray]:
        """uint8 crops (B, C, H, W) -> float32 arrays to store (``cls``: the thumbnails;
        ``patches`` (B, 1, h, w) or ``patch_mean`` (B, 1) as ``patch_tokens`` asks)."""
        grey = grey_levels(crops)
        arrays = {"cls": thumbnails(grey, self.config.side).float()}
        if patch_tokens != "none":
            grid = patch_grid(grey, self.config.patch_size).float()
            if patch_tokens == "full":
                arrays["patches"] = grid
            else:  # as a full store's mean is read: the same function on the same layout
                arrays["patch_mean"] = mean_patch_token(
                    grid.flatten(2).transpose(1, 2).contiguous()
                )
        return {key: value.numpy() for key, value in arrays.items()}

    def store_meta(self, model_id: str, patch_tokens: PatchMode) -> dict:
        """A features store's meta, with the keys of a ViT's (``store_meta`` in features.encode)."""
        return {
            "model": model_id,
            "model_config": self.config.to_dict(),
            "preprocess": self.preprocess_config.to_dict(),
            "dtype": "float32",
            "patch_tokens": patch_tokens,
            "layers": [],
            "embed_dim": self.embed_dim,
        }


def pixel_encoder(
    side: int, patch_size: int, preprocess: PreprocessConfig, what: str
) -> PixelEncoder:
    """The baseline at this processor; ``what`` names the spec or option in errors."""
    check_side(side, preprocess, what)
    return PixelEncoder(PixelConfig(side, patch_size), preprocess)


def encode_pixels_to_store(
    encoder: PixelEncoder,
    paths: Sequence[str],
    out_dir: str | Path,
    options: EncodeOptions,
    model_id: str = "",
) -> StoreSummary:
    """:func:`raddino.features.encode.encode_to_store` for the pixel baseline: the same decoding
    and resize (:class:`ImageFiles` in ``options.num_workers`` workers), the same store, on the
    CPU in float32 whatever ``options.device`` and ``options.dtype`` say."""
    if options.layers:
        raise ValueError(
            f"the pixel baseline has no transformer blocks (asked for {options.layers})"
        )
    writer = FeatureStoreWriter(
        out_dir, encoder.store_meta(model_id, options.patch_tokens), options.shard_size
    )
    with writer:  # holds the store's lock; released on leaving, also on errors
        order = list(dict.fromkeys(paths))
        todo = [path for path in order if path not in writer.done]
        if not todo:
            return writer.finalize(order)
        cpu = replace(options, device=torch.device("cpu"))

        def features(pixels: torch.Tensor) -> dict[str, np.ndarray]:
            return encoder.features(pixels, options.patch_tokens)

        write_decoded(writer, todo, encoder.preprocess_config, cpu, features, "pixels")
        return writer.finalize(order)


def check_pixel_specs(specs: Sequence[EncoderSpec], segment: SegmentConfig | None) -> None:
    """Before any encoder runs: each pixel baseline's thumbnail fits its crop and, when
    ``segment`` is given, the head reads one map."""
    for spec in specs:
        if not spec.pixels:
            continue
        spec.load()
        if segment is not None and (segment.head != "linear" or segment.linear_layers != 1):
            raise ValueError(
                f"{spec.label}: raw pixels give one map (the image at the patch grid's "
                "resolution), not transformer blocks; segment them with --head linear "
                "--linear-layers 1"
            )
