"""raddino's AVX512-BF16 attention kernel: agreement with fp32 attention, its edge cases, the
build and the engine's choice of it."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from raddino.models import fused_attention as fa
from raddino.models import hardware as hw
from raddino.models.engine import InferenceEngine
from raddino.models.hardware import Hardware, choose_attention
from raddino.models.vit import VisionTransformer, ViTConfig

BF16 = torch.bfloat16
UNAVAILABLE = fa.unavailable_reason()
needs_kernel = pytest.mark.skipif(UNAVAILABLE is not None, reason=f"kernel: {UNAVAILABLE}")
EPYC = Hardware("cpu", "EPYC (AVX512)", bf16=True, fp16=False, onednn_graph=True, compiler=True)
XEON_AMX = Hardware(
    "cpu", "Xeon (AVX512, AMX)", bf16=True, fp16=True, onednn_graph=True, compiler=True, amx=True
)


def random_qkv(batch: int, tokens: int, heads: int, sharpness: float = 3.0, seed: int = 0):
    """(B, N, 3 * heads * 64) bf16 with q prescaled by 1/sqrt(64); ``sharpness`` scales the
    logits (their standard deviation)."""
    generator = torch.Generator().manual_seed(seed)
    qkv = torch.randn(batch, tokens, 3, heads, fa.HEAD_DIM, generator=generator)
    qkv[:, :, 0] *= sharpness / math.sqrt(fa.HEAD_DIM)
    return qkv.reshape(batch, tokens, -1).to(BF16)


def reference(qkv: torch.Tensor, heads: int) -> torch.Tensor:
    """fp32 softmax(q k^T) v of the same bf16 values, heads side by side: (B, N, heads * 64)."""
    batch, tokens, _ = qkv.shape
    q, k, v = qkv.float().reshape(batch, tokens, 3, heads, fa.HEAD_DIM).permute(2, 0, 3, 1, 4)
    out = torch.softmax(q @ k.transpose(-1, -2), dim=-1) @ v
    return out.transpose(1, 2).reshape(batch, tokens, -1)


def error_bound(qkv: torch.Tensor, heads: int) -> float:
    """The kernel's worst case against fp32: each weight and each output is rounded once to bf16
    (relative 2^-9 each), the rest is fp32, so |error| <= 2 * 2^-9 * max |v|; 2^-7 * max |v|
    leaves a factor 2 for the fp32 sums and the exponential's 8e-5."""
    batch, tokens, _ = qkv.shape
    v = qkv.float().reshape(batch, tokens, 3, heads, fa.HEAD_DIM)[:, :, 2]
    return 2.0**-7 * v.abs().max().item()


@needs_kernel
@pytest.mark.parametrize(
    ("batch", "tokens", "heads"),
    [(1, 1, 1), (2, 5, 3), (1, 17, 2), (1, 32, 1), (3, 63, 2), (1, 65, 1), (2, 257, 3)],
)
def test_matches_fp32_attention_within_bf16_rounding(batch: int, tokens: int, heads: int):
    """Token counts off every block size (4 rows, 16/32/64 keys): the padding keys get no weight
    and the rows past the end are not written."""
    qkv = random_qkv(batch, tokens, heads)
    out = fa.fused_attention(qkv, heads)
    assert out.shape == (batch, tokens, heads * fa.HEAD_DIM) and out.dtype == BF16
    expected = reference(qkv, heads)
    assert (out.float() - expected).abs().max().item() <= error_bound(qkv, heads)


@needs_kernel
def test_is_at_least_as_close_to_fp32_as_pytorchs_bf16_attention():
    """At ViT-B/14's 518 px sequence, against PyTorch's bf16 SDPA on the same inputs (the
    library's kernel, which also keeps fp32 scores)."""
    heads, tokens = 2, 1370
    qkv = random_qkv(1, tokens, heads, sharpness=5.0, seed=1)
    expected = reference(qkv, heads)
    q, k, v = qkv.reshape(1, tokens, 3, heads, fa.HEAD_DIM).permute(2, 0, 3, 1, 4)
    library = F.scaled_dot_product_attention(q, k, v, scale=1.0)
    library = library.transpose(1, 2).reshape(1, tokens, -1)
    ours = (fa.fused_attention(qkv, heads).float() - expected).abs()
    theirs = (library.float() - expected).abs()
    assert ours.mean().item() <= 1.25 * theirs.mean().item()
    assert ours.max().item() <= error_bound(qkv, heads)


