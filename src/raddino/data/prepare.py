"""RAD-DINO's offline preparation of training images: B-spline resize to 518, min-max, PNG.

The model card: "DICOM files were resized using B-spline interpolation so that their shorter
side was 518, min-max scaled to [0, 255], and stored as PNG files." Here:

* `resize_bspline`: interpolating cubic B-spline (the image is prefiltered so the spline passes
  through every pixel, as ITK/SimpleITK's ``sitkBSpline`` and ``scipy.ndimage.zoom(order=3)``
  do), pixel centres aligned (``grid_mode``), mirror boundary. It is evaluated as a separable
  convolution with the cardinal cubic spline, truncated where its weights fall below 1e-6.
* `prepare_array`: grey (colour -> ITU-R 601 luma), float, resize so the shorter side is 518
  (the longer side rounded, aspect ratio kept), then min-max to [0, 255] and round.
* `prepare_manifest`: a manifest -> ``OUT/images/...png`` in worker processes, resumable
  (``OUT/progress.jsonl`` records every result; outputs are written atomically), unreadable
  files in ``OUT/rejects.csv``, and ``OUT/manifest.csv`` with every input column carried over
  (``path`` -> the PNG, ``source_path``/``source_height``/``source_width`` added, ``boxes``
  scaled to the new size, ``mask_*`` paths rewritten to stay valid; masks keep their size,
  which covers the same field of view).
"""

from __future__ import annotations

import contextlib
import errno
import functools
import hashlib
import io
import json
import math
import multiprocessing
import os
import signal
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from raddino.atomic import csv_bytes, write_bytes_atomic, write_csv_atomic
from raddino.cpus import available_cores
from raddino.data.io import DEFAULT_MAX_PIXELS, IMAGE_SUFFIXES, read_image, to_uint8
from raddino.data.manifest import ManifestError, read_manifest_table, resolve_manifest_path
from raddino.output_lock import OutputLock, is_lock_file

__all__ = [
    "PrepareMismatchError",
    "PrepareOptions",
    "PrepareSummary",
    "prepare_array",
    "prepare_file",
    "prepare_manifest",
    "prepared_size",
    "resize_bspline",
]

FORMAT_NAME = "raddino-prepared"
FORMAT_VERSION = 1
INTERPOLATION = "cubic B-spline (interpolating, mirror boundary, pixel centres aligned)"

_POLE = math.sqrt(3.0) - 2.0  # pole of the cubic B-spline prefilter
_TAP_RADIUS = 13  # taps considered on each side; |pole|^12 < 1e-6
_TAP_TOLERANCE = 1e-6  # weights below this are dropped
_BLOCK_ROWS = 8  # output rows per matrix block (small blocks keep BLAS single-threaded)
_LUMA = np.array([0.299, 0.587, 0.114], dtype=np.float32)

_SETTINGS_FILE = "prepare.json"
_LOG_FILE = "progress.jsonl"
_MANIFEST_FILE = "manifest.csv"
_REJECTS_FILE = "rejects.csv"
_IMAGES_DIR = "images"


class PrepareMismatchError(ValueError):
    """The output folder was prepared with other settings (or is not a prepared folder)."""


# --------------------------------------------------------------------------- resizing


def prepared_size(height: int, width: int, shorter_side: int = 518) -> tuple[int, int]:
    """(H, W) after scaling so the shorter side is ``shorter_side`` (longer side rounded)."""
    if height <= 0 or width <= 0:
        raise ValueError(f"image size {height}x{width} must be positive")
    scale = shorter_side / min(height, width)
    if height <= width:
        return shorter_side, max(1, math.floor(width * scale + 0.5))
    return max(1, math.floor(height * scale + 0.5)), shorter_side


def cardinal_cubic_spline(t: np.ndarray) -> np.ndarray:
    """The interpolating cubic B-spline kernel: sqrt(3) * sum_k pole^|k| * beta3(t - k).

    It is 1 at 0, 0 at the other integers, and decays like |pole|^|t|. Convolving the samples
    with it equals prefiltering them into B-spline coefficients and evaluating the spline.
    """
    t = np.asarray(t, dtype=np.float64)
    floor = np.floor(t)
    out = np.zeros_like(t)
    for shift in (-1.0, 0.0, 1.0, 2.0):
        k = floor + shift
        a = np.abs(t - k)
        beta = np.where(
            a < 1.0, 2.0 / 3.0 - a * a + 0.5 * a**3, np.where(a < 2.0, (2.0 - a) ** 3 / 6.0, 0.0)
        )
        out += _POLE ** np.abs(k) * beta
    return math.sqrt(3.0) * out


