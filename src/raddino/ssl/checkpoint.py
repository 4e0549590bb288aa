"""Run-directory checkpoints: atomic writes, keep-last-k, safe loading.

``RUN/checkpoints/step_0000100.pt`` holds everything needed to continue exactly: student,
teacher and centring states, optimiser, gradient scaler, RNG states and the step (the data
position is a function of the step, see :mod:`raddino.ssl.data`). Files are written to a
temporary name and renamed, so a kill leaves the previous checkpoint intact; they are read with
``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import re
from pathlib import Path

import torch

from raddino.atomic import write_atomic

CHECKPOINTS = "checkpoints"
_NAME = re.compile(r"^step_(\d+)\.pt$")


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
    """Write ``state`` as the checkpoint of ``step`` and delete all but the newest ``keep_last``."""
    path = checkpoint_path(run_dir, step)
    write_atomic(path, lambda temp: torch.save(state, temp))
    for _, old in list_checkpoints(run_dir)[:-keep_last]:
        old.unlink(missing_ok=True)
    return path


def load_checkpoint(path: Path) -> dict:
    """A checkpoint's state (tensors on the CPU), without unpickling arbitrary objects."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:
        raise ValueError(f"{path}: unreadable checkpoint ({error})") from error
