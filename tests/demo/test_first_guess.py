"""The ETA's first guesses (``raddino.demo.first_guess``): one set of rates for the demo and the
study, ``tiny_cpu`` as the unit of compute, and measured rates taking over."""

from __future__ import annotations

from pathlib import Path

import pytest

from raddino.demo import first_guess
from raddino.demo.options import DemoOptions, default_config_path
from raddino.demo.pipeline import Demo
from raddino.ssl.config import load_config
from raddino.study import plan
from raddino.study.reader import load_study


def full_demo(tmp_path: Path) -> Demo:
    return Demo(
        DemoOptions(
            out=tmp_path / "out",
            config=default_config_path(),
            language_config=default_config_path("clip_tiny_cpu.yaml"),
        )
    )


def test_tiny_cpu_is_the_unit_of_compute():
    config = load_config("tiny_cpu")
    assert first_guess.relative_cost(config, first_guess.pretrain_tokens(config)) == 1.0
    per_step = first_guess.pretrain_seconds_per_step(config)
    assert per_step == pytest.approx(
        config.train.batch_size * first_guess.PRETRAIN_SECONDS_PER_IMAGE
    )


def test_a_wider_model_costs_more_by_its_width_squared():
    tiny = load_config("tiny_cpu")
    wide = load_config("tiny_cpu", ["model.embed_dim=384", "model.num_heads=6"])
    ratio = first_guess.pretrain_seconds_per_step(wide) / first_guess.pretrain_seconds_per_step(
        tiny
    )
    assert ratio == pytest.approx(4.0)


def test_the_demo_and_the_study_guess_the_same_pretraining(tmp_path):
    demo = full_demo(tmp_path)
    for stage in ("pretrain", "pretrain_language"):
        config = demo.configs[stage]
        assert demo.estimate_pretrain(stage) == pytest.approx(plan.guess_pretrain_seconds(config))


def test_the_demo_and_the_study_guess_the_same_cohort(tmp_path):
    demo = full_demo(tmp_path)
    spec = load_study("ablations")
    images, size = spec.data.images, spec.data.size
    study_guess = plan.guess_data_seconds(spec, workers=2)
    demo_guess = first_guess.synth_seconds(demo.sizes.images, demo.sizes.size, 2)
    assert study_guess / demo_guess == pytest.approx(
        images * size**2 / (demo.sizes.images * demo.sizes.size**2)
    )
    assert demo.estimate_cohort() == pytest.approx(demo_guess)


def test_the_evaluation_guess_scales_with_images_encoders_and_epochs():
    base = first_guess.eval_seconds(2000, 3.2, 20)
    assert base == pytest.approx(336)  # the Xeon's 5 min 26 s, plus 10 s
    assert first_guess.eval_seconds(4000, 3.2, 20) - 10 == pytest.approx(2 * (base - 10))
    assert first_guess.eval_seconds(2000, 1.6, 20) - 10 == pytest.approx((base - 10) / 2)
    assert first_guess.eval_seconds(2000, 3.2, 0) - 10 == pytest.approx((base - 10) / 2)


def test_the_full_demo_is_first_guessed_within_its_half_hour_budget(tmp_path):
    """The rates come from full demos on the project's two CPUs, the slower of each: the sum
    must come out near the ~26-34 minutes those runs took, not the 47 of the stale guesses."""
    demo = full_demo(tmp_path)
    minutes = demo.runner.planned_seconds(demo.stages(), {}) / 60
    assert 25 < minutes < 36


def test_a_measured_image_only_rate_rescales_the_language_guess(tmp_path):
    demo = full_demo(tmp_path)
    guess = demo.estimate_pretrain("pretrain_language")
    demo.rates.pretrain_seconds_per_step["pretrain"] = 2 * first_guess.pretrain_seconds_per_step(
        demo.configs["pretrain"]
    )
    assert demo.estimate_pretrain("pretrain_language") == pytest.approx(2 * guess)
    demo.rates.pretrain_seconds_per_step["pretrain_language"] = 0.25
    steps = demo.configs["pretrain_language"].train.steps
    assert demo.estimate_pretrain("pretrain_language") == pytest.approx(0.25 * steps)
