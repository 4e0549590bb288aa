"""The segmentation heads' last step, logits up to the mask size: ``resize_bilinear`` (two
matrix products) against ``F.interpolate(mode="bilinear")`` (the resize before this benchmark's
commit), forward + backward.

At the demo's shape by default: the linear head's 8 x 4 logit maps on the 10 x 10 patch grid up
to 160 x 160 px, one thread (as ``raddino compare`` fits each head), interleaved rounds; prints
ms per step of each, their ratio, and the largest differences of value and gradient.

    python benchmarks/bilinear_resize.py [--batch 8] [--structures 4] [--grid 10] [--size 160]
"""

from __future__ import annotations

import argparse
import os
import statistics
from collections.abc import Callable

import torch
import torch.nn.functional as F

from timing import ms_per_call

Resize = Callable[[torch.Tensor], torch.Tensor]


def ms_per_step(resize: Resize, x: torch.Tensor, upstream: torch.Tensor, steps: int) -> float:
    def step() -> None:
        x.grad = None
        resize(x).backward(upstream)

    return ms_per_call(step, steps, warmup=3)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--structures", type=int, default=4)
    parser.add_argument("--grid", type=int, default=10, help="side of the head's logit map")
    parser.add_argument("--size", type=int, default=160, help="side of the masks")
    parser.add_argument("--steps", type=int, default=50, help="steps per timing")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()

    from raddino.eval.resize import resize_bilinear
    from raddino.models.hardware import probe_hardware, reuse_freed_memory

    torch.set_num_threads(args.threads)
    reuse_freed_memory()  # as in an evaluation process (the demo's)
    print(f"CPU: {probe_hardware('cpu').name}, {os.cpu_count()} cores, torch {torch.__version__}")
    size = (args.size, args.size)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(args.batch, args.structures, args.grid, args.grid, generator=g) * 4
    x.requires_grad_()
    upstream = torch.randn(args.batch, args.structures, *size, generator=g)
    print(
        f"logits {tuple(x.shape)} -> {size} float32, {args.threads} thread(s), "
        f"{args.steps} steps a timing"
    )

    def interpolate(t: torch.Tensor) -> torch.Tensor:
        return F.interpolate(t, size=size, mode="bilinear", align_corners=False)

    def matmul(t: torch.Tensor) -> torch.Tensor:
        return resize_bilinear(t, size)

    outputs, grads = [], []
    for resize in (interpolate, matmul):
        x.grad = None
        output = resize(x)
        output.backward(upstream)
        outputs.append(output.detach())
        grads.append(x.grad.clone())
    value_diff = (outputs[0] - outputs[1]).abs().max().item() / outputs[0].abs().max().item()
    grad_diff = (grads[0] - grads[1]).abs().max().item() / grads[0].abs().max().item()

    ratios = []
    for round in range(1, args.rounds + 1):
        reference = ms_per_step(interpolate, x, upstream, args.steps)
        ours = ms_per_step(matmul, x, upstream, args.steps)
        ratios.append(reference / ours)
        print(
            f"  round {round}: F.interpolate {reference:6.2f} ms, two matmuls {ours:6.2f} ms, "
            f"{ratios[-1]:.2f}x"
        )
    print(
        f"two matmuls vs F.interpolate: {statistics.median(ratios):.2f}x (median of "
        f"{args.rounds} rounds, {min(ratios):.2f}-{max(ratios):.2f}x)"
    )
    print(
        f"values differ by {value_diff:.1e} and gradients by {grad_diff:.1e} of their largest "
        "entries"
    )


if __name__ == "__main__":
    main()
