"""DINOv2-style Vision Transformer backbone.

Parameter names follow the official facebookresearch/dinov2 layout (``cls_token``, ``pos_embed``,
``blocks.{i}.attn.qkv``, ``blocks.{i}.ls1.gamma``, ``norm``...), so an official state dict loads
without renaming; :mod:`raddino.models.formats` maps the Hugging Face names onto these.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from raddino.models.fused_attention import fused_attention

FfnKind = Literal["mlp", "swiglu"]


@dataclass(frozen=True)
class ViTConfig:
    """Architecture of a DINOv2 ViT. Defaults are RAD-DINO's ViT-B/14 at 518 px."""

    image_size: int = 518
    patch_size: int = 14
    in_chans: int = 3
    embed_dim: int = 768
    depth: int = 12
    num_heads: int = 12
    mlp_ratio: float = 4.0
    qkv_bias: bool = True
    ffn: FfnKind = "mlp"
    layerscale_init: float | None = 1.0
    num_register_tokens: int = 0
    drop_path_rate: float = 0.0
    layer_norm_eps: float = 1e-6
    # Position-embedding resampling for other input sizes. offset 0.0 resizes to the exact grid
    # (transformers' Dinov2Model); offset 0.1 reproduces the official non-register hub models.
    interpolate_offset: float = 0.0
    interpolate_antialias: bool = False

    def __post_init__(self) -> None:
        checks = {
            "image_size": self.image_size > 0 and self.image_size % self.patch_size == 0,
            "patch_size": self.patch_size > 0,
            "embed_dim": self.embed_dim > 0,
            "depth": self.depth > 0,
            "num_heads": self.num_heads > 0 and self.embed_dim % max(self.num_heads, 1) == 0,
            "mlp_ratio": self.mlp_ratio > 0,
            "ffn": self.ffn in ("mlp", "swiglu"),
            "num_register_tokens": self.num_register_tokens >= 0,
            "drop_path_rate": 0.0 <= self.drop_path_rate < 1.0,
            "interpolate_offset": self.interpolate_offset >= 0.0,
        }
        bad = [key for key, ok in checks.items() if not ok]
        if bad:
            values = ", ".join(f"{key}={getattr(self, key)!r}" for key in bad)
            raise ValueError(f"invalid ViTConfig: {values}")

    @property
    def grid_size(self) -> int:
        """Patches per side at ``image_size``."""
        return self.image_size // self.patch_size

    @property
    def ffn_hidden_dim(self) -> int:
        hidden = int(self.embed_dim * self.mlp_ratio)
        if self.ffn == "swiglu":  # two thirds of the MLP width, rounded up to a multiple of 8
            hidden = (int(hidden * 2 / 3) + 7) // 8 * 8
        return hidden

    def to_dict(self) -> dict:
        return asdict(self)


_SIZES: dict[str, dict] = {
    "tiny": dict(embed_dim=192, depth=12, num_heads=3),
    "small": dict(embed_dim=384, depth=12, num_heads=6),
    "base": dict(embed_dim=768, depth=12, num_heads=12),
    "large": dict(embed_dim=1024, depth=24, num_heads=16),
    "giant": dict(embed_dim=1536, depth=40, num_heads=24, ffn="swiglu"),
}


def vit_config(size: str, **overrides) -> ViTConfig:
    """Config of a named size (tiny, small, base, large, giant) with overrides."""
    if size not in _SIZES:
        raise ValueError(f"unknown ViT size {size!r}; choose one of {sorted(_SIZES)}")
    return ViTConfig(**{**_SIZES[size], **overrides})


class PatchEmbed(nn.Module):
    """(B, C, H, W) images -> (B, h*w, D) patch tokens, with a stride-``p`` convolution's weights.

    On CPU in bf16/fp16 (:func:`reduced_precision_on_cpu`) the same function runs as one linear
    layer on the flattened patches: oneDNN's convolution took 2.9-9.7x as long forward and
    backward, 1.5-2.5x forward alone, for the crops of ``tiny_cpu`` and ViT-S/14 and a 518 px
    ViT-B/14 batch (``benchmarks/patch_embed_cpu.py``; in fp32 the two are close). The
    parameters (``proj.weight`` (D, C, p, p), ``proj.bias``) are the convolution's either way.
    """

    def __init__(self, patch_size: int, in_chans: int, embed_dim: int) -> None:
        super().__init__()
        self.patch_size = patch_size
        self.proj = nn.Conv2d(in_chans, embed_dim, kernel_size=patch_size, stride=patch_size)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        height, width = images.shape[-2:]
        if height % self.patch_size or width % self.patch_size:
            raise ValueError(
                f"input size {height}x{width} is not a multiple of the patch size {self.patch_size}"
            )
        if reduced_precision_on_cpu(self.proj.weight, images):
            return F.linear(flatten_patches(images, self.patch_size), self.proj.weight.flatten(1),
                            self.proj.bias)  # fmt: skip
        return self.proj(images).flatten(2).transpose(1, 2)


