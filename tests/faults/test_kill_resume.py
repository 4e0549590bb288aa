"""SIGKILL at seeded random points, then the same command again: the uninterrupted result.

Every command is killed (with its worker processes) at points drawn from a seed: a count of its
own progress plus a random part of the next unit of work (``tests/faults/interrupt.py``), so
the signal may land inside a file being written. It is then run again, killed again, and finally
run to the end. Each command runs with the same settings and one intra-op thread in every
process, so the results must agree bit for bit.
The tests of ``tests/cli/test_encode.py``, ``tests/ssl/test_trainer.py`` and
``tests/data/test_prepare.py`` kill each command once at a fixed point; these draw the points.
"""

from __future__ import annotations

import json
import math
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import raddino
from raddino import load_features
from raddino.ssl.checkpoint import list_checkpoints, load_checkpoint
from raddino.ssl.metrics import read_metrics
from tests.conftest import synthetic_radiograph
from tests.faults.conftest import prepare_inputs
from tests.faults.interrupt import kill_and_rerun, kill_points, raddino_command, run_to_end
from tests.faults.results import assert_same_state, files_under, tmp_leftovers, without_timings
from tests.ssl.conftest import TINY_OVERRIDES

# --------------------------------------------------------------------------- encode


def encode_folder(folder: Path, count: int) -> Path:
    folder.mkdir()
    for index in range(count):
        image = synthetic_radiograph(300 + 7 * index, 260 + 5 * index, seed=index)
        Image.fromarray(image).save(folder / f"{index:02d}.png")
    (folder / "03b_broken.png").write_bytes(b"\x89PNG\r\n\x1a\n broken")
    return folder


def encode_command(folder: Path, model: Path, out: Path) -> list[str]:
    # batch 1: a resumed run must batch the remaining images exactly as the uninterrupted one
    return raddino_command("encode", str(folder), "--model", str(model), "--out", str(out),
                   "--workers", "0", "--batch-size", "1", "--shard-size", "1", "--dtype", "fp32",
                   "--compile", "off", "--patch-tokens", "pooled", "--layers", "0",
                   "--no-progress")  # fmt: skip


def finished_shards(store: Path) -> int:
    shards = store / "shards"
    if not shards.is_dir():
        return 0
    return sum(1 for p in shards.iterdir() if p.name.isdigit())


def check_encode_resumes(small_hf_dir: Path, tmp_path: Path, seed: int, kills: int) -> None:
    images = 8
    folder = encode_folder(tmp_path / "images", images)
    reference, killed = tmp_path / "reference", tmp_path / "killed"
    run_to_end(encode_command(folder, small_hf_dir, reference), tmp_path / "reference.log")

    points = kill_points(
        seed, range(2, images - 1), kills, lambda _: finished_shards(killed), "shards"
    )
    kill_and_rerun(encode_command(folder, small_hf_dir, killed), points, tmp_path / "logs")

    expected, resumed = load_features(reference), load_features(killed)
    assert resumed.paths == expected.paths and len(resumed.paths) == images
    assert np.array_equal(resumed.cls, expected.cls)
    assert np.array_equal(resumed.patch_mean, expected.patch_mean)
    assert np.array_equal(resumed.layers[0].cls, expected.layers[0].cls)
    assert resumed.rejects == expected.rejects and len(resumed.rejects) == 1
    for name in ("index.csv", "rejects.csv", "meta.json"):
        assert (killed / name).read_bytes() == (reference / name).read_bytes(), name
    assert tmp_leftovers(killed) == []


def test_encode_killed_twice_at_random_points_resumes_to_the_uninterrupted_store(
    small_hf_dir: Path, tmp_path: Path
):
    check_encode_resumes(small_hf_dir, tmp_path, seed=0, kills=2)


@pytest.mark.slow
@pytest.mark.parametrize("seed", [1, 2, 3])
def test_encode_killed_at_more_random_points(small_hf_dir: Path, tmp_path: Path, seed: int):
    check_encode_resumes(small_hf_dir, tmp_path, seed=seed, kills=4)


# --------------------------------------------------------------------------- pretrain


def pretrain_command(data: Path, out: Path, steps: int) -> list[str]:
    return raddino_command("pretrain", *TINY_OVERRIDES, "train.deterministic=true",
                   f"train.steps={steps}", "train.checkpoint_every=3", "train.keep_last=2",
                   "--data", str(data), "--out", str(out), "--no-progress")  # fmt: skip


def logged_step(run_dir: Path) -> int:
    rows = read_metrics(run_dir)
    return rows[-1]["step"] if rows else -1


def check_pretrain_resumes(images: Path, tmp_path: Path, seed: int, kills: int) -> None:
    steps = 12
    reference, killed = tmp_path / "reference", tmp_path / "killed"
    run_to_end(pretrain_command(images, reference, steps), tmp_path / "reference.log")

    points = kill_points(
        seed, range(2, steps - 2), kills, lambda _: logged_step(killed) + 1, "steps"
    )
    command = pretrain_command(images, killed, steps)
    kill_and_rerun(command, points, tmp_path / "logs", rerun=command)

    assert without_timings(read_metrics(killed)) == without_timings(read_metrics(reference))
    assert [row["step"] for row in read_metrics(killed)] == list(range(steps))
    assert [s for s, _ in list_checkpoints(killed)] == [s for s, _ in list_checkpoints(reference)]
    final = {name: load_checkpoint(list_checkpoints(name)[-1][1]) for name in (reference, killed)}
    assert_same_state(final[killed], final[reference])
    assert tmp_leftovers(killed) == []


