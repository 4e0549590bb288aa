"""Which inference mode to run: precision and compilation, decided from the hardware.

Each decision is a pure function of what the machine offers (:class:`Hardware`), so it can be
unit-tested with fake capabilities, and returns its reason for the user:

- :func:`choose_dtype`: ``auto`` is the one precision rule of :mod:`raddino.precision`
  (:func:`~raddino.precision.auto_dtype`), here applied to the probed hardware; a requested
  precision the hardware only emulates is flagged.
- :func:`choose_compile`: ``auto`` = ``onednn`` (the model traced with TorchScript and fused by
  oneDNN Graph) on CPUs for jobs of :data:`COMPILE_MIN_IMAGES` images or more, off on GPUs and
  for foreign encoders (CLIP, SigLIP, timm: :func:`onednn_traceable`).

CPU settings for encoding: :func:`configure_cpu_threads` (intra-op threads) and
:func:`reuse_freed_memory` (no fresh pages, hence no page faults, for every large tensor).

Measured speed and accuracy of each mode: ``docs/encoding.md``.
"""

from __future__ import annotations

import ctypes
import os
import platform
import shutil
import sys
from dataclasses import dataclass

import torch
from torch import nn

from raddino.cpus import available_cores
from raddino.devices import cpuinfo_field, has_native_bf16
from raddino.models import fused_attention
from raddino.models.vit import VisionTransformer
from raddino.precision import auto_dtype, short_name

COMPILE_CHOICES = ("auto", "off", "onednn", "inductor")

# ``--compile auto`` uses oneDNN Graph on CPU for jobs from this many images on: tracing and the
# first (unfused, profiling) calls cost about 10-20 s on a 2-core EPYC, and the fused model
# saved 0.2-0.5 s per ViT-B/14 image there (bf16 break-even near 40 images); with raddino's
# attention kernel in both modes the first three calls cost 3.3 s more than eager's and the
# fused model saves 0.06 s per image (bf16 break-even near 55 images; `python
# benchmarks/encode_throughput.py --modes eager-fused,onednn-fused --dtypes bf16`). On a 2-core Xeon
# with AMX they cost 7 s more than eager and save 0.05 s per image (break-even near 140), so a
# 64-image job there is at most about 4 s slower (docs/encoding.md, "CPU fast path").
COMPILE_MIN_IMAGES = 64

# Documented agreement with fp32: worst cosine similarity of CLS embeddings and of patch tokens
# (tests/models/test_engine.py checks them; docs/encoding.md has the measured values).
TOLERANCES: dict[torch.dtype, dict[str, float]] = {
    torch.float32: {"cls": 0.99999, "patches": 0.99999},
    torch.bfloat16: {"cls": 0.999, "patches": 0.995},
    torch.float16: {"cls": 0.999, "patches": 0.995},
}


# --------------------------------------------------------------------------- hardware


@dataclass(frozen=True)
class Hardware:
    """What the precision and compile decisions depend on.

    bf16 / fp16: the device multiplies matrices natively in that format (not emulated).
    onednn_graph: TorchScript graphs can be fused with oneDNN Graph here (CPU; torch and Python).
    compiler: what ``torch.compile``'s inductor needs (a C++ compiler on CPU, Triton on CUDA).
    amx: a CPU with AMX tile units (Xeon from Sapphire Rapids on): bf16 matmuls there run
    several times faster than with AVX512-BF16 alone, which moves the bottleneck.
    """

    device_type: str
    name: str
    bf16: bool
    fp16: bool
    onednn_graph: bool
    compiler: bool
    amx: bool = False


def cpp_compiler_available() -> bool:
    """A C++ compiler for inductor's CPU code: ``$CXX``, else g++, c++ or clang++ on PATH."""
    candidates = [os.environ["CXX"]] if os.environ.get("CXX") else ["g++", "c++", "clang++"]
    return any(shutil.which(name.split()[0]) for name in candidates)


def onednn_graph_available() -> bool:
    """TorchScript's oneDNN Graph fuser is in this torch build, on a Python TorchScript supports
    (torch warns that ``torch.jit.trace`` is unsupported and may break from Python 3.14 on)."""
    return (
        sys.version_info < (3, 14)
        and hasattr(torch.jit, "enable_onednn_fusion")
        and torch.backends.mkldnn.is_available()
    )


