"""The state behind ``raddino view`` and every answer the page asks for, as plain data.

A :class:`ViewSession` holds the aligned stores (:mod:`raddino.view.sources`) and the manifest
labels, and answers with dicts (JSON) or PNG bytes; the numbers come from :mod:`raddino.viz`.
Nothing here knows about HTTP: :mod:`raddino.view.server` maps requests to these methods and
:class:`ViewError` to a status and a message shown in the page.
"""

from __future__ import annotations

import base64
import functools
import sys
import threading
import time
from collections.abc import Mapping, Sequence
from io import BytesIO
from pathlib import Path

import numpy as np
import torch
from matplotlib import colormaps
from PIL import Image

from raddino.atomic import write_bytes_atomic
from raddino.data.io import ImageReadError
from raddino.data.preprocess import load_crop
from raddino.view.sources import EncoderStore, Labels, align_stores, open_stores, read_labels
from raddino.viz.neighbours import cosine_neighbours, mean_patch_tokens
from raddino.viz.pca import pca_rgb_from_tokens
from raddino.viz.similarity import (
    HEATMAP_ALPHA,
    HEATMAP_CMAP,
    similarity_figure,
    similarity_maps_from_tokens,
    similarity_titles,
    similarity_to_grids,
)
from raddino.viz.tokens import figure_bytes, grey

PAGE_SIZE = 24
FIGURE_TARGETS = 6  # the saved figure's targets: the first of the chosen ones (one row of panels)
THUMBNAIL_SIDE = 192
NEIGHBOURS = 10


