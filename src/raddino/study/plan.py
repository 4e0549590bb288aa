"""From a study file to work: each arm's final pre-training config, its images, the pre-training
it shares with other arms, its evaluation size, and the first guesses of the time each takes.

Arms whose pre-training inputs are the same (config and images) share one pre-training, named
after the first of them: arms that differ only in evaluation resolution train once. A data-scale
arm pre-trains on the first ``train_fraction`` of the train-split images ranked by a hash of the
study seed and each image's path, so the subsets are nested (10% lies inside 25%, ...) and do
not depend on the order of the manifest.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from raddino.demo import first_guess
from raddino.demo.options import loader_overrides
from raddino.ssl.config import load_config
from raddino.study.spec import Arm, ManifestData, StudySpec, SyntheticData, synth_config

if TYPE_CHECKING:
    from raddino.contrastive.config import ContrastiveConfig
    from raddino.ssl.config import PretrainConfig


@dataclass(frozen=True)
class ArmPlan:
    """One arm, resolved."""

    arm: Arm
    config: PretrainConfig | ContrastiveConfig  # the final config (steps, seed, device)
    train_images: int  # pre-training images (0: random weights)
    pretrain: str | None  # the pre-training stage this arm's encoder comes from
    image_size: int  # evaluation resolution

    @property
    def name(self) -> str:
        return self.arm.name

    @property
    def steps(self) -> int:
        return 0 if self.arm.random_init else self.config.train.steps

    @property
    def pretrain_size(self) -> int:
        return self.config.crops.global_size

    def x(self, axis: str) -> float:
        """The arm's value on a trend plot's x axis (:data:`raddino.study.spec.X_AXES`)."""
        return float(
            {
                "train_images": self.train_images,
                "steps": self.steps,
                "pretrain_size": self.pretrain_size,
                "image_size": self.image_size,
            }[axis]
        )


def config_inputs(config: PretrainConfig | ContrastiveConfig) -> dict:
    """The resolved config without the keys that do not change the result (as the demo's)."""
    from raddino.demo.pipeline import Demo

    return Demo.config_inputs(config)


def train_rows_count(spec: StudySpec) -> int:
    """How many train-split images the data has (known before a synthetic cohort is rendered:
    its splits are a hash of each patient id)."""
    if isinstance(spec.data, SyntheticData):
        from raddino.data.synth.cohort import assign_splits

        config = synth_config(spec.data, spec.seed)
        return sum(split == "train" for split in assign_splits(config.n, config))
    from raddino.data.manifest import read_manifest

    rows = read_manifest(spec.data.path)
    if rows and "split" not in rows[0]:
        raise ValueError(f"{spec.data.path}: pre-training needs a 'split' column (train rows)")
    count = sum(row.get("split", "").strip().lower() == "train" for row in rows)
    if count == 0:
        raise ValueError(f"{spec.data.path}: no train-split images to pre-train on")
    return count


def subset_size(fraction: float, available: int) -> int:
    return max(1, min(available, round(fraction * available)))


def select_subset(rows: list[dict[str, str]], count: int, seed: int, root: Path) -> list[dict]:
    """The first ``count`` rows ranked by sha256(seed, path relative to ``root``), in their
    own order: nested for growing counts and independent of the rows' order; every row (in the
    manifest's order, as the demo's runs) when ``count`` covers them all."""

    def rank(i: int) -> str:
        key = f"{seed}/{os.path.relpath(rows[i]['path'], root)}"
        return hashlib.sha256(key.encode()).hexdigest()

    chosen = set(sorted(range(len(rows)), key=rank)[:count])
    return [row for i, row in enumerate(rows) if i in chosen]


def plan_arms(
    spec: StudySpec, available: int, device: str = "auto", workers: int | None = None
) -> list[ArmPlan]:
    """Every arm resolved; ``available``: the train-split images of the data; ``workers``:
    every pre-training's loader workers (None: each config's ``train.num_workers``)."""
    plans: list[ArmPlan] = []
    shared: dict[str, str] = {}  # pre-training inputs -> stage name
    machine = [f"train.device={device}", *loader_overrides(workers)]
    for arm in spec.arms:
        images = 0 if arm.random_init else subset_size(arm.train_fraction, available)
        overrides = [f"train.seed={spec.seed}", *spec.overrides, *arm.overrides, *machine]
        if arm.epochs is not None:
            batch = load_config(arm.config, overrides).train.batch_size
            overrides.append(f"train.steps={max(1, math.ceil(arm.epochs * images / batch))}")
        config = load_config(arm.config, overrides)
        stage = None
        if not arm.random_init:
            key = json.dumps({"config": config_inputs(config), "images": images}, sort_keys=True)
            stage = shared.setdefault(key, f"pretrain_{arm.name}")
        plans.append(ArmPlan(arm, config, images, stage, eval_size(spec, arm, config)))
    return plans


def eval_size(spec: StudySpec, arm: Arm, config: PretrainConfig | ContrastiveConfig) -> int:
    """The arm's evaluation resolution: its own, the study's, else the synthetic images' size
    rounded down to whole patches (a ViT takes any grid), else the pre-training crop size."""
    size = arm.image_size or spec.evaluation.image_size
    if size is not None:
        return size
    patch = config.model.patch_size
    if isinstance(spec.data, SyntheticData):
        return max(patch, spec.data.size // patch * patch)
    return config.crops.global_size


def data_images(spec: StudySpec) -> int:
    """Images the evaluation encodes (every row of the data)."""
    if isinstance(spec.data, ManifestData):
        from raddino.data.manifest import read_manifest

        return len(read_manifest(spec.data.path))
    return spec.data.images


# --------------------------------------------------------------------------- first guesses


def guess_pretrain_seconds(config: PretrainConfig | ContrastiveConfig) -> float:
    return config.train.steps * first_guess.pretrain_seconds_per_step(config)


def guess_eval_seconds(plan: ArmPlan, images: int, seg_epochs: int) -> float:
    tokens = (plan.image_size / plan.config.model.patch_size) ** 2
    cost = first_guess.relative_cost(plan.config, tokens * 134 / 100)  # tiny_cpu, 160 px: 100
    return first_guess.eval_seconds(images, cost, seg_epochs)


def guess_data_seconds(spec: StudySpec, workers: int) -> float:
    if not isinstance(spec.data, SyntheticData):
        return 1.0
    return first_guess.synth_seconds(spec.data.images, spec.data.size, workers)
