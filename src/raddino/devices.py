"""Which torch device a ``--device`` value names: the one check behind every command's option.

raddino computes on the CPU and on CUDA GPUs. A value torch does not parse (``foo``), one it
parses but raddino cannot use (``mps``, ``xpu``, ``meta``) and one this machine lacks (``cuda``
without a GPU, ``cuda:3`` on a one-GPU machine) are all refused with one line that names the
value and the values that would work here, before any work starts.
"""

from __future__ import annotations

import torch


def available_devices() -> list[str]:
    """The ``--device`` values this machine can run: auto, cpu, and cuda, cuda:0, ... with GPUs."""
    names = ["auto", "cpu"]
    if torch.cuda.is_available():
        names += ["cuda", *(f"cuda:{i}" for i in range(torch.cuda.device_count()))]
    return names


def check_device(name: str | torch.device) -> torch.device:
    """``--device`` as a torch.device (``auto``: CUDA when present, else the CPU).

    Raises ValueError, one line naming the value and the available ones, for anything else.
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
    raise ValueError(f"--device {text!r}: {reason}; available: {', '.join(available_devices())}")


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
