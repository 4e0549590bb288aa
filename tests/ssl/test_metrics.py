"""``metrics.jsonl``: one reader for every run, a torn last line skipped, other damage named."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from raddino.ssl.metrics import MetricsLog, read_metrics


def write_lines(run: Path, steps: int, tail: str = "") -> Path:
    run.mkdir(parents=True, exist_ok=True)
    text = "".join(json.dumps({"step": s, "loss": 1.0 / (s + 1)}) + "\n" for s in range(steps))
    (run / "metrics.jsonl").write_text(text + tail)
    return run


def test_rows_in_file_order_from_the_run_or_the_file(tmp_path: Path):
    run = write_lines(tmp_path / "run", 3)
    rows = read_metrics(run)
    assert [row["step"] for row in rows] == [0, 1, 2] and rows[1]["loss"] == 0.5
    assert read_metrics(run / "metrics.jsonl") == rows


def test_a_torn_last_line_is_skipped_with_a_warning(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
):
    run = write_lines(tmp_path / "run", 3, tail=json.dumps({"step": 3, "loss": 0.2})[:15])
    assert [row["step"] for row in read_metrics(run)] == [0, 1, 2]
    warning = capsys.readouterr().err.strip()
    assert (
        warning.startswith("warning: ") and "metrics.jsonl:4: skipped a torn last line" in warning
    )


def test_a_corrupt_line_before_the_last_is_an_error_naming_the_file_and_line(tmp_path: Path):
    run = write_lines(
        tmp_path / "run", 2, tail='{"step": 2, "lo\n' + json.dumps({"step": 3}) + "\n"
    )
    with pytest.raises(ValueError, match=r"run/metrics.jsonl:3: not valid JSON"):
        read_metrics(run)


def test_a_line_that_is_not_a_metrics_row_is_an_error(tmp_path: Path):
    run = write_lines(tmp_path / "run", 2, tail='{"loss": 1.0}\n')
    with pytest.raises(ValueError, match=r"metrics.jsonl:3: not a metrics row"):
        read_metrics(run)


def test_a_missing_file_is_no_rows_unless_it_must_exist(tmp_path: Path):
    assert read_metrics(tmp_path) == []
    with pytest.raises(FileNotFoundError, match=r"metrics\.jsonl"):
        read_metrics(tmp_path, missing_ok=False)


def test_resuming_keeps_the_rows_before_the_start_step_and_drops_a_torn_line(tmp_path: Path):
    run = write_lines(tmp_path / "run", 5, tail='{"step": 5, "lo')
    log = MetricsLog(run, start_step=3, tensorboard=False)
    log.log(3, {"loss": 9.0})
    log.close()
    assert [(row["step"], row["loss"]) for row in read_metrics(run)][2:] == [(2, 1 / 3), (3, 9.0)]
    assert (run / "metrics.jsonl").read_text().endswith("\n")
