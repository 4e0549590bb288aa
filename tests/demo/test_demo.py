"""``raddino demo --quick`` end to end: every stage, the report, caching and reruns.

One quick demo (48 images of 64 px, 3 pre-training steps of a 2-block ViT, a tiny language
model) runs once for the module; the tests after it re-run the command on the same directory.
They run in file order: the last one changes an option.
"""

from __future__ import annotations

import csv
import importlib.util
import json
import shutil
import time
from pathlib import Path

import pytest

from raddino.output_lock import LOCK_FILE
from tests.demo.conftest import run_cli
from tests.lock_holder import held_by_another_process

STAGES = [
    "cohort", "pretrain", "pretrain_language", "pretrain_no_ibot", "evaluate", "reports",
    "figures", "report",
]  # fmt: skip
LABELS = [
    "image-only", "language-supervised", "image-only-no-ibot", "random-init", "pixels-16x16"
]  # fmt: skip
REPORTS = all(importlib.util.find_spec(m) is not None for m in ("transformers", "peft"))
QUICK = ["--quick", "--workers", "0", "--no-progress", "--ablation"]


def demo(out: Path, *extra: str) -> int:
    return run_cli(["demo", "--out", str(out), *QUICK, *extra])


def statuses(out: Path) -> dict[str, str]:
    timings = json.loads((out / "timings.json").read_text())
    return {name: entry["status"] for name, entry in timings["stages"].items()}


@pytest.fixture(scope="module")
def demo_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("demo")
    assert demo(out) == 0
    return out


def test_every_stage_runs_and_is_timed(demo_dir: Path):
    timings = json.loads((demo_dir / "timings.json").read_text())
    assert list(timings["stages"]) == STAGES
    expected = {name: "ran" for name in STAGES}
    if not REPORTS:
        expected["reports"] = "disabled"
    assert statuses(demo_dir) == expected
    for name in STAGES:
        marker = demo_dir / "stages" / f"{name}.json"
        assert marker.is_file() == (expected[name] == "ran"), name


