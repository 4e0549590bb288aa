"""Schedules equal their formulas at chosen steps."""

from __future__ import annotations

import math

import numpy as np
import pytest

from raddino.ssl.schedules import Schedules, cosine_schedule, linear_warmup


def test_cosine_schedule_phases():
    args = dict(base=1.0, final=0.1, total_steps=110, warmup_steps=10, start_warmup=0.0)
    assert cosine_schedule(0, **args) == 0.0
    assert cosine_schedule(5, **args) == pytest.approx(0.5)
    assert cosine_schedule(10, **args) == pytest.approx(1.0)
    # halfway through the 100 cosine steps: final + (base - final) / 2
    assert cosine_schedule(60, **args) == pytest.approx(0.55)
    assert cosine_schedule(35, **args) == pytest.approx(0.1 + 0.45 * (1 + math.cos(math.pi / 4)))
    assert cosine_schedule(110, **args) == 0.1
    assert cosine_schedule(10_000, **args) == 0.1


def test_freeze_steps_give_zero_then_the_schedule():
    assert cosine_schedule(2, 1.0, 0.0, 20, freeze_steps=3) == 0.0
    assert cosine_schedule(3, 1.0, 0.0, 20, freeze_steps=3) == pytest.approx(1.0)


def test_teacher_temperature_warms_up_linearly_then_stays():
    assert linear_warmup(0, 0.04, 0.07, 30) == 0.04
    assert linear_warmup(15, 0.04, 0.07, 30) == pytest.approx(0.055)
    assert linear_warmup(30, 0.04, 0.07, 30) == 0.07
    assert linear_warmup(500, 0.04, 0.07, 30) == 0.07


def test_schedules_bundle_matches_dinov2_shapes():
    schedules = Schedules(
        total_steps=100, lr=1e-3, min_lr=1e-6, warmup_steps=10, weight_decay=0.04,
        weight_decay_end=0.4, momentum=0.992, momentum_end=1.0, teacher_temp_start=0.04,
        teacher_temp=0.07, teacher_temp_warmup_steps=30, freeze_last_layer_steps=5,
    )  # fmt: skip
    first, later = schedules.at(0), schedules.at(50)
    assert first.weight_decay == pytest.approx(0.04) and first.momentum == pytest.approx(0.992)
    assert later.weight_decay == pytest.approx(
        0.04 + (0.4 - 0.04) * (1 - math.cos(math.pi / 2)) / 2
    )
    assert schedules.at(99).momentum == pytest.approx(1.0, abs=1e-5)
    assert [schedules.at(s).last_layer_lr for s in range(5)] == [0.0] * 5
    assert schedules.at(7).last_layer_lr == schedules.at(7).lr > 0


def report_model_lr_formula(step: int, lr: float, warmup: int, steps: int) -> float:
    """Report-model training's schedule written out: warm-up counting the step being taken, then
    cosine decay to 0 over the steps after the warm-up."""
    if step < warmup:
        return lr * (step + 1) / warmup
    progress = (step - warmup) / max(1, steps - warmup)
    return lr * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))


@pytest.mark.parametrize(("warmup", "steps"), [(0, 40), (1, 40), (5, 40), (10, 300), (50, 1000)])
@pytest.mark.parametrize("lr", [1e-4, 3e-4, 2e-3, 0.1])
def test_report_model_learning_rate_is_its_formula_through_the_shared_schedule(
    lr: float, warmup: int, steps: int
):
    from raddino.eval.report_generation.train import TrainConfig, learning_rate

    config = TrainConfig(lr=lr, warmup_steps=warmup, steps=steps)
    edges = {0, 1, warmup - 1, warmup, warmup + 1, steps // 2, steps - 1, steps, steps + 5}
    for step in sorted(s for s in edges if s >= 0):
        expected = report_model_lr_formula(step, lr, warmup, steps)
        actual = learning_rate(step, config)
        # pi * (i / n) there, (pi * i) / n here: equal to the last bits of a float64, and
        # identical as the float32 the optimiser applies
        assert actual == pytest.approx(expected, rel=1e-11, abs=1e-300)
        assert np.float32(actual) == np.float32(expected)
    if warmup:
        assert learning_rate(warmup - 1, config) == learning_rate(warmup, config) == lr


@pytest.mark.parametrize("total", [1, 7, 64, 1000])
def test_segmentation_head_multiplier_is_the_shared_cosine_bit_for_bit(total: int):
    for step in sorted({0, 1, total // 3, total // 2, total - 1, total, total + 3}):
        former = 0.5 * (1 + math.cos(math.pi * min(step, total) / total))
        assert cosine_schedule(step, 1.0, 0.0, total) == former


def test_warmup_edges_of_the_shared_schedule():
    args = dict(base=2.0, final=0.5, total_steps=30, warmup_steps=10, start_warmup=0.0)
    assert cosine_schedule(9, **args) == 2.0 * 9 / 10
    assert cosine_schedule(10, **args) == 2.0  # the first cosine step is the peak
    assert cosine_schedule(29, **args) > 0.5 and cosine_schedule(30, **args) == 0.5
