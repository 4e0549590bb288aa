"""Caveat texts: each says what is thin, how thin, and what was done about it."""

from __future__ import annotations

import numpy as np

from raddino.eval.bootstrap import Estimate
from raddino.eval.caveats import (
    MIN_CASES,
    NO_VARIANCE,
    at_grid_edge,
    few_cases,
    k_clamped,
    undefined_resamples,
)
from raddino.eval.compare import merged_notes


def test_few_cases_names_only_the_classes_below_the_threshold():
    assert MIN_CASES == 10
    assert few_cases("target 'x'", "test", {"positive": 10, "negative": 12}) is None
    assert few_cases("target 'x'", "test", {"positive": 30, "negative": 1}) == (
        "target 'x': 1 negative in the test split (fewer than 10); "
        "its test metrics and intervals rest on very few cases"
    )
    note = few_cases("structure 'heart'", "val", {"annotated image": 4})
    assert note.startswith("structure 'heart': 4 annotated images in the val split (fewer than 10)")
    both = few_cases("target 'age'", "train", {"positive": 3, "negative": 0})
    assert both.startswith("target 'age': 3 positives and 0 negatives in the train split")
    assert "(fewer than 10 each)" in both


def test_undefined_resamples_group_metrics_by_count_and_skip_defined_ones():
    nan = float("nan")
    binary = {
        "auroc": Estimate(0.5, 0.1, 0.9, np.array([0.4, nan, 0.6, nan])),
        "auprc": Estimate(0.5, 0.1, 0.9, np.array([0.4, nan, 0.6, nan])),
    }
    continuous = {
        "mae": Estimate(0.5, 0.1, 0.9, np.array([0.4, 0.2, 0.6, 0.3])),
        "r2": Estimate(0.5, 0.1, 0.9, np.array([nan, 0.2, 0.6, 0.3])),
        "pearson_r": Estimate(0.5, 0.1, 0.9, np.array([nan, 0.2, nan, 0.3])),
    }
    assert undefined_resamples("target 'x'", binary, 4) == [
        "target 'x': AUROC, AUPRC undefined in 2 of 4 bootstrap resamples (e.g. a resample "
        "without both classes); those were dropped and the interval rests on the other 2",
    ]
    assert undefined_resamples("target 'age'", continuous, 4, NO_VARIANCE) == [
        "target 'age': R² undefined in 1 of 4 bootstrap resamples (e.g. a resample whose values "
        "do not vary); those were dropped and the interval rests on the other 3",
        "target 'age': Pearson r undefined in 2 of 4 bootstrap resamples (e.g. a resample whose "
        "values do not vary); those were dropped and the interval rests on the other 2",
    ]
    assert undefined_resamples("target 'age'", {"mae": continuous["mae"]}, 4) == []


def test_k_clamped_and_grid_edges():
    assert k_clamped("k-NN, target 'x'", [50], 32, 32) == (
        "k-NN, target 'x': k = 50 exceeds the 32 training images with a known label and was "
        "clamped to k = 32; the selected k is 32"
    )
    grid = (1e-6, 1e-3, 10.0)
    assert at_grid_edge("s", "lambda", 1e-3, grid) is None
    assert "the largest value of its grid [1e-06, 10]" in at_grid_edge("s", "lambda", 10.0, grid)
    assert "the smallest value" in at_grid_edge("s", "alpha", 1e-6, grid)
    assert at_grid_edge("s", "alpha", 3.0, (3.0,)) is None


def test_compare_keeps_shared_notes_once_and_labels_the_others():
    notes = [["few negatives", "lambda at edge"], ["few negatives"], ["few negatives", "k"]]
    assert merged_notes(["a", "b", "c"], notes) == [
        "few negatives",
        "a: lambda at edge",
        "c: k",
    ]