def test_pretraining_sees_the_train_split_only(demo_dir: Path):
    with (demo_dir / "cohort" / "manifest.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    train = {r["path"] for r in rows if r["split"] == "train"}
    with (demo_dir / "runs" / "train_images.csv").open() as handle:
        listed = list(csv.DictReader(handle))
    assert {str(Path(r["path"]).relative_to("../cohort")) for r in listed} == train
    reports = {r["path"]: r["report"] for r in rows}
    assert all(
        reports[str(Path(r["path"]).relative_to("../cohort"))] == r["report"] for r in listed
    )
    assert len(train) < len(rows)
    for run in ("ssl", "language", "no_ibot"):
        assert any((demo_dir / "runs" / run / "checkpoints").glob("step_*.pt")), run
    config = (demo_dir / "runs" / "no_ibot" / "config.yaml").read_text()
    assert "ibot_weight: 0.0" in config
    assert "recipe: contrastive" in (demo_dir / "runs" / "language" / "config.yaml").read_text()


def test_evaluation_compares_both_recipes_ablation_random_and_pixels(demo_dir: Path):
    evaluation = demo_dir / "evaluation"
    compare = json.loads((evaluation / "compare.json").read_text())
    labels = [e["label"] for e in compare["encoders"]]
    assert labels == LABELS
    assert compare["encoders"][3]["random_init"]
    for label in labels:
        assert any((evaluation / label / "segment" / "overlays").glob("*.png")), label
    summary = json.loads((evaluation / "demo_summary.json").read_text())
    macro = [r for r in summary["rows"] if r["target"] == "findings macro"]
    assert {(r["task"], r["metric"]) for r in macro} >= {("linear", "auroc"), ("knn", "auroc")}
    assert summary["pairs"] == [
        "image-only - language-supervised", "image-only - random-init",
        "language-supervised - random-init", "image-only - pixels-16x16",
        "language-supervised - pixels-16x16", "image-only - image-only-no-ibot",
    ]  # fmt: skip
    difference = macro[0]["differences"]["image-only - random-init"]
    assert set(difference) == {"value", "low", "high", "significant"}
    assert summary["headline"]["statement"]
    versus = summary["headline"]["versus"]
    assert set(versus) == {"language-supervised", "pixels-16x16", "image-only-no-ibot"}


def test_report_has_every_section_table_and_figure(demo_dir: Path):
    text = (demo_dir / "REPORT.md").read_text()
    for heading in (
        "## Headline results",
        "### Findings: macro over 7 findings",
        "### Findings: linear probe per finding",
        "### Patient metadata",
        "### Segmentation: linear head on frozen patch tokens",
        "## Figures",
        "## Report generation",
        "## Pre-training",
        "## Stage timings",
        "## Configuration",
    ):
        assert heading in text, heading
    assert "Synthetic data from one CT; not for clinical conclusions" in text
    assert "| findings macro (linear) | AUROC |" in text
    for pair in ("image-only - random-init", "image-only - language-supervised"):
        assert f"Δ {pair}" in text
    assert text.index("](figures/forest.png)") < text.index("## Headline results")
    assert (demo_dir / "figures" / "forest.svg").is_file()
    for row in ("| nodule | AUROC |", "| age | MAE |", "| sex | AUROC |", "| heart | Dice |"):
        assert row in text, row
    listing = json.loads((demo_dir / "figures" / "figures.json").read_text())
    figures = listing["figures"]
    scores = listing["correspondence"]  # Figure 2 over all pairs of test images with nodules
    assert set(scores) == {"image-only", "language-supervised", "random-init"}
    for score in scores.values():
        assert score["pairs"] >= 2 and 0 <= score["hit_rate"] <= 1 and 0 < score["chance"] < 1
    assert f"Figure 2 over all {scores['random-init']['pairs']} ordered pairs" in text
    keys = {f["key"] for f in figures}
    learned = ("image-only", "language-supervised", "random-init")
    assert {"loss_curves", *(f"similarity_{label}" for label in learned)} <= keys
    assert {f"pca_{label}" for label in learned} <= keys
    assert any(k.startswith("overlay_") for k in keys)
    for figure in figures:
        assert f"]({figure['path']})" in text  # referenced relatively from REPORT.md
        assert (demo_dir / figure["path"]).is_file()
    page = (demo_dir / "report.html").read_text()
    assert page.count("data:image/png;base64,") == len(figures) + 1  # + forest; self-contained
    assert "<h2>Headline results</h2>" in page and "../" not in page
    if REPORTS:
        assert "| most common report |" in text and "### Examples (test images)" in text


def test_a_second_run_skips_every_stage(demo_dir: Path, capsys: pytest.CaptureFixture[str]):
    capsys.readouterr()
    started = time.perf_counter()
    assert demo(demo_dir) == 0
    seconds = time.perf_counter() - started
    printed = capsys.readouterr().out
    ran = [name for name, status in statuses(demo_dir).items() if status == "ran"]
    assert ran == []
    assert "[1/8] cohort: done (cached)" in printed and "[8/8] report: done (cached)" in printed
    assert f"report:     {demo_dir / 'REPORT.md'}" in printed
    assert seconds < 15


def test_a_second_demo_on_a_held_folder_is_refused_and_changes_nothing(
    demo_dir: Path, capsys: pytest.CaptureFixture[str]
):
    def snapshot() -> dict[str, int]:
        return {str(p.relative_to(demo_dir)): p.stat().st_mtime_ns for p in demo_dir.rglob("*")}

    before = snapshot()
    capsys.readouterr()
    with held_by_another_process(demo_dir, "raddino demo --out demo") as holder:
        assert demo(demo_dir) == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith(f"raddino demo: error: {demo_dir} is in use by another writer: ")
        assert f"pid {holder.pid} on" in err and "\n" not in err
        after = snapshot()
    assert after.pop(LOCK_FILE) and after == before
    assert demo(demo_dir) == 0  # the holder gone, the demo runs (every stage cached)
    assert [name for name, status in statuses(demo_dir).items() if status == "ran"] == []


def test_deleting_a_marker_reruns_that_stage_and_the_ones_after(demo_dir: Path):
    (demo_dir / "stages" / "figures.json").unlink()
    assert demo(demo_dir) == 0
    ran = [name for name, status in statuses(demo_dir).items() if status == "ran"]
    assert ran == ["figures", "report"]


def test_an_interrupted_pretraining_resumes_its_run(demo_dir: Path):
    """A kill after the run's last checkpoint but before its marker: the stage runs again,
    and the trainer resumes from the checkpoint instead of starting over."""
    stages = demo_dir / "stages"
    marker = json.loads((stages / "pretrain_no_ibot.json").read_text())
    started = {"stage": "pretrain_no_ibot", "fingerprint": marker["fingerprint"]}
    (stages / "pretrain_no_ibot.started.json").write_text(json.dumps(started))
    (stages / "pretrain_no_ibot.json").unlink()
    checkpoints = sorted((demo_dir / "runs" / "no_ibot" / "checkpoints").glob("*.pt"))
    before = [p.stat().st_mtime_ns for p in checkpoints]
    assert demo(demo_dir, "--no-reports") == 0
    after = sorted((demo_dir / "runs" / "no_ibot" / "checkpoints").glob("*.pt"))
    assert [p.stat().st_mtime_ns for p in after] == before  # nothing trained again
    result = json.loads((stages / "pretrain_no_ibot.json").read_text())["result"]
    assert result["resumed_from"] == result["steps"]
    ran = [name for name, status in statuses(demo_dir).items() if status == "ran"]
    assert ran == ["pretrain_no_ibot", "evaluate", "figures", "report"]


def test_a_changed_option_reruns_from_the_stage_it_affects(demo_dir: Path):
    assert demo(demo_dir, "--no-reports", "--bootstrap", "50") == 0
    status = statuses(demo_dir)
    assert [name for name, s in status.items() if s == "ran"] == ["evaluate", "figures", "report"]
    assert status["reports"] == "disabled"
    summary = json.loads((demo_dir / "evaluation" / "demo_summary.json").read_text())
    assert summary["n_resamples"] == 50
    assert "Not run (--no-reports" in (demo_dir / "REPORT.md").read_text()


def test_figures_are_listed_as_skipped_without_the_viz_package(
    demo_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    import sys

    from raddino.demo.figures import make_figures
    from raddino.demo.options import DemoPaths
    from raddino.eval.encoders import EncoderSpec

    for name in ("cohort", "runs", "evaluation"):
        shutil.copytree(demo_dir / name, tmp_path / name, symlinks=True)
    for module in ("raddino.viz.plots", "raddino.viz.similarity", "raddino.viz.pca"):
        monkeypatch.setitem(sys.modules, module, None)  # import raises ImportError
    paths = DemoPaths(tmp_path)
    trained = EncoderSpec(str(paths.run("ssl")), name="image-only")
    random = EncoderSpec(str(paths.run("ssl")), random_init=True, name="random-init")
    specs = {"image-only": trained, "random-init": random}
    result = make_figures(paths, {"image-only": paths.run("ssl")}, specs)
    assert len(result["notes"]) == 3 and all("raddino.viz" in n for n in result["notes"])
    assert result["figures"] and all(f["key"].startswith("overlay_") for f in result["figures"])


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--images", "5"], "--images 5"),
        (["--config", "no-such.yaml"], "--config no-such.yaml"),
        (["--language-config", "no-such.yaml"], "--language-config no-such.yaml"),
        (["--language-config", "tiny_cpu"], "expected a preset with recipe"),
        (["--device", "tpu"], "--device 'tpu'"),
        (["--size", "48"], "--size 48: the probes average the patch tokens over 4 x 4 cells"),
        (["model.depth=oops"], "model.depth"),
        (["no.such_key=1"], "unknown config key"),
    ],
)
def test_bad_options_are_refused_before_any_work(
    tmp_path: Path, extra: list[str], message: str, capsys: pytest.CaptureFixture[str]
):
    out = tmp_path / "demo"
    assert run_cli(["demo", "--out", str(out), "--quick", *extra]) == 2
    err = capsys.readouterr().err
    assert "raddino demo: error:" in err and message in err
    assert not (out / "stages").exists()
