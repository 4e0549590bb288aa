"""Shared command-line options: one module, torch-free parsing, dtype names as torch dtypes."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import raddino.cli
from raddino.cli.main import build_parser
from raddino.precision import DTYPES

CLI = Path(raddino.cli.__file__).parent
EVALUATION = ["--manifest", "m.csv", "--out", "out"]
COMMANDS = {
    "probe": ["probe", "--model", "m", "--targets", "effusion", *EVALUATION],
    "segment": ["segment", "--model", "m", "--masks", "heart", *EVALUATION],
    "compare": ["compare", "--models", "m", "--targets", "effusion", *EVALUATION],
}


def test_no_command_module_imports_another():
    """Only ``main`` (the dispatcher) imports command modules; shared options live in
    ``options``."""
    for path in CLI.glob("*.py"):
        if path.stem == "main":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("raddino.cli"):
                assert node.module == "raddino.cli.options", f"{path.name}: {node.module}"


def test_building_the_parser_does_not_import_torch():
    code = (
        "import sys; from raddino.cli.main import build_parser; build_parser(); "
        "sys.exit('torch' in sys.modules)"
    )
    assert subprocess.run([sys.executable, "-c", code], check=False).returncode == 0


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_evaluation_encodes_in_float32_unless_asked(command):
    parser = build_parser()
    assert parser.parse_args(COMMANDS[command]).dtype == torch.float32
    assert parser.parse_args([*COMMANDS[command], "--dtype", "auto"]).dtype is None
    assert parser.parse_args([*COMMANDS[command], "--dtype", "bf16"]).dtype == torch.bfloat16


def test_encode_and_report_training_default_to_auto():
    parser = build_parser()
    assert parser.parse_args(["encode", "a.png", "--model", "m", "--out", "o"]).dtype is None
    train = ["report", "train", "--model", "e", "--lm", "l", "--manifest", "m", "--out", "o"]
    assert parser.parse_args(train).dtype is None
    assert parser.parse_args([*train, "--dtype", "float32"]).dtype == torch.float32


@pytest.mark.parametrize("name", sorted(DTYPES))
def test_every_library_dtype_name_is_an_option_value(name):
    args = build_parser().parse_args([*COMMANDS["probe"], "--dtype", name.upper()])
    assert args.dtype == DTYPES[name]


def test_a_bad_dtype_is_an_argparse_error_naming_it(capsys):
    with pytest.raises(SystemExit) as exited:
        build_parser().parse_args([*COMMANDS["probe"], "--dtype", "int8"])
    assert exited.value.code == 2
    err = capsys.readouterr().err
    assert "argument --dtype: dtype 'int8': choose auto, fp32 (float32)" in err


def test_pretrain_without_a_config_says_its_defaults_are_gpu_scale(tmp_path: Path, capsys):
    from raddino.cli.main import main

    empty = tmp_path / "empty"
    empty.mkdir()
    assert main(["pretrain", "--data", str(empty), "--out", str(tmp_path / "run")]) != 0
    err = capsys.readouterr().err
    assert "no --config: the defaults train a ViT (small)" in err and "--config tiny_cpu" in err


def test_pretrain_takes_a_preset_by_name_from_any_directory(tmp_path: Path, monkeypatch, capsys):
    from raddino.cli.main import main

    monkeypatch.chdir(tmp_path)
    empty = tmp_path / "empty"
    empty.mkdir()
    argv = ["pretrain", "--config", "tiny_cpu", "--data", str(empty), "--out", "run"]
    assert main(argv) != 0
    err = capsys.readouterr().err
    assert "no --config" not in err and "no such config file" not in err
    assert main(["pretrain", "--config", "tiny_gpu", "--data", str(empty), "--out", "run"]) == 2
    assert "--config tiny_gpu: no such config file" in capsys.readouterr().err


def test_a_failed_stage_is_one_line_for_bad_input_and_a_traceback_otherwise(tmp_path, capsys):
    """``raddino demo`` and ``study`` report a failed stage the same way (one function)."""
    from raddino.cli.options import report_stage_error
    from raddino.demo.stages import StageError

    bad_input = StageError("cohort", 1.0, ValueError("manifest.csv: no split column"))
    assert report_stage_error("study", bad_input, tmp_path) == 2
    lines = capsys.readouterr().err.splitlines()
    assert lines == [
        "raddino study: error: stage 'cohort' failed after 1.0 s: ValueError: manifest.csv: "
        "no split column",
        f"finished stages are kept in {tmp_path / 'stages'}; re-run the same command to continue",
    ]
    try:
        raise RuntimeError("a bug")
    except RuntimeError as cause:
        crash = StageError("evaluate", 2.0, cause)
    assert report_stage_error("demo", crash, tmp_path) == 1
    err = capsys.readouterr().err
    assert err.startswith("Traceback") and "raddino demo: error: stage 'evaluate'" in err
