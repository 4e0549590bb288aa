"""Training and scoring a segmentation head on frozen, cached patch tokens.

The encoder runs once (features store); the head trains on the stored maps with per-structure
binary cross-entropy + soft Dice (unannotated structures masked out), AdamW with a cosine
schedule, mixed precision on GPU. The epoch with the best validation Dice is kept.
"""

from __future__ import annotations

import copy
import math
import sys
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from raddino.devices import check_device
from raddino.eval.fit_threads import DEFAULT_CPU_THREADS, cpu_threads
from raddino.eval.metrics import dice_iou
from raddino.eval.resize import resize_bilinear
from raddino.eval.seg_data import FeatureMaps, MaskSet, take_rows
from raddino.eval.seg_loss import segmentation_loss
from raddino.precision import auto_dtype
from raddino.ssl.schedules import cosine_schedule


@dataclass(frozen=True)
class SegmentConfig:
    """Head and training settings."""

    head: str = "linear"
    linear_layers: int = 1
    channels: int = 256
    epochs: int = 20
    batch_size: int = 8
    lr: float = 1e-3
    weight_decay: float = 1e-4
    dice_weight: float = 1.0
    threshold: float = 0.5
    n_resamples: int = 1000
    level: float = 0.95
    seed: int = 0
    device: str = "cpu"
    amp: bool = True
    overlays: int = 4
    progress: bool = True
    cpu_threads: int | None = DEFAULT_CPU_THREADS  # see raddino.eval.fit_threads

    def __post_init__(self) -> None:
        if self.head not in ("linear", "upernet"):
            raise ValueError(f"head {self.head!r}: choose 'linear' or 'upernet'")
        for key in ("epochs", "batch_size", "n_resamples"):
            if getattr(self, key) < 1:
                raise ValueError(f"{key}={getattr(self, key)} must be >= 1")


def batches(rows: np.ndarray, batch_size: int, rng: np.random.Generator | None) -> list[np.ndarray]:
    """Shuffled (when ``rng``) batches; a last batch of one joins the previous (BatchNorm)."""
    order = rng.permutation(rows) if rng is not None else np.asarray(rows)
    chunks = [order[i : i + batch_size] for i in range(0, len(order), batch_size)]
    if len(chunks) > 1 and len(chunks[-1]) == 1:
        last = chunks.pop()
        chunks[-1] = np.concatenate([chunks[-1], last])
    return chunks


def _autocast_dtype(device: torch.device, enabled: bool) -> torch.dtype | None:
    """Mixed precision on GPUs only, in the ``auto`` precision of :mod:`raddino.precision`
    (bf16, or fp16 on GPUs without it); heads train in float32 on the CPU. None: no autocast."""
    if device.type != "cuda" or not enabled:
        return None
    return auto_dtype(device)


def head_logits(
    head: nn.Module, maps: list[torch.Tensor], size: tuple[int, int], amp: torch.dtype | None
) -> torch.Tensor:
    """Head output upsampled (bilinear, :func:`resize_bilinear`) to the mask size: (B, S, H, W)
    float32."""
    device = next(head.parameters()).device
    maps = [m.to(device, non_blocking=True) for m in maps]
    with torch.autocast(device.type, dtype=amp or torch.float32, enabled=amp is not None):
        logits = head(maps)
    return resize_bilinear(logits.float(), size)


def _mask_batch(masks: MaskSet, rows: np.ndarray, device: torch.device) -> tuple[torch.Tensor, ...]:
    target = torch.from_numpy(take_rows(masks.masks, rows)).to(device).float()
    known = torch.from_numpy(masks.known[rows]).to(device)
    return target, known


