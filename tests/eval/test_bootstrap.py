"""Patient-level bootstrap: intervals contain the estimate, narrow with n, keep patients whole;
paired differences and macros resample by resample, wherever they are reported."""

from __future__ import annotations

import numpy as np
import pytest

from raddino.demo.summary import difference
from raddino.eval.bootstrap import Estimate, PatientBootstrap, mean_of, paired_difference
from raddino.eval.compare import paired_row
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
    d = paired_difference(a, b, bootstrap.level)
    assert d.value == 0 and d.low == 0 and d.high == 0
    macro = mean_of([a, b], bootstrap.level)
    assert macro.value == a.value and np.allclose(macro.samples, a.samples)


# 4 patients of 2 images; only patient 3 is positive, so AUROC is undefined in every resample
# that does not draw it
TINY_GROUPS = np.array([0, 0, 1, 1, 2, 2, 3, 3])
TINY_Y = np.array([0, 0, 0, 0, 0, 0, 1, 1], dtype=float)
SCORE_A = np.array([0.1, 0.2, 0.3, 0.9, 0.2, 0.1, 0.8, 0.7])
SCORE_B = np.array([0.5, 0.1, 0.9, 0.2, 0.6, 0.3, 0.4, 0.8])


def tiny_pair() -> tuple[Estimate, Estimate, PatientBootstrap]:
    bootstrap = PatientBootstrap(TINY_GROUPS, n_resamples=40, seed=3, chunk=16)
    a = bootstrap.estimate(auroc, TINY_Y, SCORE_A)
    b = bootstrap.estimate(auroc, TINY_Y, SCORE_B)
    return a, b, bootstrap


def direct_difference() -> tuple[np.ndarray, float, float]:
    """The paired difference written out: the patients of each resample drawn from seed 3 in
    chunks of 16, both AUROCs on the drawn images, subtracted; then the 2.5th and 97.5th
    percentiles of the defined differences."""
    rng = np.random.default_rng(3)
    drawn = np.concatenate([rng.integers(0, 4, size=(b, 4)) for b in (16, 16, 8)])
    samples = []
    for patients in drawn:
        images = np.concatenate([[2 * patient, 2 * patient + 1] for patient in patients])
        y = TINY_Y[images]
        if y.min() == y.max():
            samples.append(np.nan)
            continue
        one = np.ones((1, len(images)))
        samples.append(auroc(y, SCORE_A[images], one)[0] - auroc(y, SCORE_B[images], one)[0])
    samples = np.array(samples)
    low, high = np.percentile(samples[np.isfinite(samples)], [2.5, 97.5])
    return samples, float(low), float(high)


def test_paired_difference_equals_the_difference_written_out():
    a, b, _ = tiny_pair()
    samples, low, high = direct_difference()
    d = paired_difference(a, b)
    assert d.value == a.value - b.value
    np.testing.assert_allclose(d.samples, samples, rtol=0, atol=1e-12)  # NaN where undefined
    assert d.low == pytest.approx(low, abs=1e-12) and d.high == pytest.approx(high, abs=1e-12)
    assert d.undefined == int(np.isnan(samples).sum()) > 0  # some resamples miss patient 3


def test_compare_and_the_demo_summary_report_the_same_paired_difference():
    a, b, bootstrap = tiny_pair()
    d = paired_difference(a, b, bootstrap.level)
    row = paired_row("linear", "nodule", "auroc", [b, a], ["b", "a"], bootstrap.level)
    compared = row.differences["a"]
    assert (compared.value, compared.low, compared.high) == (d.value, d.low, d.high)
    assert np.array_equal(compared.samples, d.samples, equal_nan=True)
    assert row.to_dict()["differences"]["a"] == d.to_difference_dict()
    assert difference(a, b, bootstrap.level) == d.to_difference_dict()


def test_a_difference_without_resamples_has_no_interval_and_is_not_significant():
    a, b = Estimate(0.9, 0.8, 1.0), Estimate(0.5, 0.4, 0.6)
    assert difference(a, b, 0.95) == {
        "value": pytest.approx(0.4), "low": None, "high": None, "significant": False
    }  # fmt: skip
    with pytest.raises(ValueError, match="same resamples"):
        paired_difference(a, Estimate(0.5, 0.4, 0.6, np.zeros(3)))


def test_macro_is_undefined_in_a_resample_where_one_metric_is():
    a, _, _ = tiny_pair()
    defined = Estimate(0.5, 0.4, 0.6, np.full(a.samples.shape, 0.5))
    macro = mean_of([a, defined])
    assert macro.undefined == a.undefined
    assert macro.value == pytest.approx((a.value + 0.5) / 2)