@functools.lru_cache(maxsize=64)
def _axis_plan(n_in: int, n_out: int) -> tuple[tuple[int, int, int, np.ndarray], ...]:
    """Blocks (o0, lo, hi, W) with out[o0:o0+len(W)] = W @ in[lo:hi] along one axis."""
    x = (np.arange(n_out, dtype=np.float64) + 0.5) * (n_in / n_out) - 0.5
    base = np.floor(x).astype(np.int64)
    offsets = np.arange(-_TAP_RADIUS + 1, _TAP_RADIUS + 1)
    taps = base[:, None] + offsets[None, :]
    weights = cardinal_cubic_spline(x[:, None] - taps)
    if n_in == 1:
        index = np.zeros_like(taps)
    else:  # whole-sample mirror: ... 2 1 | 0 1 2 ... n-1 | n-2 ...
        period = 2 * n_in - 2
        folded = np.mod(taps, period)
        index = np.where(folded >= n_in, period - folded, folded)
    weights = np.where(np.abs(weights) < _TAP_TOLERANCE, 0.0, weights)
    weights /= weights.sum(axis=1, keepdims=True)  # what truncation dropped: constants stay put
    blocks = []
    for o0 in range(0, n_out, _BLOCK_ROWS):
        rows = slice(o0, min(o0 + _BLOCK_ROWS, n_out))
        used = weights[rows] != 0.0
        lo = int(index[rows][used].min())
        hi = int(index[rows][used].max()) + 1
        count = rows.stop - rows.start
        flat = (np.arange(count)[:, None] * (hi - lo) + index[rows] - lo)[used]
        dense = np.bincount(flat, weights=weights[rows][used], minlength=count * (hi - lo))
        blocks.append((o0, lo, hi, dense.reshape(count, hi - lo).astype(np.float32)))
    return tuple(blocks)


def _resize_axis0(image: np.ndarray, n_out: int) -> np.ndarray:
    """Resample axis 0 of a float32 (n_in, C) array to n_out rows."""
    out = np.empty((n_out, image.shape[1]), dtype=np.float32)
    for o0, lo, hi, weights in _axis_plan(image.shape[0], n_out):
        np.matmul(weights, image[lo:hi], out=out[o0 : o0 + weights.shape[0]])
    return out


def resize_bspline(image: np.ndarray, height: int, width: int) -> np.ndarray:
    """Cubic B-spline interpolation of a 2-D image to (height, width); float32 out.

    Equals ``scipy.ndimage.zoom(image, zoom, order=3, mode="mirror", grid_mode=True)`` to
    float32 rounding (tests/data/test_prepare.py compares the two). Values may overshoot the
    input range (as any cubic spline does).

    Why not call scipy: scipy prefilters the whole full-size image before sampling it, which
    made it 4.1x slower on a 2000 x 2500 radiograph shrunk to 518 x 648 (173 against 42 ms,
    one thread; the whole of `prepare_file` 2.4x slower); ``benchmarks/prepare_resize.py``.
    """
    if image.ndim != 2:
        raise ValueError(f"resize_bspline expects a 2-D image, got shape {image.shape}")
    if height <= 0 or width <= 0:
        raise ValueError(f"output size {height}x{width} must be positive")
    pixels = np.ascontiguousarray(image, dtype=np.float32)
    # Resample first along the axis whose pass is cheaper (fewer output values).
    if height * pixels.shape[1] <= width * pixels.shape[0]:
        rows = _resize_axis0(pixels, height)
        return np.ascontiguousarray(_resize_axis0(np.ascontiguousarray(rows.T), width).T)
    cols = _resize_axis0(np.ascontiguousarray(pixels.T), width)
    return np.ascontiguousarray(_resize_axis0(np.ascontiguousarray(cols.T), height))


