"""Forward + backward of self-attention on CPU: fused SDPA against explicit matmuls.

Why :func:`raddino.models.vit.prefers_matmul_attention` sends CPU training in bf16/fp16 through
explicit ``softmax(q k^T / sqrt(d)) v`` matmuls: prints ms per forward + backward of each, and
the ratio SDPA / matmul, for token counts from the ``tiny_cpu`` preset (50) to 518 px ViT-*/14
(1,370), in fp32 and bf16, on this machine's threads.

    python benchmarks/attention_cpu.py [--repeats 5]

``--inference`` instead times the forward alone, as encoding runs it: bf16, ViT-B/14 at 518 px
(a batch of 4 x 12 heads, 1,370 tokens, head dim 64), through SDPA's default CPU kernel (flash
attention), its math backend, explicit matmuls in eager mode, explicit matmuls traced and
fused by oneDNN Graph (what ``--compile onednn`` runs with AMX), the same with fp32 scores around
the softmax, ``flex_attention`` compiled by inductor and raddino's AVX512-BF16 kernel
(:mod:`raddino.models.fused_attention`, what ``--compile onednn`` runs without AMX), with
GFLOP/s, in interleaved rounds, and each round's ratio oneDNN Graph / raddino's kernel.
``--kernel-sizes`` times raddino's kernel against oneDNN Graph and SDPA from 50 to 1,370 tokens.
"""

from __future__ import annotations

import argparse
import warnings
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

from raddino.models import fused_attention
from timing import ms_per_call

# (tokens, batch * heads): about the same number of scores in each row
Attend = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]
SHAPES = [(50, 192), (197, 48), (577, 12), (1370, 3)]
KERNEL = "raddino's kernel"


