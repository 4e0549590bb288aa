"""CLIP, SigLIP and timm encoders through the evaluation and figure commands, by path alone."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from raddino.cli.main import main
from tests.cli import test_evaluate
from tests.models.test_adapters import make_clip, make_siglip, make_timm, perturb

# test_evaluate.py's fixtures: its 60-image cohort with a disk mask, one intra-op thread
cohort = test_evaluate.cohort
single_thread = test_evaluate.single_thread
FAST = ["--workers", "0", "--no-progress", "--bootstrap", "100"]


@pytest.fixture(scope="module")
def encoders(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """family -> a tiny random encoder's folder in that library's format (32 px, 4 x 4 patches)."""
    root = tmp_path_factory.mktemp("encoders")
    make_clip(root / "clip")
    make_siglip(root / "siglip", full=True)
    make_timm(root / "timm")
    return {family: root / family for family in ("clip", "siglip", "timm")}


@pytest.mark.parametrize("family", ["clip", "siglip", "timm"])
def test_probe_takes_each_family_by_path(encoders, cohort, tmp_path, capsys, family):
    out = tmp_path / "probe"
    args = ["probe", "--model", str(encoders[family]), "--manifest", str(cohort),
            "--out", str(out), "--targets", "bright", "--protocols", "linear", *FAST]  # fmt: skip
    assert main(args) == 0
    assert "encoding 60 images" in capsys.readouterr().err
    report = json.loads((out / "probe.json").read_text())
    bright = report["protocols"]["linear"]["targets"]["bright"]
    assert bright["counts"]["test"]["known"] == 12
    assert bright["metrics"]["auroc"]["value"] > 0.9  # brightness survives any encoder


def test_segment_with_a_siglip_encoder(encoders, cohort, tmp_path, capsys):
    out = tmp_path / "segment"
    args = ["segment", "--model", str(encoders["siglip"]), "--manifest", str(cohort),
            "--out", str(out), "--masks", "disk", "--epochs", "2", "--lr", "1e-2",
            "--overlays", "0", *FAST]  # fmt: skip
    assert main(args) == 0
    assert "disk: Dice " in capsys.readouterr().out
    report = json.loads((out / "segment.json").read_text())
    assert report["metrics"]["disk"]["dice"]["value"] > 0


def test_compare_a_timm_encoder_with_its_random_baseline(encoders, cohort, tmp_path):
    out = tmp_path / "compare"
    args = ["compare", "--models", str(encoders["timm"]), "--random-baseline",
            "--manifest", str(cohort), "--out", str(out), "--targets", "bright",
            "--protocols", "linear", *FAST]  # fmt: skip
    assert main(args) == 0
    report = json.loads((out / "compare.json").read_text())
    assert [e["label"] for e in report["encoders"]] == ["timm", "random-init(timm)"]
    assert report["encoders"][1]["random_init"] is True
    assert {row["task"] for row in report["rows"]} == {"linear"}


def test_similarity_with_a_clip_encoder(encoders, cohort, tmp_path, capsys):
    folder = cohort.parent
    out = tmp_path / "sim.png"
    args = ["similarity", "--model", str(encoders["clip"]), str(folder / "img0.png"),
            "--point", "35,35", str(folder / "img1.png"), str(folder / "img0.png"),
            "--out", str(out), "--device", "cpu"]  # fmt: skip
    assert main(args) == 0
    assert f"wrote {out}" in capsys.readouterr().out
    numbers = np.load(out.with_suffix(".npz"))
    assert numbers["maps"].shape == (2, 4, 4)  # 32 px crops of 8 px patches
    assert numbers["maps"][1][tuple(numbers["query_patch"])] == pytest.approx(1.0, abs=1e-5)


def test_pca_with_a_bare_timm_state_dict(cohort, tmp_path, capsys):
    import timm

    torch.manual_seed(0)
    model = timm.create_model("test_vit", pretrained=False, num_classes=0)
    perturb(model, 0)
    weights = tmp_path / "test_vit.safetensors"
    save_file(model.state_dict(), str(weights))
    folder = cohort.parent
    out = tmp_path / "pca"
    args = ["pca", "--model", f"timm:test_vit:{weights}", str(folder / "img0.png"),
            str(folder / "img1.png"), "--out", str(out), "--device", "cpu"]  # fmt: skip
    assert main(args) == 0
    assert (out / "pca.png").is_file()
