"""``raddino synth`` on the command line."""

from __future__ import annotations

from pathlib import Path

import pytest

from raddino.cli.main import main
from raddino.data.synth.source import CtSource


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
