"""``raddino study quick`` end to end: the table, plots and report; caching, extension, a kill.

The quick study (48 images of 64 px, a 2-block ViT trained 3 steps, arms on all and half of the
train images and random weights) runs once for the module; the tests after it run the command
again on that folder or on copies of it.
"""

from __future__ import annotations

import csv
import json
import shutil
import time
from pathlib import Path

import pytest
import yaml

from raddino.study.spec import STUDIES_DIR
from tests.faults.interrupt import KillPoint, kill_and_rerun, kill_points, raddino_command
from tests.study.conftest import QUICK, run_study

ARMS = ["all_images", "half_images", "random"]
STAGES = [
    "data", "pretrain_all_images", "pretrain_half_images", "evaluate_all_images",
    "evaluate_half_images", "evaluate_random", "table", "plots", "report",
]  # fmt: skip


def statuses(out: Path) -> dict[str, str]:
    timings = json.loads((out / "timings.json").read_text())
    return {name: entry["status"] for name, entry in timings["stages"].items()}


def table_rows(out: Path) -> list[dict[str, str]]:
    with (out / "table.csv").open(newline="") as handle:
        return list(csv.DictReader(handle))


def test_every_stage_runs_and_each_arm_is_pretrained_on_its_share(quick_dir: Path):
    assert statuses(quick_dir) == dict.fromkeys(STAGES, "ran")
    lists = {
        arm: [
            row["path"] for row in csv.DictReader((quick_dir / "train_lists" / f"{arm}.csv").open())
        ]
        for arm in ("all_images", "half_images")
    }
    assert set(lists["half_images"]) < set(lists["all_images"])  # nested subsets
    assert len(lists["half_images"]) == round(len(lists["all_images"]) / 2)
    with (quick_dir / "cohort" / "manifest.csv").open() as handle:
        train = {r["path"] for r in csv.DictReader(handle) if r["split"] == "train"}
    assert {str(Path(p).relative_to("../cohort")) for p in lists["all_images"]} == train
    assert not (quick_dir / "runs" / "random").exists()  # random weights: no pre-training


def test_the_table_pairs_every_arm_with_the_reference(quick_dir: Path):
    rows = table_rows(quick_dir)
    assert {r["arm"] for r in rows} == set(ARMS)
    keys = {(r["task"], r["target"], r["metric"]) for r in rows}
    assert {("linear", "findings", "auroc"), ("segment", "mean", "dice")} <= keys
    for row in rows:
        if row["arm"] == "all_images":  # the reference: no difference
            assert row["difference"] == "" and row["difference_excludes_0"] == ""
        elif row["value"]:
            assert row["difference"] != "" and row["difference_excludes_0"] in ("yes", "no")
            assert float(row["difference_low"]) <= float(row["difference_high"])
    text = (quick_dir / "table.md").read_text()
    assert "all_images (reference)" in text and "| Δ |" in text
    assert "findings AUROC (linear)" in text and "mean Dice (segmentation)" in text
    summary = json.loads((quick_dir / "study.json").read_text())
    assert summary["reference"] == "all_images"
    assert "half_images - all_images" in summary["rows"][0]["differences"]
    stored = quick_dir / "evaluation" / "half_images"
    assert (stored / "estimates.npz").is_file() and (stored / "probe" / "probe.json").is_file()


def test_plots_are_written_as_png_and_svg_and_the_report_is_self_contained(quick_dir: Path):
    for name in ("images", "differences"):
        assert (quick_dir / "plots" / f"{name}.png").stat().st_size > 1000
        assert (quick_dir / "plots" / f"{name}.svg").read_text().lstrip().startswith("<?xml")
    markdown = (quick_dir / "REPORT.md").read_text()
    assert "](plots/images.png)" in markdown and "## Results" in markdown
    assert "raddino study quick --out" in markdown  # the command that reproduces it
    page = (quick_dir / "report.html").read_text()
    assert page.count('src="data:image/png;base64,') == 2
    assert 'src="plots/' not in page and "<h2>Arms</h2>" in page


