"""Segmentation heads on frozen ViT patch tokens: a linear head and UPerNet.

Both take a list of L patch-token maps (B, D, h, w), one per transformer block, and return
logits (B, S, h', w') for S structures; the caller upsamples them to the mask size.

* :class:`LinearHead`: BatchNorm + 1x1 convolution over the concatenated maps (DINOv2's linear
  segmentation evaluation; one block is "linear", the last four concatenated is its "+ms" head
  without the test-time augmentation).
* :class:`UPerNet`: a plain ViT has one stride, so a neck first makes a pyramid of four scales
  (x4, x2, x1, x1/2 of the patch grid) from four blocks (transposed convolutions up, max-pooling
  down, as for ViT backbones in BEiT/MAE), then the UPerNet decoder (Xiao et al., 2018): a
  pyramid pooling module on the coarsest level, a top-down feature pyramid, fusion of all levels.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class LinearHead(nn.Module):
    """(B, D, h, w) x L -> BatchNorm over L*D channels -> 1x1 conv -> (B, S, h, w)."""

    def __init__(self, embed_dim: int, num_layers: int, num_classes: int) -> None:
        super().__init__()
        self.num_layers = num_layers
        self.norm = nn.BatchNorm2d(embed_dim * num_layers)
        self.classifier = nn.Conv2d(embed_dim * num_layers, num_classes, kernel_size=1)

    def forward(self, maps: list[torch.Tensor]) -> torch.Tensor:
        if len(maps) != self.num_layers:
            raise ValueError(f"LinearHead expects {self.num_layers} maps, got {len(maps)}")
        return self.classifier(self.norm(torch.cat(maps, dim=1)))


def conv_bn_relu(in_channels: int, out_channels: int, kernel_size: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, kernel_size, padding=kernel_size // 2, bias=False),
        nn.BatchNorm2d(out_channels),
        nn.ReLU(inplace=True),
    )


class PyramidNeck(nn.Module):
    """Four same-stride maps (B, D, h, w) -> (B, C, 4h, 4w), (2h, 2w), (h, w), (h/2, w/2)."""

    def __init__(self, embed_dim: int, channels: int) -> None:
        super().__init__()
        self.project = nn.ModuleList(conv_bn_relu(embed_dim, channels, 1) for _ in range(4))
        self.resample = nn.ModuleList(
            [
                nn.Sequential(
                    nn.ConvTranspose2d(channels, channels, 2, stride=2),
                    nn.BatchNorm2d(channels),
                    nn.GELU(),
                    nn.ConvTranspose2d(channels, channels, 2, stride=2),
                ),
                nn.ConvTranspose2d(channels, channels, 2, stride=2),
                nn.Identity(),
                nn.MaxPool2d(2, ceil_mode=True),
            ]
        )

    def forward(self, maps: list[torch.Tensor]) -> list[torch.Tensor]:
        if len(maps) != 4:
            raise ValueError(f"the pyramid neck takes 4 maps (4 blocks), got {len(maps)}")
        return [
            resample(project(x))
            for x, project, resample in zip(maps, self.project, self.resample, strict=True)
        ]


class PyramidPooling(nn.Module):
    """PPM: average-pool to each scale, project, upsample back, concatenate with the input."""

    def __init__(self, channels: int, scales: tuple[int, ...] = (1, 2, 3, 6)) -> None:
        super().__init__()
        self.scales = scales
        self.branches = nn.ModuleList(conv_bn_relu(channels, channels, 1) for _ in scales)
        self.bottleneck = conv_bn_relu(channels * (len(scales) + 1), channels, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        size = x.shape[-2:]
        pooled = [
            F.interpolate(
                branch(F.adaptive_avg_pool2d(x, scale)),
                size=size,
                mode="bilinear",
                align_corners=False,
            )
            for scale, branch in zip(self.scales, self.branches, strict=True)
        ]
        return self.bottleneck(torch.cat([x, *pooled], dim=1))


class UPerNet(nn.Module):
    """Four blocks' maps (B, D, h, w) -> logits (B, S, 4h, 4w)."""

    def __init__(
        self, embed_dim: int, num_classes: int, channels: int = 256, dropout: float = 0.1
    ) -> None:
        super().__init__()
        self.num_layers = 4
        self.neck = PyramidNeck(embed_dim, channels)
        self.ppm = PyramidPooling(channels)
        self.lateral = nn.ModuleList(conv_bn_relu(channels, channels, 1) for _ in range(3))
        self.smooth = nn.ModuleList(conv_bn_relu(channels, channels, 3) for _ in range(3))
        self.fuse = conv_bn_relu(4 * channels, channels, 3)
        self.dropout = nn.Dropout2d(dropout)
        self.classifier = nn.Conv2d(channels, num_classes, kernel_size=1)

    def pyramid(self, maps: list[torch.Tensor]) -> list[torch.Tensor]:
        """The neck's four scales, finest first."""
        return self.neck(maps)

    def forward(self, maps: list[torch.Tensor]) -> torch.Tensor:
        levels = self.pyramid(maps)
        top_down = [lateral(x) for lateral, x in zip(self.lateral, levels[:3], strict=True)]
        top_down.append(self.ppm(levels[3]))
        for i in range(3, 0, -1):
            top_down[i - 1] = top_down[i - 1] + F.interpolate(
                top_down[i], size=top_down[i - 1].shape[-2:], mode="bilinear", align_corners=False
            )
        outputs = [smooth(x) for smooth, x in zip(self.smooth, top_down[:3], strict=True)]
        outputs.append(top_down[3])
        size = outputs[0].shape[-2:]
        fused = torch.cat(
            [outputs[0]]
            + [
                F.interpolate(x, size=size, mode="bilinear", align_corners=False)
                for x in outputs[1:]
            ],
            dim=1,
        )
        return self.classifier(self.dropout(self.fuse(fused)))


def upernet_blocks(depth: int) -> tuple[int, ...]:
    """Four evenly spaced blocks ending with the last, e.g. (2, 5, 8, 11) for 12 blocks."""
    if depth < 4:
        raise ValueError(f"UPerNet needs 4 distinct blocks; the encoder has only {depth}")
    return tuple(round((i + 1) * depth / 4) - 1 for i in range(4))


def linear_blocks(depth: int, num_layers: int) -> tuple[int, ...]:
    """The last ``num_layers`` blocks, e.g. (8, 9, 10, 11) for 4 of 12."""
    if not 1 <= num_layers <= depth:
        raise ValueError(f"linear head over {num_layers} blocks: the encoder has {depth}")
    return tuple(range(depth - num_layers, depth))


def build_head(
    kind: str, embed_dim: int, num_classes: int, num_layers: int = 1, channels: int = 256
) -> nn.Module:
    """``linear`` (over ``num_layers`` maps) or ``upernet`` (over 4)."""
    if kind == "linear":
        return LinearHead(embed_dim, num_layers, num_classes)
    if kind == "upernet":
        return UPerNet(embed_dim, num_classes, channels)
    raise ValueError(f"head {kind!r}: choose 'linear' or 'upernet'")
