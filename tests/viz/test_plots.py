"""Training curves from metrics.jsonl: torn last lines, missing keys, readable figures."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from PIL import Image

from raddino.viz.plots import plot_training_curves, smooth


def write_run(directory: Path, steps: int, keys: tuple[str, ...], torn: bool = False) -> Path:
    directory.mkdir(parents=True)
    lines = [
        json.dumps({"step": step, **{key: 10.0 / (step + 1) + i for i, key in enumerate(keys)}})
        for step in range(steps)
    ]
    text = "\n".join(lines) + "\n"
    if torn:  # a run killed while writing its last line
        text += json.dumps({"step": steps, "loss": 1.0})[:20]
    (directory / "metrics.jsonl").write_text(text)
    return directory


ALL_KEYS = ("loss", "dino_global", "dino_local", "ibot", "koleo", "teacher_entropy")


def test_a_torn_last_line_is_skipped_and_a_malformed_middle_line_is_an_error_naming_it(
    tmp_path: Path,
):
    """The rule of :func:`raddino.ssl.metrics.read_metrics`, which the plots read through."""
    torn = write_run(tmp_path / "torn", 5, ("loss",), torn=True)
    assert plot_training_curves({"a": torn}, tmp_path / "torn.png", keys=("loss",)).is_file()
    broken = write_run(tmp_path / "broken", 3, ("loss",))
    lines = (broken / "metrics.jsonl").read_text().splitlines()
    lines[1] = "{not json"
    (broken / "metrics.jsonl").write_text("\n".join(lines) + "\n")
    with pytest.raises(ValueError, match=r"metrics.jsonl:2"):
        plot_training_curves({"a": broken}, tmp_path / "broken.png", keys=("loss",))


def test_runs_with_and_without_ibot_are_plotted_together(tmp_path: Path):
    full = write_run(tmp_path / "full", 20, ALL_KEYS, torn=True)
    no_ibot = write_run(tmp_path / "no_ibot", 12, tuple(k for k in ALL_KEYS if k != "ibot"))
    out = plot_training_curves({"full": full, "no iBOT": no_ibot}, tmp_path / "curves.png")
    with Image.open(out) as image:
        assert image.format == "PNG" and image.width > 0
    smoothed = plot_training_curves({"full": full}, tmp_path / "s.png", smoothing=0.6)
    assert smoothed.is_file()


def test_keys_no_run_logged_are_skipped_and_none_at_all_is_an_error(tmp_path: Path):
    run = write_run(tmp_path / "run", 4, ("loss",))
    assert plot_training_curves({"a": run}, tmp_path / "one.png", keys=("loss", "ibot")).is_file()
    with pytest.raises(ValueError, match="none of the runs logged"):
        plot_training_curves({"a": run}, tmp_path / "none.png", keys=("ibot",))


def test_missing_metrics_file_names_the_run(tmp_path: Path):
    (tmp_path / "empty_run").mkdir()
    with pytest.raises(FileNotFoundError, match="empty_run"):
        plot_training_curves({"a": tmp_path / "empty_run"}, tmp_path / "x.png")


def test_smoothing_is_a_debiased_moving_average():
    import numpy as np

    assert smooth(np.array([4.0, 4.0, 4.0]), 0.9).tolist() == pytest.approx([4.0, 4.0, 4.0])
    values = smooth(np.array([0.0, 10.0, float("nan"), 10.0]), 0.5)
    assert values[0] == 0.0 and values[1] == pytest.approx(10 * 0.5 / 0.75)
    assert np.isnan(values[2])
