"""Probes with known answers: planted signals are found, shuffled labels are not."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from raddino.eval.logistic import sample_weights
from raddino.eval.probe import ProbeConfig, run_probe
from raddino.eval.splits import Splits
from raddino.eval.targets import Target

FAST = ProbeConfig(n_resamples=500)


def cohort(n: int = 900, dim: int = 24, seed: int = 0) -> tuple[np.ndarray, Splits]:
    """Random features, splits 60/15/25 %, two images per patient (same split)."""
    rng = np.random.default_rng(seed)
    features = rng.normal(size=(n, dim)).astype(np.float32)
    patient = np.arange(n) // 2
    fraction = patient / patient.max()
    split = np.where(fraction < 0.6, "train", np.where(fraction < 0.75, "val", "test"))
    return features, Splits(split, patient.astype(str))


def planted(features: np.ndarray, noise: float, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    direction = np.linspace(1.0, -1.0, features.shape[1])
    return features @ direction + noise * rng.normal(size=len(features))


def test_planted_linear_signal_gives_auroc_near_one_and_shuffled_labels_near_half():
    features, splits = cohort()
    labels = (planted(features, 0.05, seed=1) > 0).astype(float)
    shuffled = np.random.default_rng(2).permutation(labels)
    targets = [Target("planted", "binary", labels), Target("shuffled", "binary", shuffled)]
    results, _ = run_probe(features, targets, splits, FAST)
    logistic = results["linear"].targets
    assert logistic["planted"].metrics["auroc"].value > 0.98
    assert logistic["planted"].metrics["auprc"].value > 0.98
    chance = logistic["shuffled"].metrics["auroc"]
    assert 0.4 < chance.value < 0.6 and chance.low < 0.5 < chance.high
    knn = results["knn"].targets
    assert knn["planted"].metrics["auroc"].value > 0.85
    assert knn["shuffled"].metrics["auroc"].low < 0.5 < knn["shuffled"].metrics["auroc"].high
    macro = results["linear"].macro["auroc"]
    assert macro.value == pytest.approx(
        (logistic["planted"].metrics["auroc"].value + chance.value) / 2
    )
    assert macro.low <= macro.value <= macro.high


def test_unknown_labels_are_excluded_from_training_and_scoring():
    features, splits = cohort(seed=3)
    signal = planted(features, 0.05, seed=4)
    labels = (signal > 0).astype(float)
    # The most clearly positive third is unknown: read as 0 it would invert the relationship.
    unknown = signal > np.quantile(signal, 0.67)
    labels[unknown] = np.nan
    results, _ = run_probe(features, [Target("partly_known", "binary", labels)], splits, FAST)
    result = results["linear"].targets["partly_known"]
    test = splits.indices("test")
    assert len(result.y) == int((~unknown[test]).sum()) < len(test)
    assert not np.isnan(result.y).any()
    assert result.counts["train"]["known"] == int((~unknown[splits.indices("train")]).sum())
    assert result.metrics["auroc"].value > 0.97


def test_sample_weights_ignore_unknown_labels_and_balance_classes():
    labels = torch.tensor([[1.0, np.nan], [0.0, 1.0], [0.0, 0.0], [np.nan, 0.0], [0.0, 0.0]])
    weights = sample_weights(labels)
    assert weights[0, 1] == 0 and weights[3, 0] == 0
    assert torch.allclose(weights.sum(0), torch.ones(2))
    assert weights[0, 0] == pytest.approx(0.5)  # the single positive carries half the weight


def test_planted_continuous_signal_gives_r2_near_one():
    features, splits = cohort(seed=5)
    age = 50 + 10 * planted(features, 0.01, seed=6)
    results, _ = run_probe(features, [Target("age", "continuous", age)], splits, FAST)
    metrics = results["linear"].targets["age"].metrics
    assert metrics["r2"].value > 0.99
    assert metrics["pearson_r"].value > 0.99
    assert metrics["mae"].value < 1.0
    assert metrics["r2"].low <= metrics["r2"].value <= metrics["r2"].high
    assert results["knn"].targets["age"].metrics["r2"].value > 0.3


def test_a_target_with_one_class_in_a_split_is_refused_by_name():
    features, splits = cohort(seed=7)
    labels = (planted(features, 0.05, seed=8) > 0).astype(float)
    labels[splits.indices("val")] = 0.0
    with pytest.raises(ValueError, match=r"'effusion' has one class only in the val split"):
        run_probe(features, [Target("effusion", "binary", labels)], splits, FAST)


def test_unknown_protocol_is_refused():
    with pytest.raises(ValueError, match="protocols"):
        ProbeConfig(protocols=("svm",))
