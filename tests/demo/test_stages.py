"""The stage runner: fingerprints, skipping finished stages, reruns, failures, progress lines."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from raddino.demo.stages import (
    Stage,
    StageContext,
    StageError,
    StageRunner,
    fingerprint,
    format_duration,
)


class Recorder:
    """Stages that record each call (and the context they saw) and can be told to fail."""

    def __init__(self) -> None:
        self.calls: list[str] = []
        self.contexts: dict[str, StageContext] = {}
        self.fail: set[str] = set()

    def stage(self, name: str, needs: tuple[str, ...] = (), **inputs) -> Stage:
        def run(context: StageContext) -> dict:
            self.calls.append(name)
            self.contexts[name] = context
            if name in self.fail:
                raise RuntimeError(f"{name} broke")
            return {"value": len(self.calls)}

        return Stage(name, run, dict(inputs), needs=needs, estimate=lambda: 1.0)

    def pipeline(self, size: int = 1, steps: int = 10) -> list[Stage]:
        return [
            self.stage("cohort", size=size),
            self.stage("pretrain", ("cohort",), steps=steps),
            self.stage("ablation", ("cohort",), steps=steps),
            self.stage("evaluate", ("cohort", "pretrain", "ablation")),
            self.stage("report", ("evaluate",)),
        ]


@pytest.fixture
def runner(tmp_path: Path) -> StageRunner:
    lines: list[str] = []
    runner = StageRunner(tmp_path, log=lines.append)
    runner.lines = lines  # type: ignore[attr-defined]
    return runner


def test_fingerprint_depends_on_inputs_and_on_the_runs_it_needs():
    base = fingerprint("s", {"a": 1}, {"up": "run1"})
    assert base == fingerprint("s", {"a": 1}, {"up": "run1"})
    assert base != fingerprint("s", {"a": 2}, {"up": "run1"})
    assert base != fingerprint("s", {"a": 1}, {"up": "run2"})
    assert base != fingerprint("t", {"a": 1}, {"up": "run1"})


def test_finished_stages_are_skipped_on_the_next_run(runner: StageRunner):
    rec = Recorder()
    first = runner.run(rec.pipeline())
    assert [o.status for o in first] == ["ran"] * 5
    assert rec.calls == ["cohort", "pretrain", "ablation", "evaluate", "report"]
    marker = json.loads((runner.folder / "pretrain.json").read_text())
    assert marker["inputs"] == {"steps": 10} and marker["result"] == {"value": 2}
    assert set(marker) >= {"fingerprint", "run_id", "needs", "seconds", "finished"}
    rec.calls.clear()
    second = runner.run(rec.pipeline())
    assert rec.calls == []
    assert [o.status for o in second] == ["cached"] * 5
    assert runner.lines[-1] == "[5/5] report: done (cached)"  # type: ignore[attr-defined]


def test_a_changed_option_reruns_its_stage_and_the_stages_that_need_it(runner: StageRunner):
    rec = Recorder()
    runner.run(rec.pipeline(steps=10))
    rec.calls.clear()
    runner.run(rec.pipeline(steps=20))  # pretrain and ablation read `steps`
    assert rec.calls == ["pretrain", "ablation", "evaluate", "report"]
    rec.calls.clear()
    runner.run(rec.pipeline(size=2, steps=20))  # the first stage: everything
    assert rec.calls == ["cohort", "pretrain", "ablation", "evaluate", "report"]


def test_deleting_a_marker_reruns_that_stage_and_the_ones_after_it(runner: StageRunner):
    rec = Recorder()
    runner.run(rec.pipeline())
    rec.calls.clear()
    runner.marker_path("ablation").unlink()
    runner.run(rec.pipeline())
    assert rec.calls == ["ablation", "evaluate", "report"]  # pretrain does not need it


def test_a_failing_stage_leaves_no_marker_and_the_error_names_it(runner: StageRunner):
    rec = Recorder()
    rec.fail.add("evaluate")
    with pytest.raises(
        StageError, match=r"stage 'evaluate' failed after .*RuntimeError: evaluate broke"
    ):
        runner.run(rec.pipeline())
    assert not runner.marker_path("evaluate").exists()
    assert runner.marker_path("ablation").exists()  # finished stages keep their markers
    assert not rec.contexts["evaluate"].resuming
    # the next run continues with the failed stage; it is told that its partial outputs
    # belong to the same inputs
    rec.fail.clear()
    rec.calls.clear()
    runner.run(rec.pipeline())
    assert rec.calls == ["evaluate", "report"]
    assert rec.contexts["evaluate"].resuming
    assert not runner.started_path("evaluate").exists()


def test_an_interrupted_stage_with_other_inputs_is_not_resumed(runner: StageRunner):
    rec = Recorder()
    rec.fail.add("pretrain")
    with pytest.raises(StageError):
        runner.run(rec.pipeline(steps=10))
    rec.fail.clear()
    runner.run(rec.pipeline(steps=20))
    assert not rec.contexts["pretrain"].resuming  # partial work of steps=10: discard it


def test_a_stale_marker_is_removed_before_its_stage_runs_again(runner: StageRunner):
    rec = Recorder()
    runner.run(rec.pipeline(steps=10))
    rec.fail.add("pretrain")
    with pytest.raises(StageError):
        runner.run(rec.pipeline(steps=20))
    assert not runner.marker_path("pretrain").exists()


def test_disabled_stages_are_reported_and_skipped(runner: StageRunner):
    rec = Recorder()
    stages = rec.pipeline()
    stages[2].enabled, stages[2].reason = False, "--no-ablation"
    stages[3].needs = ("cohort", "pretrain")
    outcomes = runner.run(stages)
    assert [o.status for o in outcomes] == ["ran", "ran", "disabled", "ran", "ran"]
    assert "ablation" not in rec.calls
    assert "[3/5] ablation: skipped (--no-ablation)" in runner.lines  # type: ignore[attr-defined]


def test_progress_lines_give_elapsed_time_and_what_is_left(runner: StageRunner):
    rec = Recorder()
    runner.run(rec.pipeline())
    lines = runner.lines  # type: ignore[attr-defined]
    assert lines[0] == "plan: 5 stages, about 5.0 s of work to do"
    assert lines[1].startswith("[1/5] cohort: start (planned 1.0 s; elapsed")
    assert lines[2].startswith("[1/5] cohort: done in") and "about 4.0 s to go" in lines[2]
    assert lines[-1].startswith("[5/5] report: done in") and "to go" not in lines[-1]


def test_a_stage_may_not_need_a_stage_that_comes_later(runner: StageRunner):
    rec = Recorder()
    stages = [rec.stage("a", ("b",)), rec.stage("b")]
    with pytest.raises(ValueError, match="stage 'a' needs"):
        runner.run(stages)


@pytest.mark.parametrize(
    ("seconds", "text"),
    [(3.21, "3.2 s"), (42.4, "42 s"), (185, "3 min 05 s"), (3725, "1 h 02 min")],
)
def test_format_duration(seconds: float, text: str):
    assert format_duration(seconds) == text