def test_pretrain_killed_twice_at_random_points_resumes_to_the_uninterrupted_run(
    pretrain_images: Path, tmp_path: Path
):
    check_pretrain_resumes(pretrain_images, tmp_path, seed=0, kills=2)


@pytest.mark.slow
@pytest.mark.parametrize("seed", [1, 2, 3])
def test_pretrain_killed_at_more_random_points(pretrain_images: Path, tmp_path: Path, seed: int):
    check_pretrain_resumes(pretrain_images, tmp_path, seed=seed, kills=4)


# --------------------------------------------------------------------------- data preprocess


def progress_lines(out: Path) -> int:
    log = out / "progress.jsonl"
    return log.read_bytes().count(b"\n") if log.is_file() else 0


def check_prepare_resumes(tmp_path: Path, seed: int, kills: int, workers: int) -> None:
    images = 16
    manifest = prepare_inputs(tmp_path / "data", images)

    def command(out: Path) -> list[str]:
        return raddino_command("data", "preprocess", "--manifest", str(manifest), "--out", str(out),
                       "--workers", str(workers), "--no-progress")  # fmt: skip

    reference, killed = tmp_path / "reference", tmp_path / "killed"
    run_to_end(command(reference), tmp_path / "reference.log")
    points = kill_points(
        seed, range(2, images - 2), kills, lambda _: progress_lines(killed), "images"
    )
    kill_and_rerun(command(killed), points, tmp_path / "logs")

    def progress(path: Path) -> bool:
        return path.name == "progress.jsonl"  # its order and repeats depend on the kills

    assert files_under(killed, progress) == files_under(reference, progress)
    done = [json.loads(line)["source"] for line in (killed / "progress.jsonl").open()]
    assert len(set(done)) == images + 1


def test_prepare_killed_twice_at_random_points_resumes_to_the_uninterrupted_outputs(
    tmp_path: Path,
):
    check_prepare_resumes(tmp_path, seed=0, kills=2, workers=0)


@pytest.mark.slow
@pytest.mark.parametrize("seed", [1, 2])
def test_prepare_with_workers_killed_at_more_random_points(tmp_path: Path, seed: int):
    check_prepare_resumes(tmp_path, seed=seed, kills=3, workers=2)


# --------------------------------------------------------------------------- synth


def rendered_images(out: Path, since: float) -> int:
    """Images written since ``since``: a rerun of synth renders every image again."""
    folder = out / "images"
    if not folder.is_dir():
        return 0
    return sum(1 for p in folder.glob("*.png") if p.stat().st_mtime >= since)


def check_synth_reruns(tmp_path: Path, seed: int, kills: int) -> None:
    n = 8

    def command(out: Path) -> list[str]:
        return raddino_command("synth", "--out", str(out), "--n", str(n), "--size", "64",
                       "--workers", "0", "--no-progress")  # fmt: skip

    reference, killed = tmp_path / "reference", tmp_path / "killed"
    run_to_end(command(reference), tmp_path / "reference.log")
    points = kill_points(
        seed, range(2, n - 1), kills, lambda started: rendered_images(killed, started), "images"
    )
    kill_and_rerun(command(killed), points, tmp_path / "logs")
    assert files_under(killed) == files_under(reference)


def test_synth_killed_at_a_random_point_reruns_to_the_uninterrupted_cohort(tmp_path: Path):
    check_synth_reruns(tmp_path, seed=0, kills=1)


@pytest.mark.slow
@pytest.mark.parametrize("seed", [1, 2])
def test_synth_killed_at_more_random_points(tmp_path: Path, seed: int):
    check_synth_reruns(tmp_path, seed=seed, kills=3)


# --------------------------------------------------------------------------- demo

# The demo's stages are the commands above; what the demo adds is its stage runner. This
# script runs it over four toy stages that write files slowly, standing in for the quick demo
# (slow-marked below) in the default run.
TOY_PIPELINE = textwrap.dedent(
    """
    import importlib.util, sys, time
    from pathlib import Path
    from raddino.atomic import write_bytes_atomic

    # the runner's module alone: the raddino.demo package imports torch (seconds per start)
    spec = importlib.util.spec_from_file_location("stages", sys.argv[2])
    stages_module = sys.modules["stages"] = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(stages_module)
    Stage, StageRunner = stages_module.Stage, stages_module.StageRunner

    out = Path(sys.argv[1])

    def stage(name, parts):
        def run(context):
            folder = out / name
            folder.mkdir(parents=True, exist_ok=True)
            done = {p.name for p in folder.glob("[0-9]*.txt")} if context.resuming else set()
            for part in range(parts):
                if f"{part}.txt" not in done:
                    time.sleep(0.02)
                    write_bytes_atomic(folder / f"{part}.txt", f"{name} {part}".encode())
            return {"parts": parts, "resumed": context.resuming}
        return run

    names = ["one", "two", "three", "four"]
    stages = [Stage(n, stage(n, 10), inputs={"parts": 10}, needs=tuple(names[:i]))
              for i, n in enumerate(names)]
    StageRunner(out, log=lambda line: None).run(stages)
    """
)


