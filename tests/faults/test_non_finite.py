"""NaN and infinity: in input images (rejected, named, in rejects.csv; skipped with a warning by
pre-training) and in a training step (the run stops with TrainingDivergedError, its last
checkpoint intact and resumable to the uninterrupted result)."""

from __future__ import annotations

import csv
import math
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from raddino import load_features
from raddino.cli.main import main
from raddino.ssl import trainer
from raddino.ssl.checkpoint import list_checkpoints, load_checkpoint
from raddino.ssl.metrics import read_metrics
from raddino.ssl.run import TrainingDivergedError
from raddino.ssl.trainer import pretrain
from tests.conftest import synthetic_radiograph
from tests.data.test_io import dicom_dataset, save_dicom
from tests.faults.conftest import RUN_OVERRIDES, run_config
from tests.faults.results import assert_same_state, without_timings

# --------------------------------------------------------------------------- images


def float_dicom(path: Path, pixels: np.ndarray, photometric: str = "MONOCHROME2") -> Path:
    """A DICOM of float32 (Float Pixel Data) or float64 (Double Float Pixel Data) pixels."""
    ds = dicom_dataset(None)
    ds.Rows, ds.Columns = pixels.shape
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = photometric
    ds.BitsAllocated = pixels.dtype.itemsize * 8
    data = pixels.astype(pixels.dtype.newbyteorder("<")).tobytes()
    if pixels.dtype == np.float64:
        ds.DoubleFloatPixelData = data
    else:
        ds.FloatPixelData = data
    return save_dicom(ds, path)


def gradient(dtype: type = np.float32, low: float = -1000.0, high: float = 3000.0) -> np.ndarray:
    return np.linspace(low, high, 40 * 48, dtype=np.float64).reshape(40, 48).astype(dtype)


def with_value(pixels: np.ndarray, value: float) -> np.ndarray:
    pixels = pixels.copy()
    pixels[7, 11] = value
    return pixels


def bad_images(folder: Path) -> dict[str, str]:
    """Files whose pixels are (or become) NaN or infinite -> expected reason fragment."""
    float_dicom(folder / "nan.dcm", with_value(gradient(), np.nan))
    float_dicom(folder / "plus_inf.dcm", with_value(gradient(), np.inf))
    float_dicom(folder / "minus_inf.dcm", with_value(gradient(), -np.inf))
    float_dicom(folder / "double_nan.dcm", with_value(gradient(np.float64), np.nan))
    # integers whose modality LUT (slope 1e308) overflows to infinity
    overflow = dicom_dataset(np.full((40, 48), 60000, dtype=np.uint16))
    overflow.RescaleSlope, overflow.RescaleIntercept = "1e308", "0"
    save_dicom(overflow, folder / "overflow.dcm")
    np.save(folder / "nan.npy", with_value(gradient(), np.nan))  # not an image format
    fragment = "pixel values contain NaN or infinity"
    return {
        "nan.dcm": fragment,
        "plus_inf.dcm": fragment,
        "minus_inf.dcm": fragment,
        "double_nan.dcm": fragment,
        "overflow.dcm": fragment,
        "nan.npy": "not a recognised image",
    }


def good_float_images(folder: Path) -> list[str]:
    """Float pixels that are finite, however extreme: encoded."""
    float_dicom(folder / "finite.dcm", gradient())
    # the whole float32 range, and a MONOCHROME1 image near its top (inverting it must not
    # overflow: max + min is beyond float32)
    float_dicom(folder / "float32_range.dcm", gradient(np.float32, -3.4e38, 3.4e38))
    float_dicom(folder / "near_max_mono1.dcm", gradient(np.float32, 3.0e38, 3.4e38), "MONOCHROME1")
    return ["finite.dcm", "float32_range.dcm", "near_max_mono1.dcm"]


def read_rejects(store: Path) -> dict[str, str]:
    with (store / "rejects.csv").open(newline="") as handle:
        return {Path(row["path"]).name: row["reason"] for row in csv.DictReader(handle)}


@pytest.mark.filterwarnings("ignore:overflow encountered in multiply:RuntimeWarning")  # slope 1e308
def test_encode_rejects_non_finite_pixels_naming_each_file(
    small_hf_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
):
    folder = tmp_path / "images"
    folder.mkdir()
    bad = bad_images(folder)
    good = good_float_images(folder)
    out = tmp_path / "store"
    code = main(["encode", str(folder), str(folder / "nan.npy"), "--model", str(small_hf_dir),
                 "--out", str(out), "--workers", "0", "--dtype", "fp32", "--compile", "off",
                 "--no-progress"])  # fmt: skip
    assert code == 0
    assert f"rejected {len(bad)}" in capsys.readouterr().out
    rejects = read_rejects(out)
    assert set(rejects) == set(bad)
    for name, fragment in bad.items():
        assert name in rejects and fragment in rejects[name], (name, rejects[name])
    features = load_features(out)
    assert sorted(Path(p).name for p in features.paths) == sorted(good)
    assert np.isfinite(features.cls).all()


