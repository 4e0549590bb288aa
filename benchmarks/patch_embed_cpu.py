"""The patch embedding on CPU: a stride-p convolution against one linear layer on the patches.

Why :class:`raddino.models.vit.PatchEmbed` runs as a linear layer on CPU in bf16/fp16: prints ms
per call of both forms, in fp32 and bf16 (autocast, as training runs it), forward + backward of
the weights (the images need no gradient) and forward alone (as encoding runs it), for the
crop batches of ``tiny_cpu`` and ViT-S/14 and a ViT-B/14 batch of 4 at 518 px, and the ratio
convolution / linear. The two forms are the same function (``tests/models/test_vit.py``).

    python benchmarks/patch_embed_cpu.py [--repeats 20]
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Callable

import torch
import torch.nn.functional as F

from raddino.models.hardware import probe_hardware
from raddino.models.vit import flatten_patches
from timing import ms_per_call

# (name, batch, image size, patch size, width)
SHAPES = [
    ("tiny_cpu globals", 64, 112, 16, 192),
    ("tiny_cpu locals", 128, 48, 16, 192),
    ("ViT-S/14 globals", 16, 224, 14, 384),
    ("ViT-S/14 locals", 64, 98, 14, 384),
    ("ViT-B/14 encode", 4, 518, 14, 768),
]
PASSES = [("fwd + bwd", True), ("forward", False)]


def convolution(images: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    return F.conv2d(images, weight, bias, stride=weight.shape[-1]).flatten(2).transpose(1, 2)


def linear(images: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    return F.linear(flatten_patches(images, weight.shape[-1]), weight.flatten(1), bias)


def timed(form: Callable, images: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor,
          dtype: torch.dtype, train: bool, repeats: int) -> float:  # fmt: skip
    autocast = torch.autocast("cpu", torch.bfloat16, enabled=dtype == torch.bfloat16)

    def step() -> None:
        with autocast:
            out = form(images, weight, bias)
        if train:
            out.float().sum().backward()

    if train:
        return ms_per_call(step, repeats)
    with torch.inference_mode():
        return ms_per_call(step, repeats)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=20)
    args = parser.parse_args()
    print(f"CPU: {probe_hardware('cpu').name}, {os.cpu_count()} cores, "
          f"{torch.get_num_threads()} threads, torch {torch.__version__}")  # fmt: skip
    print(f"{'shape':<18} {'dtype':>8} {'pass':<11} {'conv ms':>8} {'linear ms':>10}  ratio")
    torch.manual_seed(0)
    for name, batch, size, patch, width in SHAPES:
        images = torch.randn(batch, 3, size, size)
        weight = (torch.randn(width, 3, patch, patch) * 0.02).requires_grad_()
        bias = torch.zeros(width, requires_grad=True)
        for dtype in (torch.float32, torch.bfloat16):
            for label, train in PASSES[1:] if name.endswith("encode") else PASSES:
                conv = timed(convolution, images, weight, bias, dtype, train, args.repeats)
                lin = timed(linear, images, weight, bias, dtype, train, args.repeats)
                print(f"{name:<18} {str(dtype).removeprefix('torch.'):>8} {label:<11} "
                      f"{conv:8.2f} {lin:10.2f} {conv / lin:5.2f}x")  # fmt: skip


if __name__ == "__main__":
    main()
