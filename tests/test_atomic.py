"""Atomic writes: the target holds the old or the new content, never a partial file."""

from __future__ import annotations

from pathlib import Path

import pytest

from raddino.atomic import TMP_PREFIX, write_atomic, write_bytes_atomic


def test_replaces_content_and_leaves_no_temporary_file(tmp_path: Path):
    target = tmp_path / "sub" / "index.csv"
    write_bytes_atomic(target, b"old")
    write_bytes_atomic(target, b"new")
    assert target.read_bytes() == b"new"
    assert not list(target.parent.glob(TMP_PREFIX + "*"))


def test_a_failing_writer_keeps_the_old_file(tmp_path: Path):
    target = tmp_path / "config.yaml"
    target.write_text("old")

    def half_then_crash(temp: Path) -> None:
        temp.write_text("ne")
        raise RuntimeError("killed")

    with pytest.raises(RuntimeError, match="killed"):
        write_atomic(target, half_then_crash)
    assert target.read_text() == "old"
    assert not list(tmp_path.glob(TMP_PREFIX + "*"))
