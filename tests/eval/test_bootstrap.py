"""Patient-level bootstrap: intervals contain the estimate, narrow with n, keep patients whole."""

from __future__ import annotations

import numpy as np

from raddino.eval.bootstrap import PatientBootstrap, mean_of, paired
from raddino.eval.metrics import auroc


def noisy_task(n: int, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    score = rng.normal(size=n)
    y = (score + rng.normal(size=n) > 0).astype(float)
    groups = np.arange(n) // 2  # two images per patient
    return y, score, groups


def test_interval_contains_the_point_estimate_and_narrows_with_more_samples():
    widths = []
    for n in (200, 2000):
        y, score, groups = noisy_task(n, seed=n)
        estimate = PatientBootstrap(groups, 1000, seed=0).estimate(auroc, y, score)
        assert estimate.low <= estimate.value <= estimate.high
        assert 0.75 < estimate.value < 0.92
        widths.append(estimate.high - estimate.low)
    assert widths[1] < widths[0] / 2  # ~ 1/sqrt(10) expected


def test_resamples_draw_whole_patients():
    groups = np.array(["a", "a", "a", "b", "c", "c"])
    bootstrap = PatientBootstrap(groups, 300, seed=1, chunk=64)
    weights = np.concatenate(list(bootstrap.weights()))
    assert weights.shape == (300, 6)
    assert np.all(weights[:, 0] == weights[:, 1]) and np.all(weights[:, 0] == weights[:, 2])
    assert np.all(weights[:, 4] == weights[:, 5])
    assert np.all(weights[:, [0, 3, 4]].sum(axis=1) == 3)  # 3 patients drawn each time


def test_same_seed_same_resamples_so_identical_predictions_differ_by_zero():
    y, score, groups = noisy_task(300, seed=3)
    bootstrap = PatientBootstrap(groups, 200, seed=7)
    a = bootstrap.estimate(auroc, y, score)
    b = bootstrap.estimate(auroc, y, score)
    difference = paired(a, b, bootstrap)
    assert difference.value == 0 and difference.low == 0 and difference.high == 0
    macro = mean_of([a, b], bootstrap)
    assert macro.value == a.value and np.allclose(macro.samples, a.samples)
