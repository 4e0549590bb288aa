"""``raddino synth`` on the command line."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest

from raddino.cli.main import main
from raddino.data.synth.source import CtSource
from raddino.output_lock import LOCK_FILE
from tests.lock_holder import held_by_another_process


def test_synth_writes_a_cohort_and_a_contact_sheet(
    source: CtSource, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out, sheet = tmp_path / "cohort", tmp_path / "sheet.png"
    argv = ["synth", "--out", str(out), "--n", "2", "--size", "64", "--workers", "0"]
    code = main([*argv, "--no-progress", "--contact-sheet", str(sheet), "--prevalence", "nodule=1"])
    printed = capsys.readouterr().out
    assert code == 0
    assert f"manifest: {out / 'manifest.csv'}" in printed and "nodule 2" in printed
    assert (out / "images" / "000001.png").is_file() and sheet.is_file()


@pytest.mark.parametrize(
    "extra",
    [["--prevalence", "fracture=0.2"], ["--ct", "only-a-ct.nii.gz"], ["--size", "4"]],
)
def test_synth_refuses_bad_options(
    tmp_path: Path, extra: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    code = main(["synth", "--out", str(tmp_path), "--n", "1", "--no-progress", *extra])
    assert code == 2
    assert "raddino synth: error:" in capsys.readouterr().err


def test_synth_into_a_held_folder_is_refused_then_runs_once_it_is_free(
    source: CtSource, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "cohort"
    argv = ["synth", "--out", str(out), "--n", "2", "--size", "64", "--workers", "0"]
    with held_by_another_process(out, "raddino synth --out cohort") as holder:
        assert main([*argv, "--no-progress"]) == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith(f"raddino synth: error: {out} is in use by another writer: ")
        assert f"pid {holder.pid} on" in err and "\n" not in err
        assert sorted(p.name for p in out.iterdir()) == [LOCK_FILE]
    assert main([*argv, "--no-progress"]) == 0
    with (out / "manifest.csv").open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == 2 and all((out / row["path"]).is_file() for row in rows)
    assert not (out / LOCK_FILE).exists()
