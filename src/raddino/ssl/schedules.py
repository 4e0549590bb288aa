"""Per-step schedules of the DINOv2 recipe: pure functions of the step number.

Lengths are in optimiser steps (DINOv2 counts "epochs" of 1,250 steps; we use steps directly).
Every cosine schedule of the package comes from here: pre-training (image-only and
language-supervised), the segmentation head (:mod:`raddino.eval.segment`) and report-model
training (:mod:`raddino.eval.report_generation.train`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass


def cosine_schedule(
    step: int,
    base: float,
    final: float,
    total_steps: int,
    warmup_steps: int = 0,
    start_warmup: float = 0.0,
    freeze_steps: int = 0,
) -> float:
    """DINOv2's CosineScheduler at ``step``.

    0 during ``freeze_steps``; then linear from ``start_warmup`` to ``base`` over
    ``warmup_steps``; then ``final + (base - final) * (1 + cos(pi * i / n)) / 2`` over the rest;
    ``final`` at and beyond ``total_steps``.
    """
    if step < freeze_steps:
        return 0.0
    step -= freeze_steps
    if step < warmup_steps:
        return start_warmup + (base - start_warmup) * step / warmup_steps
    step -= warmup_steps
    cosine_steps = total_steps - freeze_steps - warmup_steps
    if cosine_steps <= 0 or step >= cosine_steps:
        return final
    return final + 0.5 * (base - final) * (1.0 + math.cos(math.pi * step / cosine_steps))


def linear_warmup(step: int, start: float, end: float, warmup_steps: int) -> float:
    """Linear from ``start`` to ``end`` over ``warmup_steps``, then constant (teacher temp)."""
    if warmup_steps <= 0 or step >= warmup_steps:
        return end
    return start + (end - start) * step / warmup_steps


@dataclass(frozen=True)
class ScheduleValues:
    lr: float
    last_layer_lr: float
    weight_decay: float
    momentum: float
    teacher_temp: float


@dataclass(frozen=True)
class Schedules:
    """All schedules of one run; ``at(step)`` gives every value for that step."""

    total_steps: int
    lr: float
    min_lr: float
    warmup_steps: int
    weight_decay: float
    weight_decay_end: float
    momentum: float
    momentum_end: float
    teacher_temp_start: float
    teacher_temp: float
    teacher_temp_warmup_steps: int
    freeze_last_layer_steps: int

    def at(self, step: int) -> ScheduleValues:
        lr_args = (self.lr, self.min_lr, self.total_steps, self.warmup_steps)
        return ScheduleValues(
            lr=cosine_schedule(step, *lr_args),
            last_layer_lr=0.0
            if step < self.freeze_last_layer_steps
            else cosine_schedule(step, *lr_args),
            weight_decay=cosine_schedule(
                step, self.weight_decay, self.weight_decay_end, self.total_steps
            ),
            momentum=cosine_schedule(step, self.momentum, self.momentum_end, self.total_steps),
            teacher_temp=linear_warmup(
                step, self.teacher_temp_start, self.teacher_temp, self.teacher_temp_warmup_steps
            ),
        )
