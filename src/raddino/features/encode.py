"""Encode many images into a features store: decode in workers, batch, run the model, write shards.

Worker processes decode and resize while the model runs (pinned host memory on GPU); the model
runs through :class:`raddino.models.engine.InferenceEngine` (precision, optional compilation)
and each shard goes to disk as soon as it is full, so memory stays flat however many images.

Resumable: paths already in the store (encoded or rejected) are skipped, so re-running the same
command after a crash or ``kill -9`` finishes the rest and ends with the same store as an
uninterrupted run.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

from raddino.data.io import DEFAULT_MAX_PIXELS, ImageReadError
from raddino.data.preprocess import PreprocessConfig, load_crop, model_input
from raddino.devices import check_device
from raddino.features.store import FeatureStoreWriter, StoreSummary
from raddino.models.encoder import RadDino
from raddino.models.engine import InferenceEngine
from raddino.models.hardware import (
    COMPILE_CHOICES,
    choose_compile,
    configure_cpu_threads,
    probe_hardware,
)
from raddino.precision import dtype_name, resolve_dtype

PatchMode = Literal["none", "full", "pooled"]

# Rows of a shard are buffered in memory until the shard is written; with full patch tokens a
# shard is capped at this many bytes of features (ViT-B/14 at 518 px: 4.2 MB per image).
SHARD_BYTES = 64 * 2**20


@dataclass(frozen=True)
class EncodeOptions:
    """How to encode: batching, workers, device, precision, compilation and what to store.

    device: a ``torch.device``; a name (``cpu``, ``cuda:1``, ``auto``) is checked and turned
    into one here (:func:`raddino.devices.check_device`).
    dtype: the model's precision; None = auto (:func:`raddino.precision.resolve_dtype`). Float32
    unless asked, so that feature caches and probe numbers are the same on every machine.
    compile: off, onednn, inductor or auto (:func:`raddino.models.hardware.choose_compile`); a
    failed compile falls back to eager with a warning.
    """

    batch_size: int = 16
    num_workers: int = 2
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    dtype: torch.dtype | None = torch.float32
    compile: str = "off"
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
        object.__setattr__(self, "device", check_device(self.device))
        if self.dtype is not None and not isinstance(self.dtype, torch.dtype):
            raise TypeError(
                f"dtype={self.dtype!r}: pass a torch.dtype or None (auto); "
                "raddino.precision.parse_dtype reads names"
            )
        if self.compile not in COMPILE_CHOICES:
            raise ValueError(f"compile={self.compile!r}: choose {', '.join(COMPILE_CHOICES)}")
        if self.patch_tokens not in ("none", "full", "pooled"):
            raise ValueError(f"patch_tokens={self.patch_tokens!r}: choose none, full or pooled")


@dataclass
class DecodedBatch:
    """A collated batch: uint8 pixels (B, C, H, W) of the readable images, and the failures."""

    paths: list[str]
    pixels: torch.Tensor | None
    rejects: list[tuple[str, str]] = field(default_factory=list)

    def pin_memory(self) -> DecodedBatch:
        """Page-locked pixels for an asynchronous copy to the GPU (called by the DataLoader)."""
        if self.pixels is not None:
            self.pixels = self.pixels.pin_memory()
        return self


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
            return path, load_crop(path, self.config, max_pixels=self.max_pixels), None
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
        "dtype": dtype_name(dtype),
        "patch_tokens": options.patch_tokens,
        "layers": list(options.layers),
        "embed_dim": model.embed_dim,
    }


def mean_patch_token(tokens: torch.Tensor) -> torch.Tensor:
    """(n, N, D) patch tokens -> (n, D) float32 mean. Pooled stores are written with it and
    full stores' means are computed with it when read, so the two agree bit for bit."""
    return tokens.float().mean(dim=1)


def batch_arrays(
    engine: InferenceEngine,
    pixels: torch.Tensor,
    config: PreprocessConfig,
    options: EncodeOptions,
    num_register_tokens: int = 0,
) -> dict[str, np.ndarray]:
    """Run the engine on uint8 pixels (B, C, H, W); return float32 arrays to store."""
    inputs = model_input(pixels, config, engine.device, engine.dtype)
    output = engine(inputs)
    arrays = {"cls": output.cls}
    if options.patch_tokens == "full":
        arrays["patches"] = output.patch_grid()
    elif options.patch_tokens == "pooled":
        arrays["patch_mean"] = mean_patch_token(output.patches)
    start = 1 + num_register_tokens
    for index in engine.layers:
        tokens = output.layers[index]
        arrays[f"layer{index}_cls"] = tokens[:, 0]
        if options.patch_tokens == "full":
            arrays[f"layer{index}_patches"] = output.patch_grid(tokens[:, start:])
        elif options.patch_tokens == "pooled":
            arrays[f"layer{index}_patch_mean"] = mean_patch_token(tokens[:, start:])
    return {key: value.float().cpu().numpy() for key, value in arrays.items()}


