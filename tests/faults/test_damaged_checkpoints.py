"""Damaged checkpoints: resuming falls back to the newest good one, naming each bad file in a
one-line warning, and the run still ends equal to an uninterrupted run."""

from __future__ import annotations

import shutil
import zipfile
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from raddino.cli.main import main
from raddino.ssl.checkpoint import (
    checkpoint_path,
    list_checkpoints,
    load_checkpoint,
    load_latest_checkpoint,
    save_checkpoint,
)
from raddino.ssl.metrics import read_metrics
from raddino.ssl.trainer import pretrain
from tests.faults.conftest import RUN_OVERRIDES, run_config
from tests.faults.results import assert_same_state, without_timings

# --------------------------------------------------------------------------- kinds of damage


def truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def empty(path: Path) -> None:
    path.write_bytes(b"")


def flip_a_byte_of_a_tensor(path: Path) -> None:
    """One bit of weight data: the file still loads with torch.load, to a wrong value."""
    with zipfile.ZipFile(path) as archive:
        member = max(archive.infolist(), key=lambda info: info.file_size)  # a tensor's bytes
    data = bytearray(path.read_bytes())
    # the member's data follows its 30-byte local header, name and extra field
    name_length = int.from_bytes(
        data[member.header_offset + 26 : member.header_offset + 28], "little"
    )
    extra_length = int.from_bytes(
        data[member.header_offset + 28 : member.header_offset + 30], "little"
    )
    start = member.header_offset + 30 + name_length + extra_length
    data[start + member.file_size // 2] ^= 0x01
    path.write_bytes(bytes(data))


def zeros_at_the_end(path: Path) -> None:
    """A copy whose last blocks never reached the disk (they read back as zeros)."""
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2] + bytes(len(data) - len(data) // 2))


DAMAGE: dict[str, Callable[[Path], None]] = {
    "truncated": truncate,
    "empty": empty,
    "bit_flip": flip_a_byte_of_a_tensor,
    "zeroed_tail": zeros_at_the_end,
}


def small_state(step: int) -> dict:
    return {
        "step": step,
        "model": {"weight": torch.arange(4096, dtype=torch.float32) * step},
        "optimizer": {"state": {}, "param_groups": []},
        "rng": torch.get_rng_state(),
    }


@pytest.mark.parametrize("damage", sorted(DAMAGE))
def test_the_newest_damaged_checkpoint_is_skipped_with_a_one_line_warning(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], damage: str
):
    for step in (2, 4, 6):
        save_checkpoint(tmp_path, step, small_state(step), keep_last=3)
    DAMAGE[damage](checkpoint_path(tmp_path, 6))
    path, state = load_latest_checkpoint(tmp_path)
    assert path == checkpoint_path(tmp_path, 4) and state["step"] == 4
    assert torch.equal(state["model"]["weight"], small_state(4)["model"]["weight"])
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 1, lines
    assert lines[0].startswith(f"warning: {checkpoint_path(tmp_path, 6)}: ")
    assert lines[0].endswith("; resuming from step_0000004.pt")


def test_a_bit_flip_loads_silently_without_the_checksum_check(tmp_path: Path):
    """Why the checksums are verified: torch.load alone reads the damaged weight."""
    save_checkpoint(tmp_path, 2, small_state(2), keep_last=1)
    flip_a_byte_of_a_tensor(checkpoint_path(tmp_path, 2))
    state = load_checkpoint(checkpoint_path(tmp_path, 2))
    assert not torch.equal(state["model"]["weight"], small_state(2)["model"]["weight"])


def test_incomplete_or_misnamed_checkpoints_are_skipped(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
):
    save_checkpoint(tmp_path, 2, small_state(2), keep_last=5)
    torch.save({"step": 4, "model": {}}, checkpoint_path(tmp_path, 4))  # no optimizer, no rng
    torch.save(small_state(5), checkpoint_path(tmp_path, 6))  # the state of another step
    path, _ = load_latest_checkpoint(tmp_path)
    assert path == checkpoint_path(tmp_path, 2)
    warnings = capsys.readouterr().err.splitlines()
    assert len(warnings) == 2
    assert "step_0000006.pt: holds step 5" in warnings[0]
    assert "step_0000004.pt: not a complete checkpoint (missing optimizer, rng)" in warnings[1]


