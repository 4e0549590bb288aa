"""``--device``: one check behind every command; a value this machine cannot run is refused in
one line that names it and what is available, before any work."""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import pytest
import torch

from raddino.cli.main import build_parser, main
from raddino.devices import available_devices, check_device

GPU = torch.cuda.is_available()


def test_auto_is_cuda_when_present_else_the_cpu():
    assert check_device("auto").type == ("cuda" if GPU else "cpu")
    assert check_device("cpu") == torch.device("cpu")
    assert check_device(torch.device("cpu")) == torch.device("cpu")
    expected = ["auto", "cpu"]
    if GPU:
        expected += ["cuda", *(f"cuda:{i}" for i in range(torch.cuda.device_count()))]
    assert available_devices() == expected


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        ("mps", "raddino runs on the CPU or CUDA GPUs, not on 'mps'"),
        ("foo", "not a device name"),
        ("cuda:x", "not a device name"),
        ("cpu:1", "the CPU has no index other than 0"),
        ("cuda:99", "this machine has" if GPU else "CUDA is not available on this machine"),
    ],
)
def test_a_device_this_machine_cannot_run_is_one_line_naming_what_is(value, reason):
    with pytest.raises(ValueError) as raised:
        check_device(value)
    message = str(raised.value)
    assert message.startswith(f"--device {value!r}: {reason}")
    assert message.endswith(f"; available: {', '.join(available_devices())}")
    assert "\n" not in message


@pytest.mark.skipif(GPU, reason="this machine has CUDA")
def test_cuda_without_a_gpu_says_so():
    with pytest.raises(ValueError, match=r"^--device 'cuda': CUDA is not available on this "
                       r"machine; available: auto, cpu$"):  # fmt: skip
        check_device("cuda")


def test_pretraining_checks_train_device_with_the_same_rule():
    from raddino.ssl.distributed import init_distributed

    assert init_distributed("auto").device.type == check_device("auto").type
    assert init_distributed("cpu").device == torch.device("cpu")
    if not GPU:
        with pytest.raises(ValueError, match=r"^train\.device 'cuda': CUDA is not available"):
            init_distributed("cuda")


def command_lines(tmp: Path) -> dict[str, list[str]]:
    """A command line per command that takes --device (inputs need not exist: the device is
    checked first)."""
    model, manifest, image = str(tmp / "model"), str(tmp / "m.csv"), str(tmp / "a.png")
    out, pair = str(tmp / "out"), [image, image]
    evaluation = ["--manifest", manifest, "--out", out]
    return {
        "encode": ["encode", image, "--model", model, "--out", out],
        "probe": ["probe", "--model", model, "--targets", "effusion", *evaluation],
        "segment": ["segment", "--model", model, "--masks", "heart", *evaluation],
        "compare": ["compare", "--models", model, model, "--targets", "effusion", *evaluation],
        "report": ["report", "generate", "--model", str(tmp / "run"), *evaluation],
        "similarity": ["similarity", "--model", model, "--point", "1,2", "--out", out, *pair],
        "pca": ["pca", "--model", model, "--out", out, image],
        "demo": ["demo", "--out", out],
        "study": ["study", "quick", "--out", out],
        "view": ["view", str(tmp / "store")],
    }


def takes_device(parser: argparse.ArgumentParser) -> bool:
    """Whether the parser, or one of its sub-commands, has a --device option."""
    for action in parser._actions:
        if "--device" in action.option_strings:
            return True
        if isinstance(action, argparse._SubParsersAction) and any(
            takes_device(sub) for sub in action.choices.values()
        ):
            return True
    return False


def test_the_commands_tested_below_are_every_command_that_takes_a_device(tmp_path):
    commands = next(
        a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction)
    ).choices
    assert {name for name, sub in commands.items() if takes_device(sub)} == set(
        command_lines(tmp_path)
    )


@pytest.mark.parametrize("value", ["mps", "foo", "cuda:99"])
@pytest.mark.parametrize(
    "command",
    [
        "encode",
        "probe",
        "segment",
        "compare",
        "report",
        "similarity",
        "pca",
        "demo",
        "study",
        "view",
    ],
)
def test_every_command_refuses_an_unavailable_device_in_one_line(command, value, tmp_path, capsys):
    assert main([*command_lines(tmp_path)[command], "--device", value]) == 2
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 1, lines  # no traceback
    assert lines[0].startswith(f"raddino {command}: error: --device {value!r}: ")
    assert lines[0].endswith(f"available: {', '.join(available_devices())}")
    assert not (tmp_path / "out").exists()


def test_auto_works_where_evaluation_takes_a_device():
    """``auto`` once reached ``torch.device('auto')`` in the probe and the features cache."""
    from raddino.eval.fit_threads import cpu_threads
    from raddino.eval.probe import ProbeConfig, run_probe
    from raddino.eval.splits import Splits
    from raddino.eval.targets import Target

    rng = np.random.default_rng(0)
    x = rng.normal(size=(60, 4)).astype(np.float32)
    y = (x[:, 0] > 0).astype(float)
    split = np.array(["train"] * 30 + ["val"] * 15 + ["test"] * 15)
    splits = Splits(split, np.arange(60).astype(str))
    config = ProbeConfig(device="auto", protocols=("knn",), ks=(5,), n_resamples=20)
    with pytest.warns():  # fewer than 10 cases of a class in val and test
        results, _ = run_probe(x, [Target("t", "binary", y)], splits, config)
    assert results["knn"].targets["t"].metrics["auroc"].value > 0.8
    with cpu_threads(1, "auto"):
        pass
