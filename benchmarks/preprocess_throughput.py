"""Throughput of `raddino data preprocess` against a straightforward pydicom + PIL loop.

Both turn the same 16-bit DICOMs (2000 x 2500 by default) into 8-bit PNGs whose shorter side
is 518, one run each, on the same files:

* baseline: one process; ``pydicom.dcmread(...).pixel_array`` -> float32 -> min-max to
  [0, 255] -> PIL bicubic resize -> round -> ``Image.save`` (PIL's default PNG settings);
* raddino: ``prepare_manifest`` (decode with the modality/VOI LUT, cubic B-spline resize,
  min-max, PNG) with one worker process per core, at its default PNG level (1) and at PIL's
  default level (6).

"cores" = CPU seconds of the run (the process and its workers) / wall seconds; "CPU ms/img"
includes the workers' start-up. Other programs on the machine lower every rate: compare runs
of one invocation, and look at the load printed with them.

    python benchmarks/preprocess_throughput.py [--images 20] [--workers N] [--keep DIR]
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import resource
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import pydicom
from PIL import Image
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from raddino.data.prepare import PrepareOptions, available_cores, prepare_manifest, prepared_size


def synthetic_dicom(path: Path, height: int, width: int, seed: int) -> None:
    """A 16-bit (BitsStored 16) MONOCHROME2 radiograph-like DICOM."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    body = np.exp(-(((xx - width / 2) / (0.35 * width)) ** 2)) * (1 - yy / (2.5 * height))
    ribs = 0.15 * np.sin(yy / (18 + seed % 5)) * (body > 0.4)
    pixels = 20_000 + 38_000 * (body + ribs) + rng.normal(0, 600, (height, width))
    pixels = np.clip(pixels, 0, 65_535).astype(np.uint16)
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.1"  # CR image storage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = meta.MediaStorageSOPClassUID
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.Modality = "CR"
    ds.Rows, ds.Columns = height, width
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated = ds.BitsStored = 16
    ds.HighBit = 15
    ds.PixelRepresentation = 0
    ds.PixelData = pixels.tobytes()
    ds.save_as(path, enforce_file_format=True)


def baseline(sources: list[Path], out: Path) -> None:
    """The straightforward single-process loop."""
    out.mkdir(parents=True, exist_ok=True)
    for source in sources:
        pixels = pydicom.dcmread(source).pixel_array.astype(np.float32)
        low, high = pixels.min(), pixels.max()
        pixels = (pixels - low) * (255.0 / (high - low))
        height, width = prepared_size(*pixels.shape)
        resized = Image.fromarray(pixels).resize((width, height), Image.Resampling.BICUBIC)
        grey = np.clip(np.rint(np.asarray(resized)), 0, 255).astype(np.uint8)
        Image.fromarray(grey).save(out / f"{source.stem}.png")


def cpu_seconds() -> float:
    own = resource.getrusage(resource.RUSAGE_SELF)
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def timed(function, *args) -> tuple[float, float]:
    """(wall seconds, CPU seconds of this process and its finished workers) of one call."""
    cpu, start = cpu_seconds(), time.perf_counter()
    function(*args)
    return time.perf_counter() - start, cpu_seconds() - cpu


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=60, help="DICOMs to prepare (default 60)")
    parser.add_argument("--height", type=int, default=2500)
    parser.add_argument("--width", type=int, default=2000)
    parser.add_argument("--workers", type=int, default=None, help="default: one per core")
    parser.add_argument("--keep", type=Path, help="keep inputs and outputs in this folder")
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args()

    folder = Path(args.keep or tempfile.mkdtemp(prefix="raddino-prep-bench-"))
    dicoms = folder / "dicom"
    dicoms.mkdir(parents=True, exist_ok=True)
    sources = []
    for i in range(args.images):
        path = dicoms / f"scan{i:03d}.dcm"
        if not path.exists():
            synthetic_dicom(path, args.height, args.width, seed=i)
        sources.append(path)
    manifest = folder / "manifest.csv"
    with manifest.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["path"])
        writer.writerows([[p.relative_to(folder).as_posix()] for p in sources])
    workers = args.workers or available_cores()

    results = {}
    shutil.rmtree(folder / "out-baseline", ignore_errors=True)
    wall, cpu = timed(baseline, sources, folder / "out-baseline")
    results["baseline (pydicom + PIL, 1 process, PNG level 6)"] = (wall, cpu, "out-baseline")
    for level in (1, 6):
        out = folder / f"out-raddino-{level}"
        shutil.rmtree(out, ignore_errors=True)
        options = PrepareOptions(workers=workers, compress_level=level, progress=False)
        wall, cpu = timed(prepare_manifest, manifest, out, options)
        results[f"raddino ({workers} workers, PNG level {level})"] = (wall, cpu, out.name)

    first = next(iter(results.values()))[0]
    load = os.getloadavg()[0]
    print(f"{args.images} DICOMs {args.width}x{args.height} 16-bit -> PNG, shorter side 518")
    print(f"machine: {os.cpu_count()} CPUs, {available_cores()} available; load {load:.1f}")
    print(f"{'run':<50} {'images/s':>8} {'speed-up':>8} {'cores':>6} {'CPU ms/img':>10} {'MB':>6}")
    report = []
    for name, (wall, cpu, out_name) in results.items():
        rate = args.images / wall
        size = sum(p.stat().st_size for p in (folder / out_name).rglob("*.png")) / 1e6
        per_image = 1000 * cpu / args.images
        print(
            f"{name:<50} {rate:8.2f} {first / wall:7.2f}x {cpu / wall:6.2f} {per_image:10.1f} "
            f"{size:6.1f}"
        )
        report.append(
            {"run": name, "images_per_s": rate, "speedup": first / wall, "cores": cpu / wall,
             "cpu_ms_per_image": per_image, "png_megabytes": size, "load": load}
        )  # fmt: skip
    a = np.asarray(Image.open(folder / "out-baseline" / "scan000.png"), dtype=np.float32)
    b = np.asarray(Image.open(folder / "out-raddino-1" / "images" / "dicom" / "scan000.png"))
    print(f"same output size: {a.shape == b.shape}; mean |baseline - raddino| = "
          f"{np.abs(a - b).mean():.2f} grey levels (bicubic vs B-spline)")  # fmt: skip
    if args.json:
        args.json.write_text(json.dumps(report, indent=2) + "\n")
    if not args.keep:
        shutil.rmtree(folder)


if __name__ == "__main__":
    main()
