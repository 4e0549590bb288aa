"""The demo's figure inputs from a manifest: paths that open, wherever the demo folder is."""

from __future__ import annotations

import csv
import os
from pathlib import Path

import numpy as np
from PIL import Image

from raddino.demo.figures import correspondence_inputs, nodule_centroid, similarity_images

COLUMNS = ("path", "split", "nodule", "mask_nodule", "mask_left_lung", "mask_right_lung")


def write_cohort(folder: Path) -> Path:
    """Four 32 px images (three test images with a nodule, one train) and their masks."""
    rows = []
    for i, (split, nodule) in enumerate([("test", 1), ("train", 1), ("test", 1), ("test", 1)]):
        row = {"path": f"images/{i}.png", "split": split, "nodule": str(nodule)}
        for name in ("nodule", "left_lung", "right_lung"):
            mask = np.zeros((32, 32), dtype=np.uint8)
            mask[4 + i : 10 + i, 6:12] = 255
            row[f"mask_{name}"] = f"masks/{name}/{i}.png"
            (folder / "masks" / name).mkdir(parents=True, exist_ok=True)
            Image.fromarray(mask).save(folder / row[f"mask_{name}"])
        (folder / "images").mkdir(exist_ok=True)
        Image.fromarray(np.full((32, 32), 100, dtype=np.uint8)).save(folder / row["path"])
        rows.append(row)
    manifest = folder / "manifest.csv"
    with manifest.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=COLUMNS)
        writer.writeheader()
        writer.writerows(rows)
    return manifest


def test_inputs_open_from_a_relative_demo_folder(tmp_path, monkeypatch):
    # `make demo` passes a relative --out: image paths come resolved from read_manifest, mask
    # paths must be resolved once, not joined to the folder a second time.
    write_cohort(tmp_path / "demo-output" / "cohort")
    monkeypatch.chdir(tmp_path)
    manifest = Path("demo-output/cohort/manifest.csv")
    images, nodules, lungs = correspondence_inputs(manifest)
    assert [Path(p).name for p in images] == ["0.png", "2.png", "3.png"]  # test split only
    for path in [*images, *nodules, *(p for pair in lungs for p in pair)]:
        assert os.path.isfile(path), path
    query, point, targets = similarity_images(manifest)
    assert os.path.isfile(query) and all(os.path.isfile(t) for t in targets)
    assert point == (8.5, 6.5)  # centre of the first test image's nodule mask (rows 4-9)


def test_nodule_centre_is_the_same_for_grey_and_colour_masks(tmp_path):
    mask = np.zeros((32, 40), dtype=np.uint8)
    mask[4:10, 6:12] = 255
    Image.fromarray(mask).save(tmp_path / "grey.png")
    Image.fromarray(np.stack([mask, mask * 0, mask * 0], axis=-1)).save(tmp_path / "red.png")
    assert nodule_centroid(str(tmp_path / "grey.png")) == (8.5, 6.5)
    assert nodule_centroid(str(tmp_path / "red.png")) == (8.5, 6.5)
    Image.fromarray(mask * 0).save(tmp_path / "empty.png")
    assert nodule_centroid(str(tmp_path / "empty.png")) is None
