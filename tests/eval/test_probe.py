"""Probes with known answers: planted signals are found, shuffled labels are not."""

from __future__ import annotations

import warnings
from dataclasses import replace

import numpy as np
import pytest
import torch

from raddino.eval.caveats import EvaluationWarning
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


# Caveats: the probe says when its numbers rest on too little (raddino.eval.caveats).


def small_cohort(n_train: int, n_val: int, test_labels: list[float], dim: int = 8, seed: int = 0):
    """Balanced train/val labels following feature 0, the given test labels; one image per
    patient. Returns features, splits and labels."""
    rng = np.random.default_rng(seed)
    y = np.r_[np.arange(n_train) % 2, np.arange(n_val) % 2, test_labels].astype(float)
    split = np.array(["train"] * n_train + ["val"] * n_val + ["test"] * len(test_labels))
    features = rng.normal(size=(len(y), dim)).astype(np.float32)
    features[:, 0] += 2 * y
    return features, Splits(split, np.array([f"p{i}" for i in range(len(y))])), y


def test_four_test_images_with_one_negative_are_counted_and_noted():
    """The case that reported ``AUROC 0.000 [0.000, 0.000]`` without a word: the one negative
    scores above the three positives, and a third of the resamples lack it."""
    features, splits, y = small_cohort(32, 8, [1, 1, 1, 0])
    features[-1, 0] += 10
    config = ProbeConfig(n_resamples=1000, protocols=("linear",))
    with pytest.warns(EvaluationWarning) as caught:
        results, bootstrap = run_probe(features, [Target("few", "binary", y)], splits, config)
    result = results["linear"].targets["few"]
    assert result.counts["test"] == {"known": 4, "positive": 3, "negative": 1}
    assert result.counts["train"] == {"known": 32, "positive": 16, "negative": 16}
    auroc = result.metrics["auroc"]
    assert (auroc.value, auroc.low, auroc.high) == (0.0, 0.0, 0.0)
    # undefined exactly where a resample lacks a class: no negative, or no positive at all
    weights = np.concatenate(list(bootstrap.weights(result.columns)))
    missing = int(((weights[:, 3] == 0) | (weights[:, :3].sum(1) == 0)).sum())
    assert 260 < missing < 380  # 1000 * ((3/4)^4 + (1/4)^4) = 320 expected
    assert auroc.undefined == result.metrics["auprc"].undefined == missing
    notes = results["linear"].notes
    assert any(
        n.startswith("target 'few': 3 positives and 1 negative in the test split (fewer than 10")
        for n in notes
    )
    undefined = f"target 'few': AUROC, AUPRC undefined in {missing} of 1000 bootstrap resamples"
    assert any(n.startswith(undefined) for n in notes)
    assert any(n.endswith(f"the interval rests on the other {1000 - missing}") for n in notes)
    assert [str(w.message) for w in caught] == notes


def test_k_larger_than_the_labelled_training_images_is_clamped_and_said():
    """k = 50 and 100 with 32 labelled training images: the k used is 32, as reported, and the
    test scores are those of an independent weighted 32-NN over train + val."""
    features, splits, y = small_cohort(33, 16, [0, 1] * 10, seed=1)
    y[0] = np.nan  # 32 known labels in train
    config = ProbeConfig(protocols=("knn",), ks=(50, 100), n_resamples=50)
    with pytest.warns(EvaluationWarning, match="clamped"):
        results, _ = run_probe(features, [Target("t", "binary", y)], splits, config)
    result = results["knn"].targets["t"]
    assert result.hyper["k"] == 32
    assert (
        "k-NN, target 't': k = 50, 100 exceed the 32 training images with a known label and "
        "were clamped to k = 32; the selected k is 32"
    ) in results["knn"].notes

    x = features.astype(np.float64)
    bank = np.flatnonzero(np.isin(splits.split, ["train", "val"]) & ~np.isnan(y))
    unit = x - x[np.isin(splits.split, ["train", "val"])].mean(0)
    unit /= np.linalg.norm(unit, axis=1, keepdims=True)
    expected = []
    for query in splits.indices("test"):
        similarity = unit[bank] @ unit[query]
        top = np.argsort(-similarity)[:32]
        votes = np.exp((similarity[top] - similarity[top].max()) / config.temperature)
        expected.append((votes * y[bank][top]).sum() / votes.sum())
    np.testing.assert_allclose(result.score, expected, atol=1e-5)


def test_a_strength_at_the_edge_of_its_grid_is_said_and_one_inside_is_not():
    features, splits = cohort(seed=9)
    finding = (planted(features, 0.05, seed=10) > 0).astype(float)
    age = 50 + 10 * planted(features, 0.01, seed=11)  # nearly noiseless: R² falls with alpha
    targets = [Target("finding", "binary", finding), Target("age", "continuous", age)]
    config = ProbeConfig(
        protocols=("linear",), lambdas=(1.0, 10.0), alphas=(10.0, 100.0, 1000.0), n_resamples=50
    )
    with pytest.warns(EvaluationWarning, match="value of its grid"):
        results, _ = run_probe(features, targets, splits, config)
    notes = results["linear"].notes
    chosen = results["linear"].targets["finding"].hyper["lambda"]
    edge = "smallest" if chosen == 1.0 else "largest"  # a grid of two: either is an edge
    assert (
        f"linear probe, target 'finding': the selected lambda = {chosen:g} is the {edge} value "
        "of its grid [1, 10]; the best value may lie beyond it"
    ) in notes
    assert results["linear"].targets["age"].hyper["alpha"] == 10.0
    assert (
        "linear probe, target 'age': the selected alpha = 10 is the smallest value of its grid "
        "[10, 1000]; the best value may lie beyond it"
    ) in notes

    one_value = replace(config, lambdas=(1e-6,), alphas=(10.0,))
    results, _ = run_probe(features, targets, splits, one_value)
    assert results["linear"].notes == []  # a grid of one value: nothing was chosen


def test_a_healthy_probe_has_no_caveats():
    """900 images, every class in the hundreds in each split, signals whose best strengths lie
    inside the grids: no note and no warning."""
    features, splits = cohort()
    labels = (planted(features, 1.0, seed=1) > 0).astype(float)
    age = 50 + 10 * planted(features, 3.0, seed=11)
    targets = [Target("finding", "binary", labels), Target("age", "continuous", age)]
    with warnings.catch_warnings():
        warnings.simplefilter("error", EvaluationWarning)
        results, _ = run_probe(features, targets, splits, FAST)
    assert [results[p].notes for p in ("linear", "knn")] == [[], []]
    assert min(results["linear"].targets["finding"].counts["val"].values()) >= 10
