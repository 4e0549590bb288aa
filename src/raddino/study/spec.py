"""What a study is: its data, its arms (pre-training config + overrides, or random weights),
the evaluations run on each, the headline metrics and the plots; where study files are found.

:mod:`raddino.study.reader` builds these from a YAML file, strictly. The format is documented in
``docs/studies.md``; the shipped studies are in ``raddino/presets/studies/``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

from raddino.ssl.config import PRESETS_DIR, find_file_or_preset, preset_names

STUDIES_DIR = PRESETS_DIR / "studies"
"""The study files installed with the package (``raddino study NAME``)."""
SEGMENT = "segment"
PROBE_METRICS = ("auroc", "auprc", "mae", "r2", "pearson_r")
BINARY_METRICS = ("auroc", "auprc")
SEGMENT_METRICS = ("dice", "iou")
X_AXES = {
    "train_images": "unlabelled pre-training images",
    "steps": "pre-training steps",
    "pretrain_size": "pre-training crop size (px)",
    "image_size": "evaluation resolution (px)",
}
"""What a trend plot may put on its x axis: a number each arm has."""
NAME = re.compile(r"^[a-z0-9][a-z0-9_-]*$")


class StudyFileError(ValueError):
    """A study file that cannot be used; the message names the file and the key."""


@dataclass(frozen=True)
class MetricKey:
    """``linear.findings.auroc``: a protocol (or ``segment``), a target (a manifest column, a
    macro of the study, a structure or ``mean``) and a metric."""

    task: str
    target: str
    metric: str

    @classmethod
    def parse(cls, text: object, where: str) -> MetricKey:
        parts = str(text).split(".")
        if not isinstance(text, str) or len(parts) != 3 or not all(parts):
            raise StudyFileError(
                f"{where}: {text!r} is not TASK.TARGET.METRIC (e.g. linear.findings.auroc, "
                "segment.mean.dice)"
            )
        return cls(*parts)

    def __str__(self) -> str:
        return f"{self.task}.{self.target}.{self.metric}"


@dataclass(frozen=True)
class SyntheticData:
    """The embedded synthetic cohort (``raddino synth``), rendered by the study."""

    images: int
    size: int
    val_fraction: float = 0.1
    test_fraction: float = 0.2
    prevalence: dict[str, float] | None = None  # None: the cohort's defaults


@dataclass(frozen=True)
class ManifestData:
    """A manifest of the user's own images (a ``split`` column; paths relative to it)."""

    path: Path


@dataclass(frozen=True)
class Evaluation:
    targets: tuple[tuple[str, str | None], ...] = ()
    macros: dict[str, tuple[str, ...]] = field(default_factory=dict)
    structures: tuple[str, ...] = ()
    protocols: tuple[str, ...] = ("linear",)
    features: str = "cls+mean"
    image_size: int | None = None  # None: the data's size, rounded down to whole patches
    bootstrap: int = 1000
    seg_epochs: int = 20


@dataclass(frozen=True)
class Arm:
    """One encoder of the study: a pre-training (or random weights) and its evaluation."""

    name: str
    config: Path
    overrides: tuple[str, ...] = ()
    groups: tuple[str, ...] = ()  # the lines this arm belongs to in trend plots
    train_fraction: float = 1.0  # of the train-split images (nested subsets)
    epochs: float | None = None  # sets train.steps from the arm's number of images
    image_size: int | None = None  # evaluation resolution (default: the study's)
    random_init: bool = False  # not pre-trained: the architecture with random weights


@dataclass(frozen=True)
class Plot:
    name: str
    x: str
    metrics: tuple[MetricKey, ...]
    series: tuple[str, ...] = ()  # the groups drawn as lines (default: every group)
    log_x: bool = False
    title: str = ""


@dataclass(frozen=True)
class StudySpec:
    path: Path
    name: str
    description: str
    seed: int
    data: SyntheticData | ManifestData
    overrides: tuple[str, ...]  # pre-training overrides of every arm
    evaluation: Evaluation
    metrics: tuple[MetricKey, ...]
    reference: str
    arms: tuple[Arm, ...]
    plots: tuple[Plot, ...]

    def arm(self, name: str) -> Arm:
        return next(a for a in self.arms if a.name == name)


# --------------------------------------------------------------------------- finding the file


def study_names() -> list[str]:
    return preset_names(STUDIES_DIR)


def resolve_study_path(text: str | Path) -> Path:
    """A study given as a file, or by the name of an installed one (``data_scale``)."""
    found = find_file_or_preset(text, STUDIES_DIR)
    if found is None:
        raise FileNotFoundError(
            f"{text}: no such study file and no installed study of that name "
            f"(installed: {', '.join(study_names())})"
        )
    return found


# --------------------------------------------------------------------------- rules


def synth_config(data: SyntheticData, seed: int):
    """The :class:`raddino.data.synth.SynthConfig` of a synthetic data section."""
    from raddino.data.synth import SynthConfig

    extra = {} if data.prevalence is None else {"prevalence": dict(data.prevalence)}
    return SynthConfig(
        n=data.images,
        seed=seed,
        size=data.size,
        val_fraction=data.val_fraction,
        test_fraction=data.test_fraction,
        **extra,
    )


def default_metrics(evaluation: Evaluation) -> tuple[MetricKey, ...]:
    """Without ``metrics``: every macro's AUROC under the first protocol, and the mean Dice."""
    first = evaluation.protocols[0]
    keys = [MetricKey(first, macro, "auroc") for macro in evaluation.macros]
    if not keys and evaluation.targets:
        name, kind = evaluation.targets[0]
        keys.append(MetricKey(first, name, "r2" if kind == "continuous" else "auroc"))
    if evaluation.structures:
        target = "mean" if len(evaluation.structures) > 1 else evaluation.structures[0]
        keys.append(MetricKey(SEGMENT, target, "dice"))
    return tuple(keys)


def check_metric(key: MetricKey, evaluation: Evaluation, where: str) -> None:
    """That the evaluation produces ``key``."""
    kinds = dict(evaluation.targets)
    if key.task == SEGMENT:
        targets = [*evaluation.structures, *(["mean"] if len(evaluation.structures) > 1 else [])]
        if key.target not in targets:
            raise StudyFileError(
                f"{where}: {key}: segmentation target {key.target!r} is not "
                f"one of {targets} (evaluation.structures; mean needs two)"
            )
        if key.metric not in SEGMENT_METRICS:
            raise StudyFileError(f"{where}: {key}: choose the metric from {list(SEGMENT_METRICS)}")
        return
    if key.task not in evaluation.protocols:
        raise StudyFileError(
            f"{where}: {key}: {key.task!r} is not one of evaluation.protocols "
            f"{list(evaluation.protocols)} or 'segment'"
        )
    if key.target in evaluation.macros:
        allowed: tuple[str, ...] = BINARY_METRICS
    elif key.target in kinds:
        kind = kinds[key.target]
        allowed = {"binary": BINARY_METRICS, "continuous": ("mae", "r2", "pearson_r")}.get(
            kind or "", PROBE_METRICS
        )
    else:
        raise StudyFileError(
            f"{where}: {key}: target {key.target!r} is not one of evaluation.targets or macros "
            f"{[*kinds, *evaluation.macros]}"
        )
    if key.metric not in allowed:
        raise StudyFileError(f"{where}: {key}: choose the metric from {list(allowed)}")
