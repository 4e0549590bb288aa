"""Schedules equal their formulas at chosen steps."""

from __future__ import annotations

import math

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
