"""Segmentation data: masks from ``mask_<structure>`` columns, and cached patch-token maps.

A mask is an image file of the same size as its radiograph, read by
:func:`raddino.data.io.read_mask`: non-zero pixels belong to the structure, an empty cell means
the structure was not annotated on that image (it is left out of training and scoring). Masks
go through the encoder's own resize and centre crop (bilinear, thresholded at half), so they
align with the patch grid; predictions are scored at the crop size. Structures may overlap (ribs
over lungs), so each is a separate binary channel.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

from raddino.data.io import ImageReadError, read_image, read_mask
from raddino.data.manifest import resolve_manifest_path
from raddino.data.preprocess import PreprocessConfig, resize_and_crop
from raddino.eval.feature_cache import EncodedRows
from raddino.eval.targets import UNKNOWN, require_columns

MASK_PREFIX = "mask_"


def mask_columns(
    rows: list[dict[str, str]], structures: Sequence[str], source: str
) -> dict[str, str]:
    """structure -> manifest column; ``lungs`` and ``mask_lungs`` both name column mask_lungs."""
    columns = {}
    for item in structures:
        name = item.removeprefix(MASK_PREFIX)
        if not name:
            raise ValueError(f"mask {item!r}: empty structure name")
        columns[name] = MASK_PREFIX + name
    if not columns:
        raise ValueError("no mask structures given")
    require_columns(rows, list(columns.values()), source)
    return columns


def image_size(path: str) -> tuple[int, int]:
    """(H, W) of an image file: from the PNG/JPEG header, else by decoding it."""
    try:
        with Image.open(path) as image:
            width, height = image.size
            return height, width
    except (OSError, ValueError, SyntaxError):
        shape = read_image(path).shape
        return int(shape[0]), int(shape[1])


def mask_crop(path: str, expected: tuple[int, int], config: PreprocessConfig) -> np.ndarray:
    """A mask file of an (H, W) = ``expected`` image -> bool (crop_h, crop_w) aligned with the
    preprocessed image."""
    try:
        inside = read_mask(path, size=expected)
    except ImageReadError as error:
        raise ValueError(f"mask {error}") from error
    binary = torch.from_numpy(inside.astype(np.uint8) * 255).unsqueeze(0)
    resized = resize_and_crop(binary, replace(config, resample=2))  # bilinear
    return resized[0].numpy() > 127


class _MaskFiles(Dataset):
    """Item i: (row, masks uint8 (S, H, W), known (S,) bool, error message or "")."""

    def __init__(self, images: list[str], masks: list[list[str]], config: PreprocessConfig) -> None:
        self.images, self.masks, self.config = images, masks, config

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> tuple[int, np.ndarray, np.ndarray, str]:
        config = self.config
        shape = (len(self.masks[i]), config.crop_height, config.crop_width)
        out = np.zeros(shape, np.uint8)
        known = np.zeros(shape[0], bool)
        try:
            size = None
            for s, path in enumerate(self.masks[i]):
                if not path:
                    continue
                size = size or image_size(self.images[i])
                out[s] = mask_crop(path, size, config)
                known[s] = True
        except (ValueError, OSError, ImageReadError) as error:
            return i, out, known, str(error)
        return i, out, known, ""


@dataclass
class MaskSet:
    """masks: uint8 (N, S, H, W) in {0, 1} (a memory-mapped .npy); known: (N, S) bool."""

    structures: list[str]
    masks: np.ndarray
    known: np.ndarray


def load_masks(
    rows: list[dict[str, str]],
    columns: dict[str, str],
    manifest: Path,
    config: PreprocessConfig,
    cache_file: Path,
    workers: int = 0,
    progress: bool = True,
) -> MaskSet:
    """Read every mask of the manifest rows into ``cache_file`` (rebuilt each run).

    rows: all manifest rows; rows whose mask cells are empty get no mask (known = False).
    """
    if not config.do_center_crop:
        raise ValueError("segmentation needs a fixed input size: enable the centre crop")
    structures = list(columns)
    mask_paths = [
        [
            ""
            if (row.get(column) or "").strip().lower() in UNKNOWN
            else resolve_manifest_path(manifest, row[column].strip())
            for column in columns.values()
        ]
        for row in rows
    ]
    shape = (len(rows), len(structures), config.crop_height, config.crop_width)
    cache_file.parent.mkdir(parents=True, exist_ok=True)
    # a new file each time (renamed into place): arrays mapped from an earlier one stay valid
    partial = cache_file.with_name(f".{cache_file.stem}.{os.getpid()}.npy")
    masks = np.lib.format.open_memmap(partial, mode="w+", dtype=np.uint8, shape=shape)
    known = np.zeros(shape[:2], bool)
    loader = DataLoader(
        _MaskFiles([row["path"] for row in rows], mask_paths, config),
        batch_size=None,
        num_workers=workers,
    )
    bar = tqdm(total=len(rows), desc="masks", unit="img", disable=not progress, file=sys.stderr)
    try:
        for i, array, present, error in loader:
            if error:
                raise ValueError(f"{manifest}: line {int(i) + 2}: {error}")
            masks[i] = np.asarray(array)
            known[i] = np.asarray(present)
            bar.update()
    except BaseException:
        del masks
        partial.unlink(missing_ok=True)
        raise
    finally:
        bar.close()
    masks.flush()
    os.replace(partial, cache_file)
    return MaskSet(structures, masks, known)


def take_rows(array: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """``array[rows]`` read in ascending row order (fast on memory-mapped or sharded arrays)."""
    rows = np.asarray(rows)
    order = np.argsort(rows, kind="stable")
    taken = np.asarray(array[rows[order]])
    out = np.empty_like(taken)
    out[order] = taken
    return out


class FeatureMaps:
    """Patch-token maps of chosen blocks, read from a features store for manifest rows.

    ``batch(rows)`` -> one (B, D, h, w) float32 tensor per block, in ``blocks`` order.
    """

    def __init__(self, encoded: EncodedRows, blocks: Sequence[int], last_block: int) -> None:
        features = encoded.features
        self.blocks = list(blocks)
        self.arrays = []
        for block in self.blocks:
            if block == last_block:
                array = features.patches
            else:
                layer = (features.layers or {}).get(block)
                array = None if layer is None else layer.patches
            if array is None:
                raise ValueError(f"features store {encoded.store} has no patch tokens of {block}")
            self.arrays.append(array)
        self.row = encoded.row
        self.embed_dim = int(self.arrays[0].shape[1])
        self.grid = (int(self.arrays[0].shape[2]), int(self.arrays[0].shape[3]))

    def batch(self, rows: np.ndarray) -> list[torch.Tensor]:
        index = self.row[np.asarray(rows)]
        if np.any(index < 0):
            raise ValueError("FeatureMaps.batch: some rows have no features")
        return [
            torch.from_numpy(take_rows(a, index).astype(np.float32, copy=False))
            for a in self.arrays
        ]
