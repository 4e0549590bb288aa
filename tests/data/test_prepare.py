"""RAD-DINO's image preparation: B-spline resize to 518, min-max to [0, 255], PNG, resumable."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from scipy import ndimage

from raddino.cli.main import main
from raddino.data.io import to_uint8
from raddino.data.prepare import (
    PrepareMismatchError,
    PrepareOptions,
    prepare_array,
    prepare_file,
    prepare_manifest,
    prepared_size,
    resize_bspline,
)
from tests.conftest import synthetic_radiograph
from tests.data.datasets.files import write_dicom

# ----------------------------------------------------------------------------- B-spline


def scipy_bspline(image: np.ndarray, height: int, width: int, **conventions) -> np.ndarray:
    """scipy's cubic B-spline zoom of ``image`` to (height, width), in float64."""
    zoom = (height / image.shape[0], width / image.shape[1])
    options = {"mode": "mirror", "grid_mode": True, **conventions}
    out = ndimage.zoom(image.astype(np.float64), zoom, order=3, **options)
    assert out.shape == (height, width)
    return out


@pytest.mark.parametrize(
    ("shape", "size"), [((40, 30), (17, 13)), ((25, 33), (61, 80)), ((700, 560), (648, 518))]
)
def test_bspline_resize_equals_scipy_zoom_with_mirror_edges_and_pixel_centres(
    shape: tuple[int, int], size: tuple[int, int]
) -> None:
    image = np.random.default_rng(1).uniform(0, 255, shape).astype(np.float32)
    out = resize_bspline(image, *size)
    np.testing.assert_allclose(out, scipy_bspline(image, *size), atol=2e-3)
    # The conventions matter: half-sample edges or corner-aligned grids land far away.
    assert np.abs(out - scipy_bspline(image, *size, mode="reflect")).max() > 0.5
    assert np.abs(out - scipy_bspline(image, *size, grid_mode=False)).max() > 0.5


def test_prepared_png_is_scipy_zoom_min_max_scaled_up_to_rounding_ties() -> None:
    image = sixteen_bit(700, 560)
    expected = to_uint8(scipy_bspline(image.astype(np.float32), 648, 518))
    difference = np.abs(prepare_array(image).astype(int) - expected)
    assert difference.max() <= 1 and (difference > 0).mean() < 1e-3


def test_bspline_interpolates_and_reproduces_ramps() -> None:
    image = np.random.default_rng(2).uniform(0, 255, (50, 40)).astype(np.float32)
    np.testing.assert_allclose(resize_bspline(image, 50, 40), image, atol=1e-3)
    yy, xx = np.mgrid[0:200, 0:160].astype(np.float32)
    ramp = 0.7 * yy - 0.3 * xx + 5
    out = resize_bspline(ramp, 53, 41)
    y = (np.arange(53) + 0.5) * 200 / 53 - 0.5
    x = (np.arange(41) + 0.5) * 160 / 41 - 0.5
    exact = 0.7 * y[:, None] - 0.3 * x[None, :] + 5
    inner = (slice(5, -5), slice(5, -5))  # the mirror boundary bends a ramp at the edges
    np.testing.assert_allclose(out[inner], exact[inner], atol=1e-3)


@pytest.mark.parametrize(
    ("shape", "size"),
    [((2500, 2000), (648, 518)), ((2000, 2500), (518, 648)), ((518, 518), (518, 518)),
     ((100, 50), (1036, 518)), ((3, 1000), (518, 172667))],
)  # fmt: skip
def test_prepared_size_keeps_the_aspect_ratio(
    shape: tuple[int, int], size: tuple[int, int]
) -> None:
    assert prepared_size(*shape) == size


# ----------------------------------------------------------------------------- images


def test_prepared_image_has_shorter_side_518_aspect_and_full_range() -> None:
    for height, width in ((700, 560), (560, 700), (300, 420)):
        image = synthetic_radiograph(height, width).astype(np.uint16) * 40 + 1000
        out = prepare_array(image)
        assert out.dtype == np.uint8 and min(out.shape) == 518
        assert abs(out.shape[1] / out.shape[0] - width / height) < 1 / 518
        assert out.min() == 0 and out.max() == 255
    colour = np.stack([synthetic_radiograph(300, 400)] * 3, axis=-1)
    difference = np.abs(prepare_array(colour).astype(int) - prepare_array(colour[..., 0]))
    assert difference.max() <= 1 and (difference == 0).mean() > 0.999  # luma of grey = grey
    assert not prepare_array(np.full((20, 30), 7.0)).any()  # constant image


def sixteen_bit(height: int = 700, width: int = 560) -> np.ndarray:
    base = synthetic_radiograph(height, width).astype(np.float64) / 255
    return (base * 60_000 + 2_000).astype(np.uint16)


