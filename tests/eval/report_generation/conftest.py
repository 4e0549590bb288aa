"""Fixtures for report generation: a tiny encoder, two image/report pairs, a tiny LM."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from raddino.data.preprocess import PreprocessConfig
from raddino.eval.report_generation.lm import SmallLMConfig, init_lm
from raddino.models.encoder import RadDino
from raddino.models.vit import ViTConfig

REPORTS = (
    "No pleural effusion or pneumothorax. Heart size is normal.",
    "Mild cardiomegaly. Small left pleural effusion.",
)
TINY_LM = SmallLMConfig(vocab_size=300, hidden_size=32, num_layers=2, num_heads=2)


@pytest.fixture(scope="session")
def tiny_encoder_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A random 1-block, 32-dim encoder at 56 px (4 x 4 patches) in the HF format, from seed 0:
    the same weights whichever tests ran before (its weights decide how fast stage 1 learns)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = RadDino.from_config(
            ViTConfig(image_size=56, patch_size=14, embed_dim=32, depth=1, num_heads=2),
            PreprocessConfig(shortest_edge=56, crop_height=56, crop_width=56),
        )
    out = tmp_path_factory.mktemp("report_encoder")
    model.save_pretrained(out)
    return out


@pytest.fixture(scope="session")
def pair_manifest(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Two noise images with different reports, each in train and (as a copy) in test."""
    root = tmp_path_factory.mktemp("report_pairs")
    rng = np.random.default_rng(0)
    rows = []
    for i, report in enumerate(REPORTS):
        image = Image.fromarray((rng.random((64, 64)) * 255).astype(np.uint8))
        for split in ("train", "test"):
            name = f"{split}{i}.png"
            image.save(root / name)
            rows.append({"path": name, "split": split, "report": report})
    path = root / "manifest.csv"
    with path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=["path", "split", "report"])
        writer.writeheader()
        writer.writerows(rows)
    return path


@pytest.fixture(scope="session")
def tiny_lm_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 2-layer, 32-dim Llama with a 300-token BPE tokenizer trained on the reports."""
    return init_lm(list(REPORTS) * 4, tmp_path_factory.mktemp("report_lm"), TINY_LM)
