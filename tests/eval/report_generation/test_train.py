"""Stages train the right parameters; the pipeline overfits two pairs; resume; generation."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from raddino.eval.encoders import EncoderSpec
from raddino.eval.report_generation import train as train_module
from raddino.eval.report_generation.generate import (
    GenerateOptions,
    generate_reports,
    load_report_model,
    read_predictions,
)
from raddino.eval.report_generation.lm import load_lm
from raddino.eval.report_generation.model import ReportModel, ReportModelConfig
from raddino.eval.report_generation.train import (
    TrainConfig,
    apply_stage,
    sample_indices,
    train_report_model,
)
from raddino.features.encode import EncodeOptions
from tests.eval.report_generation.conftest import REPORTS

ENCODE = EncodeOptions(num_workers=0, progress=False)


def fresh_model(lm_dir: Path) -> ReportModel:
    torch.manual_seed(0)
    lm, tokenizer = load_lm(lm_dir)
    return ReportModel(ReportModelConfig(encoder_dim=16, lm_dim=32), lm, tokenizer)


def names_with_gradients(model: ReportModel) -> set[str]:
    model.zero_grad()
    model(torch.randn(2, 4, 16), list(REPORTS)).backward()
    return {n for n, p in model.named_parameters() if p.grad is not None and p.grad.abs().sum()}


def test_stage_projector_gives_gradients_to_the_projector_only(tiny_lm_dir):
    model = apply_stage(fresh_model(tiny_lm_dir), TrainConfig(stage="projector"))
    names = names_with_gradients(model)
    assert names == {n for n, _ in model.projector.named_parameters(prefix="projector")}


def test_stage_lora_gives_gradients_to_projector_and_lora_only(tiny_lm_dir):
    model = apply_stage(fresh_model(tiny_lm_dir), TrainConfig(stage="lora"))
    names = names_with_gradients(model)
    lora = {n for n in names if "lora_" in n}
    assert lora and all(n.startswith("lm.") for n in lora)
    assert names - lora == {n for n, _ in model.projector.named_parameters(prefix="projector")}
    frozen = [n for n, p in model.named_parameters() if not p.requires_grad]
    assert frozen and all("lora_" not in n for n in frozen)


def test_sample_order_is_a_seeded_permutation_per_epoch():
    config = TrainConfig(batch_size=3, grad_accum=2, seed=1)
    first_epoch = np.concatenate([sample_indices(0, m, config, 6) for m in range(2)])
    assert sorted(first_epoch) == list(range(6))
    assert np.array_equal(sample_indices(1, 0, config, 6), sample_indices(1, 0, config, 6))


def train(tmp: Path, encoder, lm, manifest, **overrides) -> Path:
    settings = dict(stage="projector", steps=12, batch_size=2, lr=1e-2, progress=False)
    settings |= {"log_every": 1, **overrides}
    config = TrainConfig(**settings)
    return train_report_model(
        EncoderSpec(str(encoder)), lm, manifest, tmp, config, encode_options=ENCODE
    )


def losses(run: Path) -> list[float]:
    lines = (run / "metrics.jsonl").read_text().splitlines()
    return [json.loads(line)["loss"] for line in lines]


@pytest.mark.parametrize("stage", ["projector", "lora"])
def test_resume_after_interruption_gives_the_same_projector(
    stage, tmp_path, tiny_encoder_dir, tiny_lm_dir, pair_manifest, monkeypatch
):
    args = (tiny_encoder_dir, tiny_lm_dir, pair_manifest)
    whole = train(tmp_path / "whole", *args, steps=6, save_every=3, stage=stage)
    real_save = train_module._atomic_save

    def save_then_die(obj, path):
        real_save(obj, path)
        raise KeyboardInterrupt

    monkeypatch.setattr(train_module, "_atomic_save", save_then_die)
    with pytest.raises(KeyboardInterrupt):
        train(tmp_path / "cut", *args, steps=6, save_every=3, stage=stage)
    monkeypatch.setattr(train_module, "_atomic_save", real_save)
    assert torch.load(tmp_path / "cut" / "checkpoint.pt", weights_only=True)["step"] == 3
    resumed = train(tmp_path / "cut", *args, steps=6, save_every=3, stage=stage)
    a = load_file(whole / "projector.safetensors")
    b = load_file(resumed / "projector.safetensors")
    assert all(torch.allclose(a[k], b[k], atol=1e-6) for k in a)
    assert losses(resumed) == pytest.approx(losses(whole), abs=1e-5)


def test_training_leaves_the_callers_random_numbers_alone(
    tmp_path, tiny_encoder_dir, tiny_lm_dir, pair_manifest
):
    torch.manual_seed(123)
    expected = torch.rand(4)
    torch.manual_seed(123)
    train(tmp_path / "run", tiny_encoder_dir, tiny_lm_dir, pair_manifest, steps=2, stage="lora")
    assert torch.equal(torch.rand(4), expected)


def test_resume_refuses_other_settings(tmp_path, tiny_encoder_dir, tiny_lm_dir, pair_manifest):
    args = (tiny_encoder_dir, tiny_lm_dir, pair_manifest)
    train(tmp_path / "run", *args, steps=2)
    with pytest.raises(ValueError, match="other settings"):
        train(tmp_path / "run", *args, steps=2, lr=0.5)


@pytest.fixture(scope="module")
def overfit_run(tmp_path_factory, tiny_encoder_dir, tiny_lm_dir, pair_manifest) -> Path:
    """Projector + whole tiny LM trained on the two pairs until it memorises them."""
    out = tmp_path_factory.mktemp("overfit") / "run"
    return train(out, tiny_encoder_dir, tiny_lm_dir, pair_manifest, stage="full", steps=80)


def test_pipeline_overfits_two_pairs_and_greedy_reproduces_them(
    overfit_run, pair_manifest, tmp_path
):
    assert losses(overfit_run)[-1] < 0.1
    assert (overfit_run / "lm" / "config.json").exists()
    out = generate_reports(
        overfit_run,
        pair_manifest,
        tmp_path / "pred.csv",
        GenerateOptions(split="test", max_new_tokens=40, progress=False),
        encode_options=ENCODE,
    )
    predicted = read_predictions(out)
    assert [Path(p).name for p in predicted] == ["test0.png", "test1.png"]
    assert list(predicted.values()) == list(REPORTS)


def test_greedy_is_deterministic_and_beam_search_runs(overfit_run):
    model = load_report_model(overfit_run)
    images = torch.randn(2, 16, 32)
    first = model.generate(images, max_new_tokens=12)
    assert first == model.generate(images, max_new_tokens=12)
    beams = model.generate(images, max_new_tokens=12, num_beams=3)
    assert len(beams) == 2 and all(isinstance(text, str) for text in beams)


def test_lora_run_saves_an_adapter_that_generation_loads(
    tmp_path, tiny_encoder_dir, tiny_lm_dir, pair_manifest
):
    run = train(
        tmp_path / "run", tiny_encoder_dir, tiny_lm_dir, pair_manifest, stage="lora", steps=3
    )
    assert (run / "lora" / "adapter_config.json").exists()
    model = load_report_model(run)
    assert not any("lora_" in n for n, _ in model.named_parameters())  # merged
    assert len(model.generate(torch.randn(1, 16, 32), max_new_tokens=3)) == 1


def test_stage_one_lowers_the_loss_and_keeps_the_lm(
    tmp_path, tiny_encoder_dir, overfit_run, pair_manifest
):
    # a language model that knows the reports (a random one barely reacts to the projector)
    lm_dir = overfit_run / "lm"
    before = {k: v.clone() for k, v in load_lm(lm_dir)[0].state_dict().items()}
    run = train(tmp_path / "run", tiny_encoder_dir, lm_dir, pair_manifest)
    curve = losses(run)
    assert len(curve) == 12 and np.mean(curve[-3:]) < 0.9 * np.mean(curve[:3])
    state = torch.load(run / "checkpoint.pt", weights_only=True)
    assert state["step"] == 12
    assert set(state["trainable"]) == {
        "projector.fc1.weight",
        "projector.fc1.bias",
        "projector.fc2.weight",
        "projector.fc2.bias",
    }
    assert not (run / "lm").exists() and not (run / "lora").exists()
    after = load_lm(lm_dir)[0].state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    # generation loads the run's projector onto the unchanged LM
    model = load_report_model(run)
    projector = load_file(run / "projector.safetensors")
    assert torch.equal(model.projector.fc1.weight, projector["fc1.weight"])
    assert len(model.generate(torch.randn(1, 16, 32), max_new_tokens=3)) == 1
    config = json.loads((run / "config.json").read_text())
    assert config["train_images"] == 2 and config["model"]["encoder_dim"] == 32
