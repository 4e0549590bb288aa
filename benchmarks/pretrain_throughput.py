"""Pre-training step throughput and model-FLOPs utilisation (MFU).

For the ``tiny_cpu`` preset and for ViT-S/14 with 2 x 224 + 8 x 98 crops, in fp32 and bf16:
images/s of full training steps (teacher forward, student forward and backward, AdamW, EMA) on
crops already in memory, FLOPs counted by ``torch.utils.flop_counter`` for one step, and MFU =
counted FLOPs / step time / this machine's matmul peak, measured in the same run.

    python benchmarks/pretrain_throughput.py [--steps 3]
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from torch.utils.flop_counter import FlopCounterMode

from raddino.ssl.config import PretrainConfig, load_config
from raddino.ssl.masking import sample_batch_masks
from raddino.ssl.optim import apply_schedule, build_optimizer
from raddino.ssl.run import autocast_context
from raddino.ssl.trainer import build_meta, make_schedules

CONFIGS = Path(__file__).parents[1] / "configs"


def matmul_peak(dtype: torch.dtype, size: int = 2048, repeats: int = 5) -> float:
    """Measured FLOP/s of a square matmul in ``dtype``."""
    a = torch.randn(size, size, dtype=dtype)
    b = torch.randn(size, size, dtype=dtype)
    a @ b
    start = time.perf_counter()
    for _ in range(repeats):
        a @ b
    return 2 * size**3 * repeats / (time.perf_counter() - start)


def make_step(config: PretrainConfig) -> tuple[Callable[[], None], int]:
    """A closure running one training step on fixed random crops, and the batch size."""
    torch.manual_seed(0)
    meta = build_meta(config)
    meta.train()
    optimizer = build_optimizer(meta.student, config.optim)
    apply_schedule(optimizer, make_schedules(config, 1e-4).at(10))
    b, crops = config.train.batch_size, config.crops
    globals_ = torch.randn(2 * b, 3, crops.global_size, crops.global_size)
    locals_ = (
        torch.randn(crops.local_number * b, 3, crops.local_size, crops.local_size)
        if crops.local_number
        else None
    )
    grid = crops.global_size // config.model.patch_size
    masks = sample_batch_masks(2 * b, (grid, grid), np.random.default_rng(0))

    def step() -> None:
        with autocast_context(config.train.precision, torch.device("cpu")):
            out = meta(globals_, locals_, masks, 0.07)
        optimizer.zero_grad(set_to_none=True)
        out.total.backward()
        optimizer.step()
        meta.update_teacher(0.99)

    return step, b


def measure(name: str, config: PretrainConfig, steps: int, peaks: dict[str, float]) -> None:
    step, batch = make_step(config)
    counter = FlopCounterMode(display=False)
    with counter:
        step()
    flops = counter.get_total_flops()
    step()  # warm-up
    start = time.perf_counter()
    for _ in range(steps):
        step()
    seconds = (time.perf_counter() - start) / steps
    peak = peaks[config.train.precision]
    print(
        f"{name:<28} {config.train.precision:>5}  batch {batch:>3}  {batch / seconds:7.2f} img/s"
        f"  {flops / 1e9:8.1f} GFLOP/step  {flops / seconds / 1e9:7.1f} GFLOP/s"
        f"  MFU {flops / seconds / peak:6.1%}"
    )
    counts = counter.get_flop_counts().get("Global", {})
    top = sorted(counts.items(), key=lambda kv: -kv[1])[:3]
    print("    largest FLOP counts: " + ", ".join(f"{op}: {n / flops:.0%}" for op, n in top))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=3)
    args = parser.parse_args()
    peaks = {"fp32": matmul_peak(torch.float32), "bf16": matmul_peak(torch.bfloat16)}
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    print(
        f"matmul peak: fp32 {peaks['fp32'] / 1e9:.0f} GFLOP/s, "
        f"bf16 {peaks['bf16'] / 1e9:.0f} GFLOP/s"
    )
    vit_s = [
        "model.arch=small", "model.patch_size=14", "model.image_size=224",
        "crops.global_size=224", "crops.local_size=98", "crops.local_number=8",
        "train.batch_size=8",
    ]  # fmt: skip
    for precision in ("fp32", "bf16"):
        tiny = load_config(CONFIGS / "tiny_cpu.yaml", [f"train.precision={precision}"])
        measure("tiny_cpu (2x112 + 4x48)", tiny, args.steps, peaks)
        small = load_config(None, [*vit_s, f"train.precision={precision}"])
        measure("ViT-S/14 (2x224 + 8x98)", small, args.steps, peaks)


if __name__ == "__main__":
    main()