def onednn_may_use_amx() -> bool:
    """False when ``ONEDNN_MAX_CPU_ISA`` (or the older ``DNNL_MAX_CPU_ISA``) caps oneDNN below
    AMX, e.g. ``AVX512_CORE_BF16``: its kernels then run as on a CPU without AMX."""
    isa = (os.environ.get("ONEDNN_MAX_CPU_ISA") or os.environ.get("DNNL_MAX_CPU_ISA", "")).upper()
    return not isa or isa in ("ALL", "DEFAULT") or "AMX" in isa


def triton_available() -> bool:
    try:
        import triton  # noqa: F401
    except ImportError:
        return False
    return True


def probe_hardware(device: torch.device | str) -> Hardware:
    """Capabilities of ``device`` on this machine."""
    device = torch.device(device)
    if device.type == "cuda":
        index = device.index if device.index is not None else torch.cuda.current_device()
        return Hardware(
            device_type="cuda",
            name=torch.cuda.get_device_name(index),
            bf16=has_native_bf16(device),
            fp16=True,
            onednn_graph=False,
            compiler=triton_available(),
        )
    if device.type == "cpu":
        model = cpuinfo_field("model name") or platform.processor() or platform.machine()
        amx_fp16 = getattr(torch.cpu, "_is_amx_fp16_supported", lambda: False)
        amx_tile = getattr(torch.cpu, "_is_amx_tile_supported", lambda: False)
        amx = bool(amx_tile()) and onednn_may_use_amx()
        return Hardware(
            device_type="cpu",
            name=f"{model} ({torch.backends.cpu.get_cpu_capability()}{', AMX' if amx else ''})",
            bf16=has_native_bf16(device),
            fp16=bool(amx_fp16()),
            onednn_graph=onednn_graph_available(),
            compiler=cpp_compiler_available(),
            amx=amx,
        )
    return Hardware(device.type, device.type, False, False, False, False)


# --------------------------------------------------------------------------- decisions


@dataclass(frozen=True)
class Choice:
    """A decision and the reason to print with it."""

    value: object
    reason: str


def choose_dtype(requested: torch.dtype | None, hardware: Hardware) -> Choice:
    """The precision to encode in (None = auto); ``value`` is a ``torch.dtype``."""
    if requested is None:
        dtype = auto_dtype(torch.device(hardware.device_type), native_bf16=hardware.bf16)
        native = "has" if hardware.bf16 else "has no"
        return Choice(dtype, f"auto: {hardware.name} {native} native bf16 matmuls")
    native = {torch.bfloat16: hardware.bf16, torch.float16: hardware.fp16}.get(requested, True)
    if native:
        return Choice(requested, "requested")
    return Choice(
        requested,
        f"requested; {hardware.name} has no native {short_name(requested)} matmuls, so this "
        "may be slower than fp32",
    )


def onednn_traceable(backbone: nn.Module) -> bool:
    """The oneDNN Graph path traces raddino's own ViT (its attention switched to explicit
    matmuls, ``block.attn.impl``); foreign encoders' backbones run eagerly or with inductor."""
    return isinstance(backbone, VisionTransformer)


def choose_compile(
    requested: str,
    hardware: Hardware,
    dtype: torch.dtype,
    num_images: int,
    *,
    traceable: bool = True,
) -> Choice:
    """How to compile: ``value`` is ``"off"``, ``"onednn"`` or ``"inductor"``.

    auto: ``onednn`` on CPU in fp32 or bf16 for jobs of :data:`COMPILE_MIN_IMAGES` images or
    more; off otherwise, also where the fuser is missing (``inductor`` measured within 5% of
    eager on CPU, so it is no better fallback), and on GPUs (where decoding rather than the
    model limits ``raddino encode``; ``inductor`` is there to try). ``num_images`` is the whole
    job's size, so a resumed run picks the mode of the first run. ``traceable``: the backbone
    is raddino's ViT (:func:`onednn_traceable`); a foreign one is never given ``onednn``.
    """
    if requested not in COMPILE_CHOICES:
        raise ValueError(f"compile {requested!r}: choose {', '.join(COMPILE_CHOICES)}")
    if requested == "onednn" and hardware.device_type != "cpu":
        raise ValueError("compile 'onednn' runs on CPU only; use 'inductor' or 'off'")
    if requested == "onednn" and not traceable:
        raise ValueError(
            "compile 'onednn' traces raddino's own ViT only; use 'off' or 'inductor' for a "
            "CLIP, SigLIP or timm encoder"
        )
    if requested != "auto":
        return Choice(requested, "requested")
    if hardware.device_type != "cpu":
        return Choice("off", f"auto: not used on {hardware.device_type}")
    if not traceable:
        return Choice(
            "off", "auto: oneDNN Graph traces raddino's own ViT only; this encoder runs eagerly"
        )
    if not hardware.onednn_graph:
        return Choice("off", "auto: no oneDNN Graph fuser (this torch build, or Python 3.14+)")
    if dtype == torch.float16:
        return Choice("off", "auto: oneDNN Graph is used for fp32 and bf16 only")
    if num_images < COMPILE_MIN_IMAGES:
        return Choice(
            "off",
            f"auto: {num_images} images are too few to pay back tracing "
            f"(from {COMPILE_MIN_IMAGES} on)",
        )
    return Choice("onednn", f"auto: {num_images} images on CPU")