@torch.no_grad()
def predict(
    head: nn.Module,
    maps: FeatureMaps,
    rows: np.ndarray,
    size: tuple[int, int],
    config: SegmentConfig,
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """(rows of the batch, bool predictions (b, S, H, W)) in batches."""
    head.eval()
    device = check_device(config.device)
    amp = _autocast_dtype(device, config.amp)
    for chunk in batches(rows, config.batch_size, None):
        logits = head_logits(head, maps.batch(chunk), size, amp)
        yield chunk, (torch.sigmoid(logits) > config.threshold).cpu().numpy()


def score(
    head: nn.Module, maps: FeatureMaps, masks: MaskSet, rows: np.ndarray, config: SegmentConfig
) -> tuple[np.ndarray, np.ndarray]:
    """Per-image Dice and IoU (len(rows), S), NaN where the structure is not annotated."""
    with cpu_threads(config.cpu_threads, config.device):
        return _score(head, maps, masks, rows, config)


def _score(
    head: nn.Module, maps: FeatureMaps, masks: MaskSet, rows: np.ndarray, config: SegmentConfig
) -> tuple[np.ndarray, np.ndarray]:
    size = masks.masks.shape[-2:]
    dice = np.full((len(rows), len(masks.structures)), np.nan)
    iou = np.full_like(dice, np.nan)
    done = 0
    for chunk, predicted in predict(head, maps, rows, size, config):
        truth = take_rows(masks.masks, chunk) > 0
        for s in range(len(masks.structures)):
            d, j = dice_iou(predicted[:, s], truth[:, s])
            known = masks.known[chunk, s]
            dice[done : done + len(chunk), s] = np.where(known, d, np.nan)
            iou[done : done + len(chunk), s] = np.where(known, j, np.nan)
        done += len(chunk)
    return dice, iou


def train_head(
    head: nn.Module,
    maps: FeatureMaps,
    masks: MaskSet,
    train_rows: np.ndarray,
    val_rows: np.ndarray,
    config: SegmentConfig,
) -> list[dict[str, float]]:
    """Train ``head`` in place; returns one {epoch, loss, val_dice} per epoch.

    The weights of the epoch with the best mean validation Dice are restored at the end (the
    last epoch's when there is no validation split).
    """
    with cpu_threads(config.cpu_threads, config.device):
        return _train(head, maps, masks, train_rows, val_rows, config)


def _train(
    head: nn.Module,
    maps: FeatureMaps,
    masks: MaskSet,
    train_rows: np.ndarray,
    val_rows: np.ndarray,
    config: SegmentConfig,
) -> list[dict[str, float]]:
    if len(train_rows) < 2:
        raise ValueError(f"segmentation training needs >= 2 training images, got {len(train_rows)}")
    device = check_device(config.device)
    head.to(device)
    amp = _autocast_dtype(device, config.amp)
    scaler = torch.amp.GradScaler("cuda", enabled=amp == torch.float16)
    optimizer = torch.optim.AdamW(head.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    steps_per_epoch = len(batches(train_rows, config.batch_size, None))
    total = config.epochs * steps_per_epoch
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: cosine_schedule(step, 1.0, 0.0, total)
    )
    rng = np.random.default_rng(config.seed)
    size = masks.masks.shape[-2:]
    history: list[dict[str, float]] = []
    best_dice, best_state = -math.inf, None
    bar = tqdm(
        total=total,
        desc=f"train {config.head}",
        unit="step",
        file=sys.stderr,
        disable=not config.progress,
    )
    for epoch in range(config.epochs):
        head.train()
        losses = []
        for chunk in batches(train_rows, config.batch_size, rng):
            target, known = _mask_batch(masks, chunk, device)
            logits = head_logits(head, maps.batch(chunk), size, amp)
            loss = segmentation_loss(logits, target, known, config.dice_weight)
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
            schedule.step()
            losses.append(float(loss.detach()))
            bar.update()
        entry = {"epoch": epoch + 1, "loss": float(np.mean(losses))}
        if len(val_rows):
            dice, _ = _score(head, maps, masks, val_rows, config)
            entry["val_dice"] = float(np.nanmean(dice)) if np.isfinite(dice).any() else math.nan
            if entry["val_dice"] > best_dice:
                best_dice = entry["val_dice"]
                best_state = copy.deepcopy(head.state_dict())
        bar.set_postfix({k: round(v, 4) for k, v in entry.items() if k != "epoch"})
        history.append(entry)
    bar.close()
    if best_state is not None:
        head.load_state_dict(best_state)
    head.eval()
    return history