def test_16_bit_dicom_is_prepared_from_its_full_range(tmp_path: Path) -> None:
    pixels = sixteen_bit()
    source = write_dicom(tmp_path / "scan.dcm", pixels, bits_stored=16)
    sizes = prepare_file(source, tmp_path / "scan.png")
    assert sizes == ((700, 560), (648, 518))
    with Image.open(tmp_path / "scan.png") as image:
        assert image.mode == "L" and image.size == (518, 648)
        out = np.asarray(image)
    np.testing.assert_array_equal(out, prepare_array(pixels.astype(np.float32)))
    assert out.min() == 0 and out.max() == 255
    # 256 levels cannot come from an 8-bit shortcut of the 16-bit data: check the spread.
    assert len(np.unique(out)) > 200


def test_monochrome1_dicom_comes_out_inverted(tmp_path: Path) -> None:
    pixels = sixteen_bit(600, 520)
    normal = write_dicom(tmp_path / "m2.dcm", pixels, photometric="MONOCHROME2")
    inverted = write_dicom(tmp_path / "m1.dcm", pixels, photometric="MONOCHROME1")
    prepare_file(normal, tmp_path / "m2.png")
    prepare_file(inverted, tmp_path / "m1.png")
    a = np.asarray(Image.open(tmp_path / "m2.png")).astype(int)
    b = np.asarray(Image.open(tmp_path / "m1.png")).astype(int)
    difference = np.abs(b - (255 - a))
    assert difference.max() <= 1 and (difference == 0).mean() > 0.99  # rounding ties only


# ----------------------------------------------------------------------------- manifests


def write_manifest(path: Path, rows: list[dict[str, str]]) -> Path:
    with path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return path