def stage_files(out: Path) -> int:
    return sum(1 for _ in out.glob("*/[0-9]*.txt"))  # not the temporary files of a kill


def test_a_killed_stage_pipeline_reruns_only_unfinished_stages(tmp_path: Path):
    script = tmp_path / "pipeline.py"
    script.write_text(TOY_PIPELINE)
    out = tmp_path / "out"
    runner = Path(raddino.__file__).parent / "demo" / "stages.py"
    command = [sys.executable, str(script), str(out), str(runner)]
    points = kill_points(0, range(5, 35), 2, lambda _: stage_files(out), "files")
    kill_and_rerun(command, points, tmp_path / "logs")
    markers = {p.stem: json.loads(p.read_text()) for p in (out / "stages").glob("*.json")}
    assert sorted(markers) == ["four", "one", "three", "two"]  # no .started.json left
    for name in markers:
        files = sorted((out / name).glob("[0-9]*.txt"))
        assert [p.read_text() for p in files] == [f"{name} {i}" for i in range(10)]
    # a stage that was killed mid-way continued from its own partial outputs
    assert any(marker["result"]["resumed"] for marker in markers.values())


def feature_stores(folder: Path) -> dict[str, Path]:
    """Label -> store; a store's name ends with a hash of where its encoder lives."""
    return {p.name.rsplit("-", 1)[0]: p for p in folder.iterdir() if (p / "meta.json").is_file()}


def demo_command(out: Path) -> list[str]:
    return raddino_command("demo", "--out", str(out), "--quick", "--workers", "0", "--no-reports",
                   "--no-progress")  # fmt: skip


def without_timings_and_paths(value: object, out: Path) -> object:
    """A JSON result without its timings (``seconds``, ``seconds_per_image``...), with the
    output folder in paths replaced by ``OUT``."""
    if isinstance(value, dict):
        return {k: without_timings_and_paths(v, out) for k, v in value.items() if "second" not in k}
    if isinstance(value, list):
        return [without_timings_and_paths(v, out) for v in value]
    if isinstance(value, float) and math.isnan(value):
        return "nan"
    if isinstance(value, str):
        return value.replace(str(out), "OUT")
    return value


def finished_stages(out: Path) -> list[str]:
    """Stages with a marker, in the order they finished."""
    markers = []
    for path in (out / "stages").glob("[!.]*.json"):  # not a marker being written
        try:
            markers.append(json.loads(path.read_text()))
        except (OSError, ValueError):
            continue
    markers = [m for m in markers if "finished" in m]
    return [m["stage"] for m in sorted(markers, key=lambda m: (m["finished"], m["seconds"]))]


def run_checkpoints(out: Path) -> dict[str, Path]:
    """Run name -> its newest checkpoint, for every run the demo trained."""
    return {
        run.name: list_checkpoints(run)[-1][1]
        for run in sorted((out / "runs").iterdir())
        if list_checkpoints(run)
    }


@pytest.mark.slow
def test_quick_demo_killed_at_random_points_reruns_to_the_uninterrupted_results(tmp_path: Path):
    reference, killed = tmp_path / "reference", tmp_path / "killed"
    run_to_end(demo_command(reference), tmp_path / "reference.log")
    stages = [name for name in finished_stages(reference) if name not in ("figures", "report")]
    points = kill_points(
        0,
        range(2, len(stages)),
        2,
        lambda _: sum(s in stages for s in finished_stages(killed)),
        "stages",
    )
    kill_and_rerun(demo_command(killed), points, tmp_path / "logs")

    assert set(finished_stages(killed)) == set(finished_stages(reference))
    assert files_under(killed / "cohort") == files_under(reference / "cohort")
    runs = [run_checkpoints(d) for d in (reference, killed)]
    assert sorted(runs[1]) == sorted(runs[0]) and runs[0]
    for name, path in runs[0].items():
        assert runs[1][name].name == path.name
        assert_same_state(load_checkpoint(runs[1][name]), load_checkpoint(path), name)
    stores = [feature_stores(d / "features") for d in (reference, killed)]
    assert sorted(stores[1]) == sorted(stores[0]) and stores[0]
    for label, folder in stores[0].items():
        expected, resumed = load_features(folder), load_features(stores[1][label])
        assert [Path(p).name for p in resumed.paths] == [Path(p).name for p in expected.paths]
        assert np.array_equal(resumed.cls, expected.cls), label
    expected, resumed = (
        without_timings_and_paths(
            json.loads((d / "evaluation" / "demo_summary.json").read_text()), d
        )
        for d in (reference, killed)
    )
    assert resumed == expected
    assert (killed / "REPORT.md").is_file()
