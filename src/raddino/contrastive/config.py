"""Typed config of the language-supervised recipe (``recipe: contrastive`` in a preset).

Sections:

* ``model``: the image tower, the very ViT section of the image-only recipe (so a preset of
  each recipe can share it key for key);
* ``text``: the tokenizer trained on the run's reports and the text transformer;
* ``contrastive``: the objective, the shared embedding space, the learned temperature and bias;
* ``crops``: the one view of each image (``global_size``, ``global_scale``, ``max_source_size``,
  flips, rotation and the photometric keys, as in :mod:`raddino.ssl.augment`);
* ``optim`` and ``train``: as in the image-only recipe.

``model``, ``crops``, ``optim`` and ``train`` are the image-only recipe's own section types and
are checked by its rules, so a key means the same in both recipes. Their keys that only the
image-only recipe uses (:data:`IGNORED_KEYS`) are refused by name when set, and left out of the
resolved config; so are its sections (``head``, ``loss``, ``masking``, ``teacher``).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field, replace
from typing import ClassVar

import yaml

from raddino.ssl.config import (
    ConfigError,
    CropSection,
    ModelSection,
    OptimSection,
    PretrainConfig,
    TrainSection,
    build_config,
)


@dataclass
class TextSection:
    """The report side. Defaults are BERT-base sized (BiomedCLIP's PubMedBERT: 768 wide, 12
    layers, context 256); ``presets/clip_tiny_cpu.yaml`` sets a small one."""

    vocab_size: int = 30522  # byte-pair merges stop here; a small corpus may give fewer tokens
    max_length: int = 256  # tokens per report with [CLS] and [SEP]; longer reports are cut
    lowercase: bool = True
    width: int = 768
    depth: int = 12
    num_heads: int = 12
    mlp_dim: int = 3072
    dropout: float = 0.0  # as CLIP's text transformer; BERT pre-training used 0.1
    # mean: of the report's tokens' final states | cls: the [CLS] token's (as BiomedCLIP, whose
    # BERT was pre-trained). From random weights the [CLS] state of every report is almost the
    # same (cosine 1.000 between reports at init, 1 layer) and short runs do not leave that
    # plateau (toy retrieval at chance after 60 steps); the mean carries the tokens from the start
    pooling: str = "mean"


@dataclass
class ContrastiveSection:
    """Objective and shared space (see :mod:`raddino.contrastive.losses` for the choice)."""

    objective: str = "clip"  # clip: symmetric InfoNCE | siglip: pairwise sigmoid
    embed_dim: int = 512  # both towers are projected (linear, no bias) to this many dimensions
    # t, the learned inverse temperature; None: the objective's published start, CLIP 1 / 0.07,
    # SigLIP 10. Adam moves it by about the lr per step: a few hundred steps leave it near here
    logit_scale_init: float | None = None
    logit_bias_init: float = -10.0  # b, SigLIP only (its paper's start)
    max_logit_scale: float = 100.0  # t is clamped to this after every step (CLIP's limit)

    def initial_logit_scale(self) -> float:
        if self.logit_scale_init is not None:
            return self.logit_scale_init
        return 1 / 0.07 if self.objective == "clip" else 10.0


IGNORED_KEYS: dict[str, tuple[str, ...]] = {
    "model": ("init_head",),
    "crops": ("local_number", "local_size", "local_scale"),
    "optim": ("freeze_last_layer_steps",),
}
"""Keys of the shared sections that only the image-only recipe reads."""

DINO_SECTIONS = ("head", "loss", "masking", "teacher")


@dataclass
class ContrastiveConfig:
    recipe: ClassVar[str] = "contrastive"
    model: ModelSection = field(default_factory=ModelSection)
    text: TextSection = field(default_factory=TextSection)
    contrastive: ContrastiveSection = field(default_factory=ContrastiveSection)
    crops: CropSection = field(default_factory=CropSection)
    optim: OptimSection = field(default_factory=OptimSection)
    train: TrainSection = field(default_factory=TrainSection)

    def __post_init__(self) -> None:
        validate(self)

    def to_dict(self) -> dict:
        data: dict = {"recipe": self.recipe}
        for f in dataclasses.fields(self):
            ignored = IGNORED_KEYS.get(f.name, ())
            data[f.name] = {
                k: list(v) if isinstance(v, tuple) else v
                for k, v in vars(getattr(self, f.name)).items()
                if k not in ignored
            }
        return data

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)


_CHOICES = {
    "text.pooling": ("cls", "mean"),
    "contrastive.objective": ("siglip", "clip"),
}


def validate(config: ContrastiveConfig) -> None:
    """Raise ConfigError naming the first key whose value is out of range."""
    # the shared sections, by the image-only recipe's rules (its local crops are unused here)
    m = config.model
    crops = replace(config.crops, local_size=m.patch_size, local_scale=(0.05, 0.32))
    PretrainConfig(model=m, crops=crops, optim=config.optim, train=config.train)
    for key, choices in _CHOICES.items():
        section, name = key.split(".")
        value = getattr(getattr(config, section), name)
        if value not in choices:
            raise ConfigError(f"{key}={value!r}: choose one of {', '.join(choices)}")
    t, c = config.text, config.contrastive
    positive = {
        "text.vocab_size": t.vocab_size,
        "text.max_length": t.max_length,
        "text.width": t.width,
        "text.depth": t.depth,
        "text.num_heads": t.num_heads,
        "text.mlp_dim": t.mlp_dim,
        "contrastive.embed_dim": c.embed_dim,
        "contrastive.logit_scale_init": c.initial_logit_scale(),
    }
    for key, value in positive.items():
        if value <= 0:
            raise ConfigError(f"{key}={value!r} must be > 0")
    if t.max_length < 3:
        raise ConfigError(f"text.max_length={t.max_length} leaves no room between [CLS] and [SEP]")
    if t.width % t.num_heads:
        raise ConfigError(f"text.width={t.width} is not a multiple of text.num_heads={t.num_heads}")
    if not 0.0 <= t.dropout < 1.0:
        raise ConfigError(f"text.dropout={t.dropout!r} must be in [0, 1)")
    if c.max_logit_scale < c.initial_logit_scale():
        raise ConfigError(
            f"contrastive.max_logit_scale={c.max_logit_scale!r} must be >= "
            f"contrastive.logit_scale_init={c.initial_logit_scale():.4g}"
        )
    if config.train.strategy != "ddp":
        raise ConfigError(
            f"train.strategy={config.train.strategy!r}: the contrastive recipe runs with ddp"
        )


def contrastive_config_from_dict(data: dict) -> ContrastiveConfig:
    """A validated :class:`ContrastiveConfig` from nested dicts (``recipe`` already removed)."""
    for name in DINO_SECTIONS:
        if name in data:
            raise ConfigError(
                f"{name}: a section of the image-only recipe; recipe=contrastive does not use it"
            )
    for section, keys in IGNORED_KEYS.items():
        values = data.get(section)
        for key in keys:
            if isinstance(values, dict) and key in values:
                raise ConfigError(
                    f"{section}.{key}: used only by the image-only recipe; "
                    "recipe=contrastive does not read it"
                )
    return build_config(ContrastiveConfig, data)