def prepare_array(image: np.ndarray, shorter_side: int = 518) -> np.ndarray:
    """The model card's recipe on decoded pixels: grey, B-spline resize, min-max -> uint8.

    ``image``: (H, W) or (H, W, 3) of any real dtype (what `read_image` returns). The result
    is (h, w) uint8 with the shorter side ``shorter_side``; it spans exactly 0..255 unless the
    image is constant (then all zeros).
    """
    if image.ndim == 3 and image.shape[2] == 3:
        grey = image.astype(np.float32) @ _LUMA
    elif image.ndim == 2:
        grey = image.astype(np.float32, copy=False)
    else:
        raise ValueError(f"expected an (H, W) or (H, W, 3) image, got shape {image.shape}")
    height, width = prepared_size(*grey.shape, shorter_side)
    if grey.size and grey.min() == grey.max():
        # Constant: min-max is undefined (zeros, as `to_uint8`), and float rounding in the
        # resize must not be stretched into a pattern.
        return np.zeros((height, width), dtype=np.uint8)
    return to_uint8(resize_bspline(grey, height, width))


def prepare_file(
    source: str | os.PathLike,
    destination: str | os.PathLike,
    *,
    shorter_side: int = 518,
    compress_level: int = 1,
    max_pixels: int = DEFAULT_MAX_PIXELS,
) -> tuple[tuple[int, int], tuple[int, int]]:
    """Prepare one file into a PNG (written atomically); returns (source HxW, output HxW).

    Raises `raddino.data.io.ImageReadError` for unreadable inputs.
    """
    from PIL import Image

    image = read_image(source, max_pixels=max_pixels)
    pixels = prepare_array(image, shorter_side)
    destination = Path(destination)
    destination.parent.mkdir(parents=True, exist_ok=True)
    tmp = destination.with_name(f".tmp-{destination.name}")
    try:
        Image.fromarray(pixels).save(tmp, format="PNG", compress_level=compress_level)
        os.replace(tmp, destination)
    finally:
        if tmp.exists():
            tmp.unlink()
    return (int(image.shape[0]), int(image.shape[1])), (int(pixels.shape[0]), int(pixels.shape[1]))


# --------------------------------------------------------------------------- manifests


@dataclass(frozen=True)
class PrepareOptions:
    """Settings of `prepare_manifest`. Only ``shorter_side`` changes the pixels."""

    shorter_side: int = 518
    workers: int | None = None  # None: one per available core; 0: in this process
    compress_level: int = 1  # zlib level of the PNGs (lossless at every level)
    max_pixels: int = DEFAULT_MAX_PIXELS
    progress: bool = True

    def __post_init__(self) -> None:
        if self.shorter_side <= 0:
            raise ValueError(f"shorter_side={self.shorter_side} must be positive")
        if not 0 <= self.compress_level <= 9:
            raise ValueError(f"compress_level={self.compress_level} must be 0..9")
        if self.workers is not None and self.workers < 0:
            raise ValueError(f"workers={self.workers} must be >= 0")


@dataclass(frozen=True)
class PrepareSummary:
    """Counts over the unique images of the manifest."""

    images: int  # unique input images
    prepared: int  # prepared by this run
    skipped: int  # already prepared by an earlier run
    rejected: int  # unreadable (this run or earlier), listed in rejects.csv
    manifest: Path
    rejects: Path


def prepare_manifest(
    manifest: str | os.PathLike,
    out_dir: str | os.PathLike,
    options: PrepareOptions | None = None,
) -> PrepareSummary:
    """Prepare every image of ``manifest`` into ``out_dir``; resumable (see module doc)."""
    options = options or PrepareOptions()
    manifest = Path(manifest).expanduser()
    out_dir = Path(out_dir).expanduser()
    header, rows = read_manifest_table(manifest)
    sources = list(dict.fromkeys(os.path.normpath(os.path.abspath(r["path"])) for r in rows))
    outputs = output_names(sources, manifest.parent.absolute())

    with OutputLock(out_dir):  # one writer per folder, taken before anything is written
        _check_settings(out_dir, options)
        log = _ProgressLog(out_dir / _LOG_FILE)
        done, rejected = log.read()
        todo = []
        skipped = 0
        for source in sources:
            if source in rejected and source not in done:
                continue
            record = done.get(source)
            if (
                record
                and record["output"] == outputs[source]
                and (out_dir / outputs[source]).is_file()
            ):
                skipped += 1
                continue
            todo.append(source)

        prepared = 0
        with log:
            for result in _run(todo, outputs, out_dir, options):
                log.append(result)
                if "rejected" in result:
                    rejected[result["source"]] = result["rejected"]
                    done.pop(result["source"], None)
                else:
                    done[result["source"]] = result
                    rejected.pop(result["source"], None)
                    prepared += 1

        rejects_path = out_dir / _REJECTS_FILE
        listed = [s for s in sources if s in rejected and s not in done]
        write_csv_atomic(rejects_path, ["path", "reason"], ([s, rejected[s]] for s in listed))
        manifest_path = out_dir / _MANIFEST_FILE
        write_bytes_atomic(manifest_path, _new_manifest(manifest, header, rows, done, out_dir))
    return PrepareSummary(
        images=len(sources),
        prepared=prepared,
        skipped=skipped,
        rejected=len(listed),
        manifest=manifest_path,
        rejects=rejects_path,
    )


