"""Overlay PNGs: the preprocessed radiograph, predicted structures filled, true outlines drawn."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from raddino.data.preprocess import PreprocessConfig, load_crop

PALETTE = (
    (230, 25, 75),
    (60, 180, 75),
    (255, 225, 25),
    (0, 130, 200),
    (245, 130, 48),
    (145, 30, 180),
    (70, 240, 240),
    (240, 50, 230),
)


def outline(mask: np.ndarray) -> np.ndarray:
    """Pixels of a bool mask (H, W) with a 4-neighbour outside the mask."""
    padded = np.pad(mask, 1, constant_values=False)
    inner = padded[:-2, 1:-1] & padded[2:, 1:-1] & padded[1:-1, :-2] & padded[1:-1, 2:] & mask
    return mask & ~inner


def render_overlay(
    grey: np.ndarray, predicted: np.ndarray, truth: np.ndarray, alpha: float = 0.45
) -> np.ndarray:
    """grey: uint8 (H, W); predicted, truth: bool (S, H, W) -> RGB uint8 (H, W, 3)."""
    rgb = np.repeat(grey[..., None].astype(np.float32), 3, axis=2)
    for s in range(predicted.shape[0]):
        colour = np.array(PALETTE[s % len(PALETTE)], np.float32)
        fill = predicted[s]
        rgb[fill] = (1 - alpha) * rgb[fill] + alpha * colour
        rgb[outline(truth[s])] = colour
    return np.clip(rgb, 0, 255).astype(np.uint8)


def save_overlay(
    image_path: str,
    predicted: np.ndarray,
    truth: np.ndarray,
    config: PreprocessConfig,
    out_file: Path,
) -> Path:
    """Write the overlay of one test image; masks are (S, H, W) at the crop size."""
    pixels = load_crop(image_path, config)
    grey = pixels[0].numpy() if pixels.shape[0] == 1 else pixels.float().mean(0).byte().numpy()
    out_file.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(render_overlay(grey, predicted, truth)).save(out_file)
    return out_file


def legend(structures: list[str]) -> str:
    """Which colour is which structure, for the report."""
    names = {0: "red", 1: "green", 2: "yellow", 3: "blue", 4: "orange", 5: "purple", 6: "cyan"}
    return ", ".join(
        f"{name}: {names.get(i % len(PALETTE), 'magenta')}" for i, name in enumerate(structures)
    )
