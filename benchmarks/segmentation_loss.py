"""The segmentation heads' loss: the fused BCE + soft Dice op against the same loss from
PyTorch's own ops under autograd (the loss before 10a3100), forward + backward.

At the demo's shape by default: a batch of 8 images x 4 structures at 160 x 160 px, one thread
(as ``raddino compare`` fits each head), interleaved rounds; prints ms per step of each, their
ratio, and the largest differences of value and gradient.

    python benchmarks/segmentation_loss.py [--batch 8] [--structures 4] [--size 160] [--rounds 5]
"""

from __future__ import annotations

import argparse
import os
import statistics
from collections.abc import Callable

import torch

from timing import ms_per_call

Loss = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


def ms_per_step(
    loss: Loss, logits: torch.Tensor, target: torch.Tensor, known: torch.Tensor, steps: int
) -> float:
    def step() -> None:
        logits.grad = None
        loss(logits, target, known).backward()

    return ms_per_call(step, steps, warmup=3)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--structures", type=int, default=4)
    parser.add_argument("--size", type=int, default=160)
    parser.add_argument("--steps", type=int, default=30, help="steps per timing")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()

    from raddino.eval.seg_loss import composed_segmentation_loss, segmentation_loss
    from raddino.models.hardware import probe_hardware, reuse_freed_memory

    torch.set_num_threads(args.threads)
    reuse_freed_memory()  # as in a pre-training or encoding process (the demo's)
    print(f"CPU: {probe_hardware('cpu').name}, {os.cpu_count()} cores, torch {torch.__version__}")
    shape = (args.batch, args.structures, args.size, args.size)
    g = torch.Generator().manual_seed(0)
    logits = (torch.randn(shape, generator=g) * 4).requires_grad_()
    target = (torch.rand(shape, generator=g) > 0.6).float()
    known = torch.rand(shape[:2], generator=g) > 0.1
    print(f"logits {tuple(shape)} float32, {args.threads} thread(s), {args.steps} steps a timing")

    values, grads = [], []
    for loss in (composed_segmentation_loss, segmentation_loss):
        logits.grad = None
        values.append(loss(logits, target, known))
        values[-1].backward()
        grads.append(logits.grad.clone())
    value_diff = abs(values[0].item() - values[1].item())
    grad_diff = (grads[0] - grads[1]).abs().max().item() / grads[0].abs().max().item()

    ratios = []
    for round in range(1, args.rounds + 1):
        composed = ms_per_step(composed_segmentation_loss, logits, target, known, args.steps)
        fused = ms_per_step(segmentation_loss, logits, target, known, args.steps)
        ratios.append(composed / fused)
        print(
            f"  round {round}: PyTorch ops {composed:6.2f} ms, fused {fused:6.2f} ms, "
            f"{ratios[-1]:.2f}x"
        )
    print(
        f"fused vs PyTorch ops: {statistics.median(ratios):.2f}x (median of {args.rounds} rounds,"
        f" {min(ratios):.2f}-{max(ratios):.2f}x)"
    )
    print(f"value differs by {value_diff:.1e}; gradient by {grad_diff:.1e} of its largest entry")


if __name__ == "__main__":
    main()