def flatten_patches(images: torch.Tensor, size: int) -> torch.Tensor:
    """(B, C, H, W) -> (B, h*w, C*size*size): non-overlapping patches in row-major order, each
    flattened as a (C, size, size) convolution kernel is. (No arithmetic on the sizes, so a
    traced graph holds no ops for them.)"""
    blocks = images.unflatten(2, (-1, size)).unflatten(4, (-1, size))  # (B, C, h, p, w, p)
    return blocks.permute(0, 2, 4, 1, 3, 5).flatten(3).flatten(1, 2)


def can_overwrite_activations() -> bool:
    """True in plain eager inference: fresh activations may then be overwritten in place.

    Not under autograd, and not while ``torch.jit.trace`` or ``torch.compile`` records the
    graph (their fusers want the functional ops).
    """
    return not (torch.is_grad_enabled() or torch.jit.is_tracing() or torch.compiler.is_compiling())


def reduced_precision_on_cpu(weight: torch.Tensor, x: torch.Tensor) -> bool:
    """True where an op of ``weight`` on ``x`` computes in bf16/fp16 on the CPU: under CPU
    autocast to one of them, or with such a weight or input outside autocast."""
    if x.device.type != "cpu":
        return False
    if torch.is_autocast_enabled("cpu"):
        dtype = torch.get_autocast_dtype("cpu")
    else:
        dtype = torch.promote_types(weight.dtype, x.dtype)
    return dtype in (torch.bfloat16, torch.float16)


def prefers_matmul_attention(weight: torch.Tensor, x: torch.Tensor) -> bool:
    """True for CPU training in bf16/fp16 (of ``qkv``'s ``weight`` and the input ``x``, or under
    autocast), where explicit matmuls beat the fused kernel.

    PyTorch's CPU flash-attention backward is slow in reduced precision: forward + backward
    of explicit ``softmax(q k^T) v`` matmuls is 1.6-5x faster for 50-1,370 tokens, while in
    fp32 SDPA is 1.1-1.4x faster and kept (``benchmarks/attention_cpu.py``).
    """
    return (
        reduced_precision_on_cpu(weight, x)
        and torch.is_grad_enabled()
        and (x.requires_grad or weight.requires_grad)
        and not torch.compiler.is_compiling()
    )


