"""Finding a dataset's files under its root."""

from __future__ import annotations

from pathlib import Path

import pytest

from raddino.data.datasets.errors import DatasetLayoutError
from raddino.data.datasets.files import find_file


def test_find_file_looks_one_level_down_and_names_what_it_looked_for(tmp_path: Path) -> None:
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "train.csv.gz").write_bytes(b"")
    assert find_file(tmp_path, ["train.csv"], "train table") == tmp_path / "sub" / "train.csv.gz"
    with pytest.raises(DatasetLayoutError, match=r"cannot find the labels table.*valid.csv"):
        find_file(tmp_path, ["valid.csv"], "labels table")