def test_a_second_run_reuses_every_stage(quick_dir: Path, capsys: pytest.CaptureFixture[str]):
    table = (quick_dir / "table.csv").read_bytes()
    capsys.readouterr()
    began = time.perf_counter()
    assert run_study("quick", quick_dir) == 0
    seconds = time.perf_counter() - began
    out = capsys.readouterr().out
    assert statuses(quick_dir) == dict.fromkeys(STAGES, "cached")
    assert out.count("done (cached)") == len(STAGES) and "0 stages ran" in out
    assert seconds < 10, f"a fully cached study took {seconds:.1f} s"
    assert (quick_dir / "table.csv").read_bytes() == table


def test_an_added_arm_runs_only_its_own_stages(quick_dir: Path, tmp_path: Path):
    """One new data fraction (its own pre-training) and one new evaluation size of an existing
    arm (which re-uses that arm's pre-training)."""
    out = tmp_path / "extended"
    shutil.copytree(quick_dir, out)
    data = yaml.safe_load((STUDIES_DIR / "quick.yaml").read_text())
    data["arms"] += [
        {"name": "quarter_images", "group": "fixed steps", "train_fraction": 0.25},
        {"name": "all_images_48px", "image_size": 48},
    ]
    extended = tmp_path / "extended.yaml"
    extended.write_text(yaml.safe_dump(data))
    assert run_study(extended, out) == 0
    expected = {name: "cached" for name in STAGES[:6]}
    expected |= {
        "pretrain_quarter_images": "ran",
        "evaluate_quarter_images": "ran",
        "evaluate_all_images_48px": "ran",  # its pre-training is pretrain_all_images
        "table": "ran",
        "plots": "ran",
        "report": "ran",
    }
    assert statuses(out) == expected
    rows = table_rows(out)
    assert {r["arm"] for r in rows} == {*ARMS, "quarter_images", "all_images_48px"}
    before = {(r["task"], r["target"], r["metric"], r["arm"]): r for r in table_rows(quick_dir)}
    for row in rows:  # the old arms' numbers are kept as they were
        key = (row["task"], row["target"], row["metric"], row["arm"])
        if key in before:
            assert row == before[key]


def stages_done(out: Path):
    def count(started: float) -> int:
        return sum(1 for p in (out / "stages").glob("*.json") if ".started." not in p.name)

    return count


def checkpoints(run: Path):
    return lambda started: len(list((run / "checkpoints").glob("step_*.pt")))


def test_a_killed_study_finishes_with_the_same_table(quick_dir: Path, tmp_path: Path):
    """SIGKILL of the whole process group in the first pre-training, just after its step-2
    checkpoint, then inside a seeded random later stage (evaluation, table, plots), then the
    same command to the end: the table is the uninterrupted study's, byte for byte."""
    out = tmp_path / "killed"
    command = raddino_command("study", "quick", "--out", str(out), *QUICK)
    in_pretraining = KillPoint(
        checkpoints(out / "runs" / "all_images"), 1, 0.0, "first checkpoint of all_images"
    )
    later = kill_points(22, [5, 6, 7, 8], 1, stages_done(out), "stages done")
    kill_and_rerun(command, [in_pretraining, *later], tmp_path / "logs")
    marker = json.loads((out / "stages" / "pretrain_all_images.json").read_text())
    assert marker["result"]["resumed_from"] == 2  # the trainer's own resume, not a restart
    assert (out / "table.csv").read_bytes() == (quick_dir / "table.csv").read_bytes()
    assert (out / "report.html").is_file()


def test_a_study_of_own_data_reads_its_manifest(quick_dir: Path, tmp_path: Path):
    """``data: {manifest: ...}`` instead of the synthetic cohort: here the quick study's own
    cohort, so the same arms give the same numbers."""
    data = yaml.safe_load((STUDIES_DIR / "quick.yaml").read_text())
    data["data"] = {"manifest": str(quick_dir / "cohort" / "manifest.csv")}
    data["arms"] = [a for a in data["arms"] if a["name"] != "half_images"]
    study = tmp_path / "own.yaml"
    study.write_text(yaml.safe_dump(data))
    out = tmp_path / "own"
    assert run_study(study, out) == 0
    assert not (out / "cohort").exists()
    before = {(r["task"], r["target"], r["metric"], r["arm"]): r for r in table_rows(quick_dir)}
    rows = table_rows(out)
    assert {r["arm"] for r in rows} == {"all_images", "random"}
    for row in rows:
        assert row == before[(row["task"], row["target"], row["metric"], row["arm"])]
