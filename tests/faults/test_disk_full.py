"""A disk that fills up mid-run (ENOSPC): one clear line, nothing written before is lost, and the
same command, once there is space, ends with the uninterrupted result.

The full disk is simulated in this process: the function that writes the n-th file (numpy's
``save`` for the features store, PIL's ``save`` for prepared PNGs, ``torch.save`` for
checkpoints) writes part of its bytes and raises ``OSError(ENOSPC)``, and so does every write
after it, until the test "frees space". Every run here is in this process with the same
settings, so stores and checkpoints compare bit for bit.
"""

from __future__ import annotations

import errno
import json
import os
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from raddino import load_features
from raddino.cli.main import main
from raddino.ssl.checkpoint import list_checkpoints, load_checkpoint
from raddino.ssl.metrics import read_metrics
from tests.conftest import synthetic_radiograph
from tests.faults.conftest import RUN_OVERRIDES, prepare_inputs
from tests.faults.results import assert_same_state, files_under, tmp_leftovers, without_timings


class DiskFillsUp:
    """Wraps a save function: from its ``fail_from``-th call on, it writes a few bytes to its
    target (argument ``target``: a path or an open file) and raises ENOSPC, as a full disk does."""

    def __init__(self, save: Callable, fail_from: int, target: int = 0) -> None:
        self.save, self.fail_from, self.target, self.calls = save, fail_from, target, 0

    def __call__(self, *args, **kwargs):
        self.calls += 1
        if self.calls < self.fail_from:
            return self.save(*args, **kwargs)
        target = args[self.target]
        if hasattr(target, "write"):
            target.write(b"\x93NUMPY partial")
        else:
            Path(target).write_bytes(b"\x89PNG partial")
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


def one_error_line(stderr: str) -> str:
    """The error: one line, the last one printed, and no traceback."""
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert "Traceback" not in stderr, stderr
    assert len([line for line in lines if ": error:" in line]) == 1, stderr
    assert ": error:" in lines[-1], stderr
    return lines[-1]


# --------------------------------------------------------------------------- encode


def encode_args(folder: Path, model: Path, out: Path) -> list[str]:
    # batch 1: the rerun batches the remaining images as the uninterrupted run did
    return ["encode", str(folder), "--model", str(model), "--out", str(out), "--workers", "0",
            "--batch-size", "1", "--shard-size", "2", "--dtype", "fp32", "--compile", "off",
            "--patch-tokens", "full", "--no-progress"]  # fmt: skip


@pytest.fixture
def eight_images(tmp_path: Path) -> Path:
    folder = tmp_path / "images"
    folder.mkdir()
    for index in range(8):
        image = synthetic_radiograph(300 + 9 * index, 280, seed=index)
        Image.fromarray(image).save(folder / f"{index}.png")
    (folder / "2b_empty.png").write_bytes(b"")
    return folder


def test_encode_on_a_full_disk_stops_with_one_line_keeps_its_shards_and_resumes(
    small_hf_dir: Path,
    eight_images: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
):
    reference, full = tmp_path / "reference", tmp_path / "full"
    assert main(encode_args(eight_images, small_hf_dir, reference)) == 0
    capsys.readouterr()

    # shards hold paths.json + cls.npy + patches.npy: the 5th np.save is shard 2's cls.npy
    disk = DiskFillsUp(np.save, fail_from=5)
    monkeypatch.setattr(np, "save", disk)
    assert main(encode_args(eight_images, small_hf_dir, full)) == 1
    line = one_error_line(capsys.readouterr().err)
    assert line.startswith("raddino encode: error:") and "No space left on device" in line
    assert "re-run the same command" in line
    monkeypatch.undo()  # space freed

    # the two shards written before the disk filled up are whole and hold the right rows
    expected = load_features(reference, mmap=False)
    row_of = {path: row for row, path in enumerate(expected.paths)}
    shards = sorted(p for p in (full / "shards").iterdir() if p.name.isdigit())
    assert [p.name for p in shards] == ["00000", "00001"]
    for shard in shards:
        rows = [row_of[p] for p in json.loads((shard / "paths.json").read_text())]
        assert np.array_equal(np.load(shard / "cls.npy"), expected.cls[rows])
        assert np.array_equal(np.load(shard / "patches.npy"), expected.patches[rows])
    assert not (full / "index.csv").exists()  # not mistaken for a finished store

    assert main(encode_args(eight_images, small_hf_dir, full)) == 0
    resumed = load_features(full, mmap=False)
    assert resumed.paths == expected.paths and len(resumed.paths) == 8
    assert np.array_equal(resumed.cls, expected.cls)
    assert np.array_equal(resumed.patches, expected.patches)
    assert resumed.rejects == expected.rejects and len(resumed.rejects) == 1
    assert tmp_leftovers(full) == []


