"""Encode many images into a features store: decode in workers, batch, run the model, write shards.

Resumable: paths already in the store (encoded or rejected) are skipped, so re-running the same
command after a crash or ``kill -9`` finishes the rest and ends with the same store as an
uninterrupted run.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

from raddino.data.io import DEFAULT_MAX_PIXELS, ImageReadError, read_image, to_uint8
from raddino.data.preprocess import PreprocessConfig, array_to_chw_uint8, normalize, resize_and_crop
from raddino.features.store import FeatureStoreWriter, StoreSummary
from raddino.models.encoder import RadDino

PatchMode = Literal["none", "full", "pooled"]
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def resolve_dtype(name: str, device: torch.device) -> torch.dtype:
    """``auto`` -> bfloat16 on GPUs that support it, float16 on older GPUs, float32 on CPU."""
    if name == "auto":
        if device.type == "cuda":
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return torch.float32
    if name not in DTYPES:
        raise ValueError(f"--dtype {name!r}: choose auto, {', '.join(DTYPES)}")
    return DTYPES[name]


@dataclass(frozen=True)
class EncodeOptions:
    """How to encode: batching, workers, device and what to store."""

    batch_size: int = 16
    num_workers: int = 2
    device: str = "cpu"
    dtype: str = "auto"
    patch_tokens: PatchMode = "none"
    layers: tuple[int, ...] = ()
    shard_size: int = 1024
    max_pixels: int = DEFAULT_MAX_PIXELS
    progress: bool = True

    def __post_init__(self) -> None:
        if self.batch_size < 1:
            raise ValueError(f"batch_size={self.batch_size} must be >= 1")
        if self.num_workers < 0:
            raise ValueError(f"num_workers={self.num_workers} must be >= 0")
        if self.shard_size < 1:
            raise ValueError(f"shard_size={self.shard_size} must be >= 1")
        if self.patch_tokens not in ("none", "full", "pooled"):
            raise ValueError(f"patch_tokens={self.patch_tokens!r}: choose none, full or pooled")


@dataclass
class DecodedBatch:
    """A collated batch: uint8 pixels (B, C, H, W) of the readable images, and the failures."""

    paths: list[str]
    pixels: torch.Tensor | None
    rejects: list[tuple[str, str]] = field(default_factory=list)


class ImageFiles(Dataset):
    """Decodes and resizes one file per item; failures come back as a reason, not an exception."""

    def __init__(self, paths: Sequence[str], config: PreprocessConfig, max_pixels: int) -> None:
        self.paths = list(paths)
        self.config = config
        self.max_pixels = max_pixels

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> tuple[str, torch.Tensor | None, str | None]:
        path = self.paths[index]
        try:
            image = to_uint8(read_image(path, max_pixels=self.max_pixels), source=path)
            return path, resize_and_crop(array_to_chw_uint8(image), self.config), None
        except ImageReadError as error:
            return path, None, error.reason
        except (OSError, ValueError, RuntimeError, MemoryError) as error:
            return path, None, f"{type(error).__name__}: {error}"


def collate(items: list[tuple[str, torch.Tensor | None, str | None]]) -> DecodedBatch:
    good = [(path, pixels) for path, pixels, _ in items if pixels is not None]
    rejects = [
        (path, reason or "unknown error") for path, pixels, reason in items if pixels is None
    ]
    if not good:
        return DecodedBatch([], None, rejects)
    channels = max(pixels.shape[0] for _, pixels in good)
    stacked = torch.stack([pixels.expand(channels, -1, -1) for _, pixels in good])
    return DecodedBatch([path for path, _ in good], stacked, rejects)


def _limit_worker_threads(_worker_id: int) -> None:
    torch.set_num_threads(1)


def store_meta(model: RadDino, model_id: str, options: EncodeOptions, dtype: torch.dtype) -> dict:
    """What identifies a store: resuming with other settings is refused by the writer."""
    return {
        "model": model_id,
        "model_config": model.config.to_dict(),
        "preprocess": model.preprocess_config.to_dict(),
        "dtype": str(dtype).removeprefix("torch."),
        "patch_tokens": options.patch_tokens,
        "layers": list(options.layers),
        "embed_dim": model.embed_dim,
    }


def batch_arrays(
    model: RadDino, pixels: torch.Tensor, options: EncodeOptions, layers: list[int]
) -> dict[str, np.ndarray]:
    """Run the backbone on uint8 pixels (B, C, H, W); return float32 arrays to store."""
    inputs = normalize(
        pixels.to(model.device, non_blocking=True), model.preprocess_config, model.dtype
    )
    output = model.backbone(inputs, layers=layers)
    arrays = {"cls": output.cls}
    if options.patch_tokens == "full":
        arrays["patches"] = output.patch_grid()
    elif options.patch_tokens == "pooled":
        arrays["patch_mean"] = output.patches.mean(dim=1)
    start = 1 + model.config.num_register_tokens
    for index in layers:
        tokens = output.layers[index]
        arrays[f"layer{index}_cls"] = tokens[:, 0]
        if options.patch_tokens == "full":
            arrays[f"layer{index}_patches"] = output.patch_grid(tokens[:, start:])
        elif options.patch_tokens == "pooled":
            arrays[f"layer{index}_patch_mean"] = tokens[:, start:].mean(dim=1)
    return {key: value.float().cpu().numpy() for key, value in arrays.items()}


def encode_to_store(
    model: RadDino,
    paths: Sequence[str],
    out_dir: str | Path,
    options: EncodeOptions,
    model_id: str = "",
) -> StoreSummary:
    """Encode ``paths`` into the store at ``out_dir`` (resuming it when it exists).

    The model is moved to ``options.device`` and cast to the resolved dtype in place.
    """
    device = torch.device(options.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"--device {options.device}: CUDA is not available on this machine")
    dtype = resolve_dtype(options.dtype, device)
    model = model.to(device=device, dtype=dtype).eval()
    layers = model.backbone.resolve_layers(options.layers)
    options_meta = EncodeOptions(**{**options.__dict__, "layers": tuple(layers)})
    writer = FeatureStoreWriter(
        out_dir, store_meta(model, model_id, options_meta, dtype), options.shard_size
    )
    order = list(dict.fromkeys(paths))
    todo = [path for path in order if path not in writer.done]
    if todo:
        loader = DataLoader(
            ImageFiles(todo, model.preprocess_config, options.max_pixels),
            batch_size=options.batch_size,
            num_workers=options.num_workers,
            collate_fn=collate,
            pin_memory=device.type == "cuda",
            worker_init_fn=_limit_worker_threads if options.num_workers else None,
            persistent_workers=False,
        )
        bar = tqdm(
            total=len(todo),
            unit="img",
            desc="encode",
            disable=not options.progress,
            file=sys.stderr,
            dynamic_ncols=True,
        )
        rejected = 0
        with writer, torch.inference_mode():
            for batch in loader:
                for path, reason in batch.rejects:
                    writer.add_reject(path, reason)
                if batch.pixels is not None:
                    writer.add(batch.paths, batch_arrays(model, batch.pixels, options, layers))
                bar.update(len(batch.paths) + len(batch.rejects))
                if batch.rejects:
                    rejected += len(batch.rejects)
                    bar.set_postfix(rejected=rejected)
        bar.close()
    return writer.finalize(order)
