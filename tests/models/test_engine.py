"""Fast inference: mode decisions, each mode's agreement with fp32, fallbacks to eager."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from raddino.models import hardware as hw
from raddino.models.encoder import RadDino
from raddino.models.engine import InferenceEngine
from raddino.models.hardware import (
    COMPILE_MIN_IMAGES,
    TOLERANCES,
    Choice,
    Hardware,
    choose_compile,
    choose_dtype,
)
from tests.conftest import onednn_fuses_bf16, synthetic_radiograph

CPU_BF16 = Hardware("cpu", "EPYC (AVX512)", bf16=True, fp16=False, onednn_graph=True, compiler=True)
CPU_OLD = Hardware("cpu", "Xeon (AVX2)", bf16=False, fp16=False, onednn_graph=False, compiler=False)
GPU_BF16 = Hardware("cuda", "H100", bf16=True, fp16=True, onednn_graph=False, compiler=True)
GPU_OLD = Hardware("cuda", "V100", bf16=False, fp16=True, onednn_graph=False, compiler=True)
BF16 = torch.bfloat16


@pytest.mark.parametrize(
    ("hardware", "expected"),
    [
        (CPU_BF16, torch.bfloat16),
        (CPU_OLD, torch.float32),
        (GPU_BF16, torch.bfloat16),
        (GPU_OLD, torch.float16),
    ],
)
def test_auto_dtype_follows_native_support(hardware: Hardware, expected: torch.dtype):
    choice = choose_dtype(None, hardware)
    assert choice.value == expected
    assert choice.reason.startswith("auto: ")


def test_requested_dtype_is_honoured_and_emulation_is_flagged():
    assert choose_dtype(torch.float32, CPU_BF16).value == torch.float32
    assert choose_dtype(torch.bfloat16, CPU_BF16) == Choice(torch.bfloat16, "requested")
    slow = choose_dtype(torch.bfloat16, CPU_OLD)
    assert slow.value == torch.bfloat16 and "slower than fp32" in slow.reason
    assert "slower" in choose_dtype(torch.float16, CPU_BF16).reason


def test_auto_compile_uses_onednn_on_cpu_for_large_jobs_only():
    many, few = COMPILE_MIN_IMAGES, COMPILE_MIN_IMAGES - 1
    assert choose_compile("auto", CPU_BF16, BF16, many).value == "onednn"
    assert choose_compile("auto", CPU_BF16, torch.float32, many).value == "onednn"
    assert "too few" in choose_compile("auto", CPU_BF16, BF16, few).reason
    assert choose_compile("auto", CPU_BF16, torch.float16, many).value == "off"
    assert "no oneDNN Graph" in choose_compile("auto", CPU_OLD, torch.float32, many).reason
    assert choose_compile("auto", GPU_BF16, BF16, 10**6).value == "off"


def test_requested_compile_is_honoured_where_it_can_run():
    assert choose_compile("inductor", CPU_OLD, torch.float32, 1) == Choice("inductor", "requested")
    assert choose_compile("off", CPU_BF16, BF16, 10**6).value == "off"
    assert choose_compile("inductor", GPU_BF16, BF16, 1).value == "inductor"
    with pytest.raises(ValueError, match="CPU only"):
        choose_compile("onednn", GPU_BF16, BF16, 10**6)
    with pytest.raises(ValueError, match="choose auto, off, onednn, inductor"):
        choose_compile("on", CPU_BF16, BF16, 1)


def test_probe_of_this_machine_is_consistent():
    probed = hw.probe_hardware("cpu")
    assert probed.device_type == "cpu" and probed.name
    expected = torch.bfloat16 if probed.bf16 else torch.float32
    assert choose_dtype(None, probed).value == expected


# --------------------------------------------------------------------------- accuracy


def cosines(output, reference) -> dict[str, float]:
    """Worst cosine similarity of CLS embeddings and of patch tokens against the reference."""
    return {
        "cls": F.cosine_similarity(output.cls.float(), reference.cls, dim=-1).min().item(),
        "patches": F.cosine_similarity(output.patches.float(), reference.patches, dim=-1)
        .min()
        .item(),
    }


@pytest.fixture(scope="module")
def pixels(small_hf_dir: Path) -> torch.Tensor:
    images = [synthetic_radiograph(600, 520, seed=seed) for seed in range(2)]
    return RadDino.from_pretrained(small_hf_dir).preprocess(images)


@pytest.fixture(scope="module")
def fp32_reference(small_hf_dir: Path, pixels: torch.Tensor):
    with torch.inference_mode():
        return RadDino.from_pretrained(small_hf_dir).encode(pixels, layers=[0])


DEVICE_DTYPES = [
    ("cpu", torch.float32),
    ("cpu", torch.bfloat16),
    ("cpu", torch.float16),
    pytest.param("cuda", torch.bfloat16, marks=pytest.mark.skipif("not torch.cuda.is_available()")),
    pytest.param("cuda", torch.float16, marks=pytest.mark.skipif("not torch.cuda.is_available()")),
]


@pytest.mark.parametrize(("device", "dtype"), DEVICE_DTYPES)
def test_each_dtype_is_within_its_documented_tolerance_of_fp32(
    small_hf_dir: Path, pixels: torch.Tensor, fp32_reference, device: str, dtype: torch.dtype
):
    engine = InferenceEngine(
        RadDino.from_pretrained(small_hf_dir).backbone, device=device, dtype=dtype, layers=[0]
    )
    output = engine(pixels.to(device, dtype))
    assert output.cls.dtype == dtype and output.patches.shape == fp32_reference.patches.shape
    measured = cosines(output, fp32_reference)
    for key, tolerance in TOLERANCES[dtype].items():
        assert measured[key] >= tolerance, (key, measured)
    assert sorted(output.layers) == [0]
    layer = F.cosine_similarity(output.layers[0].float(), fp32_reference.layers[0], dim=-1)
    assert layer.min().item() >= TOLERANCES[dtype]["patches"]


def test_explicit_matmul_attention_matches_sdpa(small_hf_dir: Path, pixels: torch.Tensor):
    backbone = RadDino.from_pretrained(small_hf_dir).backbone
    with torch.no_grad():
        sdpa = backbone(pixels)
        for block in backbone.blocks:
            block.attn.impl = "matmul"  # what the oneDNN Graph mode traces
        matmul = backbone(pixels)
    assert torch.allclose(matmul.patches, sdpa.patches, atol=1e-5)


def test_fp32_eager_engine_equals_the_model_itself(small_hf_dir: Path, pixels: torch.Tensor):
    model = RadDino.from_pretrained(small_hf_dir)
    engine = InferenceEngine(model.backbone, dtype=torch.float32)
    with torch.no_grad():
        eager = model.encode(pixels)
    assert torch.equal(engine(pixels).cls, eager.cls)
    assert model.backbone.training is False and engine.mode == "fp32 eager"


def check_tolerance(output, reference, dtype: torch.dtype) -> None:
    measured = cosines(output, reference)
    for key, tolerance in TOLERANCES[dtype].items():
        assert measured[key] >= tolerance, (key, measured)


# A row computed at another batch position (the padded partial batch against the full one) is
# the same arithmetic, but kernels are free to block and vectorise rows by position, so only
# the identical call (the partial batch padded by hand) is compared bit for bit; against the
# full batch, rounding of the dtype after 2 blocks is allowed: fp32 ~100 ulps of an O(1)
# token, bf16 ~4 ulps (bf16 spacing at 1 is 2**-7). Padding leaking into a row, or the wrong
# row coming back, changes tokens by O(1).
ROW_TOLERANCE = {
    torch.float32: dict(atol=1e-5, rtol=1e-5),
    torch.bfloat16: dict(atol=3e-2, rtol=3e-2),
}


def check_padded_partial_batch(engine: InferenceEngine, inputs: torch.Tensor, full) -> None:
    """``engine(inputs[1:])`` is run padded to the compiled batch of 2: it equals that padded
    call made by hand, and the full batch's second row up to rounding."""
    last = engine(inputs[1:])
    assert last.cls.shape == (1, 64) and last.patches.shape == (1, 37 * 37, 64)
    by_hand = engine(torch.cat([inputs[1:], torch.zeros_like(inputs[1:])]))
    assert torch.equal(last.cls, by_hand.cls[:1]) and torch.equal(last.patches, by_hand.patches[:1])
    tolerance = ROW_TOLERANCE[inputs.dtype]
    torch.testing.assert_close(last.cls, full.cls[1:], **tolerance)
    torch.testing.assert_close(last.patches, full.patches[1:], **tolerance)
    for index in engine.layers:
        assert torch.equal(last.layers[index], by_hand.layers[index][:1])
        torch.testing.assert_close(last.layers[index], full.layers[index][1:], **tolerance)