def test_when_no_checkpoint_loads_the_error_names_each(tmp_path: Path):
    for step in (2, 4):
        save_checkpoint(tmp_path, step, small_state(step), keep_last=3)
        truncate(checkpoint_path(tmp_path, step))
    with pytest.raises(ValueError, match="no checkpoint can be read") as caught:
        load_latest_checkpoint(tmp_path)
    assert "step_0000002.pt" in str(caught.value) and "step_0000004.pt" in str(caught.value)
    assert "\n" not in str(caught.value)


def test_a_temporary_file_left_by_a_killed_save_is_removed_by_the_next_save(tmp_path: Path):
    save_checkpoint(tmp_path, 2, small_state(2), keep_last=3)
    leftover = tmp_path / "checkpoints" / ".tmp-99999-step_0000004.pt"
    leftover.write_bytes(b"half a checkpoint")
    save_checkpoint(tmp_path, 4, small_state(4), keep_last=3)
    assert not leftover.exists()
    assert [step for step, _ in list_checkpoints(tmp_path)] == [2, 4]


def test_after_a_fallback_a_new_checkpoint_is_not_pruned_for_the_damaged_later_one(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
):
    """keep_last=1, step 6 damaged, resumed from 4: the checkpoint of step 5 is kept (pruning
    by name alone would keep only the damaged step 6, leaving nothing to resume from)."""
    for step in (4, 6):
        save_checkpoint(tmp_path, step, small_state(step), keep_last=5)
    truncate(checkpoint_path(tmp_path, 6))
    assert load_latest_checkpoint(tmp_path)[1]["step"] == 4
    save_checkpoint(tmp_path, 5, small_state(5), keep_last=1)
    assert [step for step, _ in list_checkpoints(tmp_path)] == [5, 6]
    assert load_latest_checkpoint(tmp_path)[1]["step"] == 5
    save_checkpoint(tmp_path, 6, small_state(6), keep_last=1)  # the damaged one is replaced
    assert [step for step, _ in list_checkpoints(tmp_path)] == [6]
    assert load_latest_checkpoint(tmp_path)[1]["step"] == 6


# --------------------------------------------------------------------------- a real run


def test_resume_from_a_truncated_newest_checkpoint_continues_from_the_one_before(
    pretrain_images: Path,
    uninterrupted_run: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
):
    # a run interrupted after step 4, whose step-4 checkpoint was then cut short
    run = tmp_path / "run"
    shutil.copytree(uninterrupted_run, run)
    checkpoint_path(run, 6).unlink()
    truncate(checkpoint_path(run, 4))
    capsys.readouterr()

    summary = pretrain(run_config(), [str(pretrain_images)], run, resume=True, progress=False)
    assert summary.start_step == 2
    err = capsys.readouterr().err.splitlines()
    warnings = [line for line in err if line.startswith("warning:") and "checkpoint" in line]
    assert len(warnings) == 1
    assert str(checkpoint_path(run, 4)) in warnings[0] and "step_0000002.pt" in warnings[0]

    assert without_timings(read_metrics(run)) == without_timings(read_metrics(uninterrupted_run))
    for (step, path), (_, expected) in zip(
        list_checkpoints(run), list_checkpoints(uninterrupted_run), strict=True
    ):
        assert_same_state(load_checkpoint(path), load_checkpoint(expected), f"step {step}")


def test_cli_resume_with_no_readable_checkpoint_is_one_clear_error(
    pretrain_images: Path,
    uninterrupted_run: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
):
    run = tmp_path / "run"
    shutil.copytree(uninterrupted_run, run)
    for _, path in list_checkpoints(run):
        empty(path)
    code = main(["pretrain", *RUN_OVERRIDES, "--data", str(pretrain_images),
                 "--out", str(run), "--no-progress"])  # fmt: skip
    assert code == 2
    error = capsys.readouterr().err.strip().splitlines()[-1]
    assert error.startswith("raddino pretrain: error:") and "no checkpoint can be read" in error
    assert all(p.stat().st_size == 0 for _, p in list_checkpoints(run))  # nothing overwritten
