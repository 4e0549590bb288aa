"""One vocabulary across commands: every parser of ``raddino`` (sub-commands and report's and
data's steps) explained, with a runnable example; shared options spelled, defaulted and explained
the same everywhere; old spellings still working, with a note (docs/cli.md)."""

from __future__ import annotations

import argparse
import re
import shlex
from pathlib import Path

import pytest
import torch

from raddino.cli.main import build_parser, main
from raddino.cli.options import DEVICE_HELP, DTYPE_CHOICES, SEED_HELP

DOCS = Path(__file__).resolve().parents[2] / "docs" / "cli.md"


def walk(parser: argparse.ArgumentParser, path: str = "raddino"):
    """(``raddino report train``, its parser) for the parser and every parser below it."""
    yield path, parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from walk(sub, f"{path} {name}")


PARSERS = dict(walk(build_parser()))
LEAVES = {
    path: parser
    for path, parser in PARSERS.items()
    if not any(isinstance(a, argparse._SubParsersAction) for a in parser._actions)
}


def visible_options(parser: argparse.ArgumentParser) -> list[argparse.Action]:
    """Options and positionals shown in ``--help`` (old spellings are hidden)."""
    return [
        a
        for a in parser._actions
        if a.help is not argparse.SUPPRESS
        and not isinstance(a, (argparse._HelpAction, argparse._SubParsersAction))
    ]


def option(parser: argparse.ArgumentParser, name: str) -> argparse.Action | None:
    return next((a for a in parser._actions if name in a.option_strings), None)


def with_option(name: str) -> dict[str, argparse.Action]:
    found = {path: option(parser, name) for path, parser in LEAVES.items()}
    return {path: action for path, action in found.items() if action is not None}


def epilog(parser: argparse.ArgumentParser) -> str:
    parser.format_help()  # data index adds its dataset settings here
    return parser.epilog or ""


def example_lines(text: str) -> list[str]:
    """The ``raddino ...`` lines of an epilog, continuation lines joined, comments dropped."""
    lines = re.sub(r"\\\n\s*", "", text).splitlines()
    return [line.split("  #")[0].strip() for line in lines if line.strip().startswith("raddino ")]


def test_the_walk_reaches_every_command_and_step():
    assert {"raddino report init-lm", "raddino report train", "raddino report generate"} <= set(
        LEAVES
    )
    assert {"raddino report eval", "raddino data index", "raddino data preprocess"} <= set(LEAVES)
    assert len(LEAVES) >= 16  # 10 commands, report's 4 steps, data's 2, and any newer ones


@pytest.mark.parametrize("path", sorted(PARSERS))
def test_every_option_has_help(path):
    parser = PARSERS[path]
    missing = [a.option_strings or a.dest for a in visible_options(parser) if not a.help]
    assert not missing, f"{path}: no help for {missing}"
    for action in parser._actions:  # the one-line help of each sub-command in the list
        if isinstance(action, argparse._SubParsersAction):
            assert all(choice.help for choice in action._choices_actions), path


@pytest.mark.parametrize("path", sorted(PARSERS))
def test_every_help_ends_with_an_example_of_its_command(path):
    examples = example_lines(epilog(PARSERS[path]))
    assert examples, f"{path}: no example in the epilog"
    assert all(line.startswith(path + " ") for line in examples if path != "raddino"), examples


@pytest.mark.parametrize("path", sorted(PARSERS))
def test_every_example_parses(path, capsys):
    for line in example_lines(epilog(PARSERS[path])):
        argv = shlex.split(line)[1:]
        args, extra = build_parser().parse_known_args(argv)
        assert all("=" in e and hasattr(args, "overrides") for e in extra), (line, extra)
        assert capsys.readouterr().err == "", f"{line}: uses an old spelling"