BF16_FUSED = pytest.param(
    torch.bfloat16,
    marks=pytest.mark.skipif(
        not onednn_fuses_bf16(), reason="oneDNN Graph has no bf16 kernels without AVX-512"
    ),
)


@pytest.mark.parametrize("dtype", [torch.float32, BF16_FUSED])
def test_onednn_mode_fuses_stays_within_tolerance_and_pads_the_last_batch(
    small_hf_dir: Path, pixels: torch.Tensor, fp32_reference, dtype: torch.dtype
):
    events: list[str] = []
    engine = InferenceEngine(
        RadDino.from_pretrained(small_hf_dir).backbone,
        dtype=dtype,
        compile="onednn",
        layers=[0],
        on_event=events.append,
    )
    inputs = pixels.to(dtype)
    for _ in range(3):  # TorchScript profiles the first calls, then fuses
        full = engine(inputs)
    assert engine.mode == f"{hw.short_name(dtype)} oneDNN Graph", engine.compile_error
    assert "compiled (oneDNN Graph) for input [2, 3, 518, 518]" in events[0]
    assert "oneDNN Graph fused" in events[1] and engine.compile_seconds is not None
    check_tolerance(full, fp32_reference, dtype)
    check_padded_partial_batch(engine, inputs, full)  # runs padded to the traced shape
    assert all(block.attn.impl == "sdpa" for block in engine.backbone.blocks)


