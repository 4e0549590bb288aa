"""``raddino data index``: writes the manifest, reports missing files, fails clearly."""

from __future__ import annotations

import itertools
from pathlib import Path

import pytest

from raddino.cli.main import main
from raddino.data.datasets.csv_tables import open_table
from tests.data.datasets.files import read_csv, write_png, write_table


def test_index_writes_manifest_and_reports_missing_images(
    xrv_data: Path, tmp_path: Path, capsys
) -> None:
    root = tmp_path / "nih"
    rows = list(itertools.islice(open_table(xrv_data / "Data_Entry_2017_v2020.csv.gz"), 50))
    write_table(root / "Data_Entry_2017_v2020.csv", list(rows[0]), [list(r.values()) for r in rows])
    write_png(root / "images" / "00000001_000.png")
    out = tmp_path / "manifests" / "nih.csv"
    code = main(["data", "index", "nih", "--root", str(root), "--out", str(out), "--no-progress"])
    captured = capsys.readouterr()
    assert code == 0
    assert "indexed 1 images" in captured.out and f"manifest: {out}" in captured.out
    assert "49 rows have no image file (left out)" in captured.err
    assert str(tmp_path / "manifests" / "nih.missing.csv") in captured.err
    assert [r["path"] for r in read_csv(out)] == ["../nih/images/00000001_000.png"]


def test_index_errors_name_the_problem(tmp_path: Path, capsys) -> None:
    code = main(["data", "index", "nih", "--root", str(tmp_path), "--out", str(tmp_path / "a.csv")])
    assert code == 2
    assert "cannot find the NIH Data_Entry_2017 table" in capsys.readouterr().err
    code = main(["data", "index", "siim", "--root", str(tmp_path), "--out", "a.csv",
                 "--set", "rle=gzip"])  # fmt: skip
    assert code == 2 and "--set rle='gzip': choose one of siim, absolute" in capsys.readouterr().err
    code = main(["data", "index", "xray9", "--root", str(tmp_path), "--out", "a.csv"])
    assert code == 2 and "unknown dataset 'xray9'" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["data", "index", "nih", "--root", str(tmp_path), "--out", "a.csv", "--set", "x"])
    assert "expected KEY=VALUE" in capsys.readouterr().err


def test_index_help_lists_every_dataset_and_its_settings(capsys) -> None:
    with pytest.raises(SystemExit):
        main(["data", "index", "--help"])
    text = capsys.readouterr().out
    for name in ("mimic-cxr", "chexpert", "nih", "padchest", "brax", "vindr-cxr",
                 "rsna-pneumonia", "siim-acr", "candid-ptx"):  # fmt: skip
        assert name in text
    assert "rule: any, majority (default) or all" in text
