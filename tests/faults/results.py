"""Comparing the outputs of an interrupted run with those of an uninterrupted one."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import torch

from raddino.atomic import TMP_PREFIX


def files_under(folder: Path, skip: Callable[[Path], bool] = lambda path: False) -> dict:
    """Relative path -> bytes of every file under ``folder``."""
    return {
        p.relative_to(folder).as_posix(): p.read_bytes()
        for p in sorted(folder.rglob("*"))
        if p.is_file() and not skip(p.relative_to(folder))
    }


def assert_same_state(a: object, b: object, where: str = "state") -> None:
    """Nested dicts/lists of tensors and plain values, equal bit for bit."""
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and a.dtype == b.dtype, where
        assert torch.equal(a, b), where
    elif isinstance(a, dict):
        assert isinstance(b, dict) and set(a) == set(b), where
        for key in a:
            assert_same_state(a[key], b[key], f"{where}.{key}")
    elif isinstance(a, (list, tuple)):
        assert isinstance(b, (list, tuple)) and len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            assert_same_state(x, y, f"{where}[{i}]")
    else:
        assert a == b, where


def tmp_leftovers(folder: Path) -> list[Path]:
    """Temporary files of an atomic write that never finished."""
    return list(folder.rglob(TMP_PREFIX + "*"))


def without_timings(rows: list[dict]) -> list[dict]:
    """``metrics.jsonl`` rows without the one value that measures time."""
    return [{k: v for k, v in row.items() if k != "images_per_s"} for row in rows]