def test_a_reject_logged_on_a_full_disk_is_not_lost(
    small_hf_dir: Path,
    eight_images: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
):
    """The disk fills up while rejects.jsonl is appended (a torn line): the rerun repairs the
    log and lists the unreadable file once."""
    from raddino.features import store

    reference, full = tmp_path / "reference", tmp_path / "full"
    assert main(encode_args(eight_images, small_hf_dir, reference)) == 0
    real_open = open

    def open_on_a_full_disk(file, mode="r", *args, **kwargs):
        handle = real_open(file, mode, *args, **kwargs)
        if str(file).endswith("rejects.jsonl") and "a" in mode:
            handle.write(b'{"path": "torn')  # part of the line reached the disk
            handle.flush()
            handle.close()
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return handle

    monkeypatch.setattr(store, "open", open_on_a_full_disk, raising=False)
    capsys.readouterr()
    assert main(encode_args(eight_images, small_hf_dir, full)) == 1
    assert "No space left on device" in one_error_line(capsys.readouterr().err)
    monkeypatch.undo()

    assert main(encode_args(eight_images, small_hf_dir, full)) == 0
    expected, resumed = load_features(reference), load_features(full)
    assert resumed.paths == expected.paths
    assert np.array_equal(resumed.cls, expected.cls)
    assert resumed.rejects == expected.rejects and len(resumed.rejects) == 1


# --------------------------------------------------------------------------- data preprocess


def test_prepare_on_a_full_disk_stops_instead_of_rejecting_the_images(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
):
    manifest = prepare_inputs(tmp_path / "data", 6)
    reference, full = tmp_path / "reference", tmp_path / "full"

    def args(out: Path) -> list[str]:
        return ["data", "preprocess", "--manifest", str(manifest), "--out", str(out),
                "--workers", "0", "--no-progress"]  # fmt: skip

    assert main(args(reference)) == 0
    capsys.readouterr()
    disk = DiskFillsUp(Image.Image.save, fail_from=3, target=1)  # save(self, fp, ...)
    monkeypatch.setattr(Image.Image, "save", lambda *args, **kwargs: disk(*args, **kwargs))
    assert main(args(full)) == 1
    line = one_error_line(capsys.readouterr().err)
    assert line.startswith("raddino data: error:") and "No space left on device" in line
    monkeypatch.undo()

    progress = [json.loads(line) for line in (full / "progress.jsonl").open()]
    assert [p for p in progress if "rejected" in p and "bad.png" not in p["source"]] == []
    for record in progress:  # what was written before the disk filled up is whole
        if "output" in record and "rejected" not in record:
            written = full / record["output"]
            assert written.read_bytes() == (reference / record["output"]).read_bytes()

    assert main(args(full)) == 0

    def progress_log(path: Path) -> bool:
        return path.name == "progress.jsonl"

    assert files_under(full, progress_log) == files_under(reference, progress_log)
    assert tmp_leftovers(full) == []


# --------------------------------------------------------------------------- pretrain


def test_pretrain_on_a_full_disk_keeps_the_last_checkpoint_and_resumes(
    pretrain_images: Path,
    uninterrupted_run: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
):
    def args(out: Path, *extra: str) -> list[str]:
        return ["pretrain", *RUN_OVERRIDES, "--data", str(pretrain_images), "--out", str(out),
                "--no-progress", *extra]  # fmt: skip

    reference, full = uninterrupted_run, tmp_path / "full"
    from raddino.ssl import checkpoint

    # checkpoints at steps 2, 4, 6: the disk is full when step 4's is written
    monkeypatch.setattr(checkpoint.torch, "save", DiskFillsUp(torch.save, fail_from=2, target=1))
    assert main(args(full)) == 1
    line = one_error_line(capsys.readouterr().err)
    assert line.startswith("raddino pretrain: error:") and "No space left on device" in line
    monkeypatch.undo()
    assert [step for step, _ in list_checkpoints(full)] == [2]
    assert tmp_leftovers(full) == []
    assert_same_state(
        load_checkpoint(list_checkpoints(full)[0][1]),
        load_checkpoint(list_checkpoints(reference)[0][1]),
    )

    assert main(args(full)) == 0
    assert without_timings(read_metrics(full)) == without_timings(read_metrics(reference))
    for (step, path), (same, expected) in zip(
        list_checkpoints(full), list_checkpoints(reference), strict=True
    ):
        assert step == same
        assert_same_state(load_checkpoint(path), load_checkpoint(expected), f"step {step}")
