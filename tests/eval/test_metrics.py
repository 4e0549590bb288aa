"""Metrics: agree with their definitions, for one test set and for many resamples at once."""

from __future__ import annotations

import numpy as np
import pytest

from raddino.eval.metrics import (
    auroc,
    average_precision,
    dice_iou,
    mean_absolute_error,
    pearson_r,
    r2_score,
    unit_weights,
)


def pairwise_auroc(y: np.ndarray, score: np.ndarray, w: np.ndarray) -> float:
    pos, neg = y == 1, y == 0
    wins = (score[pos][:, None] > score[neg][None, :]) + 0.5 * (
        score[pos][:, None] == score[neg][None, :]
    )
    weights = w[pos][:, None] * w[neg][None, :]
    return float((wins * weights).sum() / weights.sum())


def repeated_average_precision(y: np.ndarray, score: np.ndarray, w: np.ndarray) -> float:
    """AP of the data set in which image i appears w[i] times."""
    ys, ss = np.repeat(y, w.astype(int)), np.repeat(score, w.astype(int))
    total, ap = (ys == 1).sum(), 0.0
    for threshold in np.unique(ss)[::-1]:
        chosen = ss >= threshold
        precision = (ys[chosen] == 1).sum() / chosen.sum()
        ap += ((ys == 1) & (ss == threshold)).sum() / total * precision
    return float(ap)


def test_ranking_metrics_match_their_definitions_with_ties_and_weights():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 60)
    score = np.round(rng.normal(size=60), 1)  # many ties
    weights = rng.integers(0, 3, (5, 60)).astype(float)
    got_auc, got_ap = auroc(y, score, weights), average_precision(y, score, weights)
    for b in range(5):
        assert got_auc[b] == pytest.approx(pairwise_auroc(y, score, weights[b]))
        assert got_ap[b] == pytest.approx(repeated_average_precision(y, score, weights[b]))


def test_perfect_and_reversed_rankings():
    y = np.array([0, 0, 1, 1])
    ones = unit_weights(4)
    assert auroc(y, np.array([0.1, 0.2, 0.8, 0.9]), ones)[0] == 1.0
    assert auroc(y, np.array([0.9, 0.8, 0.2, 0.1]), ones)[0] == 0.0
    assert auroc(y, np.zeros(4), ones)[0] == 0.5
    assert average_precision(y, np.array([0.1, 0.2, 0.8, 0.9]), ones)[0] == 1.0


def test_one_class_gives_nan_not_an_error():
    assert np.isnan(auroc(np.ones(3), np.arange(3.0), unit_weights(3))[0])
    assert np.isnan(average_precision(np.zeros(3), np.arange(3.0), unit_weights(3))[0])


def test_regression_metrics():
    rng = np.random.default_rng(1)
    y = rng.normal(size=100)
    ones = unit_weights(100)
    assert r2_score(y, y, ones)[0] == pytest.approx(1.0)
    assert pearson_r(y, 3 * y + 1, ones)[0] == pytest.approx(1.0)
    assert mean_absolute_error(y, y + 0.5, ones)[0] == pytest.approx(0.5)
    assert r2_score(y, np.full(100, y.mean()), ones)[0] == pytest.approx(0.0)
    prediction = y + rng.normal(size=100)
    expected = 1 - ((y - prediction) ** 2).sum() / ((y - y.mean()) ** 2).sum()
    assert r2_score(y, prediction, ones)[0] == pytest.approx(expected)
    assert pearson_r(y, prediction, ones)[0] == pytest.approx(np.corrcoef(y, prediction)[0, 1])


def test_perfect_prediction_gives_dice_one():
    rng = np.random.default_rng(2)
    truth = rng.random((3, 32, 32)) > 0.6
    dice, iou = dice_iou(truth, truth)
    assert np.all(dice == 1.0) and np.all(iou == 1.0)


def test_dice_and_iou_of_partial_overlap_and_empty_masks():
    truth = np.zeros((3, 4, 4), bool)
    predicted = np.zeros((3, 4, 4), bool)
    truth[0, :2] = True  # 8 pixels
    predicted[0, :1] = True  # 4 pixels, all inside
    predicted[1, 0, 0] = True  # structure predicted where there is none
    dice, iou = dice_iou(predicted, truth)
    assert dice[0] == pytest.approx(2 * 4 / 12) and iou[0] == pytest.approx(4 / 8)
    assert dice[1] == 0.0 and iou[1] == 0.0
    assert dice[2] == 1.0 and iou[2] == 1.0  # both empty
