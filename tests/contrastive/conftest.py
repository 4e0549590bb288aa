"""Fixtures for the language-supervised recipe: image-report manifests and a tiny config."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.conftest import synthetic_radiograph

# Towers small enough that a step takes milliseconds: a 2-block ViT on 32 px images of 8 px
# patches and a 1-layer BERT on 32 tokens.
CLIP_TINY_OVERRIDES = [
    "recipe=contrastive",
    "model.arch=tiny", "model.depth=2", "model.embed_dim=48", "model.num_heads=2",
    "model.patch_size=8", "model.image_size=32", "model.layerscale=0.1",
    "text.vocab_size=200", "text.max_length=32", "text.width=32", "text.depth=1",
    "text.num_heads=2", "text.mlp_dim=64", "contrastive.embed_dim=16",
    "crops.global_size=32", "crops.max_source_size=96", "train.batch_size=4",
    "train.num_workers=0", "train.steps=6", "train.checkpoint_every=2",
    "train.tensorboard=false", "optim.warmup_steps=2",
]  # fmt: skip

FINDINGS = ["pleural effusion", "pneumothorax", "consolidation", "nodule", "cardiomegaly"]


def write_manifest(path: Path, rows: list[dict[str, str]]) -> Path:
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return path


def report_of(rng: np.random.Generator) -> str:
    present = [f for f in FINDINGS if rng.random() < 0.4]
    side = "left" if rng.random() < 0.5 else "right"
    sentences = [f"There is a {side}-sided {f}." for f in present] or ["No acute findings."]
    return "FINDINGS: " + " ".join(sentences) + " IMPRESSION: " + sentences[0]


@pytest.fixture(scope="session")
def pair_manifest(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """24 radiograph-like PNGs and a manifest with path, split and report columns."""
    folder = tmp_path_factory.mktemp("pairs")
    (folder / "images").mkdir()
    rng = np.random.default_rng(0)
    rows = []
    for index in range(24):
        image = synthetic_radiograph(120 + 4 * index, 100 + 3 * index, seed=index)
        Image.fromarray(image).save(folder / "images" / f"{index:02d}.png")
        rows.append({"path": f"images/{index:02d}.png", "split": "train", "report": report_of(rng)})
    return write_manifest(folder / "manifest.csv", rows)