@needs_kernel
def test_sharp_logits_neither_overflow_nor_vanish():
    """Logits of +-100s: exp would overflow fp32 without the maximum taken off; each row's
    weight goes to its largest score's value row."""
    qkv = random_qkv(1, 40, 1, sharpness=400.0, seed=2)
    out = fa.fused_attention(qkv, 1).float()
    assert torch.isfinite(out).all()
    assert (out - reference(qkv, 1)).abs().max().item() <= error_bound(qkv, 1)


@needs_kernel
@pytest.mark.parametrize("part", [0, 1, 2])
def test_a_nan_in_q_k_or_v_spreads_as_in_fp32_attention(part: int):
    """A NaN in one token's q poisons its own row, in its k or v every row: the same rows as
    fp32 attention, never a finite output where PyTorch gives NaN."""
    qkv = random_qkv(1, 40, 2, seed=6).reshape(1, 40, 3, 2, fa.HEAD_DIM)
    qkv[0, 7, part, 1] = float("nan")  # head 1 only
    qkv = qkv.reshape(1, 40, -1)
    nan_rows = fa.fused_attention(qkv, 2).isnan().any(-1)
    assert torch.equal(nan_rows, reference(qkv, 2).isnan().any(-1))
    assert nan_rows.sum().item() == (1 if part == 0 else 40)


@needs_kernel
def test_result_does_not_depend_on_the_thread_count():
    """Each (image, head) is one thread's work from start to end, so 1, 2 or 5 threads (5 does
    not divide the 6 items evenly) give the same bits."""
    qkv = random_qkv(2, 100, 3, seed=3)
    before = torch.get_num_threads()
    try:
        outputs = []
        for threads in (1, 2, 5):
            torch.set_num_threads(threads)
            outputs.append(fa.fused_attention(qkv, 3))
    finally:
        torch.set_num_threads(before)
    assert all(torch.equal(outputs[0], other) for other in outputs[1:])


@needs_kernel
def test_a_non_contiguous_input_gives_the_contiguous_result():
    qkv = random_qkv(2, 30, 2, seed=4)
    strided = torch.cat([qkv, qkv], dim=-1)[..., : qkv.shape[-1]]
    assert not strided.is_contiguous()
    assert torch.equal(fa.fused_attention(strided, 2), fa.fused_attention(qkv, 2))


def test_wrong_dtype_or_width_is_refused_with_the_shape():
    with pytest.raises(ValueError, match=r"\(2, 5, 384\) torch.float32"):
        fa.fused_attention(torch.zeros(2, 5, 384), 2)
    with pytest.raises(ValueError, match="heads=3"):
        fa.fused_attention(torch.zeros(2, 5, 384, dtype=BF16), 3)


def test_an_unavailable_kernel_raises_with_its_reason(monkeypatch):
    monkeypatch.setattr(fa, "_library", lambda: "no C compiler (set CC, or install cc)")
    assert fa.unavailable_reason() == "no C compiler (set CC, or install cc)"
    with pytest.raises(RuntimeError, match="unavailable: no C compiler"):
        fa.fused_attention(random_qkv(1, 4, 1), 1)


@pytest.mark.skipif(fa.c_compiler() is None, reason="no C compiler")
def test_build_is_cached_and_a_failed_build_leaves_nothing(tmp_path: Path):
    compiler = fa.c_compiler()
    if UNAVAILABLE is None:  # the flags need a compiler that knows AVX512-BF16
        built = fa.build(compiler, tmp_path)
        stamp = built.stat().st_mtime_ns
        assert fa.build(compiler, tmp_path) == built and built.stat().st_mtime_ns == stamp
        assert sorted(path.name for path in tmp_path.iterdir()) == [built.name]
    failing = tmp_path / "failing"
    with pytest.raises(RuntimeError, match="false failed"):
        fa.build("false", failing)
    assert list(failing.iterdir()) == []  # no half-written library


def test_the_cache_directory_follows_the_environment(monkeypatch, tmp_path: Path):
    monkeypatch.setenv("RADDINO_CACHE_DIR", str(tmp_path / "here"))
    assert fa.cache_dir() == tmp_path / "here"
    monkeypatch.delenv("RADDINO_CACHE_DIR")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert fa.cache_dir() == tmp_path / "xdg" / "raddino"


# ---------------------------------------------------------------- the engine's choice and use


def tiny_vit(heads: int = 2, width: int = 128) -> VisionTransformer:
    torch.manual_seed(0)
    config = ViTConfig(image_size=224, embed_dim=width, depth=2, num_heads=heads)
    return VisionTransformer(config).eval()


