"""The model's view of an image and its patch tokens, shared by the similarity and PCA figures."""

from __future__ import annotations

from collections.abc import Sequence
from io import BytesIO
from pathlib import Path

import numpy as np
import torch
from matplotlib.figure import Figure
from PIL import Image

from raddino.atomic import write_bytes_atomic
from raddino.data.preprocess import model_input, resize_and_crop
from raddino.models.encoder import ImageLike, RadDino, to_uint8_chw


def model_view(model: RadDino, image: ImageLike) -> tuple[torch.Tensor, tuple[int, int]]:
    """One image -> (uint8 (C, H, W) crop the model sees, (height, width) of the original)."""
    pixels = to_uint8_chw(image)
    original = (int(pixels.shape[-2]), int(pixels.shape[-1]))
    return resize_and_crop(pixels, model.preprocess_config), original


def grey(crop: torch.Tensor) -> np.ndarray:
    """uint8 (C, H, W) crop -> uint8 (H, W); colour is averaged over channels."""
    if crop.shape[0] == 1:
        return crop[0].numpy().copy()
    return crop.float().mean(0).round().to(torch.uint8).numpy()


@torch.inference_mode()
def encode_patches(
    model: RadDino, crops: Sequence[torch.Tensor], batch_size: int = 8
) -> list[torch.Tensor]:
    """uint8 crops (C, H, W) -> final patch tokens, one float32 CPU tensor (h, w, D) per crop.

    Runs on the model's device in its dtype; consecutive crops of one size share a batch.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    tokens: list[torch.Tensor] = []
    start = 0
    while start < len(crops):
        size = crops[start].shape[-2:]
        stop = start + 1
        while stop < len(crops) and stop - start < batch_size and crops[stop].shape[-2:] == size:
            stop += 1
        output = model(model_input(crops[start:stop], model.preprocess_config, model.device))
        height, width = output.grid
        patches = output.patches.float().cpu()
        tokens.extend(p.reshape(height, width, -1).clone() for p in patches)
        start = stop
    return tokens


FIGURE_DPI = 150


def figure_bytes(figure: Figure, kind: str, dpi: int = FIGURE_DPI) -> bytes:
    """A matplotlib ``Figure`` rendered as a file of format ``kind`` (png, pdf, svg...)."""
    supported = figure.canvas.get_supported_filetypes()
    if kind not in supported:
        raise ValueError(f"unsupported figure format {kind!r}; use one of {sorted(supported)}")
    buffer = BytesIO()
    figure.savefig(buffer, format=kind, dpi=dpi)
    return buffer.getvalue()


def save_figure_atomic(figure: Figure, out: Path, dpi: int = FIGURE_DPI) -> Path:
    """Render a matplotlib ``Figure`` in the format named by ``out``'s suffix, atomically."""
    out = Path(out)
    try:
        data = figure_bytes(figure, out.suffix.lower().lstrip("."), dpi)
    except ValueError as error:
        raise ValueError(f"{out}: {error}") from None
    return write_bytes_atomic(out, data)


def save_png_atomic(image: np.ndarray, out: Path) -> Path:
    """Write a uint8 (H, W) or (H, W, 3) array as a PNG, atomically."""
    buffer = BytesIO()
    Image.fromarray(image).save(buffer, format="PNG")
    return write_bytes_atomic(out, buffer.getvalue())
