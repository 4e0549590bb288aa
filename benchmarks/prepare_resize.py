"""The B-spline resize of `raddino data preprocess` against ``scipy.ndimage.zoom`` (the baseline).

Both compute the same interpolating cubic B-spline (mirror boundary, pixel centres aligned):

* baseline: ``scipy.ndimage.zoom(image, ..., order=3, mode="mirror", grid_mode=True)``, which
  prefilters the whole input image recursively (float64) and then evaluates 4 x 4 taps per
  output pixel;
* raddino: ``raddino.data.prepare.resize_bspline``, banded matrix products with the cardinal
  cubic spline, one axis at a time, cheaper axis first.

One BLAS/OpenMP thread, as in each worker of ``prepare_manifest``. Timed on the same synthetic
16-bit DICOMs (2000 x 2500 by default -> 518 x 648): the resize alone, and the whole of
``prepare_file`` (decode, resize, min-max, PNG) with each resize. Also printed: how far the
uint8 PNGs of the two differ (grey levels, fraction of pixels).

    python benchmarks/prepare_resize.py [--images 6] [--height 2500] [--width 2000]
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
import time
from pathlib import Path
from unittest import mock

import numpy as np
from PIL import Image
from scipy import ndimage

from preprocess_throughput import synthetic_dicom  # the script's folder is on sys.path
from raddino.data import prepare
from raddino.data.io import read_image

_THREAD_VARIABLES = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")


def scipy_resize(image: np.ndarray, height: int, width: int) -> np.ndarray:
    """The baseline: scipy's cubic B-spline zoom to exactly (height, width), float32."""
    zoom = (height / image.shape[0], width / image.shape[1])
    out = ndimage.zoom(
        np.asarray(image, dtype=np.float32), zoom, order=3, mode="mirror", grid_mode=True
    )
    assert out.shape == (height, width), (out.shape, (height, width))
    return out


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def best_of(rounds: int, function, *args) -> float:
    """Fastest wall seconds of ``rounds`` calls."""
    best = float("inf")
    for _ in range(rounds):
        start = time.perf_counter()
        function(*args)
        best = min(best, time.perf_counter() - start)
    return best


def main() -> None:
    if any(os.environ.get(key) != "1" for key in _THREAD_VARIABLES):
        # BLAS reads its thread count when numpy is imported: start again with one thread.
        os.execve(
            sys.executable,
            [sys.executable, *sys.argv],
            {**os.environ, **dict.fromkeys(_THREAD_VARIABLES, "1")},
        )
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=6)
    parser.add_argument("--height", type=int, default=2500)
    parser.add_argument("--width", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=3, help="timed rounds; the best counts")
    args = parser.parse_args()

    folder = Path(tempfile.mkdtemp(prefix="raddino-resize-bench-"))
    sources = [folder / f"scan{i:03d}.dcm" for i in range(args.images)]
    for seed, path in enumerate(sources):
        synthetic_dicom(path, args.height, args.width, seed=seed)
    images = [read_image(path) for path in sources]
    height, width = prepare.prepared_size(args.height, args.width)

    def resize_all(resize) -> None:
        for image in images:
            resize(image, height, width)

    def prepare_all(resize, tag: str) -> None:
        with mock.patch.object(prepare, "resize_bspline", resize):
            for path in sources:
                prepare.prepare_file(path, folder / f"{path.stem}.{tag}.png")

    resize_all(prepare.resize_bspline)  # builds and caches the per-axis weights once
    per_image = 1000 / args.images
    times = {
        "resize, scipy.ndimage.zoom (baseline)": best_of(args.rounds, resize_all, scipy_resize),
        "resize, raddino resize_bspline": best_of(args.rounds, resize_all, prepare.resize_bspline),
        "prepare_file, scipy resize (baseline)": best_of(
            args.rounds, prepare_all, scipy_resize, "scipy"
        ),
        "prepare_file, raddino resize": best_of(
            args.rounds, prepare_all, prepare.resize_bspline, "raddino"
        ),
    }

    print(f"CPU: {cpu_model()}; 1 thread; load {os.getloadavg()[0]:.1f}")
    print(f"{args.images} DICOMs {args.width}x{args.height} 16-bit -> {width}x{height}")
    names = list(times)
    for baseline, ours in ((names[0], names[1]), (names[2], names[3])):
        print(f"  {baseline:<40} {times[baseline] * per_image:8.1f} ms/img")
        print(
            f"  {ours:<40} {times[ours] * per_image:8.1f} ms/img   "
            f"{times[baseline] / times[ours]:.2f}x faster than the baseline"
        )
    floats = max(
        float(
            np.abs(prepare.resize_bspline(i, height, width) - scipy_resize(i, height, width)).max()
        )
        for i in images
    )
    diffs = []
    for path in sources:
        a = np.asarray(Image.open(folder / f"{path.stem}.scipy.png"), dtype=np.int16)
        b = np.asarray(Image.open(folder / f"{path.stem}.raddino.png"), dtype=np.int16)
        diffs.append(np.abs(a - b))
    changed = np.mean([float((d > 0).mean()) for d in diffs])
    print(
        f"agreement: resize max |raddino - scipy| = {floats:.2e} (input range 0..65535); "
        f"PNGs: max {max(int(d.max()) for d in diffs)} grey level(s), "
        f"{changed:.4%} of pixels differ"
    )
    for path in folder.iterdir():
        path.unlink()
    folder.rmdir()


if __name__ == "__main__":
    main()