def output_names(sources: Sequence[str], base: Path) -> dict[str, str]:
    """Source path -> PNG path relative to the output folder (``images/<relative>.png``).

    Paths inside ``base`` (the manifest's folder) keep their relative layout; others go to
    ``images/_external/<hash of their folder>/``. When two sources would share a name (``a.dcm``
    and ``a.jpg``), both keep their suffix (``a.dcm.png``, ``a.jpg.png``).
    """
    relative = {}
    for source in sources:
        rel = os.path.relpath(source, base)
        if rel.startswith(os.pardir + os.sep) or rel == os.pardir or os.path.isabs(rel):
            folder = hashlib.sha1(os.path.dirname(source).encode()).hexdigest()[:12]
            rel = os.path.join("_external", folder, os.path.basename(source))
        relative[source] = Path(rel).as_posix()
    plain = {source: _png_name(rel) for source, rel in relative.items()}
    counts: dict[str, int] = {}
    for name in plain.values():
        counts[name] = counts.get(name, 0) + 1
    return {
        source: f"{_IMAGES_DIR}/{relative[source] + '.png' if counts[name] > 1 else name}"
        for source, name in plain.items()
    }


def _png_name(relative: str) -> str:
    """``a/b.dcm`` -> ``a/b.png``; a name without an image suffix gets ``.png`` appended."""
    path = Path(relative)
    if path.suffix.lower() in IMAGE_SUFFIXES:
        return path.with_suffix(".png").as_posix()
    return f"{relative}.png"


def _check_settings(out_dir: Path, options: PrepareOptions) -> None:
    """Write ``prepare.json`` or check that it matches ``options`` (pixels must not change)."""
    settings = {
        "format": FORMAT_NAME,
        "version": FORMAT_VERSION,
        "shorter_side": options.shorter_side,
        "interpolation": INTERPOLATION,
        "intensity": "min-max to [0, 255], rounded",
    }
    path = out_dir / _SETTINGS_FILE
    if not path.exists():
        if any(not is_lock_file(p) for p in out_dir.iterdir()):
            raise PrepareMismatchError(
                f"{out_dir}: folder is not empty and has no {_SETTINGS_FILE}; choose an empty "
                "or a previously prepared folder"
            )
        write_bytes_atomic(path, (json.dumps(settings, indent=2) + "\n").encode())
        return
    try:
        existing = json.loads(path.read_text())
    except (OSError, ValueError) as error:
        raise PrepareMismatchError(f"{path}: unreadable ({error})") from error
    different = [
        f"{key}: {existing.get(key)!r} there, {value!r} now"
        for key, value in settings.items()
        if existing.get(key) != value
    ]
    if different:
        raise PrepareMismatchError(
            f"{out_dir} was prepared with other settings ({'; '.join(different)}); use another "
            "--out folder"
        )


class _ProgressLog:
    """``progress.jsonl``: one JSON object per finished image, appended and flushed."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._handle: io.TextIOWrapper | None = None

    def read(self) -> tuple[dict[str, dict], dict[str, str]]:
        """(source -> done record, source -> reject reason); drops a torn last line."""
        done: dict[str, dict] = {}
        rejected: dict[str, str] = {}
        if not self.path.exists():
            return done, rejected
        data = self.path.read_bytes()
        good = data[: data.rfind(b"\n") + 1]
        if len(good) != len(data):
            with open(self.path, "r+b") as handle:  # a kill mid-line leaves a torn line
                handle.truncate(len(good))
        for line in good.decode("utf-8", errors="replace").splitlines():
            try:
                record = json.loads(line)
            except ValueError:
                continue
            if "rejected" in record:
                rejected[record["source"]] = record["rejected"]
                done.pop(record["source"], None)
            else:
                done[record["source"]] = record
                rejected.pop(record["source"], None)
        return done, rejected

    def __enter__(self) -> _ProgressLog:
        self._handle = open(self.path, "a", encoding="utf-8")
        return self

    def append(self, record: dict) -> None:
        assert self._handle is not None
        self._handle.write(json.dumps(record) + "\n")
        self._handle.flush()

    def __exit__(self, *exc: object) -> None:
        if self._handle is not None:
            self._handle.close()
            self._handle = None


def _task(job: tuple[str, str, int, int, int]) -> dict:
    """Worker: prepare one image; failures become a ``rejected`` record, except a full disk."""
    source, destination, shorter_side, compress_level, max_pixels = job
    try:
        (sh, sw), (h, w) = prepare_file(
            source,
            destination,
            shorter_side=shorter_side,
            compress_level=compress_level,
            max_pixels=max_pixels,
        )
    except Exception as error:  # one bad file must not stop a run over 100k images
        if isinstance(error, OSError) and error.errno in (errno.ENOSPC, errno.EDQUOT):
            raise  # a full disk is not the image's fault: stop, and redo it on the rerun
        reason = getattr(error, "reason", None) or f"{type(error).__name__}: {error}"
        return {"source": source, "rejected": str(reason)}
    return {"source": source, "source_size": [sh, sw], "size": [h, w]}


def _init_worker() -> None:
    """Leave Ctrl-C to the parent, which stops the pool."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)


