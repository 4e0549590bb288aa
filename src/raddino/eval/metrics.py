"""Evaluation metrics, each computed for many bootstrap resamples at once.

Every metric takes the labels ``y`` (n,), the predictions ``score`` (n,) and a weight matrix
``weights`` (B, n) and returns (B,) values, one per row of weights. A resample of the test set is
a row of integer weights (how many times each image was drawn), so a weighted metric over the
whole test set equals the plain metric over the resample; the point estimate is the row of ones.
Ranking metrics sort the scores once for all resamples.

A metric that is undefined for a resample (one class only, no variance) is NaN there.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

Metric = Callable[[np.ndarray, np.ndarray, np.ndarray], np.ndarray]


def unit_weights(n: int) -> np.ndarray:
    """(1, n) ones: the weights of the test set itself."""
    return np.ones((1, n), dtype=np.float64)


def _tie_groups(score: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Descending order of ``score`` and the start of each run of equal scores in that order."""
    order = np.argsort(-score, kind="stable")
    ranked = score[order]
    starts = np.flatnonzero(np.r_[True, ranked[1:] != ranked[:-1]])
    return order, starts


def _class_weights_by_group(
    y: np.ndarray, score: np.ndarray, weights: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Positive and negative weight per tie group of descending scores: two (B, G) arrays."""
    order, starts = _tie_groups(np.asarray(score, dtype=np.float64))
    positive = np.asarray(y, dtype=np.float64)[order] > 0.5
    w = np.asarray(weights, dtype=np.float64)[:, order]
    pos = np.add.reduceat(np.where(positive, w, 0.0), starts, axis=1)
    neg = np.add.reduceat(np.where(positive, 0.0, w), starts, axis=1)
    return pos, neg


def auroc(y: np.ndarray, score: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """Area under the ROC curve (ties count one half): y (n,) in {0, 1} -> (B,)."""
    if len(y) == 0:
        return np.full(len(weights), np.nan)
    pos, neg = _class_weights_by_group(y, score, weights)
    total_pos, total_neg = pos.sum(axis=1), neg.sum(axis=1)
    neg_below = total_neg[:, None] - np.cumsum(neg, axis=1)  # negatives scored lower
    wins = (pos * (neg_below + 0.5 * neg)).sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        value = wins / (total_pos * total_neg)
    return np.where((total_pos > 0) & (total_neg > 0), value, np.nan)


def average_precision(y: np.ndarray, score: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """Area under the precision-recall curve as average precision (step-wise, no interpolation).

    AP = sum over thresholds of (recall increase) x precision, thresholds at each distinct score;
    the definition of scikit-learn's ``average_precision_score``. y (n,) in {0, 1} -> (B,).
    """
    if len(y) == 0:
        return np.full(len(weights), np.nan)
    pos, neg = _class_weights_by_group(y, score, weights)
    total_pos, total_neg = pos.sum(axis=1), neg.sum(axis=1)
    true_pos = np.cumsum(pos, axis=1)
    predicted = true_pos + np.cumsum(neg, axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        precision = np.where(predicted > 0, true_pos / predicted, 0.0)
        value = (pos * precision).sum(axis=1) / total_pos
    return np.where((total_pos > 0) & (total_neg > 0), value, np.nan)


def _weighted_mean(values: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """values (n,) or (B, n), weights (B, n) -> (B,)."""
    total = weights.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(total > 0, (weights * values).sum(axis=1) / total, np.nan)


def mean_absolute_error(y: np.ndarray, score: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """Mean |y - score| -> (B,)."""
    return _weighted_mean(np.abs(np.asarray(y, np.float64) - score), np.asarray(weights, float))


def r2_score(y: np.ndarray, score: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """Coefficient of determination 1 - SS_res / SS_tot (can be negative) -> (B,)."""
    y = np.asarray(y, np.float64)
    weights = np.asarray(weights, np.float64)
    mean = _weighted_mean(y, weights)
    residual = (weights * (y - score) ** 2).sum(axis=1)
    total = (weights * (y[None, :] - mean[:, None]) ** 2).sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(total > 0, 1.0 - residual / total, np.nan)


def pearson_r(y: np.ndarray, score: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """Pearson correlation of y and score -> (B,)."""
    y = np.asarray(y, np.float64)
    score = np.asarray(score, np.float64)
    weights = np.asarray(weights, np.float64)
    dy = y[None, :] - _weighted_mean(y, weights)[:, None]
    ds = score[None, :] - _weighted_mean(score, weights)[:, None]
    cov = (weights * dy * ds).sum(axis=1)
    var = (weights * dy**2).sum(axis=1) * (weights * ds**2).sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(var > 0, cov / np.sqrt(var), np.nan)


def weighted_mean(values: np.ndarray, _score: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """Mean of per-image values (e.g. Dice) under each resample -> (B,)."""
    return _weighted_mean(np.asarray(values, np.float64), np.asarray(weights, np.float64))


# name -> (function, higher is better)
BINARY_METRICS: dict[str, tuple[Metric, bool]] = {
    "auroc": (auroc, True),
    "auprc": (average_precision, True),
}
CONTINUOUS_METRICS: dict[str, tuple[Metric, bool]] = {
    "mae": (mean_absolute_error, False),
    "r2": (r2_score, True),
    "pearson_r": (pearson_r, True),
}


def dice_iou(
    predicted: np.ndarray, truth: np.ndarray, empty: float = 1.0
) -> tuple[np.ndarray, np.ndarray]:
    """Per-image Dice and IoU of binary masks (N, H, W) -> two (N,) arrays.

    When both masks are empty the overlap is perfect by convention (``empty``, 1.0 as in the
    SIIM-ACR pneumothorax challenge); a structure predicted where there is none scores 0.
    """
    predicted = np.asarray(predicted, bool).reshape(len(predicted), -1)
    truth = np.asarray(truth, bool).reshape(len(truth), -1)
    if predicted.shape != truth.shape:
        raise ValueError(f"prediction {predicted.shape} and truth {truth.shape} differ in shape")
    overlap = np.logical_and(predicted, truth).sum(axis=1).astype(np.float64)
    sizes = predicted.sum(axis=1).astype(np.float64) + truth.sum(axis=1)
    union = sizes - overlap
    with np.errstate(invalid="ignore", divide="ignore"):
        dice = np.where(sizes > 0, 2 * overlap / sizes, empty)
        iou = np.where(union > 0, overlap / union, empty)
    return dice, iou
