"""Manifests: columns in file order, paths resolved against the CSV, errors naming file and line."""

from __future__ import annotations

from pathlib import Path

import pytest

from raddino.data.manifest import ManifestError, read_manifest, read_manifest_table


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


def test_columns_in_file_order_and_paths_resolved_against_the_csv(tmp_path: Path):
    manifest = write(tmp_path / "cohort" / "manifest.csv", "split,path,nodule\ntest,a.png,1\n")
    columns, rows = read_manifest_table(manifest)
    assert columns == ["split", "path", "nodule"]
    assert rows == [{"split": "test", "path": str(tmp_path / "cohort" / "a.png"), "nodule": "1"}]
    assert read_manifest(manifest) == rows


def test_a_byte_order_mark_is_not_part_of_the_first_column(tmp_path: Path):
    manifest = tmp_path / "m.csv"
    manifest.write_bytes(b"\xef\xbb\xbfpath,age\n/x.png,40\n")
    assert read_manifest_table(manifest)[0] == ["path", "age"]


def test_an_empty_path_is_an_error_naming_the_file_and_line(tmp_path: Path):
    manifest = write(tmp_path / "m.csv", "path,age\na.png,40\n ,41\n")
    with pytest.raises(ManifestError, match=r"m\.csv: line 3: empty 'path'"):
        read_manifest_table(manifest)


def test_a_manifest_without_a_path_column_is_refused(tmp_path: Path):
    manifest = write(tmp_path / "m.csv", "image,age\na.png,40\n")
    with pytest.raises(ManifestError, match=r"m\.csv: a manifest needs a 'path' column"):
        read_manifest(manifest)


def test_an_unreadable_manifest_names_the_file(tmp_path: Path):
    with pytest.raises(ManifestError, match=r"missing\.csv: cannot read manifest"):
        read_manifest(tmp_path / "missing.csv")
