"""The demo's pre-training runs: the cohort's train split, the trainer's own resume."""

from __future__ import annotations

import csv
import os
import shutil
from pathlib import Path

from raddino.atomic import write_atomic
from raddino.demo.options import DemoPaths
from raddino.ssl.config import PretrainConfig

LOGGED = ("loss", "dino_local", "dino_global", "ibot", "koleo", "teacher_entropy")


def write_train_list(paths: DemoPaths) -> Path:
    """``OUT/runs/train_images.csv``: the cohort's train-split images (paths relative to it),
    so that pre-training never sees a validation or test image."""
    rows = []
    with paths.manifest.open(newline="", encoding="utf-8") as handle:
        for row in csv.DictReader(handle):
            if row["split"] == "train":
                rows.append(os.path.relpath(paths.cohort / row["path"], paths.runs))
    if not rows:
        raise ValueError(f"{paths.manifest}: no train-split images to pre-train on")
    text = "path\n" + "".join(f"{r}\n" for r in rows)
    return write_atomic(paths.train_list, lambda temp: temp.write_text(text, encoding="utf-8"))


def pretrain_run(
    config: PretrainConfig, paths: DemoPaths, name: str, resuming: bool, progress: bool
) -> dict:
    """Train ``OUT/runs/<name>``; an interrupted run of the same inputs (``resuming``)
    continues from its newest checkpoint, any other leftover is deleted first."""
    from raddino.ssl import distributed
    from raddino.ssl.metrics import read_metrics
    from raddino.ssl.trainer import pretrain

    run_dir = paths.run(name)
    if not resuming and run_dir.exists():
        shutil.rmtree(run_dir)  # a run of other settings (or other images)
    images = write_train_list(paths)
    try:
        summary = pretrain(config, [str(images)], run_dir, resume=True, progress=progress)
    finally:
        distributed.shutdown()
    trained = summary.end_step - summary.start_step
    metrics = read_metrics(run_dir)
    first, last = (metrics[0], metrics[-1]) if metrics else ({}, {})
    return {
        "run_dir": os.path.relpath(run_dir, paths.root),
        "steps": config.train.steps,
        "resumed_from": summary.start_step,
        "seconds_per_step": summary.seconds / trained if trained else None,
        "first": {k: first[k] for k in LOGGED if k in first},
        "last": {k: last[k] for k in LOGGED if k in last},
    }