# --------------------------------------------------------------------------- pre-training


def test_pretraining_skips_an_image_with_nan_pixels_with_one_warning(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
):
    folder = tmp_path / "images"
    folder.mkdir()
    for index in range(4):
        Image.fromarray(synthetic_radiograph(100, 90, seed=index)).save(folder / f"{index}.png")
    float_dicom(folder / "poisoned.dcm", with_value(gradient(), np.nan))
    run = tmp_path / "run"
    pretrain(run_config("train.steps=3"), [str(folder)], run, progress=False)
    warnings = [line for line in capsys.readouterr().err.splitlines() if "poisoned.dcm" in line]
    assert len(warnings) == 1 and warnings[0].startswith("warning: skipping unreadable image")
    assert "NaN or infinity" in warnings[0]
    assert [row["step"] for row in read_metrics(run)] == [0, 1, 2]
    assert all(math.isfinite(row["loss"]) for row in read_metrics(run))


def poison_batch_of_step(monkeypatch: pytest.MonkeyPatch, step: int) -> None:
    """One NaN pixel in one global crop of ``step``'s batch (collated in this process)."""
    collate = trainer.collate_crops
    calls = {"n": 0}

    def poisoned(samples):
        batch = collate(samples)
        if calls["n"] == step:
            batch.globals_[0, 0, 5, 5] = float("nan")
        calls["n"] += 1
        return batch

    monkeypatch.setattr(trainer, "collate_crops", poisoned)


def test_a_nan_batch_stops_the_run_and_its_last_checkpoint_resumes_to_the_uninterrupted_run(
    pretrain_images: Path,
    uninterrupted_run: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
):
    run = tmp_path / "run"
    args = ["pretrain", *RUN_OVERRIDES, "--data", str(pretrain_images), "--out", str(run),
            "--no-progress"]  # fmt: skip
    poison_batch_of_step(monkeypatch, 3)
    assert main(args) == 3  # TrainingDivergedError
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("raddino pretrain: step 3: the loss is not finite")
    assert f"Last good checkpoint: {run / 'checkpoints' / 'step_0000002.pt'}" in err[-1]
    monkeypatch.undo()

    # the checkpoint of step 2 is whole and is the one an uninterrupted run writes
    assert [step for step, _ in list_checkpoints(run)] == [2]
    assert_same_state(
        load_checkpoint(list_checkpoints(run)[0][1]),
        load_checkpoint(list_checkpoints(uninterrupted_run)[0][1]),
    )
    assert [row["step"] for row in read_metrics(run)] == [0, 1, 2]  # step 3 was never logged

    assert main(args) == 0
    assert without_timings(read_metrics(run)) == without_timings(read_metrics(uninterrupted_run))
    final = [load_checkpoint(list_checkpoints(r)[-1][1]) for r in (run, uninterrupted_run)]
    assert_same_state(final[0], final[1])


def test_a_nan_in_the_first_steps_leaves_no_checkpoint_and_the_run_starts_again(
    pretrain_images: Path, uninterrupted_run: Path, tmp_path: Path, monkeypatch
):
    run = tmp_path / "run"
    poison_batch_of_step(monkeypatch, 0)
    with pytest.raises(TrainingDivergedError, match="Last good checkpoint: none yet"):
        pretrain(run_config(), [str(pretrain_images)], run, progress=False)
    monkeypatch.undo()
    assert list_checkpoints(run) == [] and read_metrics(run) == []
    pretrain(run_config(), [str(pretrain_images)], run, progress=False)
    assert without_timings(read_metrics(run)) == without_timings(read_metrics(uninterrupted_run))
    shutil.rmtree(run)


def test_a_nan_weight_in_a_resumed_checkpoint_stops_at_the_first_step(
    pretrain_images: Path, uninterrupted_run: Path, tmp_path: Path
):
    """A checkpoint that loads but holds NaN weights (saved by a run that diverged quietly):
    the first resumed step stops with TrainingDivergedError instead of training on NaN."""
    run = tmp_path / "run"
    shutil.copytree(uninterrupted_run, run)
    for step in (4, 6):
        (run / "checkpoints" / f"step_{step:07d}.pt").unlink()
    path = list_checkpoints(run)[0][1]
    state = load_checkpoint(path)
    key = "student.backbone.blocks.0.attn.qkv.weight"
    state["model"][key][0, 0] = float("nan")
    torch.save(state, path)
    with pytest.raises(TrainingDivergedError, match="step 2: the loss is not finite"):
        pretrain(run_config(), [str(pretrain_images)], run, resume=True, progress=False)
    assert [step for step, _ in list_checkpoints(run)] == [2]
