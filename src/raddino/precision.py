"""Which dtype raddino computes in: the dtype names, and the one rule behind every ``auto``.

Names (``--dtype``, ``--precision``, ``train.precision``) are parsed once, where they enter, by
:func:`parse_dtype`: ``fp32``/``float32``, ``bf16``/``bfloat16``, ``fp16``/``float16`` give that
``torch.dtype``, ``auto`` gives ``None``. Past that boundary code passes ``torch.dtype | None``
(None = auto) and resolves it with :func:`resolve_dtype`.

``auto`` (:func:`auto_dtype`) is a function of the device and of whether it multiplies bfloat16
natively (:func:`raddino.devices.has_native_bf16`):

- CUDA: bfloat16 on GPUs that support it (Ampere and newer), else float16.
- CPU: bfloat16 on CPUs with native bf16 matmuls (AVX512-BF16 or AMX), else float32. Emulated
  bf16 is slower than float32, and a CPU has no fast float16 to fall back on.

The fastest precision that keeps features within the documented tolerance of float32
(``docs/encoding.md``). ``raddino encode`` and pre-training presets use it. Evaluation
(``probe``, ``segment``, ``compare``, and ``EncodeOptions`` by default) asks for float32
instead, so that feature caches and probe numbers are the same on every machine.
"""

from __future__ import annotations

import torch

from raddino import devices

DTYPES: dict[str, torch.dtype] = {
    "fp32": torch.float32,
    "float32": torch.float32,
    "bf16": torch.bfloat16,
    "bfloat16": torch.bfloat16,
    "fp16": torch.float16,
    "float16": torch.float16,
}
AUTO = "auto"
DTYPE_CHOICES = "auto, fp32 (float32), bf16 (bfloat16) or fp16 (float16)"


def parse_dtype(name: str) -> torch.dtype | None:
    """A dtype name as a ``torch.dtype``; ``auto`` as None. Case-insensitive.

    Raises ValueError, one line naming the value and the choices, for anything else.
    """
    text = str(name).strip().lower()
    if text == AUTO:
        return None
    if text not in DTYPES:
        raise ValueError(f"dtype {name!r}: choose {DTYPE_CHOICES}")
    return DTYPES[text]


def dtype_name(dtype: torch.dtype | None) -> str:
    """``float32``, ``bfloat16``, ``float16``, or ``auto`` for None: what :func:`parse_dtype`
    reads back (used where a setting is written to JSON or YAML)."""
    return AUTO if dtype is None else str(dtype).removeprefix("torch.")


def short_name(dtype: torch.dtype) -> str:
    """fp32, bf16 or fp16."""
    return {torch.float32: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}[dtype]


def auto_dtype(device: torch.device, native_bf16: bool | None = None) -> torch.dtype:
    """What ``auto`` stands for on ``device`` (the rule in this module's docstring).

    native_bf16: whether the device multiplies bf16 natively; None probes this machine
    (:func:`raddino.devices.has_native_bf16`).
    """
    if native_bf16 is None:
        native_bf16 = devices.has_native_bf16(device)
    if native_bf16:
        return torch.bfloat16
    return torch.float16 if device.type == "cuda" else torch.float32


def resolve_dtype(dtype: torch.dtype | None, device: torch.device) -> torch.dtype:
    """``dtype`` itself, or :func:`auto_dtype` of ``device`` when it is None (auto)."""
    if dtype is None:
        return auto_dtype(device)
    if dtype not in DTYPES.values():
        raise ValueError(f"dtype {dtype}: raddino computes in float32, bfloat16 or float16")
    return dtype