@pytest.mark.skipif(not hw.cpp_compiler_available(), reason="inductor needs a C++ compiler")
def test_inductor_mode_stays_within_tolerance_and_pads_the_last_batch(
    small_hf_dir: Path, pixels: torch.Tensor, fp32_reference
):
    engine = InferenceEngine(
        RadDino.from_pretrained(small_hf_dir).backbone, dtype=BF16, compile="inductor"
    )
    full = engine(pixels.to(BF16))
    assert engine.mode == "bf16 inductor", engine.compile_error
    check_tolerance(full, fp32_reference, BF16)
    check_padded_partial_batch(engine, pixels.to(BF16), full)


@pytest.mark.parametrize("attention", ["matmul", pytest.param("sdpa", marks=BF16_FUSED.marks)])
def test_onednn_graph_folds_layerscale_and_fuses_each_residual_into_its_linear(
    small_hf_dir: Path, pixels: torch.Tensor, fp32_reference, attention: str
):
    """The traced graph has no LayerScale multiply, no scaled scores and no addcmul left: freezing
    folded them into the weights, and oneDNN Graph fuses ``x + linear(...)`` into one partition
    (2 per block); the model's own parameters are untouched."""
    backbone = RadDino.from_pretrained(small_hf_dir).backbone
    with torch.no_grad():
        for block in backbone.blocks:
            block.ls1.gamma.uniform_(0.5, 1.5)
    state = {key: value.to(BF16) for key, value in backbone.state_dict().items()}
    engine = InferenceEngine(backbone, dtype=BF16, compile="onednn", attention=attention)
    inputs = pixels.to(BF16)
    for _ in range(3):
        output = engine(inputs)
    assert engine.compiled, engine.compile_error
    graph = str(engine._runners[tuple(inputs.shape)].graph_for(inputs))
    assert "aten::addcmul" not in graph and "aten::mul(" not in graph
    groups = graph.split("with prim::oneDNNFusionGroup")[1:]  # each fused subgraph
    fused_residuals = sum("aten::linear" in group and "aten::add" in group for group in groups)
    assert fused_residuals == 2 * len(backbone.blocks)
    assert ("aten::scaled_dot_product_attention" in graph) == (attention == "sdpa")
    after = backbone.state_dict()
    assert all(torch.equal(after[key], value) for key, value in state.items())
    reference = RadDino.from_pretrained(small_hf_dir).backbone
    with torch.no_grad():
        for block, original in zip(reference.blocks, backbone.blocks, strict=True):
            block.ls1.gamma.copy_(original.ls1.gamma.float())
        expected = reference(pixels)
    check_tolerance(output, expected, BF16)


def test_unknown_attention_is_refused(small_hf_dir: Path):
    with pytest.raises(ValueError, match="choose matmul, sdpa, fused"):
        InferenceEngine(RadDino.from_pretrained(small_hf_dir).backbone, attention="flash")


def raise_on_call(*args, **kwargs):
    raise RuntimeError("simulated: no working C++ compiler\nsecond line")


def test_inductor_failing_at_the_first_call_falls_back_to_eager(
    small_hf_dir: Path, pixels: torch.Tensor, fp32_reference, monkeypatch
):
    monkeypatch.setattr(torch, "compile", lambda module, **kwargs: raise_on_call)
    events: list[str] = []
    engine = InferenceEngine(
        RadDino.from_pretrained(small_hf_dir).backbone, compile="inductor", on_event=events.append
    )
    with pytest.warns(RuntimeWarning, match=r"compiling \(inductor\) failed .*continuing eagerly"):
        output = engine(pixels)
    assert not engine.compiled and engine.mode == "fp32 eager"
    assert engine.compile_error == "RuntimeError: simulated: no working C++ compiler"
    assert "continuing eagerly" in events[0]
    assert torch.allclose(output.cls, fp32_reference.cls, atol=1e-5)
    assert torch.equal(engine(pixels).cls, output.cls)  # stays eager, no second warning


