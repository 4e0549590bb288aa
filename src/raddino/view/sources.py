"""What ``raddino view`` opens: features stores (named on the command line or encoded on demand
from a model and images) and the manifests whose columns label the images.

Stores are matched to each other and to manifests by image path (absolute, normalised); the
first store's images, in its order, are the gallery.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from raddino.data.manifest import read_manifest_table
from raddino.data.preprocess import PreprocessConfig
from raddino.features.encode import EncodeOptions
from raddino.features.store import Features, load_features

MAX_FILTER_VALUES = 24  # a column with more distinct values (age, report text) is not a filter
MAX_FILTER_LENGTH = 40  # nor one whose values are long text


def image_key(path: str) -> str:
    """The path an image is matched by across stores and manifests."""
    return os.path.normpath(os.path.abspath(path))


def parse_named(text: str) -> tuple[str, str]:
    """``NAME=PATH`` or ``PATH`` -> (name, path); the name defaults to the folder's name.

    As encoder specs are read: a ``=`` splits off a name only when what precedes it has no
    ``/`` and the whole text is not an existing path.
    """
    head, sep, rest = text.partition("=")
    if sep and head and "/" not in head and not Path(text).exists():
        return head, rest
    return Path(text).name or text, text


@dataclass
class EncoderStore:
    """One encoder's features store, aligned with the gallery.

    ``rows[i]``: the store's row of gallery image i, -1 when the store lacks it. ``problem``:
    why its patches cannot be clicked (no patch tokens, a store that does not match the
    first), shown in the page; None when they can.
    """

    name: str
    directory: Path
    features: Features
    preprocess: PreprocessConfig
    rows: np.ndarray
    problem: str | None = None

    @property
    def grid(self) -> tuple[int, int] | None:
        patches = self.features.patches
        return None if patches is None else (int(patches.shape[2]), int(patches.shape[3]))

    @property
    def dim(self) -> int:
        return int(self.features.cls.shape[1]) if self.features.cls.ndim == 2 else 0

    def describe(self) -> dict:
        return {
            "name": self.name,
            "store": str(self.directory),
            "grid": list(self.grid) if self.grid else None,
            "dim": self.dim,
            "images": int((self.rows >= 0).sum()),
            "patch_tokens": self.features.meta.get("patch_tokens", "none"),
            "problem": self.problem,
        }


def open_stores(named: Sequence[tuple[str, str | Path]]) -> list[tuple[str, Features, Path]]:
    """(name, folder) per store (:func:`parse_named`) -> (name, features, folder), names made
    unique."""
    opened = []
    names: set[str] = set()
    for name, folder in named:
        directory = Path(folder)
        if not directory.is_dir():
            raise FileNotFoundError(f"{directory}: no such features store (a folder)")
        unique, suffix = name, 2
        while unique in names:
            unique, suffix = f"{name} ({suffix})", suffix + 1
        names.add(unique)
        opened.append((unique, load_features(directory), directory))
    return opened


def encode_stores(
    models: Sequence[str],
    inputs: Sequence[str],
    cache: str | Path,
    options: EncodeOptions,
    image_size: int | None = None,
) -> list[tuple[str, Path]]:
    """Encode ``inputs`` (files, folders, manifests) with each of ``models`` (``[NAME=][random:]
    PATH``, as ``raddino compare`` reads encoders) into full-patch-token stores under ``cache``,
    only what is not there yet, with progress; returns (name, folder) for :func:`open_stores`."""
    from raddino.data.manifest import collect_inputs
    from raddino.eval.encoders import EncoderSpec
    from raddino.eval.feature_cache import FeatureRequest, encode_for_eval

    paths = collect_inputs(inputs)
    if not paths:
        raise ValueError(f"no images in {', '.join(map(str, inputs))}")
    opened = []
    for model in models:
        spec = EncoderSpec.parse(model, image_size=image_size)
        if spec.pixels:
            raise ValueError(f"encoder {model}: raw pixels have no patch tokens to compare")
        encoded = encode_for_eval(spec, paths, cache, FeatureRequest("full"), options)
        opened.append((spec.label, encoded.store))
    return opened


def _field_of_view(preprocess: PreprocessConfig) -> tuple:
    """What decides which part of an image a view shows, whatever its size in pixels."""
    if not preprocess.do_center_crop:
        return (preprocess.do_resize, False)
    return (
        preprocess.do_resize,
        round(preprocess.crop_height / preprocess.shortest_edge, 6),
        round(preprocess.crop_width / preprocess.shortest_edge, 6),
    )


def align_stores(
    named: Sequence[tuple[str, Features, Path]],
) -> tuple[list[str], list[EncoderStore]]:
    """Gallery paths (the first store's, in its order) and every store aligned with them."""
    if not named:
        raise ValueError("no features stores to view")
    first_name, first, first_dir = named[0]
    gallery = list(first.paths)
    keys = {image_key(path): index for index, path in enumerate(gallery)}
    reference = store_preprocess(first)
    stores = []
    for name, features, directory in named:
        preprocess = store_preprocess(features)
        rows = np.full(len(gallery), -1, dtype=np.int64)
        for row, path in enumerate(features.paths):
            index = keys.get(image_key(path))
            if index is not None:
                rows[index] = row
        store = EncoderStore(name, directory, features, preprocess, rows)
        store.problem = _problem(store, first_name, first_dir, reference, len(gallery))
        stores.append(store)
    return gallery, stores


def store_preprocess(features: Features) -> PreprocessConfig:
    """The processor a store's images were resized and cropped with (its ``meta.json``)."""
    meta = features.meta.get("preprocess") or {}
    return PreprocessConfig(**{k: tuple(v) if isinstance(v, list) else v for k, v in meta.items()})


def _problem(
    store: EncoderStore, first: str, first_dir: Path, reference: PreprocessConfig, count: int
) -> str | None:
    mode = store.features.meta.get("patch_tokens", "none")
    if store.features.patches is None:
        return (
            f"{store.directory}: this store has no patch tokens (encoded with --patch-tokens "
            f"{mode}); re-encode with raddino encode --patch-tokens full to click patches"
        )
    if count and not (store.rows >= 0).any():
        return (
            f"mismatched stores: {store.directory} holds none of the {count} images of "
            f"{first_dir} ({first}); were they encoded from other files?"
        )
    if _field_of_view(store.preprocess) != _field_of_view(reference):
        return (
            f"mismatched stores: {store.directory} crops images differently from {first_dir} "
            f"(resize {store.preprocess.shortest_edge}, crop {store.preprocess.crop_height}x"
            f"{store.preprocess.crop_width} against resize {reference.shortest_edge}, crop "
            f"{reference.crop_height}x{reference.crop_width}), so a patch of one is not the same "
            "place in the other"
        )
    return None


@dataclass
class Labels:
    """Manifest columns of the gallery's images: ``rows[i]`` is image i's row ({} if none)."""

    columns: list[str]
    rows: list[dict[str, str]]
    filters: dict[str, list[str]]  # filterable column -> its values, sorted
    flags: list[str]  # 0/1 columns, shown by name where 1

    def summary(self, index: int) -> str:
        """Image ``index``'s labels in a few words: its set flags, then its other filters."""
        row = self.rows[index]
        flags = [c for c in self.flags if row.get(c) == "1"]
        others = [row[c] for c in self.filters if c not in self.flags and row.get(c)]
        return ", ".join(flags) + (" · " if flags and others else "") + " · ".join(others)


def read_labels(manifests: Sequence[str | Path], gallery: Sequence[str]) -> Labels:
    """The columns of ``manifests`` for each gallery image (later manifests win on overlap)."""
    by_key: dict[str, dict[str, str]] = {}
    columns: list[str] = []
    for manifest in manifests:
        names, rows = read_manifest_table(manifest)
        columns += [c for c in names if c != "path" and c not in columns]
        for row in rows:
            by_key.setdefault(image_key(row["path"]), {}).update(
                {k: v for k, v in row.items() if k != "path" and v is not None}
            )
    rows = [by_key.get(image_key(path), {}) for path in gallery]
    filters: dict[str, list[str]] = {}
    for column in columns:
        if column.startswith("mask_"):
            continue
        values = {row.get(column, "") for row in rows} - {""}
        if 1 <= len(values) <= MAX_FILTER_VALUES and all(
            len(v) <= MAX_FILTER_LENGTH for v in values
        ):
            filters[column] = sorted(values, key=_natural)
    flags = [c for c, values in filters.items() if set(values) <= {"0", "1"} and "1" in values]
    return Labels(columns, rows, filters, flags)


def _natural(value: str) -> tuple:
    try:
        return (0, float(value), value)
    except ValueError:
        return (1, 0.0, value)
