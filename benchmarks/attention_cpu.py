"""Forward + backward of self-attention on CPU: fused SDPA against explicit matmuls.

Why :func:`raddino.models.vit.prefers_matmul_attention` sends CPU training in bf16/fp16 through
explicit ``softmax(q k^T / sqrt(d)) v`` matmuls: prints ms per forward + backward of each, and
the ratio SDPA / matmul, for token counts from the ``tiny_cpu`` preset (50) to 518 px ViT-*/14
(1,370), in fp32 and bf16, on this machine's threads.

    python benchmarks/attention_cpu.py [--repeats 5]
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F

# (tokens, batch * heads): about the same number of scores in each row
Attend = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]
SHAPES = [(50, 192), (197, 48), (577, 12), (1370, 3)]


def explicit(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    scores = torch.matmul(q, k.transpose(-1, -2)) * q.shape[-1] ** -0.5
    return torch.matmul(torch.softmax(scores, dim=-1), v)


def ms_per_call(attend: Attend, qkv: tuple[torch.Tensor, ...], repeats: int) -> float:
    for _ in range(2):
        attend(*qkv).sum().backward()
    start = time.perf_counter()
    for _ in range(repeats):
        attend(*qkv).sum().backward()
    return (time.perf_counter() - start) / repeats * 1e3


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    print(f"threads {torch.get_num_threads()}, head dim 64")
    print(f"{'tokens':>6} {'dtype':>9} {'sdpa ms':>8} {'matmul ms':>9} {'sdpa/matmul':>11}")
    for tokens, rows in SHAPES:
        for dtype in (torch.float32, torch.bfloat16):
            qkv = tuple(
                torch.randn(rows, tokens, 64, dtype=dtype, requires_grad=True) for _ in range(3)
            )
            fused = ms_per_call(F.scaled_dot_product_attention, qkv, args.repeats)
            plain = ms_per_call(explicit, qkv, args.repeats)
            name = str(dtype).removeprefix("torch.")
            print(f"{tokens:>6} {name:>9} {fused:8.1f} {plain:9.1f} {fused / plain:10.2f}x")


if __name__ == "__main__":
    main()