def test_torch_compile_raising_immediately_falls_back_to_eager(
    small_hf_dir: Path, pixels: torch.Tensor, monkeypatch
):
    monkeypatch.setattr(torch, "compile", raise_on_call)
    with pytest.warns(RuntimeWarning, match="failed"):
        engine = InferenceEngine(RadDino.from_pretrained(small_hf_dir).backbone, compile="inductor")
    assert not engine.compiled
    assert engine(pixels).cls.shape == (2, 64)


def test_tracing_failure_falls_back_to_eager(
    small_hf_dir: Path, pixels: torch.Tensor, fp32_reference, monkeypatch
):
    monkeypatch.setattr(torch.jit, "trace", raise_on_call)
    engine = InferenceEngine(RadDino.from_pretrained(small_hf_dir).backbone, compile="onednn")
    with pytest.warns(RuntimeWarning, match=r"compiling \(oneDNN Graph\) failed"):
        output = engine(pixels)
    assert engine.mode == "fp32 eager"
    assert torch.allclose(output.cls, fp32_reference.cls, atol=1e-5)
    assert all(block.attn.impl == "sdpa" for block in engine.backbone.blocks)


def test_a_graph_onednn_did_not_fuse_falls_back_to_eager(
    small_hf_dir: Path, pixels: torch.Tensor, fp32_reference, monkeypatch
):
    enable = torch.jit.enable_onednn_fusion
    monkeypatch.setattr(torch.jit, "enable_onednn_fusion", lambda enabled: enable(False))
    engine = InferenceEngine(
        RadDino.from_pretrained(small_hf_dir).backbone, dtype=BF16, compile="onednn"
    )
    inputs = pixels.to(BF16)
    engine(inputs)
    engine(inputs)
    with pytest.warns(RuntimeWarning, match="fused nothing"):
        output = engine(inputs)
    assert engine.mode == "bf16 eager"
    check_tolerance(output, fp32_reference, BF16)


@pytest.mark.parametrize("dtype", [torch.float32, BF16_FUSED])
def test_the_auto_cpu_path_agrees_with_eager_within_the_documented_tolerance(
    small_hf_dir: Path, pixels: torch.Tensor, dtype: torch.dtype
):
    choice = choose_compile("auto", hw.probe_hardware("cpu"), dtype, COMPILE_MIN_IMAGES)
    backbone = RadDino.from_pretrained(small_hf_dir).backbone
    engine = InferenceEngine(backbone, dtype=dtype, compile=str(choice.value))
    inputs = pixels.to(dtype)
    for _ in range(3):  # oneDNN Graph fuses from the third call
        fast = engine(inputs)
    assert engine.compiled == (choice.value != "off"), engine.compile_error
    eager = InferenceEngine(RadDino.from_pretrained(small_hf_dir).backbone, dtype=dtype)(inputs)
    for key, tolerance in TOLERANCES[dtype].items():
        ours, theirs = getattr(fast, key).float(), getattr(eager, key).float()
        worst = F.cosine_similarity(ours, theirs, dim=-1).min().item()
        assert worst >= tolerance, (key, worst)


def test_onednn_is_not_offered_on_python_3_14_and_a_request_runs_eagerly(
    small_hf_dir: Path, pixels: torch.Tensor, monkeypatch
):
    monkeypatch.setattr(hw.sys, "version_info", (3, 14, 0))
    assert not hw.onednn_graph_available()
    engine = InferenceEngine(RadDino.from_pretrained(small_hf_dir).backbone, compile="onednn")
    with pytest.warns(RuntimeWarning, match=r"no oneDNN Graph fuser .*continuing eagerly"):
        engine(pixels)
    assert engine.mode == "fp32 eager"


def test_a_onednn_isa_cap_below_amx_is_probed_as_no_amx(monkeypatch):
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "AVX512_CORE_BF16")
    assert not hw.onednn_may_use_amx() and not hw.probe_hardware("cpu").amx
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "avx512_core_amx")
    assert hw.onednn_may_use_amx()
    monkeypatch.delenv("ONEDNN_MAX_CPU_ISA")
    assert hw.onednn_may_use_amx()


@pytest.mark.skipif(not hw.reuse_freed_memory(), reason="glibc's malloc on Linux only (mallopt)")
def test_freed_memory_is_reused_without_page_faults():
    """64 MiB written and freed, again and again: from memory the process kept, once the heap
    has grown (16,384 4-KiB pages would each fault if it were mapped afresh every time, as
    glibc does by default above 32 MiB)."""
    resource = pytest.importorskip("resource")

    def faults_of_a_new_64_mib_tensor() -> int:
        before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        torch.ones(16 * 2**20)
        return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before

    for _ in range(3):  # the heap grows to hold it (twice, if a small object lands in the gap)
        faults_of_a_new_64_mib_tensor()
    assert sum(faults_of_a_new_64_mib_tensor() for _ in range(3)) < 1000