def shard_rows(model: RadDino, options: EncodeOptions) -> int:
    """Images per shard: ``options.shard_size``, fewer when full patch tokens would make a
    shard larger than :data:`SHARD_BYTES` (a shard is buffered in memory until written)."""
    if options.patch_tokens != "full":
        return options.shard_size
    config = model.preprocess_config
    height, width = config.output_size or (config.shortest_edge, config.shortest_edge)
    grid = (height // model.config.patch_size) * (width // model.config.patch_size)
    row_bytes = 4 * model.embed_dim * (1 + grid) * (1 + len(options.layers))
    return max(1, min(options.shard_size, SHARD_BYTES // row_bytes))


def build_engine(
    model: RadDino,
    options: EncodeOptions,
    num_images: int,
    log: Callable[[str], None] | None = None,
) -> InferenceEngine:
    """Move and cast ``model`` in place for ``options`` and wrap it for encoding.

    ``num_images`` (the job's size) feeds ``--compile auto``. ``log`` receives one line per
    decision (threads, compile) with its reason, and the compile steps.
    """
    log = log or (lambda message: None)
    device = options.device
    dtype = resolve_dtype(options.dtype, device)
    hardware = probe_hardware(device)
    compile_choice = choose_compile(options.compile, hardware, dtype, num_images)
    if device.type == "cpu":
        log(f"threads: {configure_cpu_threads()} intra-op on {hardware.name}")
    log(f"compile: {compile_choice.value} ({compile_choice.reason})")
    return InferenceEngine(
        model.backbone,
        device=device,
        dtype=dtype,
        compile=str(compile_choice.value),
        layers=options.layers,
        on_event=log,
    )


def encode_to_store(
    model: RadDino,
    paths: Sequence[str],
    out_dir: str | Path,
    options: EncodeOptions,
    model_id: str = "",
    *,
    engine: InferenceEngine | None = None,
    log: Callable[[str], None] | None = None,
) -> StoreSummary:
    """Encode ``paths`` into the store at ``out_dir`` (resuming it when it exists).

    The model is moved to ``options.device`` and cast to the resolved dtype in place. ``engine``
    reuses an already prepared (e.g. compiled) :func:`build_engine` result for this model and
    options; ``log`` receives the setup decisions (see :func:`build_engine`).
    """
    device = options.device
    dtype = resolve_dtype(options.dtype, device)
    model = model.to(device=device, dtype=dtype).eval()
    layers = model.backbone.resolve_layers(options.layers)
    options = replace(options, dtype=dtype, layers=tuple(layers))
    writer = FeatureStoreWriter(
        out_dir, store_meta(model, model_id, options, dtype), shard_rows(model, options)
    )
    with writer:  # holds the store's lock; released on leaving, also on errors
        order = list(dict.fromkeys(paths))
        todo = [path for path in order if path not in writer.done]
        if not todo:
            return writer.finalize(order)
        if engine is None:
            engine = build_engine(model, options, len(order), log)
        elif (engine.device, engine.dtype, engine.layers) != (device, dtype, tuple(layers)):
            raise ValueError(
                f"engine runs {engine.dtype} on {engine.device} with layers {engine.layers}; "
                f"the options ask for {dtype} on {device} with layers {tuple(layers)}"
            )
        registers = model.config.num_register_tokens

        def features(pixels: torch.Tensor) -> dict[str, np.ndarray]:
            return batch_arrays(engine, pixels, model.preprocess_config, options, registers)

        write_decoded(writer, todo, model.preprocess_config, options, features, "encode")
        return writer.finalize(order)


def write_decoded(
    writer: FeatureStoreWriter,
    paths: Sequence[str],
    config: PreprocessConfig,
    options: EncodeOptions,
    features: Callable[[torch.Tensor], dict[str, np.ndarray]],
    desc: str,
) -> None:
    """Decode and resize ``paths`` in ``options.num_workers`` workers, batch them, and write
    ``features(uint8 pixels (B, C, H, W))`` of each batch (or each file's reason for failing) to
    ``writer``, with a progress bar. Used by every encoder, the pixel baseline included."""
    loader = DataLoader(
        ImageFiles(paths, config, options.max_pixels),
        batch_size=options.batch_size,
        num_workers=options.num_workers,
        collate_fn=collate,
        pin_memory=options.device.type == "cuda",
        worker_init_fn=_limit_worker_threads if options.num_workers else None,
        persistent_workers=False,
    )
    bar = tqdm(
        total=len(paths),
        unit="img",
        desc=desc,
        disable=not options.progress,
        file=sys.stderr,
        dynamic_ncols=True,
    )
    rejected = 0
    with torch.inference_mode():
        for batch in loader:
            for path, reason in batch.rejects:
                writer.add_reject(path, reason)
            if batch.pixels is not None:
                writer.add(batch.paths, features(batch.pixels))
            bar.update(len(batch.paths) + len(batch.rejects))
            if batch.rejects:
                rejected += len(batch.rejects)
                bar.set_postfix(rejected=rejected)
    bar.close()
