"""What the demo does: its options, the work sizes of a full and a ``--quick`` run, its paths.

``--quick`` shrinks everything (48 images of 64 px, a 2-block ViT, 3 steps, a tiny language
model) so that every stage runs in seconds: the CI test and a smoke check. Its numbers mean
nothing.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field, replace
from pathlib import Path

from raddino.data.synth import FINDINGS
from raddino.ssl.config import PRESETS_DIR

DEFAULT_PRESET = "tiny_cpu.yaml"
LANGUAGE_PRESET = "clip_tiny_cpu.yaml"
DEMO_SEED = 31
"""The demo's cohort seed: no recipe or hyper-parameter was chosen on it (docs/protocol.md)."""
METADATA_TARGETS = (("age", "continuous"), ("bmi", "continuous"), ("sex", None))
STRUCTURES = ("left_lung", "right_lung", "heart", "ribs")
# The probes' image-level features (raddino compare --features): CLS + the patch tokens averaged
# over 4 x 4 cells, chosen on development cohorts 1 and 2
# (docs/experiments/2026-12-06-probe-pooling.md)
PROBE_FEATURES = "cls+grid4"
PIXEL_SIDE = 16
LABEL_SSL = "image-only"
LABEL_LANGUAGE = "language-supervised"
LABEL_NO_IBOT = "image-only-no-ibot"
LABEL_RANDOM = "random-init"
LABEL_PIXELS = f"pixels-{PIXEL_SIDE}x{PIXEL_SIDE}"
PAIRS = (
    (LABEL_SSL, LABEL_LANGUAGE),
    (LABEL_SSL, LABEL_RANDOM),
    (LABEL_LANGUAGE, LABEL_RANDOM),
    (LABEL_SSL, LABEL_PIXELS),
    (LABEL_LANGUAGE, LABEL_PIXELS),
    (LABEL_SSL, LABEL_NO_IBOT),
)
"""The paired differences the demo reports (a - b), where both encoders ran."""
DEVICES = ("auto", "cpu", "cuda")

QUICK_OVERRIDES = (
    "model.arch=tiny", "model.depth=2", "model.embed_dim=64", "model.num_heads=2",
    "model.patch_size=16", "model.image_size=64",
    "head.out_dim=128", "head.hidden_dim=64", "head.bottleneck_dim=32",
    "crops.global_size=64", "crops.local_size=32", "crops.local_number=2",
    "crops.max_source_size=96", "train.batch_size=8", "train.steps=3",
    "train.checkpoint_every=50", "train.keep_last=1", "train.tensorboard=false",
    "optim.warmup_steps=1", "optim.freeze_last_layer_steps=1",
)  # fmt: skip
"""Pre-training overrides of ``--quick``: a 2-block, 64-wide ViT on 64 px crops."""

QUICK_LANGUAGE_OVERRIDES = (
    *(o for o in QUICK_OVERRIDES if o.startswith(("model.", "train.", "optim.warmup"))),
    "crops.global_size=64", "crops.max_source_size=96",
    "text.vocab_size=300", "text.max_length=64", "text.width=32", "text.depth=1",
    "text.num_heads=2", "text.mlp_dim=64", "contrastive.embed_dim=32",
)  # fmt: skip
"""The language-supervised run of ``--quick``: the same image tower and a 1-block text side."""


@dataclass(frozen=True)
class ReportSizes:
    """Report generation: the small LM of ``init-lm``, trained whole (stage ``full``)."""

    vocab_size: int = 1000
    hidden_size: int = 128
    layers: int = 2
    heads: int = 4
    steps: int = 300
    batch_size: int = 16
    lr: float = 2e-3
    warmup_steps: int = 30
    pool: int = 4
    max_new_tokens: int = 96
    test_rows: int = 64  # reports written for at most this many test images per encoder
    examples: int = 3


@dataclass(frozen=True)
class Sizes:
    """How much work: the defaults of a full demo, and of ``--quick``."""

    images: int = 2000
    size: int = 160
    bootstrap: int = 1000
    seg_epochs: int = 20
    prevalence: dict[str, float] | None = None  # None: the cohort's defaults
    val_fraction: float = 0.1
    test_fraction: float = 0.2  # about 400 test images: tighter intervals for the headline
    overrides: tuple[str, ...] = ()
    language_overrides: tuple[str, ...] = ()
    encode_batch: int = 64
    report: ReportSizes = field(default_factory=ReportSizes)