def read_rows(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as handle:
        return list(csv.DictReader(handle))


@pytest.fixture
def dataset(tmp_path: Path) -> Path:
    """A manifest with good, bad and missing images, masks and boxes; returns the CSV."""
    folder = tmp_path / "data"
    (folder / "img").mkdir(parents=True)
    Image.fromarray(synthetic_radiograph(600, 500)).save(folder / "img" / "a.png")
    Image.fromarray(synthetic_radiograph(400, 640, seed=1)).convert("RGB").save(
        folder / "img" / "b.jpg"
    )
    write_dicom(folder / "img" / "a.dcm", sixteen_bit(520, 600))
    good = (folder / "img" / "a.png").read_bytes()
    (folder / "img" / "truncated.png").write_bytes(good[: len(good) // 2])
    (folder / "img" / "empty.png").write_bytes(b"")
    (folder / "masks").mkdir()
    Image.fromarray(np.zeros((600, 500), dtype=np.uint8)).save(folder / "masks" / "a.png")
    box = json.dumps([{"label": "Nodule", "x": 100.0, "y": 60.0, "w": 50.0, "h": 30.0}])
    rows = [
        {"path": "img/a.png", "split": "train", "Nodule": "1", "mask_lung": "masks/a.png",
         "boxes": box},
        {"path": "img/b.jpg", "split": "val", "Nodule": "", "mask_lung": "", "boxes": ""},
        {"path": "img/a.dcm", "split": "test", "Nodule": "0", "mask_lung": "", "boxes": ""},
        {"path": "img/a.png", "split": "train", "Nodule": "1", "mask_lung": "", "boxes": ""},
        {"path": "img/truncated.png", "split": "train", "Nodule": "0", "mask_lung": "",
         "boxes": ""},
        {"path": "img/empty.png", "split": "train", "Nodule": "0", "mask_lung": "", "boxes": ""},
        {"path": "img/absent.dcm", "split": "train", "Nodule": "0", "mask_lung": "", "boxes": ""},
    ]  # fmt: skip
    return write_manifest(folder / "manifest.csv", rows)


def test_manifest_is_prepared_with_columns_carried_over(dataset: Path, tmp_path: Path) -> None:
    out = tmp_path / "prepared"
    summary = prepare_manifest(dataset, out, PrepareOptions(workers=0, progress=False))
    assert (summary.images, summary.prepared, summary.rejected) == (6, 3, 3)
    rejects = {Path(r["path"]).name: r["reason"] for r in read_rows(out / "rejects.csv")}
    assert set(rejects) == {"truncated.png", "empty.png", "absent.dcm"}
    assert "empty" in rejects["empty.png"] and "no such file" in rejects["absent.dcm"]

    rows = read_rows(out / "manifest.csv")
    assert list(rows[0])[:4] == ["path", "source_path", "source_height", "source_width"]
    assert [r["split"] for r in rows] == ["train", "val", "test", "train"]
    # a.png and a.dcm would both be images/img/a.png: both keep their suffix.
    assert [r["path"] for r in rows] == [
        "images/img/a.png.png", "images/img/b.png", "images/img/a.dcm.png", "images/img/a.png.png",
    ]  # fmt: skip
    for row in rows:
        with Image.open(out / row["path"]) as image:
            assert image.mode == "L" and min(image.size) == 518
    first = rows[0]
    assert (first["source_height"], first["source_width"], first["Nodule"]) == ("600", "500", "1")
    assert (out / first["mask_lung"]).resolve() == (dataset.parent / "masks" / "a.png").resolve()
    scale = 518 / 500
    box = json.loads(first["boxes"])[0]
    assert box == {"label": "Nodule", "x": round(100 * scale, 3), "y": round(60 * 622 / 600, 3),
                   "w": round(50 * scale, 3), "h": round(30 * 622 / 600, 3)}  # fmt: skip


def test_rerun_skips_finished_work_and_refuses_other_settings(
    dataset: Path, tmp_path: Path
) -> None:
    out = tmp_path / "prepared"
    options = PrepareOptions(workers=0, progress=False)
    prepare_manifest(dataset, out, options)
    before = {p: p.stat().st_mtime_ns for p in (out / "images").rglob("*.png")}
    again = prepare_manifest(dataset, out, options)
    assert (again.prepared, again.skipped, again.rejected) == (0, 3, 3)
    assert {p: p.stat().st_mtime_ns for p in (out / "images").rglob("*.png")} == before
    with pytest.raises(PrepareMismatchError, match="shorter_side: 518 there, 256 now"):
        prepare_manifest(dataset, out, PrepareOptions(shorter_side=256, workers=0))
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "notes.txt").write_text("mine")
    with pytest.raises(PrepareMismatchError, match="not empty"):
        prepare_manifest(dataset, tmp_path / "busy", options)


def test_cli_preprocess_and_its_errors(dataset: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "cli"
    code = main(["data", "preprocess", "--manifest", str(dataset), "--out", str(out),
                 "--workers", "0", "--no-progress"])  # fmt: skip
    printed = capsys.readouterr().out
    assert code == 0
    assert "prepared 3 images, 0 already done, 3 rejected" in printed
    assert f"manifest: {out / 'manifest.csv'}" in printed
    code = main(["data", "preprocess", "--manifest", str(dataset), "--out", str(out),
                 "--size", "300", "--no-progress"])  # fmt: skip
    assert code == 2 and "shorter_side" in capsys.readouterr().err
    code = main(["data", "preprocess", "--manifest", str(tmp_path / "none.csv"), "--out",
                 str(tmp_path / "x")])  # fmt: skip
    assert code == 2 and "none.csv" in capsys.readouterr().err


def many_images(folder: Path, count: int) -> Path:
    (folder / "img").mkdir(parents=True)
    rows = []
    for i in range(count):
        name = f"img/{i:03d}.png"
        image = Image.fromarray(synthetic_radiograph(400, 360, seed=i))
        image.save(folder / name, compress_level=1)
        rows.append({"path": name, "label": str(i % 2)})
    (folder / "img" / "bad.png").write_bytes(b"not a png")
    rows.append({"path": "img/bad.png", "label": "0"})
    return write_manifest(folder / "manifest.csv", rows)


def output_files(out: Path) -> dict[str, bytes]:
    return {
        p.relative_to(out).as_posix(): p.read_bytes()
        for p in out.rglob("*")
        if p.is_file() and p.name != "progress.jsonl"
    }


def test_resume_after_kill_gives_the_same_outputs(tmp_path: Path) -> None:
    manifest = many_images(tmp_path / "data", 60)
    killed = tmp_path / "killed"
    command = [sys.executable, "-m", "raddino", "data", "preprocess", "--manifest", str(manifest),
               "--out", str(killed), "--workers", "2", "--no-progress"]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(Path.cwd() / "src"), str(Path.cwd())])}
    process = subprocess.Popen(command, env=env, start_new_session=True,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    log = killed / "progress.jsonl"
    deadline = time.monotonic() + 60
    try:
        while time.monotonic() < deadline and process.poll() is None:
            if log.exists() and log.read_bytes().count(b"\n") >= 5:
                break
            time.sleep(0.005)
    finally:
        os.killpg(process.pid, signal.SIGKILL)  # the command and its worker processes
        process.wait()
    assert process.returncode == -signal.SIGKILL
    assert not (killed / "manifest.csv").exists(), "finished before it could be killed"
    done_at_kill = log.read_bytes().count(b"\n")
    assert 5 <= done_at_kill < 61

    resumed = main(command[3:])  # the same command again, in this process
    assert resumed == 0
    lines = [json.loads(line) for line in log.read_text().splitlines()]
    assert len({line["source"] for line in lines}) == 61  # every image once or more
    assert len(lines) <= 61 + 8  # only images in flight at the kill were redone

    clean = tmp_path / "clean"
    prepare_manifest(manifest, clean, PrepareOptions(workers=0, progress=False))
    assert output_files(killed) == output_files(clean)
    assert not list(killed.rglob(".tmp-*"))
