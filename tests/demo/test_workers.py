"""``--workers``: given, it sets every worker count; left out, rendering and encoding use 2 and
each pre-training keeps its config's ``train.num_workers`` (``tiny_cpu`` makes batches in the
training process: 200 demo steps in 74 s against 79 s with 2 workers, the same losses)."""

from __future__ import annotations

from pathlib import Path

import pytest

from raddino.demo.options import DemoOptions, default_config_path
from raddino.demo.pipeline import Demo
from raddino.ssl.config import load_config


def demo_options(tmp_path: Path, workers: int | None) -> DemoOptions:
    """The presets, except a language-supervised config with one loader worker (both presets
    have 0, so a count set for every stage would not show)."""
    language = default_config_path("clip_tiny_cpu.yaml").read_text()
    assert "  num_workers: 0 " in language
    language_config = tmp_path / "clip_one_worker.yaml"
    language_config.write_text(language.replace("  num_workers: 0 ", "  num_workers: 1 "))
    return DemoOptions(
        out=tmp_path / "out",
        config=default_config_path(),
        language_config=language_config,
        workers=workers,
    )


def test_without_workers_each_pretraining_keeps_its_config_and_pools_use_two(tmp_path):
    demo = Demo(demo_options(tmp_path, None))
    presets = {
        "pretrain": load_config("tiny_cpu").train.num_workers,
        "pretrain_language": load_config(tmp_path / "clip_one_worker.yaml").train.num_workers,
    }
    assert presets == {"pretrain": 0, "pretrain_language": 1}
    for stage, expected in presets.items():
        assert demo.configs[stage].train.num_workers == expected
    assert demo.options.pool_workers == 2
    assert demo.encode_options().num_workers == 2


@pytest.mark.parametrize("workers", [0, 3])
def test_given_workers_set_every_count(tmp_path, workers):
    demo = Demo(demo_options(tmp_path, workers))
    assert {c.train.num_workers for c in demo.configs.values()} == {workers}
    assert demo.encode_options().num_workers == workers
