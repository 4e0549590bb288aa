"""Running ``raddino study`` in-process, and the quick study run once for the module."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from raddino.cli import main as main_module
from raddino.cli import study

QUICK = ["--workers", "0", "--no-progress"]


def run_cli(argv: list[str]) -> int:
    """``raddino ARGV`` with the study command available, on one intra-op thread: the quick
    study's problems are tiny, and under pytest torch is imported before ``cli/main.py`` makes
    OpenMP threads wait passively (spinning threads are 8-20x slower on a shared CPU). One
    thread is also what the subprocess runs use, so both do the same arithmetic."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with pytest.MonkeyPatch.context() as patch:
            if study not in main_module.COMMANDS:
                patch.setattr(main_module, "COMMANDS", (*main_module.COMMANDS, study))
            return main_module.main(argv)
    finally:
        torch.set_num_threads(threads)


def run_study(target: str | Path, out: Path, *extra: str) -> int:
    return run_cli(["study", str(target), "--out", str(out), *QUICK, *extra])


@pytest.fixture(scope="module")
def quick_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The installed quick study, run once, uninterrupted."""
    out = tmp_path_factory.mktemp("quick_study")
    assert run_study("quick", out) == 0
    return out
