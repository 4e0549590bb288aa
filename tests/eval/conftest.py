"""Fixtures for the evaluation tests: a tiny 4-block encoder and small synthetic cohorts."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from tests.conftest import SMALL_HF_CONFIG, make_hf_model

TINY_VIT = dict(SMALL_HF_CONFIG, hidden_size=32, num_hidden_layers=4, num_attention_heads=2)


@pytest.fixture(autouse=True)
def single_thread(request: pytest.FixtureRequest):
    """These problems are tiny: one intra-op thread avoids thread synchronisation costing more
    than the work (by an order of magnitude when other test runs share the CPU). Only for the
    tests in this folder, not its sub-packages."""
    if request.node.path.parent != Path(__file__).parent:
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def write_manifest(path: Path, rows: list[dict[str, str]]) -> Path:
    with path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return path


def disk_image(size: int, rng: np.random.Generator, radius: int) -> tuple[np.ndarray, np.ndarray]:
    """A dark radiograph-like image with one bright disk, and the disk's mask (H, W) bool."""
    yy, xx = np.mgrid[0:size, 0:size]
    cy, cx = rng.integers(radius + 4, size - radius - 4, 2)
    disk = (yy - cy) ** 2 + (xx - cx) ** 2 < radius**2
    image = np.clip(60 + 140 * disk + rng.normal(0, 10, disk.shape), 0, 255).astype(np.uint8)
    return image, disk


@pytest.fixture(scope="session")
def tiny_vit_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A random 4-block, 32-dim Dinov2 model in the Hugging Face format."""
    return make_hf_model(tmp_path_factory.mktemp("tiny_vit"), **TINY_VIT)


@pytest.fixture(scope="session")
def disk_cohort(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """24 images of 112 px with a bright disk, its mask (mask_disk), splits 16/4/4, 2 images
    per patient, and a label ``left`` (disk in the left half). Returns the manifest path."""
    root = tmp_path_factory.mktemp("disk_cohort")
    rng = np.random.default_rng(0)
    rows = []
    for i in range(24):
        image, disk = disk_image(112, rng, radius=26)
        Image.fromarray(image).save(root / f"img{i:02d}.png")
        Image.fromarray(disk.astype(np.uint8) * 255).save(root / f"mask{i:02d}.png")
        centre_x = np.argwhere(disk)[:, 1].mean()
        rows.append(
            {
                "path": f"img{i:02d}.png",
                "split": "train" if i < 16 else ("val" if i < 20 else "test"),
                "patient_id": f"p{i // 2}",
                "mask_disk": f"mask{i:02d}.png",
                "left": str(int(centre_x < 56)),
            }
        )
    return write_manifest(root / "manifest.csv", rows)
