"""Which torch device a ``--device`` value names, and what that device computes natively.

raddino computes on the CPU and on CUDA GPUs. :func:`check_device` is the one check behind every
command's ``--device`` and every config's ``device``: a value torch does not parse (``foo``), one
it parses but raddino cannot use (``mps``, ``xpu``, ``meta``) and one this machine lacks
(``cuda`` without a GPU, ``cuda:3`` on a one-GPU machine) are all refused with one line that
names the value and the values that would work here, before any work starts. ``auto`` is CUDA
when present, else the CPU.

:func:`has_native_bf16` says whether a device multiplies bfloat16 matrices in hardware; the
precision policy (:mod:`raddino.precision`) and the inference-mode decisions
(:mod:`raddino.models.hardware`) read it from here.
"""

from __future__ import annotations

import torch


def available_devices() -> list[str]:
    """The ``--device`` values this machine can run: auto, cpu, and cuda, cuda:0, ... with GPUs."""
    names = ["auto", "cpu"]
    if torch.cuda.is_available():
        names += ["cuda", *(f"cuda:{i}" for i in range(torch.cuda.device_count()))]
    return names


def check_device(name: str | torch.device, option: str = "--device") -> torch.device:
    """``name`` as a torch.device (``auto``: CUDA when present, else the CPU).

    Raises ValueError, one line naming ``option``, the value and the available ones, for
    anything else.
    """
    text = str(name).strip()
    if text == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(text)
    except RuntimeError:
        reason = "not a device name"
    else:
        reason = _unavailable(device)
        if reason is None:
            return device
    raise ValueError(f"{option} {text!r}: {reason}; available: {', '.join(available_devices())}")


def _unavailable(device: torch.device) -> str | None:
    """Why this machine cannot run raddino on ``device``; None when it can."""
    if device.type == "cpu":
        return None if device.index in (None, 0) else "the CPU has no index other than 0"
    if device.type == "cuda":
        if not torch.cuda.is_available():
            return "CUDA is not available on this machine"
        count = torch.cuda.device_count()
        if device.index is not None and device.index >= count:
            return f"this machine has {count} CUDA device{'s' if count != 1 else ''}"
        return None
    return f"raddino runs on the CPU or CUDA GPUs, not on {device.type!r}"


def cpuinfo_field(*keys: str) -> str:
    """The value of the first /proc/cpuinfo line starting with one of ``keys`` ('' elsewhere)."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as handle:
            for line in handle:
                if line.startswith(keys):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return ""


def cpu_has_native_bf16() -> bool:
    """AVX512-BF16 or AMX on x86: what oneDNN's bf16 matmuls run at full speed on."""
    for probe in ("_is_avx512_bf16_supported", "_is_amx_tile_supported"):
        check = getattr(torch.cpu, probe, None)
        if check is not None and check():
            return True
    return bool(set(cpuinfo_field("flags").split()) & {"avx512_bf16", "amx_bf16"})


def has_native_bf16(device: torch.device) -> bool:
    """Whether ``device`` multiplies bfloat16 matrices in hardware rather than emulating them:
    CUDA GPUs from Ampere on, CPUs with AVX512-BF16 or AMX."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    if device.type == "cpu":
        return cpu_has_native_bf16()
    return False
