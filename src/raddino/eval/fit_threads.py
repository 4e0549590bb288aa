"""CPU threads for fitting probes and heads.

The fits are long series of small, mostly memory-bound operations. On a CPU that other work
shares, synchronising intra-op threads costs more than they save: on a loaded 2-core host the
probe of 10,000 x 768 features took 19 s on 1 thread and 158 s on 2, and 20 epochs of a linear
segmentation head 31 s and 281 s (benchmarks/). Evaluation therefore fits on one thread by
default, and a comparison fits several at the same time, one per core
(:mod:`raddino.eval.concurrent_fits`); ``None`` keeps torch's setting (worth it for UPerNet on
an idle many-core machine).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch

from raddino.devices import check_device

DEFAULT_CPU_THREADS = 1


@contextmanager
def cpu_threads(count: int | None, device: torch.device | str = "cpu") -> Iterator[None]:
    """Use ``count`` intra-op threads inside the block when ``device`` is the CPU."""
    before = torch.get_num_threads()
    change = count is not None and check_device(device).type == "cpu"
    if change:
        torch.set_num_threads(count)
    try:
        yield
    finally:
        if change:
            torch.set_num_threads(before)
