"""``raddino study --workers``: given, every arm's loader uses it; left out, each arm keeps its
config's ``train.num_workers``."""

from __future__ import annotations

from raddino.study.plan import plan_arms
from raddino.study.reader import load_study


def test_study_arms_keep_their_configs_loader_unless_workers_is_given():
    spec = load_study("ablations")
    arms = {p.arm.name: p.config.train.num_workers for p in plan_arms(spec, 100)}
    assert arms["full"] == 0 and arms["language"] == 2
    forced = {p.config.train.num_workers for p in plan_arms(spec, 100, workers=1)}
    assert forced == {1}
