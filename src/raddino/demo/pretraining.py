"""The demo's pre-training runs: the cohort's train split, the trainer's own resume, either recipe
(image-only or language-supervised, as the config names it)."""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from raddino.atomic import write_csv_atomic
from raddino.demo.options import DemoPaths
from raddino.ssl.config import PretrainConfig

if TYPE_CHECKING:
    from raddino.contrastive.config import ContrastiveConfig

LOGGED = (
    "loss", "dino_local", "dino_global", "ibot", "koleo", "teacher_entropy",
    "temperature", "retrieval_accuracy",
)  # fmt: skip


def write_train_list(
    paths: DemoPaths,
    out: Path | None = None,
    select: Callable[[list[dict[str, str]]], list[dict[str, str]]] | None = None,
) -> Path:
    """``OUT/runs/train_images.csv`` (or ``out``): the cohort's train-split images (paths
    relative to the list) with their reports, so that neither recipe ever sees a validation or
    test image. ``select`` picks some of the train-split rows (a study's data-scale arms)."""
    from raddino.data.manifest import read_manifest

    out = paths.train_list if out is None else out
    train = [row for row in read_manifest(paths.manifest) if row.get("split") == "train"]
    if select is not None:
        train = select(train)
    rows = [(os.path.relpath(row["path"], out.parent), row.get("report", "")) for row in train]
    if not rows:
        raise ValueError(f"{paths.manifest}: no train-split images to pre-train on")
    return write_csv_atomic(out, ["path", "report"], rows)


def pretrain_run(
    config: PretrainConfig | ContrastiveConfig,
    paths: DemoPaths,
    name: str,
    resuming: bool,
    progress: bool,
    train_list: Path | None = None,
    ready: Callable[[], None] | None = None,
) -> dict:
    """Train ``OUT/runs/<name>`` on ``train_list`` (default: :func:`write_train_list`'s whole
    train split); an interrupted run of the same inputs (``resuming``) continues from its newest
    checkpoint, any other leftover is deleted first. ``ready`` is called once the run directory
    and the image list are in place, just before training (a study under torchrun starts the
    other processes' share of the run there). A process group that exists before the call is
    left open; one the run opens is closed."""
    import torch.distributed as dist

    from raddino.ssl import distributed
    from raddino.ssl.metrics import read_metrics
    from raddino.ssl.trainer import pretrain

    if config.recipe == "contrastive":
        from raddino.contrastive.trainer import pretrain_contrastive as pretrain

    run_dir = paths.run(name)
    if not resuming and run_dir.exists():
        shutil.rmtree(run_dir)  # a run of other settings (or other images)
    images = write_train_list(paths) if train_list is None else train_list
    opened_here = not (dist.is_available() and dist.is_initialized())
    if ready is not None:
        ready()
    try:
        summary = pretrain(config, [str(images)], run_dir, resume=True, progress=progress)
    finally:
        if opened_here:
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
