"""First guesses of how long the demo's and the study's stages take, for the ETA they print
before this machine's own rates are measured (both replace them once a stage has run).

Each rate is the slower of the project's two kinds of 2-core CPU in a full ``make demo``
(``OUT/timings.json`` and ``OUT/stages/*.json``):

* Intel Xeon (family 6 model 167, AMX), a56694b: cohort 3 min 34 s, evaluation 5 min 26 s
  (probes on ``cls+mean``, fits one at a time);
* AMD EPYC (AVX512-BF16, no AMX), 38226f8: image-only pre-training 10 min 05 s (1,200 steps of
  32 images), report generation 1 min 32 s (three encoders).

The evaluation's rate stands for both kinds of probe features: on the EPYC it took 4 min 21 s
with ``cls+mean`` probes fitted one at a time (38226f8), 9 min 05 s with ``cls+grid4`` (6fd1ab3)
and 4 min 20 s with ``cls+grid4`` and the fits at the same time (9fc20c9); the Xeon has not run
the last two.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from raddino.contrastive.config import ContrastiveConfig
    from raddino.ssl.config import PretrainConfig

SYNTH_SECONDS_PER_IMAGE_160 = 214.0 / 2000
"""Rendering one synthetic image of 160 px with 2 pool workers."""
PRETRAIN_SECONDS_PER_IMAGE = 605.0 / (1200 * 32)
"""One image of a ``tiny_cpu`` pre-training step (2 x 112 + 4 x 48 crops)."""
EVAL_SECONDS_PER_IMAGE_160 = 326.0 / (3.2 * 2000)
"""One image through the demo's evaluation (encode, probes, 20 segmentation epochs) for one
encoder of ``tiny_cpu``'s cost at 160 px; raw pixels cost 0.2 of one."""
PIXELS_EVAL_COST = 0.2
"""The raw-pixel baseline's evaluation cost, relative to one ``tiny_cpu`` encoder."""
REPORT_SECONDS_PER_SAMPLE = 0.0045
"""Report generation: training the language model on one sample (one encoder)."""
REPORT_SECONDS_PER_TEST_ROW = 0.14
"""Report generation: writing one test image's report (one encoder)."""

TINY_CPU_FLOPS_UNITS = 134 * 6 * 192**2
"""tokens x depth x width^2 of ``tiny_cpu`` at its pre-training crops (134 tokens an image)."""


def relative_cost(config: PretrainConfig | ContrastiveConfig, tokens_per_image: float) -> float:
    """Compute of one image relative to tiny_cpu's (a 6-block, 192-wide ViT): tokens times
    depth times width squared."""
    from raddino.ssl.trainer import backbone_config  # torch: only when an ETA is printed

    vit = backbone_config(config)  # the named size with the config's overrides
    return tokens_per_image * vit.depth * vit.embed_dim**2 / TINY_CPU_FLOPS_UNITS


def pretrain_tokens(config: PretrainConfig | ContrastiveConfig) -> float:
    """Patch tokens one image brings to a step: the global (and local) crops."""
    c, patch = config.crops, config.model.patch_size
    if config.recipe == "contrastive":
        return (c.global_size / patch) ** 2
    return 2 * (c.global_size / patch) ** 2 + c.local_number * (c.local_size / patch) ** 2


def pretrain_seconds_per_step(config: PretrainConfig | ContrastiveConfig) -> float:
    """One step of ``config`` on a 2-core CPU, scaled from ``tiny_cpu`` by compute."""
    per_image = PRETRAIN_SECONDS_PER_IMAGE * relative_cost(config, pretrain_tokens(config))
    return config.train.batch_size * per_image


def synth_seconds(images: int, size: int, workers: int) -> float:
    """Rendering ``images`` synthetic radiographs of ``size`` px with ``workers`` processes
    (the rate above is for 2; the cost grows with the pixel count)."""
    parallel = 2 / max(1, min(2, workers or 1))
    return images * SYNTH_SECONDS_PER_IMAGE_160 * (size / 160) ** 2 * parallel


def eval_seconds(images: int, encoder_cost: float, seg_epochs: int) -> float:
    """Evaluating ``images`` with encoders of total ``encoder_cost`` (tiny_cpu at 160 px = 1)
    and ``seg_epochs`` segmentation epochs (the rate above is for 20)."""
    return 10 + images * EVAL_SECONDS_PER_IMAGE_160 * encoder_cost * (0.5 + 0.5 * seg_epochs / 20)


def report_seconds(train_samples: int, test_rows: int) -> float:
    """Report generation for one encoder: ``train_samples`` (steps x batch) and ``test_rows``."""
    return train_samples * REPORT_SECONDS_PER_SAMPLE + test_rows * REPORT_SECONDS_PER_TEST_ROW