def test_the_kernel_is_chosen_only_for_bf16_without_amx_and_64_wide_heads(monkeypatch):
    monkeypatch.setattr(fa, "_library", lambda: object())  # a kernel that builds
    vit = tiny_vit()
    assert choose_attention("onednn", EPYC, BF16, vit).value == "fused"
    assert choose_attention("off", EPYC, BF16, vit).value == "fused"  # eager too
    amx = choose_attention("onednn", XEON_AMX, BF16, vit)
    assert amx.value == "matmul" and "AMX" in amx.reason
    assert choose_attention("off", EPYC, torch.float32, vit).value == "sdpa"
    assert choose_attention("inductor", EPYC, BF16, vit).value == "matmul"
    assert choose_attention("off", EPYC, BF16, torch.nn.Linear(2, 2)).value == "sdpa"  # foreign
    gpu = Hardware("cuda", "H100", bf16=True, fp16=True, onednn_graph=False, compiler=True)
    assert choose_attention("off", gpu, BF16, vit).value == "sdpa"
    narrow = choose_attention("onednn", EPYC, BF16, tiny_vit(heads=4))
    assert narrow.value == "matmul" and "[32] wide" in narrow.reason
    monkeypatch.setattr(fa, "_library", lambda: "no C compiler (set CC, or install cc)")
    missing = choose_attention("onednn", EPYC, BF16, vit)
    assert missing.value == "matmul" and "no C compiler" in missing.reason


def test_the_engine_refuses_the_kernel_outside_bf16_on_cpu():
    with pytest.raises(ValueError, match="bf16 on CPU only"):
        InferenceEngine(tiny_vit(), dtype=torch.float32, attention="fused")


@needs_kernel
def test_the_eager_engine_calls_the_kernel_and_leaves_the_model_as_it_was(monkeypatch):
    """Eager mode with ``attention="fused"``: the blocks call the kernel during the call only
    (the model's attention is SDPA again afterwards), within the bf16 tolerance of fp32."""
    images = torch.randn(2, 3, 224, 224, generator=torch.Generator().manual_seed(7))
    with torch.no_grad():
        expected = tiny_vit()(images)
    calls = []

    def spy(qkv: torch.Tensor, heads: int) -> torch.Tensor:
        calls.append(heads)
        return fa.fused_attention(qkv, heads)

    monkeypatch.setattr("raddino.models.vit.fused_attention", spy)
    engine = InferenceEngine(tiny_vit(), dtype=BF16, compile="off", attention="fused")
    output = engine(images.to(BF16))
    assert calls == [2, 2]  # both blocks, 2 heads each
    assert all(b.attn.impl == "sdpa" and not b.folded for b in engine.backbone.blocks)
    cls = F.cosine_similarity(output.cls.float(), expected.cls, dim=-1).min().item()
    patches = F.cosine_similarity(output.patches.float(), expected.patches, dim=-1).min().item()
    assert cls >= hw.TOLERANCES[BF16]["cls"] and patches >= hw.TOLERANCES[BF16]["patches"]


@needs_kernel
@pytest.mark.skipif(not hw.onednn_graph_available(), reason="no oneDNN Graph fuser")
def test_the_traced_engine_calls_the_kernel_and_keeps_the_bf16_tolerance():
    """The traced graph calls the kernel between the fused qkv and proj + residual partitions;
    the tokens stay within the documented bf16 tolerance of fp32 eager, as closely as with
    oneDNN's own attention."""
    images = torch.randn(2, 3, 224, 224, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        expected = tiny_vit()(images)
    outputs = {}
    for attention in ("fused", "matmul"):
        engine = InferenceEngine(tiny_vit(), dtype=BF16, compile="onednn", attention=attention)
        inputs = images.to(BF16)
        for _ in range(3):  # fused from the third call
            outputs[attention] = engine(inputs)
        assert engine.compiled, engine.compile_error
        graph = str(engine._runners[tuple(inputs.shape)].graph_for(inputs))
        assert graph.count("raddino::fused_attention") == (2 if attention == "fused" else 0)
        assert all(block.attn.impl == "sdpa" for block in engine.backbone.blocks)
    worst = {}
    for attention, output in outputs.items():
        cls = F.cosine_similarity(output.cls.float(), expected.cls, dim=-1).min().item()
        patches = F.cosine_similarity(output.patches.float(), expected.patches, dim=-1)
        worst[attention] = min(cls, patches.min().item())
        assert cls >= hw.TOLERANCES[BF16]["cls"]
        assert patches.min().item() >= hw.TOLERANCES[BF16]["patches"]
    assert 1 - worst["fused"] <= 2 * (1 - worst["matmul"]) + 1e-5, worst
