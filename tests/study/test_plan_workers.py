"""``raddino study --workers``: given, every arm's loader uses it; left out, each arm keeps its
config's ``train.num_workers``."""

from __future__ import annotations

import dataclasses

from raddino.study.plan import plan_arms
from raddino.study.reader import load_study


def test_study_arms_keep_their_configs_loader_unless_workers_is_given():
    spec = load_study("ablations")
    # both presets make batches in the training process (0 workers); give the language arm
    # another count so that a count applied to every arm would show
    arms = tuple(
        dataclasses.replace(a, overrides=(*a.overrides, "train.num_workers=2"))
        if a.name == "language"
        else a
        for a in spec.arms
    )
    spec = dataclasses.replace(spec, arms=arms)
    counts = {p.arm.name: p.config.train.num_workers for p in plan_arms(spec, 100)}
    assert counts["full"] == 0 and counts["language"] == 2
    forced = {p.config.train.num_workers for p in plan_arms(spec, 100, workers=1)}
    assert forced == {1}
