"""Contact sheets: a grid of radiographs from a manifest, with mask outlines and captions."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from raddino.data.io import read_mask
from raddino.data.manifest import read_manifest, resolve_manifest_path
from raddino.data.synth.findings import FINDINGS

OUTLINE_COLOURS: dict[str, tuple[int, int, int]] = {
    "right_lung": (0, 200, 255),
    "left_lung": (60, 255, 120),
    "heart": (255, 70, 200),
    "clavicles": (255, 230, 0),
    "nodule": (255, 40, 40),
    "effusion": (255, 140, 0),
    "pneumothorax": (255, 40, 40),
    "consolidation": (255, 140, 0),
    "chest_tube": (180, 120, 255),
    "central_line": (180, 120, 255),
}
"""Masks drawn on the sheet (ribs are left out: they would hide the image)."""


def outline(mask: Image.Image, width: int) -> Image.Image:
    """The boundary (mode L, 0/255) of a 0/255 mask, ``width`` pixels thick."""
    size = 2 * width + 1
    return Image.fromarray(
        np.asarray(mask.filter(ImageFilter.MaxFilter(size)))
        - np.asarray(mask.filter(ImageFilter.MinFilter(size)))
    )


def _to_grey(path: str) -> Image.Image:
    array = np.asarray(Image.open(path)).astype(np.float32)
    return Image.fromarray((array / max(float(array.max()), 1.0) * 255.0).astype(np.uint8))


def contact_sheet(
    manifest: str | os.PathLike,
    out: str | os.PathLike,
    count: int = 16,
    columns: int = 4,
    tile: int = 256,
) -> Path:
    """Write a PNG grid of the first ``count`` images of ``manifest`` with mask outlines.

    Each tile is captioned with its view and present findings.
    """
    rows = read_manifest(manifest)[:count]
    if not rows:
        raise ValueError(f"{manifest}: no rows to draw")
    lines = -(-len(rows) // columns)
    caption = 14
    sheet = Image.new("RGB", (columns * tile, lines * (tile + caption)), (0, 0, 0))
    draw = ImageDraw.Draw(sheet)
    for position, row in enumerate(rows):
        grey = _to_grey(row["path"]).resize((tile, tile), Image.BILINEAR)
        canvas = Image.merge("RGB", (grey, grey, grey))
        for name, colour in OUTLINE_COLOURS.items():
            path = row.get(f"mask_{name}")
            if not path:
                continue
            path = resolve_manifest_path(Path(manifest), path)
            inside = read_mask(path).astype(np.uint8) * 255
            mask = Image.fromarray(inside).resize((tile, tile), Image.NEAREST)
            if not mask.getbbox():
                continue
            canvas.paste(Image.new("RGB", canvas.size, colour), mask=outline(mask, 1))
        x, y = (position % columns) * tile, (position // columns) * (tile + caption)
        sheet.paste(canvas, (x, y))
        present = [name for name in FINDINGS if row.get(name) == "1"]
        text = f"{row.get('view', '')} " + (", ".join(present) if present else "no finding")
        draw.text((x + 3, y + tile + 1), text, fill=(230, 230, 230))
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    sheet.save(out)
    return out