def test_device_is_auto_by_default_and_explained_the_same_everywhere():
    devices = with_option("--device")
    assert set(devices) >= {
        "raddino encode",
        "raddino probe",
        "raddino segment",
        "raddino compare",
        "raddino demo",
        "raddino similarity",
        "raddino pca",
        "raddino report train",
        "raddino report generate",
    }
    for path, action in devices.items():
        assert (action.default, action.help) == ("auto", DEVICE_HELP), path


def test_dtype_shows_the_same_choices_everywhere():
    dtypes = with_option("--dtype")
    assert set(dtypes) >= {
        "raddino encode",
        "raddino probe",
        "raddino segment",
        "raddino compare",
        "raddino report train",
    }
    for path, action in dtypes.items():
        assert action.metavar == DTYPE_CHOICES == "{auto,fp32,bf16,fp16}", path
        assert action.default in ("auto", "fp32"), path
        assert "float32, bfloat16, float16 also accepted" in action.help, path
    for path in ("raddino probe", "raddino segment", "raddino compare"):
        assert dtypes[path].default == "fp32", "evaluation encodes in fp32 unless asked"
    assert dtypes["raddino encode"].default == dtypes["raddino report train"].default == "auto"


DTYPE_NAMES = [("float32", torch.float32), ("bfloat16", torch.bfloat16), ("fp16", torch.float16)]


@pytest.mark.parametrize(("name", "dtype"), [*DTYPE_NAMES, ("auto", None)])
def test_long_and_short_dtype_names_parse_alike(name, dtype):
    train = ["report", "train", "--model", "e", "--lm", "l", "--manifest", "m", "--out", "o"]
    encode = ["encode", "a.png", "--model", "m", "--out", "o"]
    for argv in (train, encode):
        assert build_parser().parse_args([*argv, "--dtype", name]).dtype == dtype


def test_a_model_is_named_by_model_everywhere():
    names_a_model = {
        "raddino encode",
        "raddino export",
        "raddino probe",
        "raddino segment",
        "raddino similarity",
        "raddino pca",
        "raddino report train",
        "raddino report generate",
    }
    assert set(with_option("--model")) >= names_a_model
    assert set(with_option("--models")) == {"raddino compare"}  # several encoders, one table
    for path, parser in LEAVES.items():
        shown = {s for a in visible_options(parser) for s in a.option_strings}
        assert not shown & {"--encoder", "--run", "--weights", "--checkpoint"}, path
    for path in names_a_model - {"raddino export"}:  # export also takes it as a positional
        assert with_option("--model")[path].dest == "model", path


def test_every_command_that_writes_takes_out():
    assert set(with_option("--out")) == set(LEAVES)


@pytest.mark.parametrize("name", ["--seed", "--no-progress"])
def test_seed_and_no_progress_are_spelled_and_explained_the_same(name):
    actions = with_option(name)
    assert len(actions) >= 8
    for path, action in actions.items():
        assert action.option_strings == [name], path
    if name == "--seed":  # the same words; the default is the command's own (demo: 31)
        for path, action in actions.items():
            assert action.help.startswith(f"{SEED_HELP} (default: "), path
            assert action.type is int, path
    else:
        assert {(a.help, type(a)) for a in actions.values()} == {
            ("hide progress bars", argparse._StoreTrueAction)
        }
    for path, parser in LEAVES.items():  # no second spelling of either
        shown = {s for a in parser._actions for s in a.option_strings}
        assert not shown & {"--random-seed", "--progress", "--quiet", "--no-progress-bar"}, path


def test_the_demo_seed_default_is_the_demo_seed():
    from raddino.demo.options import DEMO_SEED

    assert build_parser().parse_args(["demo", "--out", "d"]).seed == DEMO_SEED