def explicit(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    scores = torch.matmul(q, k.transpose(-1, -2)) * float(q.shape[-1] ** -0.5)  # traced: a constant
    return torch.matmul(torch.softmax(scores, dim=-1), v)


def fp32_softmax(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """:func:`explicit` with the scores cast to fp32 around the softmax (what oneDNN's SDPA
    primitive asks of its intermediates)."""
    scores = torch.matmul(q, k.transpose(-1, -2)).float() * float(q.shape[-1] ** -0.5)
    return torch.matmul(torch.softmax(scores, dim=-1).to(v.dtype), v)


def flex(example: tuple[torch.Tensor, ...]) -> Attend | None:
    """``flex_attention`` compiled by inductor (a C++ template on CPU), or None without it."""
    try:
        from torch.nn.attention.flex_attention import flex_attention

        compiled = torch.compile(flex_attention)
        with torch.no_grad():
            compiled(*example)
    except Exception as error:  # no C++ compiler, or no CPU template in this torch
        print(f"  (flex_attention skipped: {type(error).__name__}: {str(error)[:80]})")
        return None
    return compiled


def fwd_bwd_ms(attend: Attend, qkv: tuple[torch.Tensor, ...], repeats: int) -> float:
    return ms_per_call(lambda: attend(*qkv).sum().backward(), repeats)


def forward_ms(attend: Attend, qkv: tuple[torch.Tensor, ...], repeats: int) -> float:
    # a traced graph fuses from its third call
    return ms_per_call(lambda: attend(*qkv), repeats, warmup=3)


def fused_by_onednn(example: tuple[torch.Tensor, ...], attend: Attend = explicit) -> Attend:
    """``attend`` (default :func:`explicit`) traced, frozen and fused by oneDNN Graph."""

    class Explicit(torch.nn.Module):
        def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
            return attend(q, k, v)

    torch.jit.enable_onednn_fusion(True)
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # TorchScript's deprecation warnings
        return torch.jit.freeze(torch.jit.trace(Explicit().eval(), example, check_trace=False))


def inference(repeats: int, rounds: int) -> None:
    """Forward only, bf16, q/k/v (4, 12, 1370, 64) as views of one qkv tensor like the ViT's;
    the candidates take turns, ``rounds`` times."""
    batch, heads, tokens, dim = 4, 12, 1370, 64
    qkv = torch.randn(batch, tokens, 3, heads, dim, dtype=torch.bfloat16)
    q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)
    flops = 4 * batch * heads * tokens * tokens * dim
    traced = fused_by_onednn((q, k, v))

    def math(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        with sdpa_kernel(SDPBackend.MATH):
            return F.scaled_dot_product_attention(q, k, v)

    print(f"threads {torch.get_num_threads()}, bf16, (4, 12, {tokens}, {dim}), forward only")
    candidates = {
        "sdpa default (flash)": F.scaled_dot_product_attention,
        "sdpa math": math,
        "explicit, eager": explicit,
        "explicit, oneDNN Graph": traced,
        "fp32 softmax, oneDNN": fused_by_onednn((q, k, v), fp32_softmax),
    }
    compiled_flex = flex((q, k, v))
    if compiled_flex is not None:
        candidates["flex_attention, compiled"] = compiled_flex
    if fused_attention.unavailable_reason() is None:
        rows = qkv.reshape(batch, tokens, -1)  # the qkv projection's output, as the ViT has it
        candidates[KERNEL] = lambda q, k, v: fused_attention.fused_attention(rows, heads)
    else:
        print(f"  (raddino's kernel skipped: {fused_attention.unavailable_reason()})")
    for round in range(1, rounds + 1):
        print(f"round {round}:")
        times = {}
        for name, attend in candidates.items():
            with torch.no_grad():
                times[name] = ms = forward_ms(attend, (q, k, v), repeats)
            print(f"  {name:26s} {ms:8.1f} ms  {flops / ms / 1e6:6.0f} GFLOP/s")
        if KERNEL in times:
            ratio = times["explicit, oneDNN Graph"] / times[KERNEL]
            print(f"  oneDNN Graph / raddino's kernel: {ratio:.2f}x")


# (tokens, batch): 12 heads of 64, from a tiny_cpu-sized sequence to ViT-B/14 at 518 px
KERNEL_SHAPES = [(50, 64), (101, 32), (197, 16), (257, 16), (577, 8), (1370, 4)]


def prescaled(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """:func:`explicit` with 1/sqrt(d) already in q, as the encoder traces it."""
    return torch.matmul(torch.softmax(torch.matmul(q, k.transpose(-1, -2)), dim=-1), v)


def kernel_sizes(repeats: int) -> None:
    """raddino's kernel against oneDNN Graph's partition (traced like the encoder's attention,
    1/sqrt(d) in q) and SDPA, bf16 forward, at the sequence lengths of :data:`KERNEL_SHAPES`:
    ms per call, and each one's mean |error| against fp32 attention of the same bf16 inputs
    (oneDNN Graph / raddino's kernel / SDPA)."""
    reason = fused_attention.unavailable_reason()
    if reason is not None:
        raise SystemExit(f"raddino's kernel is unavailable here: {reason}")
    heads = 12
    print(f"threads {torch.get_num_threads()}, bf16, {heads} heads of 64, forward only, ms")
    for tokens, batch in KERNEL_SHAPES:
        qkv = torch.randn(batch, tokens, 3, heads, 64, dtype=torch.bfloat16)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)
        rows = qkv.reshape(batch, tokens, -1)
        traced = fused_by_onednn((q, k, v), prescaled)
        with torch.no_grad():
            onednn = forward_ms(traced, (q, k, v), repeats)
            ours = forward_ms(
                lambda q, k, v, rows=rows: fused_attention.fused_attention(rows, heads),
                (q, k, v), repeats,
            )  # fmt: skip
            sdpa = forward_ms(F.scaled_dot_product_attention, (q, k, v), repeats)
            exact = prescaled(q.float(), k.float(), v.float())
            errors = [
                (out.float() - exact).abs().mean().item()
                for out in (
                    traced(q, k, v),
                    fused_attention.fused_attention(rows, heads)
                    .reshape(batch, tokens, heads, 64).transpose(1, 2),
                    F.scaled_dot_product_attention(q, k, v, scale=1.0),
                )
            ]  # fmt: skip
        print(
            f"  {tokens:5d} tokens x {batch:3d}: oneDNN Graph {onednn:7.2f}, raddino's kernel "
            f"{ours:7.2f} ({onednn / ours:.2f}x), SDPA {sdpa:7.2f} ({sdpa / ours:.2f}x); "
            "mean |error| to fp32 " + " / ".join(f"{error:.1e}" for error in errors)
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--inference", action="store_true", help="bf16 forward at 518 px")
    parser.add_argument("--rounds", type=int, default=2, help="with --inference")
    parser.add_argument(
        "--kernel-sizes", action="store_true",
        help="raddino's bf16 kernel against oneDNN Graph and SDPA from 50 to 1,370 tokens",
    )  # fmt: skip
    args = parser.parse_args()
    if args.kernel_sizes:
        kernel_sizes(args.repeats)
        return
    if args.inference:
        inference(args.repeats, args.rounds)
        return
    print(f"threads {torch.get_num_threads()}, head dim 64")
    print(f"{'tokens':>6} {'dtype':>9} {'sdpa ms':>8} {'matmul ms':>9} {'sdpa/matmul':>11}")
    for tokens, rows in SHAPES:
        for dtype in (torch.float32, torch.bfloat16):
            qkv = tuple(
                torch.randn(rows, tokens, 64, dtype=dtype, requires_grad=True) for _ in range(3)
            )
            fused = fwd_bwd_ms(F.scaled_dot_product_attention, qkv, args.repeats)
            plain = fwd_bwd_ms(explicit, qkv, args.repeats)
            name = str(dtype).removeprefix("torch.")
            print(f"{tokens:>6} {name:>9} {fused:8.1f} {plain:9.1f} {fused / plain:10.2f}x")


if __name__ == "__main__":
    main()
