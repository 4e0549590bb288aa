"""Number formatting of every table and sentence: estimates, signed differences, percentages."""

from __future__ import annotations

import math

import numpy as np
import pytest

from raddino.demo.document import difference_cell, estimate_cell
from raddino.eval.bootstrap import Estimate
from raddino.eval.tables import (
    format_estimate,
    format_interval,
    format_number,
    format_percent,
    format_signed,
)


@pytest.mark.parametrize(
    ("value", "text"), [(0.91234, "0.912"), (1, "1.000"), (None, "n/a"), (math.nan, "n/a")]
)
def test_numbers_have_three_decimals_and_missing_ones_read_n_a(value, text):
    assert format_number(value) == text


@pytest.mark.parametrize(
    ("value", "text"),
    [(0.0312, "+0.031"), (-0.0041, "-0.004"), (0.0, "+0.000"), (-0.0001, "-0.000"), (None, "n/a")],
)
def test_differences_carry_their_sign(value, text):
    assert format_signed(value) == text


def test_an_interval_is_shown_only_when_both_ends_are_finite():
    assert format_interval(0.912, 0.89, 0.931) == "0.912 [0.890, 0.931]"
    assert format_interval(0.021, -0.004, 0.045, signed=True) == "+0.021 [-0.004, +0.045]"
    assert format_interval(0.912, None, 0.931) == "0.912"
    assert format_interval(0.912, math.nan, math.nan) == "0.912"
    assert format_interval(0.5, 0.4, 0.6, 1) == "0.5 [0.4, 0.6]"


@pytest.mark.parametrize(("fraction", "digits", "text"), [(0.95, 0, "95%"), (0.41666, 1, "41.7%")])
def test_percentages(fraction, digits, text):
    assert format_percent(fraction, digits) == text


def test_compare_and_the_demo_report_write_an_estimate_the_same_way():
    estimate = Estimate(0.91234, 0.8901, 0.93149, np.zeros(3))
    assert estimate_cell(estimate.to_dict()) == format_estimate(estimate) == "0.912 [0.890, 0.931]"
    no_interval = Estimate(0.5, math.nan, math.nan)
    assert estimate_cell(no_interval.to_dict()) == format_estimate(no_interval) == "0.500"


def test_a_difference_cell_has_signed_ends_and_a_star_when_significant():
    significant = Estimate(0.0312, 0.0101, 0.0523).to_difference_dict()
    assert difference_cell(significant) == "+0.031 [+0.010, +0.052] *"
    spanning = Estimate(-0.004, -0.02, 0.011).to_difference_dict()
    assert difference_cell(spanning) == "-0.004 [-0.020, +0.011]"
    assert difference_cell(None) == "" and difference_cell({"value": None}) == ""