TRAIN = ["report", "train", "--lm", "l", "--manifest", "m", "--out", "o"]
GENERATE = ["report", "generate", "--manifest", "m", "--out", "o"]
OLD_SPELLINGS = [
    # (argv, old, what it parses to)
    ([*TRAIN, "--encoder", "enc/"], "--encoder is now --model", ("model", "enc/")),
    ([*GENERATE, "--run", "run/"], "--run is now --model", ("model", "run/")),
    (
        [*TRAIN, "--model", "e", "--precision", "bf16"],
        "--precision is now --dtype",
        ("dtype", torch.bfloat16),
    ),
    (
        [*TRAIN, "--model", "e", "--precision", "float32"],
        "--precision is now --dtype",
        ("dtype", torch.float32),
    ),
    (
        [*TRAIN, "--model", "e", "--no-resume"],
        "--no-resume is deprecated",
        ("no_resume", True),
    ),
    (["pretrain", "--data", "d", "--out", "o", "--resume"], "--resume is now the default", None),
]


@pytest.mark.parametrize(("argv", "note", "parsed"), OLD_SPELLINGS)
def test_an_old_spelling_works_and_says_once_what_it_is_now(argv, note, parsed, capsys):
    args = build_parser().parse_args(argv)
    if parsed is not None:
        assert getattr(args, parsed[0]) == parsed[1]
    lines = capsys.readouterr().err.splitlines()
    prog = " ".join(["raddino", *argv[:2]]) if argv[0] == "report" else "raddino pretrain"
    assert len(lines) == 1 and lines[0].startswith(f"{prog}: note: {note}"), lines


def test_the_new_spellings_print_nothing_and_keep_the_defaults(capsys):
    args = build_parser().parse_args([*TRAIN, "--model", "e"])
    assert (args.model, args.dtype, args.no_resume) == ("e", None, False)
    assert build_parser().parse_args([*GENERATE, "--model", "r"]).model == "r"
    assert capsys.readouterr().err == ""


def test_old_spellings_are_hidden_and_listed_in_the_docs():
    documented = DOCS.read_text()
    for path, parser in PARSERS.items():
        text = parser.format_help()
        for action in parser._actions:
            if action.help is argparse.SUPPRESS:
                for spelling in action.option_strings:
                    assert spelling not in text, f"{path} --help shows {spelling}"
                    assert f"{path.removeprefix('raddino ')} {spelling}" in documented, spelling


def test_the_old_and_new_spelling_together_is_an_error_naming_both(capsys):
    with pytest.raises(SystemExit) as exited:
        build_parser().parse_args([*TRAIN, "--model", "a", "--encoder", "b"])
    assert exited.value.code == 2
    assert "argument --encoder: not allowed with argument --model" in capsys.readouterr().err


def test_a_missing_model_names_the_new_spelling_only(capsys):
    with pytest.raises(SystemExit):
        build_parser().parse_args(TRAIN)
    err = capsys.readouterr().err
    assert "--model is required" in err and "--encoder" not in err


def test_the_note_comes_before_the_command_runs(tmp_path, capsys):
    code = main([*GENERATE[:2], "--run", str(tmp_path / "none"), "--manifest", "m.csv",
                 "--out", str(tmp_path / "p.csv")])  # fmt: skip
    assert code == 2  # no such run
    lines = capsys.readouterr().err.splitlines()
    assert lines[0] == "raddino report generate: note: --run is now --model"
    assert lines[1].startswith("raddino report: error:")


def test_every_device_config_takes_auto():
    """The commands pass --device on as given; each config resolves it with check_device."""
    from raddino.devices import check_device
    from raddino.eval.probe import ProbeConfig
    from raddino.eval.segment import SegmentConfig
    from raddino.features.encode import EncodeOptions

    expected = check_device("auto")
    assert EncodeOptions(device="auto").device == expected
    for config in (ProbeConfig(device="auto"), SegmentConfig(device="auto")):
        assert check_device(config.device) == expected
    from raddino.cli.options import probe_config, segment_config

    args = build_parser().parse_args(["compare", "--models", "m", "--manifest", "m", "--out", "o"])
    assert probe_config(args).device == segment_config(args).device == "auto"