FULL = Sizes()
QUICK = Sizes(
    images=48,
    size=64,
    bootstrap=200,
    seg_epochs=2,
    # every finding needs both classes in train, val and test
    prevalence=dict.fromkeys(FINDINGS, 0.5),
    val_fraction=0.25,
    test_fraction=0.25,
    overrides=QUICK_OVERRIDES,
    language_overrides=QUICK_LANGUAGE_OVERRIDES,
    encode_batch=16,
    report=ReportSizes(
        vocab_size=300,
        hidden_size=32,
        layers=1,
        heads=2,
        steps=6,
        batch_size=4,
        lr=1e-2,
        warmup_steps=0,
        pool=2,
        max_new_tokens=12,
        test_rows=4,
        examples=2,
    ),
)


DEFAULT_WORKERS = 2
"""Worker processes for rendering and encoding when ``--workers`` is not given."""


def pool_workers(workers: int | None) -> int:
    """Worker processes for rendering and encoding (``raddino demo`` and ``raddino study``):
    ``--workers``, else :data:`DEFAULT_WORKERS`."""
    return DEFAULT_WORKERS if workers is None else workers


def loader_overrides(workers: int | None) -> list[str]:
    """``train.num_workers`` for every pre-training when ``--workers`` was given; none
    otherwise: each config keeps its own (``tiny_cpu`` 0, ``clip_tiny_cpu`` 2)."""
    return [] if workers is None else [f"train.num_workers={workers}"]


def default_config_path(preset: str = DEFAULT_PRESET) -> Path:
    """The installed preset the demo trains with (``raddino/presets/PRESET``)."""
    return PRESETS_DIR / preset


@dataclass(frozen=True)
class DemoOptions:
    """Options of ``raddino demo``; errors name the command-line option."""

    out: Path
    config: Path
    language_config: Path | None = None  # None: no language-supervised encoder
    images: int = FULL.images
    size: int = FULL.size
    seed: int = DEMO_SEED
    steps: int | None = None
    overrides: tuple[str, ...] = ()
    ablation: bool = False
    reports: bool = True
    workers: int | None = None  # None: 2 for rendering and encoding, each config's loader
    device: str = "auto"
    quick: bool = False
    bootstrap: int = FULL.bootstrap
    progress: bool = True

    @property
    def pool_workers(self) -> int:
        return pool_workers(self.workers)

    def __post_init__(self) -> None:
        if self.images < 20:
            raise ValueError(
                f"--images {self.images}: need at least 20 (train, val and test splits, each "
                "with positive and negative cases)"
            )
        if not 32 <= self.size <= 2048:
            raise ValueError(f"--size {self.size}: expected 32..2048 pixels")
        if self.steps is not None and self.steps < 1:
            raise ValueError(f"--steps {self.steps}: must be >= 1")
        if self.workers is not None and self.workers < 0:
            raise ValueError(f"--workers {self.workers}: must be >= 0")
        if self.device not in DEVICES:
            raise ValueError(f"--device {self.device!r}: choose one of {', '.join(DEVICES)}")
        if self.bootstrap < 1:
            raise ValueError(f"--bootstrap {self.bootstrap}: must be >= 1")
        if not Path(self.config).is_file():
            raise FileNotFoundError(f"--config {self.config}: no such file")
        if self.language_config is not None and not Path(self.language_config).is_file():
            raise FileNotFoundError(f"--language-config {self.language_config}: no such file")
        if int(os.environ.get("WORLD_SIZE", "1")) > 1:
            raise ValueError(
                "raddino demo runs as one process; for torchrun use 'raddino pretrain'"
            )

    @property
    def sizes(self) -> Sizes:
        base = QUICK if self.quick else FULL
        return replace(base, images=self.images, size=self.size, bootstrap=self.bootstrap)

    @property
    def language(self) -> bool:
        return self.language_config is not None

    @property
    def eval_device(self) -> str:
        """The device of evaluation and report generation (``auto``: CUDA when present)."""
        from raddino.devices import check_device

        return check_device(self.device).type


@dataclass(frozen=True)
class DemoPaths:
    """Where each stage writes, under ``--out``."""

    root: Path

    @property
    def cohort(self) -> Path:
        return self.root / "cohort"

    @property
    def manifest(self) -> Path:
        return self.cohort / "manifest.csv"

    @property
    def runs(self) -> Path:
        return self.root / "runs"

    @property
    def train_list(self) -> Path:
        return self.runs / "train_images.csv"

    def run(self, name: str) -> Path:
        return self.runs / name

    @property
    def features(self) -> Path:
        return self.root / "features"

    @property
    def evaluation(self) -> Path:
        return self.root / "evaluation"

    @property
    def eval_summary(self) -> Path:
        return self.evaluation / "demo_summary.json"

    @property
    def reports(self) -> Path:
        return self.root / "reports"

    @property
    def figures(self) -> Path:
        return self.root / "figures"

    @property
    def report_md(self) -> Path:
        return self.root / "REPORT.md"

    @property
    def report_html(self) -> Path:
        return self.root / "report.html"

    @property
    def timings(self) -> Path:
        return self.root / "timings.json"