def choose_attention(
    compile: str, hardware: Hardware, dtype: torch.dtype, backbone: nn.Module
) -> Choice:
    """The attention the engine runs (its ``attention``): ``"fused"``, raddino's AVX512-BF16
    kernel (:mod:`raddino.models.fused_attention`), or what the mode runs otherwise: ``"sdpa"``
    (PyTorch's, eager) or ``"matmul"`` (oneDNN Graph's attention partition, traced).

    ``fused`` for raddino's ViT in bf16, eager or ``onednn``, on a CPU with native bf16 matmuls
    but no AMX, heads 64 wide, where the kernel builds: on a Zen 4 EPYC it runs ViT-B/14's
    attention at 518 px 1.3x faster than oneDNN's partition and 2.6x faster than PyTorch's
    flash kernel (docs/encoding.md). With AMX oneDNN's kernels use the tile units, which ours
    does not, so they keep the attention there.
    """
    if compile not in ("off", "onednn"):
        return Choice("matmul", f"{compile} compiles the model's own attention")
    traced = compile == "onednn"
    value, name = ("matmul", "oneDNN Graph's partition") if traced else ("sdpa", "SDPA")
    if hardware.device_type != "cpu" or not isinstance(backbone, VisionTransformer):
        return Choice(value, f"{name}: raddino's kernel serves raddino's ViT on CPU only")
    if dtype != torch.bfloat16 or not hardware.bf16 or hardware.amx:
        why = "AMX" if hardware.amx else "no native bf16" if not hardware.bf16 else "not bf16"
        return Choice(value, f"{name}: {why}")
    widths = {block.attn.qkv.in_features // block.attn.num_heads for block in backbone.blocks}
    if widths != {fused_attention.HEAD_DIM}:
        return Choice(value, f"{name}: heads {sorted(widths)} wide, not 64")
    reason = fused_attention.unavailable_reason()
    if reason is not None:
        return Choice(value, f"{name}; raddino's kernel: {reason}")
    return Choice("fused", "raddino's AVX512-BF16 kernel: bf16 on a CPU without AMX")


def configure_cpu_threads() -> int:
    """Intra-op threads = at most the CPUs this process may use (unless ``OMP_NUM_THREADS`` is
    set); returns the thread count in effect."""
    if not os.environ.get("OMP_NUM_THREADS"):
        available = available_cores()
        if torch.get_num_threads() > available:
            torch.set_num_threads(available)
    return torch.get_num_threads()


def reuse_freed_memory() -> bool:
    """Let glibc's malloc serve large tensors from its heap and keep freed memory for the next
    one, instead of mapping fresh pages for every tensor above 32 MB (``M_MMAP_MAX`` 0,
    ``M_TRIM_THRESHOLD`` at its maximum); process-wide, True where applied (Linux, glibc).

    Why: a bf16 ViT-B/14 batch of 4 at 518 px took ~120,000 page faults per batch (each
    block's 34 MB MLP activations, the attention's buffers), and the oneDNN Graph fast path
    ran 3.0-3.45 img/s with them, 3.6 without (2-core Xeon with AMX). The cost: memory freed
    by tensors is kept by the process for reuse (peak RSS stays), not returned to the system.
    """
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(None)
        libc.gnu_get_libc_version  # noqa: B018 (glibc only: musl has no such tuning)
    except (OSError, AttributeError):
        return False
    m_trim_threshold, m_mmap_max = -1, -4  # <malloc.h>
    return bool(libc.mallopt(m_mmap_max, 0)) and bool(libc.mallopt(m_trim_threshold, 2**31 - 1))
