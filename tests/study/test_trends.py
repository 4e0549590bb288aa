"""The trend plot: lines of arms against a setting, PNG and SVG."""

from __future__ import annotations

import pytest

from raddino.viz.trends import Level, TrendPanel, TrendPoint, TrendSeries, write_trend_plot


def test_a_trend_plot_is_written_as_png_and_svg(tmp_path):
    points = (TrendPoint(70, 0.58, 0.55, 0.61), TrendPoint(1387, 0.61, 0.58, 0.64, reference=True))
    steps = TrendSeries("fixed steps", points)
    epochs = TrendSeries("fixed epochs", (TrendPoint(70, 0.55), TrendPoint(1387, 0.61)))
    panel = TrendPanel("findings AUROC", (steps, epochs), (Level("random", 0.56, 0.53, 0.59),))
    png, svg = write_trend_plot(tmp_path / "images", [panel, panel], "images", log_x=True)
    assert png.read_bytes().startswith(b"\x89PNG") and "<svg" in svg.read_text()


def test_a_trend_plot_without_points_is_refused(tmp_path):
    with pytest.raises(ValueError, match="at least one panel with one point"):
        write_trend_plot(tmp_path / "empty", [TrendPanel("x", ())], "images")
