"""Indexer options: split fractions and dataset-specific settings are checked."""

from __future__ import annotations

from pathlib import Path

import pytest

from raddino.data.datasets import build_index, get_spec
from raddino.data.datasets.errors import DatasetLayoutError
from raddino.data.datasets.options import IndexOptions


def test_options_validate_fractions_and_dataset_settings(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="leaves no training data"):
        IndexOptions(val_fraction=0.5, test_fraction=0.5)
    with pytest.raises(ValueError, match=r"unknown --set key\(s\) colour \(valid: csv\)"):
        build_index("nih", tmp_path, IndexOptions(extra={"colour": "red"}))
    with pytest.raises(ValueError, match="choose one of any, majority, all"):
        build_index("vindr", tmp_path, IndexOptions(extra={"rule": "most"}))
    with pytest.raises(ValueError, match="unknown dataset 'mnist'"):
        get_spec("mnist")
    with pytest.raises(DatasetLayoutError, match="no such directory"):
        build_index("nih", tmp_path / "absent")