class ViewError(ValueError):
    """A request the session cannot answer; ``status`` is its HTTP status."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


def float32_base64(values: np.ndarray) -> str:
    """Little-endian float32 bytes, base64: exact values in a third of the size of decimals."""
    return base64.b64encode(np.ascontiguousarray(values, dtype="<f4").tobytes()).decode("ascii")


def png_bytes(image: np.ndarray) -> bytes:
    buffer = BytesIO()
    Image.fromarray(image).save(buffer, format="PNG")
    return buffer.getvalue()


class StoredGrids(Sequence):
    """Patch grids (D, h, w) of some rows of a store, read only when indexed: heatmaps over
    500 images then hold one grid (4 MB at ViT-B/14, 518 px) in memory at a time, not 2 GB."""

    def __init__(self, patches, rows: Sequence[int]) -> None:
        self.patches = patches
        self.rows = [int(row) for row in rows]

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, index):
        if isinstance(index, slice):
            return StoredGrids(self.patches, self.rows[index])
        return self.patches[self.rows[index]]


class ViewSession:
    """Stores (name, folder; the first gives the gallery and its order) and manifests, opened
    once. ``figures``: a folder where :meth:`figure_png` also writes each figure."""

    def __init__(
        self,
        stores: Sequence[tuple[str, str | Path]],
        manifests: Sequence[str | Path] = (),
        figures: str | Path | None = None,
    ) -> None:
        self.images, self.encoders = align_stores(open_stores(stores))
        self.figures = None if figures is None else Path(figures)
        self.labels: Labels = read_labels(manifests, self.images)
        self.names = [Path(path).name for path in self.images]
        self._lock = threading.Lock()
        self._means: dict[int, np.ndarray] = {}
        self.view_png = functools.lru_cache(maxsize=1024)(self._view_png)
        self.pca_png = functools.lru_cache(maxsize=64)(self._pca_png)

    # ------------------------------------------------------------------ what is open

    def describe(self) -> dict:
        lut = colormaps[HEATMAP_CMAP](np.linspace(0.0, 1.0, 256))[:, :3]
        return {
            "images": len(self.images),
            "encoders": [store.describe() for store in self.encoders],
            "filters": self.labels.filters,
            "columns": self.labels.columns,
            "colormap": np.round(lut * 255).astype(int).tolist(),
            "heatmap_alpha": HEATMAP_ALPHA,
            "page_size": PAGE_SIZE,
            "figure_targets": FIGURE_TARGETS,
        }

    def encoder(self, index: int) -> EncoderStore:
        if not 0 <= index < len(self.encoders):
            raise ViewError(f"no encoder {index}: {len(self.encoders)} are open", 404)
        return self.encoders[index]

    def check_image(self, index: int) -> int:
        if not 0 <= index < len(self.images):
            raise ViewError(f"no image {index}: the gallery holds {len(self.images)}", 404)
        return index

    def row(self, store: EncoderStore, image: int) -> int:
        row = int(store.rows[self.check_image(image)])
        if row < 0:
            raise ViewError(f"{self.names[image]} is not in the store of {store.name}", 404)
        return row

    def patches(self, store: EncoderStore):
        if store.problem:
            raise ViewError(store.problem, 422)
        return store.features.patches

    # ------------------------------------------------------------------ gallery

    def select(self, filters: Mapping[str, str]) -> list[int]:
        """Gallery indices whose manifest values equal every filter's, in gallery order."""
        unknown = [c for c in filters if c not in self.labels.filters]
        if unknown:
            raise ViewError(f"unknown filter {unknown[0]!r}; columns: {list(self.labels.filters)}")
        return [
            i
            for i, row in enumerate(self.labels.rows)
            if all(row.get(column) == value for column, value in filters.items())
        ]

    def page(self, filters: Mapping[str, str], page: int, per_page: int = PAGE_SIZE) -> dict:
        chosen = self.select(filters)
        pages = max(1, -(-len(chosen) // per_page))
        page = min(max(page, 0), pages - 1)
        return {
            "total": len(chosen),
            "page": page,
            "pages": pages,
            "items": [self.item(i) for i in chosen[page * per_page : (page + 1) * per_page]],
        }

    def item(self, index: int) -> dict:
        return {"image": index, "name": self.names[index], "labels": self.labels.summary(index)}

    def targets(self, query: int, filters: Mapping[str, str], count: int) -> list[int]:
        """The first ``count`` images of the filtered gallery, the query left out."""
        if count < 1:
            raise ViewError(f"count {count}: ask for at least one target")
        return [i for i in self.select(filters) if i != query][:count]

    # ------------------------------------------------------------------ the click

    def similarity(
        self, encoder: int, image: int, row: int, col: int, targets: Sequence[int]
    ) -> dict:
        """Heatmaps of patch (row, col) of ``image`` over ``targets`` (gallery indices)."""
        started = time.perf_counter()
        store = self.encoder(encoder)
        patches = self.patches(store)
        query_grid = patches[self.row(store, image)]
        height, width = query_grid.shape[1:]
        if not (0 <= row < height and 0 <= col < width):
            raise ViewError(f"patch (row {row}, col {col}) is off the {height}x{width} grid")
        present = [t for t in targets if store.rows[self.check_image(t)] >= 0]
        query = query_grid[:, row, col]
        maps = similarity_to_grids(query, StoredGrids(patches, store.rows[present]))
        query_map = similarity_to_grids(query, [query_grid])[0]
        low, high = (float(maps.min()), float(maps.max())) if len(present) else (0.0, 0.0)
        best = [np.unravel_index(int(np.argmax(m)), m.shape) for m in maps]
        return {
            "encoder": encoder,
            "name": store.name,
            "query": {**self.item(image), "row": row, "col": col},
            "grid": [height, width],
            "targets": [
                {**self.item(t), "max": float(m.max()), "best": [int(r), int(c)]}
                for t, m, (r, c) in zip(present, maps, best, strict=True)
            ],
            "missing": [self.names[t] for t in sorted(set(targets) - set(present))],
            "low": low,
            "high": high,
            "maps": float32_base64(maps),
            "query_map": float32_base64(query_map),
            "seconds": round(time.perf_counter() - started, 4),
        }

    # ------------------------------------------------------------------ nearest studies

    def image_tokens(self, store: EncoderStore, by: str) -> np.ndarray:
        """(N, D) image-level tokens of a store: CLS, or the mean patch token."""
        if by == "cls":
            return store.features.cls
        if by != "mean":
            raise ViewError(f"neighbours by {by!r}: choose cls or mean")
        if store.features.patch_mean is not None:
            return store.features.patch_mean
        if store.features.patches is None:
            raise ViewError(f"{store.directory}: this store has no patch tokens to average", 422)
        key = self.encoders.index(store)
        with self._lock:  # computed once per store, then kept
            if key not in self._means:
                count = len(store.features.patches)
                print(f"raddino view: averaging the patch tokens of {count} images of "
                      f"{store.name}", file=sys.stderr)  # fmt: skip
                self._means[key] = mean_patch_tokens(store.features.patches)
            return self._means[key]

    def neighbours(self, encoder: int, image: int, by: str = "cls", k: int = NEIGHBOURS) -> dict:
        """The ``k`` gallery images nearest to ``image`` by cosine of ``by`` tokens."""
        store = self.encoder(encoder)
        tokens = self.image_tokens(store, by)
        query_row = self.row(store, image)
        rows, similarity = cosine_neighbours(tokens[query_row], tokens, k, exclude=[query_row])
        gallery = {int(row): index for index, row in enumerate(store.rows) if row >= 0}
        items = [
            {**self.item(gallery[int(r)]), "similarity": float(s)}
            for r, s in zip(rows, similarity, strict=True)
            if int(r) in gallery
        ]
        return {
            "encoder": encoder,
            "name": store.name,
            "by": by,
            "query": self.item(image),
            "items": items,
        }

    # ------------------------------------------------------------------ pictures

    def view(self, store: EncoderStore, image: int) -> np.ndarray:
        """The model's view of gallery image ``image`` (resized, cropped), uint8 (H, W)."""
        path = self.images[self.check_image(image)]
        try:
            return grey(load_crop(path, store.preprocess))
        except (ImageReadError, OSError) as error:
            raise ViewError(f"cannot read {path}: {error}", 404) from None

    def _view_png(self, encoder: int, image: int, thumbnail: bool = False) -> bytes:
        view = self.view(self.encoder(encoder), image)
        if thumbnail and max(view.shape) > THUMBNAIL_SIDE:
            scale = THUMBNAIL_SIDE / max(view.shape)
            size = (max(1, round(view.shape[1] * scale)), max(1, round(view.shape[0] * scale)))
            view = np.asarray(Image.fromarray(view).resize(size, Image.Resampling.BILINEAR))
        return png_bytes(view)

    def _pca_png(self, encoder: int, image: int) -> bytes:
        """The PCA colours (:func:`pca_rgb_from_tokens`) of one image's patch grid, (h, w) RGB."""
        store = self.encoder(encoder)
        grid = self.patches(store)[self.row(store, image)]
        tokens = torch.from_numpy(np.ascontiguousarray(grid.transpose(1, 2, 0)))
        return png_bytes(pca_rgb_from_tokens([tokens])[0])

    def figure_png(
        self, encoder: int, image: int, row: int, col: int, targets: Sequence[int]
    ) -> tuple[str, bytes]:
        """(file name, PNG) of ``raddino similarity``'s figure for this click: the query and
        its first :data:`FIGURE_TARGETS` targets."""
        store = self.encoder(encoder)
        patches = self.patches(store)
        query_grid = patches[self.row(store, image)]
        chosen = [t for t in targets if store.rows[self.check_image(t)] >= 0][:FIGURE_TARGETS]
        try:
            maps = similarity_maps_from_tokens(
                self.view(store, image),
                query_grid,
                (row, col),
                [self.view(store, t) for t in chosen],
                StoredGrids(patches, store.rows[chosen]),
            )
        except ValueError as error:
            raise ViewError(str(error)) from None
        titles = similarity_titles(self.names[image], [self.names[t] for t in chosen], maps)
        name = f"similarity-{Path(self.names[image]).stem}-r{row}c{col}.png"
        data = figure_bytes(similarity_figure(maps, titles=titles), "png")
        if self.figures is not None:
            out = write_bytes_atomic(self.figures / name, data)
            print(f"raddino view: wrote {out}", file=sys.stderr, flush=True)
        return name, data