def rows_scaled(linear: nn.Linear, scale: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
    """``linear``'s weight (out, in) and bias (out,) with output row i times ``scale[i]``, so
    that ``F.linear(x, *rows_scaled(linear, scale)) == linear(x) * scale`` up to one rounding:
    the products are taken in float32 and rounded once to the weight's dtype."""
    factor = scale.float()
    weight = (linear.weight.float() * factor[:, None]).to(linear.weight.dtype)
    if linear.bias is None:
        return weight, None
    return weight, (linear.bias.float() * factor).to(linear.bias.dtype)


class Attention(nn.Module):
    """Multi-head self-attention with a fused qkv projection and SDPA.

    ``impl = "matmul"`` computes ``softmax(q k^T / sqrt(d)) v`` with explicit matmuls instead,
    the pattern oneDNN Graph fuses when the model is traced for CPU inference
    (:mod:`raddino.models.engine`); ``"fused"`` (bf16 CPU inference only, eager or traced)
    calls raddino's own AVX512-BF16 kernel (:mod:`raddino.models.fused_attention`). The default
    ``"sdpa"`` uses PyTorch's fused kernel, except for CPU training in reduced precision
    (:func:`prefers_matmul_attention`).
    """

    def __init__(self, dim: int, num_heads: int, qkv_bias: bool) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)
        self.impl: Literal["sdpa", "matmul", "fused"] = "sdpa"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (B, N, D) -> (B, N, D)."""
        batch, tokens, dim = x.shape
        head_dim = self.qkv.in_features // self.num_heads  # a constant, also when traced
        if self.impl == "fused":  # raddino's bf16 CPU kernel, for inference
            return self.proj(self.heads_prescaled(x))
        if self.impl == "matmul" or prefers_matmul_attention(self.qkv.weight, x):
            # 1/sqrt(d) folded into the q rows: no pass over the (N, N) scores, forward or back.
            return self.proj(self.heads_prescaled(x, matmul=True))
        qkv = self.qkv(x).reshape(batch, tokens, 3, self.num_heads, head_dim)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # each (B, heads, N, d)
        out = F.scaled_dot_product_attention(q, k, v)
        return self.proj(out.transpose(1, 2).reshape(batch, tokens, dim))

    def heads_prescaled(self, x: torch.Tensor, matmul: bool = False) -> torch.Tensor:
        """x: (B, N, D) -> the heads' outputs (B, N, D) before ``proj``, with 1/sqrt(d) folded
        into the q rows of ``qkv`` (exact for power-of-two head dims such as 64) instead of
        scaling the (N, N) scores; explicit matmuls if ``matmul`` or ``impl == "matmul"``, the
        AVX512-BF16 kernel if ``impl == "fused"`` (inference only: it has no gradient), else
        SDPA. Used for tracing (:meth:`Block.folded_forward`) and for the matmul attention of
        :meth:`forward`; the gradient reaches ``qkv`` through the folded weight."""
        batch, tokens, dim = x.shape
        head_dim = self.qkv.in_features // self.num_heads
        width, device = self.qkv.in_features, self.qkv.weight.device  # constants when traced
        scale = torch.cat(
            [
                torch.full((width,), head_dim**-0.5, device=device),
                torch.ones(2 * width, device=device),
            ]
        )
        qkv = F.linear(x, *rows_scaled(self.qkv, scale))
        if self.impl == "fused" and not matmul:
            return fused_attention(qkv, self.num_heads)
        q, k, v = qkv.reshape(batch, tokens, 3, self.num_heads, head_dim).permute(2, 0, 3, 1, 4)
        if matmul or self.impl == "matmul":
            out = torch.matmul(torch.softmax(torch.matmul(q, k.transpose(-1, -2)), dim=-1), v)
        else:
            out = F.scaled_dot_product_attention(q, k, v, scale=1.0)
        return out.transpose(1, 2).reshape(batch, tokens, dim)


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, dim)

    @property
    def out(self) -> nn.Linear:
        """The last linear layer (what :meth:`Block.folded_forward` folds LayerScale into)."""
        return self.fc2

    def hidden(self, x: torch.Tensor) -> torch.Tensor:
        """(B, N, D) -> (B, N, hidden): the activations that :attr:`out` projects back."""
        hidden = self.fc1(x)
        # Without autograd, GELU can overwrite fc1's fresh output instead of allocating.
        return torch.ops.aten.gelu_(hidden) if can_overwrite_activations() else F.gelu(hidden)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.hidden(x))


class SwiGLUFFN(nn.Module):
    """``w3(silu(a) * b)`` with ``(a, b) = w12(x).chunk(2)`` (official DINOv2 giant layout)."""

    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.w12 = nn.Linear(dim, 2 * hidden)
        self.w3 = nn.Linear(hidden, dim)

    @property
    def out(self) -> nn.Linear:
        """The last linear layer (what :meth:`Block.folded_forward` folds LayerScale into)."""
        return self.w3

    def hidden(self, x: torch.Tensor) -> torch.Tensor:
        """(B, N, D) -> (B, N, hidden): the gated activations that :attr:`out` projects back."""
        gate, up = self.w12(x).chunk(2, dim=-1)
        if not can_overwrite_activations():
            return F.silu(gate) * up
        return F.silu(gate, inplace=True).mul_(up)  # reuse w12's fresh output

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.w3(self.hidden(x))


class LayerScale(nn.Module):
    def __init__(self, dim: int, init_value: float) -> None:
        super().__init__()
        self.gamma = nn.Parameter(torch.full((dim,), float(init_value)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.gamma


def drop_path(x: torch.Tensor, rate: float, training: bool) -> torch.Tensor:
    """Stochastic depth: zero whole samples of a residual branch with probability ``rate``."""
    if rate == 0.0 or not training:
        return x
    keep = 1.0 - rate
    mask = x.new_empty((x.shape[0],) + (1,) * (x.ndim - 1)).bernoulli_(keep)
    return x * mask / keep


class Block(nn.Module):
    """Pre-norm transformer block: x + ls1(attn(norm1(x))), then x + ls2(ffn(norm2(x))).

    ``folded = True`` runs :meth:`folded_forward` instead: the inference form the engine
    traces (:mod:`raddino.models.engine`); parameters and the state dict are the same.
    """

    def __init__(self, config: ViTConfig, drop_path_rate: float) -> None:
        super().__init__()
        dim = config.embed_dim
        self.norm1 = nn.LayerNorm(dim, eps=config.layer_norm_eps)
        self.attn = Attention(dim, config.num_heads, config.qkv_bias)
        self.norm2 = nn.LayerNorm(dim, eps=config.layer_norm_eps)
        ffn_cls = SwiGLUFFN if config.ffn == "swiglu" else Mlp
        self.mlp = ffn_cls(dim, config.ffn_hidden_dim)
        scale = config.layerscale_init
        self.ls1 = LayerScale(dim, scale) if scale else nn.Identity()
        self.ls2 = LayerScale(dim, scale) if scale else nn.Identity()
        self.drop_path_rate = drop_path_rate
        self.folded = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.folded:
            return self.folded_forward(x)
        x = self.residual(x, self.attn(self.norm1(x)), self.ls1)
        return self.residual(x, self.mlp(self.norm2(x)), self.ls2)

    def folded_forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (B, N, D) -> (B, N, D), the block's function without drop path, written as
        ``x + linear(...)`` twice: LayerScale folded into the rows of ``attn.proj`` and of the
        FFN's last linear layer, 1/sqrt(d) into the q rows of ``attn.qkv``.

        The pattern oneDNN Graph fuses into one partition per residual (matmul, bias, add);
        there is no separate scale of the scores nor ``addcmul``. The folded weights are
        recomputed at every call, so this is for tracing: ``torch.jit.freeze`` turns them into
        constants. Agrees with :meth:`forward` up to one rounding of each folded weight.
        """
        if self.training and self.drop_path_rate:
            raise RuntimeError("folded_forward is for inference; drop path is active")
        attended = self.attn.heads_prescaled(self.norm1(x))
        x = x + self.folded_linear(attended, self.attn.proj, self.ls1)
        return x + self.folded_linear(self.mlp.hidden(self.norm2(x)), self.mlp.out, self.ls2)

    @staticmethod
    def folded_linear(x: torch.Tensor, linear: nn.Linear, scale: nn.Module) -> torch.Tensor:
        """``scale(linear(x))`` as one linear layer with LayerScale folded into its rows."""
        if isinstance(scale, LayerScale):
            return F.linear(x, *rows_scaled(linear, scale.gamma))
        return linear(x)

    def residual(self, x: torch.Tensor, branch: torch.Tensor, scale: nn.Module) -> torch.Tensor:
        """x + drop_path(scale(branch)); one fused ``addcmul`` pass when nothing is dropped."""
        if isinstance(scale, LayerScale) and not (self.training and self.drop_path_rate):
            if not can_overwrite_activations():
                return torch.addcmul(x, branch, scale.gamma)
            # Without autograd the fresh branch tensor can hold the result: no new allocation.
            return torch.addcmul(x, branch, scale.gamma, out=branch)
        return x + drop_path(scale(branch), self.drop_path_rate, self.training)


