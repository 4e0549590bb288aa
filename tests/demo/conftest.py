"""Running ``raddino demo`` in-process, whether or not ``cli/main.py`` registers it yet."""

from __future__ import annotations

import pytest
import torch

from raddino.cli import demo
from raddino.cli import main as main_module


def run_cli(argv: list[str]) -> int:
    """``raddino ARGV`` with the demo command available, on one intra-op thread: the quick
    demo's problems are tiny, and under pytest torch is imported before ``cli/main.py`` makes
    OpenMP threads wait passively, so idle threads would spin on a shared CPU (8-20x slower)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with pytest.MonkeyPatch.context() as patch:
            if demo not in main_module.COMMANDS:
                patch.setattr(main_module, "COMMANDS", (*main_module.COMMANDS, demo))
            return main_module.main(argv)
    finally:
        torch.set_num_threads(threads)
