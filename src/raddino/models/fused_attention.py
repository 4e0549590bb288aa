"""The fused bf16 attention kernel for CPUs with AVX512-BF16: build, load, call.

``fused_attention.c`` computes ``softmax(q k^T) v`` for every (image, head) of a ViT block
straight from the qkv projection's output, with fp32 scores that stay in the core's caches (see
its header). On a 2-core Zen 4 EPYC (AVX512-BF16, no AMX) it runs ViT-B/14's attention at 518 px
faster than oneDNN Graph's fused partition (``python benchmarks/attention_cpu.py --inference``
and ``--kernel-sizes``).

It is compiled on first use with the system C compiler (``$CC``, else cc, gcc or clang) into
``$RADDINO_CACHE_DIR`` (default ``$XDG_CACHE_HOME/raddino`` or ``~/.cache/raddino``), keyed by
a hash of the source, flags and compiler, and loaded with ctypes. Where it cannot be had (another
CPU or OS, no compiler, a failed build), :func:`unavailable_reason` says why and callers keep
their usual attention (:func:`raddino.models.hardware.choose_attention`). To PyTorch it is the
operator ``torch.ops.raddino.fused_attention``, so a traced graph
(:class:`~raddino.models.engine.InferenceEngine`) calls it like any other op.
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import os
import platform
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

from raddino.devices import cpuinfo_field

SOURCE = Path(__file__).with_name("fused_attention.c")
FLAGS = ("-O3", "-mavx512f", "-mavx512bw", "-mavx512vl", "-mavx512bf16", "-fPIC", "-shared",
         "-pthread")  # fmt: skip
HEAD_DIM = 64  # the kernel's head width (every ViT-S/B/L/g of DINOv2)
BUILD_TIMEOUT_S = 120


def cache_dir() -> Path:
    """Where built kernels are kept."""
    if os.environ.get("RADDINO_CACHE_DIR"):
        return Path(os.environ["RADDINO_CACHE_DIR"])
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "raddino"


def c_compiler() -> str | None:
    """``$CC``, else the first of cc, gcc, clang on PATH."""
    candidates = [os.environ["CC"]] if os.environ.get("CC") else ["cc", "gcc", "clang"]
    for name in candidates:
        path = shutil.which(name.split()[0])
        if path:
            return path
    return None


def cpu_supported() -> bool:
    """x86-64 Linux with AVX512-BF16 (what the kernel's instructions need)."""
    return (
        sys.platform.startswith("linux")
        and platform.machine() in ("x86_64", "AMD64")
        and "avx512_bf16" in cpuinfo_field("flags").split()
    )


def build(compiler: str, directory: Path) -> Path:
    """Compile the kernel (unless a build of this source and these flags is there) and return
    the shared library's path. The library appears whole or not at all (written to a temporary
    name, then renamed), so concurrent first runs cannot load half a file."""
    key = hashlib.sha256(SOURCE.read_bytes() + " ".join((compiler, *FLAGS)).encode()).hexdigest()
    target = directory / f"fused_attention-{key[:16]}.so"
    if target.exists():
        return target
    directory.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(suffix=".so", dir=directory)
    os.close(handle)
    try:
        result = subprocess.run(
            [compiler, *FLAGS, "-o", temporary, str(SOURCE)],
            capture_output=True, text=True, timeout=BUILD_TIMEOUT_S,
        )  # fmt: skip
        if result.returncode != 0:
            lines = [line for line in result.stderr.splitlines() if "error" in line]
            raise RuntimeError(f"{compiler} failed: {(lines or ['no message'])[0].strip()}")
        os.replace(temporary, target)
    finally:
        if os.path.exists(temporary):
            os.unlink(temporary)
    return target


@functools.cache
def _library() -> ctypes.CDLL | str:
    """The loaded kernel, or why there is none."""
    if not cpu_supported():
        return "the CPU has no AVX512-BF16 (or this is not x86-64 Linux)"
    compiler = c_compiler()
    if compiler is None:
        return "no C compiler (set CC, or install cc, gcc or clang)"
    try:
        library = ctypes.CDLL(str(build(compiler, cache_dir())))
    except (OSError, RuntimeError, subprocess.TimeoutExpired) as error:
        first_line = (str(error).strip().splitlines() or [""])[0]
        return f"building the kernel failed: {type(error).__name__}: {first_line}"
    function = library.raddino_attention_bf16
    function.argtypes = [ctypes.c_void_p, ctypes.c_void_p] + [ctypes.c_int] * 4
    function.restype = ctypes.c_int
    return library


def unavailable_reason() -> str | None:
    """None if the kernel is ready here (building it on first call), else why not."""
    library = _library()
    return library if isinstance(library, str) else None


def fused_attention(qkv: torch.Tensor, heads: int) -> torch.Tensor:
    """qkv: (B, N, 3 * heads * 64) bf16 on CPU, the qkv projection's output with q already
    scaled by 1/sqrt(64) -> (B, N, heads * 64), the heads' outputs side by side."""
    return torch.ops.raddino.fused_attention(qkv, heads)


@torch.library.custom_op("raddino::fused_attention", mutates_args=(), device_types="cpu")
def _fused_attention(qkv: torch.Tensor, heads: int) -> torch.Tensor:
    if qkv.dtype != torch.bfloat16 or qkv.dim() != 3 or qkv.shape[-1] != 3 * heads * HEAD_DIM:
        raise ValueError(
            f"fused_attention takes (B, N, 3 * heads * {HEAD_DIM}) bf16 with heads={heads}, "
            f"not {tuple(qkv.shape)} {qkv.dtype}"
        )
    library = _library()
    if isinstance(library, str):
        raise RuntimeError(f"fused attention kernel unavailable: {library}")
    qkv = qkv.contiguous()
    batch, tokens, _ = qkv.shape
    out = qkv.new_empty((batch, tokens, heads * HEAD_DIM))
    if qkv.numel():
        status = library.raddino_attention_bf16(
            qkv.data_ptr(), out.data_ptr(), batch, tokens, heads, torch.get_num_threads()
        )
        if status != 0:
            raise MemoryError("fused_attention: no memory for the kernel's scratch buffers")
    return out


@_fused_attention.register_fake
def _(qkv: torch.Tensor, heads: int) -> torch.Tensor:
    return qkv.new_empty((*qkv.shape[:-1], heads * HEAD_DIM))