@dataclass
class BackboneOutput:
    """Named outputs of :class:`VisionTransformer` (all after the final LayerNorm).

    cls: (B, D); patches: (B, h*w, D); registers: (B, R, D); grid: (h, w);
    layers: block index -> (B, 1 + R + h*w, D) normalised tokens of that block.
    """

    cls: torch.Tensor
    patches: torch.Tensor
    registers: torch.Tensor
    grid: tuple[int, int]
    layers: dict[int, torch.Tensor] = field(default_factory=dict)

    def patch_grid(self, tokens: torch.Tensor | None = None) -> torch.Tensor:
        """(B, h*w, D) patch tokens -> (B, D, h, w)."""
        tokens = self.patches if tokens is None else tokens
        height, width = self.grid
        return tokens.transpose(1, 2).reshape(tokens.shape[0], tokens.shape[2], height, width)


class VisionTransformer(nn.Module):
    """DINOv2 ViT: patch embedding, CLS token, optional registers, LayerScale blocks, final norm."""

    def __init__(self, config: ViTConfig) -> None:
        super().__init__()
        self.config = config
        dim = config.embed_dim
        self.patch_embed = PatchEmbed(config.patch_size, config.in_chans, dim)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, 1 + config.grid_size**2, dim))
        self.mask_token = nn.Parameter(torch.zeros(1, dim))
        if config.num_register_tokens:
            self.register_tokens = nn.Parameter(torch.zeros(1, config.num_register_tokens, dim))
        else:
            self.register_tokens = None
        self.blocks = nn.ModuleList(
            Block(config, config.drop_path_rate) for _ in range(config.depth)
        )
        self.norm = nn.LayerNorm(dim, eps=config.layer_norm_eps)
        self.grad_checkpointing = False  # recompute block activations in backward to save memory
        self.reset_parameters()

    @property
    def embed_dim(self) -> int:
        return self.config.embed_dim

    @property
    def patch_size(self) -> int:
        return self.config.patch_size

    def reset_parameters(self) -> None:
        """DINOv2 initialisation: trunc-normal(0.02) linears and pos-embed, tiny CLS/registers."""
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        nn.init.normal_(self.cls_token, std=1e-6)
        nn.init.zeros_(self.mask_token)
        if self.register_tokens is not None:
            nn.init.normal_(self.register_tokens, std=1e-6)
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.trunc_normal_(module.weight, std=0.02)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)

    def interpolate_pos_embed(self, height: int, width: int) -> torch.Tensor:
        """Position embeddings (1, 1 + h*w, D) for an input of height x width pixels.

        Bicubic resampling of the square training grid, computed in float32.
        """
        pos = self.pos_embed
        grid_h, grid_w = height // self.patch_size, width // self.patch_size
        side = math.isqrt(pos.shape[1] - 1)
        if grid_h == side and grid_w == side:
            return pos
        cls_pos, patch_pos = pos[:, :1], pos[:, 1:]
        patch_pos = patch_pos.reshape(1, side, side, -1).permute(0, 3, 1, 2).float()
        offset = self.config.interpolate_offset
        if offset:
            scale = ((grid_h + offset) / side, (grid_w + offset) / side)
            resampled = F.interpolate(
                patch_pos,
                scale_factor=scale,
                mode="bicubic",
                antialias=self.config.interpolate_antialias,
            )
        else:
            resampled = F.interpolate(
                patch_pos,
                size=(grid_h, grid_w),
                mode="bicubic",
                antialias=self.config.interpolate_antialias,
            )
        if resampled.shape[-2:] != (grid_h, grid_w):
            raise RuntimeError(f"pos-embed resampled to {tuple(resampled.shape[-2:])}")
        resampled = resampled.to(pos.dtype).permute(0, 2, 3, 1).reshape(1, grid_h * grid_w, -1)
        return torch.cat([cls_pos, resampled], dim=1)

    def prepare_tokens(
        self, images: torch.Tensor, masks: torch.Tensor | None = None
    ) -> torch.Tensor:
        """(B, C, H, W) -> (B, 1 + R + h*w, D) tokens; masked patches become ``mask_token``."""
        batch, _, height, width = images.shape
        tokens = self.patch_embed(images)
        if masks is not None:
            if masks.shape != tokens.shape[:2]:
                raise ValueError(
                    f"mask shape {tuple(masks.shape)} does not match the patch grid "
                    f"{tuple(tokens.shape[:2])}"
                )
            tokens = torch.where(masks.unsqueeze(-1), self.mask_token.to(tokens.dtype), tokens)
        tokens = torch.cat([self.cls_token.expand(batch, -1, -1), tokens], dim=1)
        tokens = tokens + self.interpolate_pos_embed(height, width)
        if self.register_tokens is not None:
            registers = self.register_tokens.expand(batch, -1, -1)
            tokens = torch.cat([tokens[:, :1], registers, tokens[:, 1:]], dim=1)
        return tokens

    def resolve_layers(self, layers: Sequence[int]) -> list[int]:
        """Block indices, negative ones counted from the end, validated."""
        depth = len(self.blocks)
        resolved = []
        for index in layers:
            if not -depth <= index < depth:
                raise ValueError(f"layer {index} out of range for a {depth}-block ViT")
            resolved.append(index % depth)
        return resolved

    def forward(
        self,
        images: torch.Tensor,
        masks: torch.Tensor | None = None,
        layers: Sequence[int] = (),
    ) -> BackboneOutput:
        """images: (B, C, H, W) with H, W multiples of the patch size.

        masks: optional (B, h*w) bool, True = replace the patch by the mask token (iBOT).
        layers: block indices whose normalised outputs to return as well.
        """
        wanted = set(self.resolve_layers(layers))
        x = self.prepare_tokens(images, masks)
        intermediate: dict[int, torch.Tensor] = {}
        last = len(self.blocks) - 1
        recompute = self.grad_checkpointing and torch.is_grad_enabled()
        for index, block in enumerate(self.blocks):
            x = checkpoint(block, x, use_reentrant=False) if recompute else block(x)
            if index in wanted and index != last:
                intermediate[index] = self.norm(x)
        x = self.norm(x)
        if last in wanted:
            intermediate[last] = x
        registers_end = 1 + self.config.num_register_tokens
        grid = (images.shape[-2] // self.patch_size, images.shape[-1] // self.patch_size)
        return BackboneOutput(
            cls=x[:, 0],
            registers=x[:, 1:registers_end],
            patches=x[:, registers_end:],
            grid=grid,
            layers=intermediate,
        )
