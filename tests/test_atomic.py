"""Atomic writes: the target holds the old or the new content, never a partial file."""

from __future__ import annotations

import csv
import io
from pathlib import Path

import pytest

from raddino.atomic import TMP_PREFIX, csv_bytes, write_atomic, write_bytes_atomic, write_csv_atomic


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


def test_csv_round_trips_awkward_values_with_newline_line_ends(tmp_path: Path):
    rows = [["a,b", 'say "hi"', "two\nlines"], ["é", "", 3]]
    data = csv_bytes(["x", "y", "z"], rows)
    assert data.startswith(b"x,y,z\n") and b"\r\n" not in data.replace(b"two\nlines", b"")
    read = list(csv.reader(io.StringIO(data.decode("utf-8"), newline="")))
    assert read == [["x", "y", "z"], ["a,b", 'say "hi"', "two\nlines"], ["é", "", "3"]]
    path = write_csv_atomic(tmp_path / "t.csv", ["x", "y", "z"], iter(rows))
    assert path.read_bytes() == data
    assert [p.name for p in tmp_path.iterdir()] == ["t.csv"]