@contextlib.contextmanager
def _single_threaded_blas() -> Iterator[None]:
    """Environment for spawned workers: one BLAS/OpenMP thread each (workers fill the cores)."""
    keys = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")
    saved = {key: os.environ.get(key) for key in keys}
    for key in keys:
        os.environ.setdefault(key, "1")
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def _run(
    todo: list[str], outputs: dict[str, str], out_dir: Path, options: PrepareOptions
) -> Iterator[dict]:
    """Prepare ``todo`` (in worker processes unless ``workers == 0``), yielding each result."""
    jobs = [
        (
            s,
            str(out_dir / outputs[s]),
            options.shorter_side,
            options.compress_level,
            options.max_pixels,
        )
        for s in todo
    ]
    workers = available_cores() if options.workers is None else options.workers
    workers = min(workers, len(jobs))
    bar = None
    if options.progress and jobs:
        from tqdm import tqdm

        bar = tqdm(total=len(jobs), desc="preprocess", unit="img")
    try:
        if workers <= 1:
            for job in jobs:
                result = _task(job)
                result["output"] = outputs[job[0]]
                if bar:
                    bar.update()
                yield result
            return
        with _single_threaded_blas():
            pool = multiprocessing.get_context("spawn").Pool(workers, initializer=_init_worker)
        try:
            for result in pool.imap_unordered(_task, jobs, chunksize=1):
                result["output"] = outputs[result["source"]]
                if bar:
                    bar.update()
                yield result
            pool.close()
        except BaseException:
            pool.terminate()
            raise
        finally:
            pool.join()
    finally:
        if bar:
            bar.close()


def _new_manifest(
    manifest: Path,
    header: list[str],
    rows: list[dict[str, str]],
    done: dict[str, dict],
    out_dir: Path,
) -> bytes:
    """The prepared manifest: every column carried over, paths and boxes updated."""
    added = [c for c in ("source_path", "source_height", "source_width") if c not in header]
    columns = ["path", *added, *(c for c in header if c != "path")]
    mask_columns = [c for c in header if c.startswith("mask_")]

    def records():
        for row in rows:
            source = os.path.normpath(os.path.abspath(row["path"]))
            record = done.get(source)
            if record is None:
                continue
            (sh, sw), (h, w) = record["source_size"], record["size"]
            values = dict(row)
            values["path"] = record["output"]
            values["source_path"] = source
            values["source_height"], values["source_width"] = str(sh), str(sw)
            for column in mask_columns:
                if values.get(column):
                    target = resolve_manifest_path(manifest, values[column])
                    values[column] = Path(os.path.relpath(target, out_dir)).as_posix()
            if values.get("boxes"):
                values["boxes"] = _scale_boxes(values["boxes"], h / sh, w / sw, manifest)
            yield [values.get(c) or "" for c in columns]

    return csv_bytes(columns, records())


def _scale_boxes(text: str, sy: float, sx: float, manifest: Path) -> str:
    try:
        boxes = json.loads(text)
    except ValueError as error:
        raise ManifestError(f"{manifest}: column 'boxes': not JSON ({text[:40]!r})") from error
    for box in boxes:
        for key, scale in (("x", sx), ("w", sx), ("y", sy), ("h", sy)):
            if key in box:
                box[key] = round(float(box[key]) * scale, 3)
    return json.dumps(boxes, separators=(",", ":"))
