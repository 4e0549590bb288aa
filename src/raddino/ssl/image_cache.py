"""The decoded-image cache of a pre-training run: every image decoded once, read back mapped.

Decoding a PNG or DICOM and shrinking it to ``crops.max_source_size`` costs more than cutting
its crops, and a run reads every image once per epoch. The run decodes each image once into
``RUN/image_cache/KEY/``:

```
pixels.u8    the grey uint8 images (as :func:`grey_uint8` returns them), one after another
index.npy    (N, 3) int64: offset in pixels.u8, height, width; height 0 = unreadable
meta.json    {"format": "raddino-image-cache", "version", "key", "images", "unreadable",
              "max_source_size", "bytes", "errors": {index: message}}
```

``KEY`` is a hash of the image list (paths in order, each file's size and modification time)
and ``max_source_size``: another list, a changed file or another size builds a new cache and
deletes the old ones. The cache is written into ``RUN/image_cache/.tmp-KEY-PID/`` and renamed
into place, so a kill leaves a whole cache or none. ``pixels.u8`` is memory-mapped: the page
cache keeps a small data set in RAM, a large one stays on disk and is read on demand (the
cache takes the decoded size on disk: H x W bytes per image after the shrink).

Under torchrun the first process builds the cache (decoding in worker processes) while the
others wait for it; every process then maps the same files.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset
from torchvision.transforms.v2 import functional as TF
from tqdm.auto import tqdm

from raddino.atomic import TMP_PREFIX, fsync_dir
from raddino.cpus import available_cores
from raddino.data.io import ImageReadError, read_image, to_uint8
from raddino.ssl import distributed
from raddino.ssl.distributed import DistEnv

FORMAT = "raddino-image-cache"
VERSION = 1
CACHE_DIR = "image_cache"
UNREADABLE = (ImageReadError, OSError, ValueError)  # what makes a training image unreadable


def grey_uint8(path: str, max_side: int) -> torch.Tensor:
    """Decode, scale to uint8, convert colour to grey, shrink the longer side: (1, H, W)."""
    image = to_uint8(read_image(path), source=path)
    if image.ndim == 3:  # ITU-R 601 luma, as PIL's convert("L")
        image = np.rint(image @ np.array([0.299, 0.587, 0.114])).astype(np.uint8)
    tensor = torch.from_numpy(np.ascontiguousarray(image)).unsqueeze(0)
    height, width = tensor.shape[-2:]
    if max(height, width) > max_side:
        scale = max_side / max(height, width)
        size = [max(1, round(height * scale)), max(1, round(width * scale))]
        tensor = TF.resize(tensor, size, antialias=True)
    return tensor


def cache_key(paths: Sequence[str], max_side: int) -> str:
    """sha256 of the image list (path, size, mtime of each, in order) and ``max_side``."""
    digest = hashlib.sha256(f"{FORMAT} {VERSION} {max_side}\n".encode())
    for path in paths:
        try:
            stat = os.stat(path)
            signature = f"{stat.st_size} {stat.st_mtime_ns}"
        except OSError:
            signature = "missing"
        digest.update(f"{path}\0{signature}\n".encode())
    return digest.hexdigest()


class ImageCache:
    """Read side: ``image(i)`` -> (1, H, W) uint8 of ``paths[i]``, or None when unreadable."""

    def __init__(self, directory: Path) -> None:
        self.directory = Path(directory)
        self.meta = json.loads((self.directory / "meta.json").read_text())
        if self.meta.get("format") != FORMAT or self.meta.get("version") != VERSION:
            raise ValueError(f"{self.directory}: not a version {VERSION} {FORMAT}")
        self.index = np.load(self.directory / "index.npy")
        self._pixels: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.index)

    @property
    def errors(self) -> dict[int, str]:
        """Why each unreadable image could not be read, by index."""
        return {int(i): message for i, message in self.meta["errors"].items()}

    def readable(self, i: int) -> bool:
        return bool(self.index[i, 1] > 0)

    def image(self, i: int) -> torch.Tensor | None:
        offset, height, width = (int(v) for v in self.index[i])
        if height == 0:
            return None
        if self._pixels is None:  # mapped lazily: in each worker process, after pickling
            self._pixels = np.memmap(self.directory / "pixels.u8", dtype=np.uint8, mode="r")
        pixels = np.array(self._pixels[offset : offset + height * width])
        return torch.from_numpy(pixels).view(1, height, width)

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_pixels": None}  # never pickle the mapped pixels


class _Decode(Dataset):
    """``paths[i]`` -> (i, (1, H, W) uint8 or None, error message)."""

    def __init__(self, paths: Sequence[str], max_side: int) -> None:
        self.paths, self.max_side = list(paths), max_side

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> tuple[int, torch.Tensor | None, str]:
        try:
            return i, grey_uint8(self.paths[i], self.max_side), ""
        except UNREADABLE as error:
            return i, None, str(error)


def build_cache(
    paths: Sequence[str],
    max_side: int,
    directory: Path,
    key: str,
    workers: int,
    progress: bool,
    tick: Callable[[], None] | None = None,
) -> None:
    """Decode ``paths`` into the cache ``directory`` (written beside it, then renamed);
    ``tick()`` after each image."""
    temp = directory.parent / f"{TMP_PREFIX}{directory.name}-{os.getpid()}"
    shutil.rmtree(temp, ignore_errors=True)
    temp.mkdir(parents=True)
    try:
        index = np.zeros((len(paths), 3), dtype=np.int64)
        errors: dict[str, str] = {}
        offset = 0
        loader = DataLoader(
            _Decode(paths, max_side),
            batch_size=None,
            num_workers=workers,
            worker_init_fn=_one_thread,
        )
        with open(temp / "pixels.u8", "wb") as out:
            bar = tqdm(loader, total=len(paths), desc="decode", unit="img", disable=not progress)
            for i, image, error in bar:
                if tick is not None:
                    tick()
                if image is None:
                    errors[str(i)] = error
                    continue
                out.write(image.numpy().tobytes())
                index[i] = (offset, image.shape[-2], image.shape[-1])
                offset += image.numel()
            out.flush()
            os.fsync(out.fileno())
        np.save(temp / "index.npy", index)
        meta = {
            "format": FORMAT,
            "version": VERSION,
            "key": key,
            "images": len(paths),
            "unreadable": len(errors),
            "max_source_size": max_side,
            "bytes": offset,
            "errors": errors,
        }
        (temp / "meta.json").write_text(json.dumps(meta, indent=1) + "\n")
        for name in ("index.npy", "meta.json"):
            with open(temp / name, "rb") as handle:
                os.fsync(handle.fileno())
        fsync_dir(temp)
        os.replace(temp, directory)
        fsync_dir(directory.parent)
    finally:
        shutil.rmtree(temp, ignore_errors=True)


def _one_thread(_worker_id: int) -> None:
    torch.set_num_threads(1)


def open_or_build(
    paths: Sequence[str],
    max_side: int,
    run_dir: Path,
    workers: int,
    build: bool = True,
    progress: bool = True,
    tick: Callable[[], None] | None = None,
) -> ImageCache:
    """The run's cache of ``paths``, built first when missing or stale (with ``build``: the
    process that writes the run directory; others only open it). Other keys' caches are deleted.
    Each unreadable image is reported once, as a warning on stderr. ``tick``: see
    :func:`build_cache`."""
    key = cache_key(paths, max_side)
    root = Path(run_dir) / CACHE_DIR
    directory = root / key[:32]
    if build and not _complete(directory, key):
        if root.is_dir():  # stale caches and leftovers: their disk space is needed now
            for old in root.iterdir():
                shutil.rmtree(old, ignore_errors=True)
        root.mkdir(parents=True, exist_ok=True)
        build_cache(paths, max_side, directory, key, workers, progress, tick)
    cache = ImageCache(directory)
    if cache.meta["key"] != key:
        raise ValueError(f"{directory}: holds another image list; delete it and run again")
    if build:
        for message in cache.errors.values():
            print(f"warning: skipping unreadable image {message}", file=sys.stderr)
        if len(cache.errors) == len(cache):
            raise RuntimeError("none of the pre-training images could be read")
    return cache


def _complete(directory: Path, key: str) -> bool:
    try:
        meta = json.loads((directory / "meta.json").read_text())
    except (OSError, ValueError):
        return False
    return meta.get("key") == key and meta.get("version") == VERSION


HEARTBEAT_S = 60.0  # under torchrun: how often the building process says it is still building


def run_image_cache(
    paths: Sequence[str], max_side: int, run_dir: Path, env: DistEnv, progress: bool
) -> ImageCache:
    """:func:`open_or_build` under torchrun: the first process builds the cache, decoding in
    one worker per CPU it may use, while the others wait for it; a failure stops every process.

    The others wait in collectives (broadcasts of ``building`` every :data:`HEARTBEAT_S`
    seconds, then ``done`` or the error), never one collective for the whole build, so a build
    longer than the process group's timeout (NCCL's: 10 minutes) does not end the run."""
    if not paths:  # on every process, before any collective
        raise ValueError("no images to pre-train on")
    if not env.is_main:
        while True:
            state, error = distributed.broadcast_object(None)
            if state == "failed":
                raise error
            if state == "done":
                return open_or_build(paths, max_side, run_dir, 0, build=False, progress=False)
    cpus = available_cores()
    last = time.monotonic()

    def heartbeat() -> None:
        nonlocal last
        if env.distributed and time.monotonic() - last > HEARTBEAT_S:
            distributed.broadcast_object(("building", None))
            last = time.monotonic()

    try:
        cache = open_or_build(paths, max_side, run_dir, cpus if cpus > 1 else 0,
                              build=True, progress=progress, tick=heartbeat)  # fmt: skip
    except Exception as error:  # re-raised on every process
        if env.distributed:
            distributed.broadcast_object(("failed", error))
        raise
    if env.distributed:
        distributed.broadcast_object(("done", None))
    return cache
