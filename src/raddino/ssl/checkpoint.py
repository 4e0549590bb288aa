"""Run-directory checkpoints: atomic writes, keep-last-k, safe loading.

``RUN/checkpoints/step_0000100.pt`` holds everything needed to continue exactly: student,
teacher and centring states, optimiser, gradient scaler, RNG states and the step (the data
position is a function of the step, see :mod:`raddino.ssl.data`). Files are written to a
temporary name and renamed, so a kill leaves the previous checkpoint intact; they are read with
``torch.load(weights_only=True)``.

A checkpoint can still be damaged after it was written (a disk that filled up while a copy was
made, a file cut short by a sync tool, a flipped bit). :func:`load_latest_checkpoint` therefore
validates the newest checkpoint on resume (zip checksums, loading, required keys) and, when it
fails, falls back to the one before it, naming the bad file in a one-line warning.
"""

from __future__ import annotations

import re
import sys
import zipfile
from pathlib import Path

import torch

from raddino.atomic import TMP_PREFIX, write_atomic
from raddino.models.formats import torch_load_error

CHECKPOINTS = "checkpoints"
_NAME = re.compile(r"^step_(\d+)\.pt$")
REQUIRED_KEYS = ("step", "model", "optimizer", "rng")
"""What a checkpoint must hold for a run to continue from it."""


def checkpoint_path(run_dir: Path, step: int) -> Path:
    return run_dir / CHECKPOINTS / f"step_{step:07d}.pt"


def list_checkpoints(run_dir: Path) -> list[tuple[int, Path]]:
    """(step, path) of finished checkpoints, oldest first."""
    folder = run_dir / CHECKPOINTS
    if not folder.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in folder.iterdir() if (m := _NAME.match(p.name))]
    return sorted(found)


def latest_checkpoint(run_dir: Path) -> Path | None:
    found = list_checkpoints(run_dir)
    return found[-1][1] if found else None


def save_checkpoint(run_dir: Path, step: int, state: dict, keep_last: int) -> Path:
    """Write ``state`` as the checkpoint of ``step``; delete all but the newest ``keep_last`` up
    to this step (a later one, left by a run resumed from before a damaged checkpoint, is
    replaced when the run gets there: it must not push this one out), and any temporary file a
    writer killed mid-write left (one process writes a run's checkpoints)."""
    path = checkpoint_path(run_dir, step)
    write_atomic(path, lambda temp: torch.save(state, temp))
    so_far = [(s, p) for s, p in list_checkpoints(run_dir) if s <= step]
    for _, old in so_far[:-keep_last]:
        old.unlink(missing_ok=True)
    for leftover in path.parent.glob(f"{TMP_PREFIX}*"):
        leftover.unlink(missing_ok=True)
    return path


def load_checkpoint(path: Path) -> dict:
    """A checkpoint's state (tensors on the CPU), without unpickling arbitrary objects."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:
        raise ValueError(f"{path}: unreadable checkpoint ({torch_load_error(error)})") from error


def check_archive(path: Path) -> None:
    """Raise ``ValueError`` when a member of the checkpoint's zip archive fails its CRC-32.

    ``torch.load`` does not verify the checksums ``torch.save`` writes, so a flipped byte in a
    tensor would load as a silently wrong weight. Files that are not zip archives are left to
    ``torch.load`` (a truncated archive has no central directory and fails there)."""
    if not zipfile.is_zipfile(path):
        return
    try:
        with zipfile.ZipFile(path) as archive:
            damaged = archive.testzip()
    except (OSError, zipfile.BadZipFile, EOFError) as error:
        raise ValueError(
            f"{path}: unreadable checkpoint ({type(error).__name__}: {error})"
        ) from error
    if damaged is not None:
        raise ValueError(f"{path}: damaged checkpoint ({damaged} fails its CRC-32 check)")


def read_valid_checkpoint(path: Path, step: int | None = None) -> dict:
    """Check and load a checkpoint that a run may continue from: its archive's checksums
    hold, it loads, it is a dict with :data:`REQUIRED_KEYS`, and its step is ``step`` (the one
    in the file name) when given. Raises ``ValueError`` naming the file, on one line."""
    check_archive(path)
    state = load_checkpoint(path)
    missing = [key for key in REQUIRED_KEYS if not isinstance(state, dict) or key not in state]
    if missing:
        raise ValueError(f"{path}: not a complete checkpoint (missing {', '.join(missing)})")
    if step is not None and state["step"] != step:
        raise ValueError(f"{path}: holds step {state['step']}, not the step of its name")
    return state


def load_latest_checkpoint(run_dir: Path) -> tuple[Path, dict]:
    """The newest checkpoint of ``run_dir`` that loads, and its state (where a run resumes).

    Each newer checkpoint that does not load is skipped with a one-line warning on stderr that
    names it (it is replaced when the run reaches its step again). Raises ``ValueError`` when
    none of the checkpoints loads, ``FileNotFoundError`` when there is none.
    """
    found = list_checkpoints(run_dir)
    bad: list[str] = []
    for step, path in reversed(found):
        try:
            state = read_valid_checkpoint(path, step)
        except ValueError as error:
            bad.append(str(error))
            continue
        for reason in bad:
            print(f"warning: {reason}; resuming from {path.name}", file=sys.stderr)
        return path, state
    if bad:
        raise ValueError(
            f"{run_dir}: no checkpoint can be read ({'; '.join(bad)}); delete them to start over"
        )
    raise FileNotFoundError(f"{run_dir}: no checkpoint to resume from")
