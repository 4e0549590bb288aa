"""``raddino report init-lm | train | generate | eval`` end to end on two pairs."""

from __future__ import annotations

import json

from raddino.cli.main import main
from tests.eval.report_generation.conftest import REPORTS


def test_report_commands_end_to_end(tmp_path, tiny_encoder_dir, pair_manifest, capsys):
    lm, run = tmp_path / "lm", tmp_path / "run"
    pred = tmp_path / "pred.csv"
    common = ["--workers", "0", "--no-progress"]
    assert (
        main(
            [
                "report",
                "init-lm",
                "--corpus",
                str(pair_manifest),
                "--out",
                str(lm),
                "--vocab-size",
                "300",
                "--hidden-size",
                "32",
                "--heads",
                "2",
            ]
        )
        == 0
    )
    assert (lm / "tokenizer.json").exists()
    assert (
        main(
            [
                "report",
                "train",
                "--model",
                str(tiny_encoder_dir),
                "--lm",
                str(lm),
                "--manifest",
                str(pair_manifest),
                "--out",
                str(run),
                "--stage",
                "full",
                "--steps",
                "80",
                "--batch-size",
                "2",
                "--lr",
                "1e-2",
                *common,
            ]
        )
        == 0
    )
    assert (
        main(
            [
                "report",
                "generate",
                "--model",
                str(run),
                "--manifest",
                str(pair_manifest),
                "--out",
                str(pred),
                "--max-new-tokens",
                "40",
                "--beams",
                "2",
                *common,
            ]
        )
        == 0
    )
    assert main(["report", "eval", "--pred", str(pred), "--manifest", str(pair_manifest)]) == 0
    out = capsys.readouterr()
    assert f"report run: {run}" in out.out and f"reports: {pred}" in out.out
    assert "skipped chexbert_f1" in out.err
    metrics = json.loads(pred.with_suffix(".metrics.json").read_text())
    # quality is tested in test_train.py (memorising two pairs); here: the files and their keys
    assert metrics["reports"] == 2
    assert {"bleu1", "bleu4", "rougeL", "clinical", "skipped"} <= set(metrics)
    assert metrics["baseline_most_common_report"]["report"] in REPORTS


def test_user_errors_exit_with_2(tmp_path, pair_manifest, capsys):
    code = main(
        [
            "report",
            "eval",
            "--pred",
            str(tmp_path / "missing.csv"),
            "--manifest",
            str(pair_manifest),
        ]
    )
    assert code == 2
    assert "raddino report: error" in capsys.readouterr().err
    bad = tmp_path / "nolm"
    code = main(
        [
            "report",
            "train",
            "--model",
            str(tmp_path),
            "--lm",
            str(bad),
            "--manifest",
            str(pair_manifest),
            "--out",
            str(tmp_path / "r"),
            "--workers",
            "0",
        ]
    )
    assert code == 2
