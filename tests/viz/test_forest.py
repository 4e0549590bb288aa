"""The forest plot of paired differences: what is drawn where, and its files."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from raddino.viz.forest import Difference, ForestRow, forest_figure, write_forest_plot

ROWS = [
    ForestRow(
        "findings AUROC", {"a - b": Difference(0.05, 0.02, 0.08), "a - c": Difference(-0.01)}
    ),
    ForestRow("Dice", {"a - b": Difference(0.03, -0.01, 0.06)}),
]


def test_each_difference_is_drawn_at_its_value_with_its_interval():
    axes = forest_figure(ROWS, ["a - b", "a - c"]).axes[0]
    points = [line for line in axes.lines if line.get_marker() == "o"]
    assert sorted(float(p.get_xdata()[0]) for p in points) == pytest.approx([-0.01, 0.03, 0.05])
    bars = [line for line in axes.lines if line.get_marker() in ("None", None, "")]
    spans = sorted(tuple(np.round(b.get_xdata(), 6)) for b in bars if len(b.get_xdata()) == 2)
    assert (0.02, 0.08) in spans and (-0.01, 0.06) in spans
    assert [t.get_text() for t in axes.get_yticklabels()] == ["findings AUROC", "Dice"]
    assert [t.get_text() for t in axes.get_legend().get_texts()] == ["a - b", "a - c"]


def test_filled_markers_mean_the_interval_excludes_zero():
    assert Difference(0.05, 0.02, 0.08).excludes_zero
    assert Difference(-0.05, -0.08, -0.01).excludes_zero
    assert not Difference(0.03, -0.01, 0.06).excludes_zero
    assert not Difference(0.03).excludes_zero


def test_png_and_svg_are_written(tmp_path):
    png = write_forest_plot(tmp_path / "forest.png", ROWS, ["a - b", "a - c"], title="t")
    svg = write_forest_plot(tmp_path / "forest.svg", ROWS, ["a - b"])
    assert Image.open(png).size[0] > 400
    assert svg.read_text().lstrip().startswith(("<?xml", "<svg"))


def test_an_empty_plot_is_refused():
    with pytest.raises(ValueError, match="at least one row"):
        forest_figure([], ["a - b"])
