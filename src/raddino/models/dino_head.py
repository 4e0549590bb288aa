"""DINO / iBOT projection heads in the official DINOv2 key layout.

``mlp.{0,2,4}`` linears (GELU between), a bottleneck, L2 normalisation, then a weight-normalised
prototype layer ``last_layer.weight_g`` (K, 1) / ``last_layer.weight_v`` (K, bottleneck), the
names of RAD-DINO's released ``dino_head.safetensors``.
"""

from __future__ import annotations

import itertools
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import load_file
from torch import nn


@dataclass(frozen=True)
class HeadConfig:
    """DINOHead sizes (DINOv2 defaults; RAD-DINO's released head uses them too)."""

    out_dim: int = 65536
    hidden_dim: int = 2048
    bottleneck_dim: int = 256
    n_layers: int = 3

    def __post_init__(self) -> None:
        for key in ("out_dim", "hidden_dim", "bottleneck_dim", "n_layers"):
            if getattr(self, key) < 1:
                raise ValueError(f"head.{key}={getattr(self, key)!r} must be >= 1")

    def to_dict(self) -> dict:
        return asdict(self)


class WeightNormLinear(nn.Module):
    """Bias-free linear layer, weight = g * v / ||v|| row-wise (torch's legacy weight_norm)."""

    def __init__(self, in_dim: int, out_dim: int) -> None:
        super().__init__()
        self.weight_v = nn.Parameter(torch.empty(out_dim, in_dim))
        self.weight_g = nn.Parameter(torch.ones(out_dim, 1))
        nn.init.kaiming_uniform_(self.weight_v, a=5**0.5)  # nn.Linear's default init

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # One pass over the (K, in) matrix: v times a per-row factor g / ||v||.
        weight = self.weight_v * (self.weight_g / self.weight_v.norm(dim=1, keepdim=True))
        return F.linear(x, weight)


class DINOHead(nn.Module):
    """(N, in_dim) -> (N, out_dim) prototype logits."""

    def __init__(self, in_dim: int, config: HeadConfig | None = None) -> None:
        super().__init__()
        config = config or HeadConfig()
        self.config = config
        layers: list[nn.Module] = []
        dims = [in_dim] + [config.hidden_dim] * (config.n_layers - 1) + [config.bottleneck_dim]
        for index, (a, b) in enumerate(itertools.pairwise(dims)):
            layers.append(nn.Linear(a, b))
            if index < len(dims) - 2:
                layers.append(nn.GELU())
        self.mlp = nn.Sequential(*layers)
        for module in self.mlp:
            if isinstance(module, nn.Linear):
                nn.init.trunc_normal_(module.weight, std=0.02)
                nn.init.zeros_(module.bias)
        self.last_layer = WeightNormLinear(config.bottleneck_dim, config.out_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.mlp(x)
        eps = 1e-6 if x.dtype == torch.float16 else 1e-12
        return self.last_layer(F.normalize(x, dim=-1, p=2, eps=eps))


def infer_head_config(state: dict[str, torch.Tensor]) -> tuple[int, HeadConfig]:
    """(in_dim, HeadConfig) from the shapes of a head state dict in the official layout."""
    linear_keys = sorted(
        (k for k in state if k.startswith("mlp.") and k.endswith(".weight")),
        key=lambda k: int(k.split(".")[1]),
    )
    if not linear_keys or "last_layer.weight_v" not in state:
        raise ValueError(
            "not a DINO head state dict (expected mlp.N.weight and last_layer.weight_v)"
        )
    first, last = state[linear_keys[0]], state[linear_keys[-1]]
    hidden = first.shape[0] if len(linear_keys) > 1 else 2048
    out_dim, bottleneck = state["last_layer.weight_v"].shape
    config = HeadConfig(
        out_dim=out_dim, hidden_dim=hidden, bottleneck_dim=bottleneck, n_layers=len(linear_keys)
    )
    if last.shape[0] != bottleneck:
        raise ValueError("head bottleneck does not match last_layer.weight_v")
    return first.shape[1], config


def load_head_file(path: str | Path) -> DINOHead:
    """Load a DINOHead from a safetensors file (RAD-DINO's ``dino_head.safetensors`` layout).

    A ``dino_head.`` prefix (teacher checkpoints) is stripped; keys are matched strictly.
    """
    path = Path(path)
    try:
        state = load_file(str(path))
    except Exception as error:
        raise ValueError(f"{path}: not a readable safetensors file ({error})") from error
    state = {k.removeprefix("dino_head."): v for k, v in state.items()}
    try:
        in_dim, config = infer_head_config(state)
        head = DINOHead(in_dim, config)
        head.load_state_dict({k: v.float() for k, v in state.items()}, strict=True)
    except (ValueError, RuntimeError) as error:
        raise ValueError(f"{path}: {error}") from error
    return head
