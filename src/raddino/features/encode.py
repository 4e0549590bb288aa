"""Encode many images into a features store: decode in workers, batch, run the model, write shards.

Worker processes decode and resize while the model runs (pinned host memory on GPU); the model
runs through :class:`raddino.models.engine.InferenceEngine` (precision, optional compilation)
and each shard goes to disk as soon as it is full, so memory stays flat however many images.

Resumable: paths already in the store (encoded or rejected) are skipped, so re-running the same
command after a crash or ``kill -9`` finishes the rest and ends with the same store as an
uninterrupted run. The store is keyed on the model's weights (:mod:`raddino.features.identity`),
not on the path it was given as.

Under ``torchrun`` (``distributed=True``) every process encodes its share of the inputs into
a store of its own, and the first one joins them: :mod:`raddino.features.ranks`.
"""

from __future__ import annotations

import sys
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from itertools import islice
from pathlib import Path
from typing import Literal

import numpy as np
import torch
import torch.distributed as dist
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

from raddino.data.io import DEFAULT_MAX_PIXELS, ImageReadError
from raddino.data.preprocess import PreprocessConfig, load_crop, model_input
from raddino.devices import check_device
from raddino.features import ranks
from raddino.features.identity import (
    MODEL_HASH_KEY,
    MODEL_PATH_KEY,
    open_encoder_store,
    weights_sha256,
)
from raddino.features.store import FeatureStoreWriter, StoreSummary
from raddino.models.encoder import RadDino
from raddino.models.engine import InferenceEngine
from raddino.models.hardware import (
    COMPILE_CHOICES,
    choose_attention,
    choose_compile,
    configure_cpu_threads,
    onednn_traceable,
    probe_hardware,
    reuse_freed_memory,
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


def decode_in_threads(dataset: ImageFiles, batch_size: int, workers: int) -> Iterator[DecodedBatch]:
    """The dataset's items in order, collated in batches of ``batch_size``, each batch decoded
    by one of ``workers`` threads of this process, up to ``2 * workers`` batches ahead.

    What CPU jobs use instead of worker processes. Decoding (PIL, numpy, torch) releases the
    GIL, as does the model, so threads overlap like processes do; but a forked worker shares
    the parent's memory copy-on-write, and while it lives every page the model writes is
    copied first: the first batch of each job ran 1.48 s instead of 1.08 s (ViT-B/14, bf16,
    batch 4, 2-core Xeon). Threads also skip the fork, the start-up and the pickling of
    batches. Each thread's torch ops run single-threaded, as in worker processes.
    """
    starts = iter(range(0, len(dataset), batch_size))

    def decode(start: int) -> DecodedBatch:
        stop = min(start + batch_size, len(dataset))
        return collate([dataset[index] for index in range(start, stop)])

    intra_op = torch.get_num_threads()
    pool = ThreadPoolExecutor(workers, initializer=torch.set_num_threads, initargs=(1,))
    pending: deque[Future[DecodedBatch]] = deque()
    try:
        pending.extend(pool.submit(decode, start) for start in islice(starts, 2 * workers))
        while pending:
            batch = pending.popleft().result()
            following = next(starts, None)
            if following is not None:
                pending.append(pool.submit(decode, following))
            yield batch
    finally:
        for future in pending:
            future.cancel()
        pool.shutdown(wait=True)
        # set_num_threads(1) in a thread is also the default of threads started later
        torch.set_num_threads(intra_op)


def store_meta(
    model: RadDino, model_id: str, options: EncodeOptions, dtype: torch.dtype, weights: str
) -> dict:
    """What identifies a store: resuming with other settings is refused by the writer.

    ``weights``: the :func:`weights_sha256` of the model as it runs (cast to ``dtype``);
    ``model_id`` (the path it was given as) is kept for information and not compared."""
    return {
        MODEL_HASH_KEY: weights,
        MODEL_PATH_KEY: model_id,
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
    traceable = onednn_traceable(model.backbone)
    compile_choice = choose_compile(
        options.compile, hardware, dtype, num_images, traceable=traceable
    )
    if device.type == "cpu":
        log(f"threads: {configure_cpu_threads()} intra-op on {hardware.name}")
        if reuse_freed_memory():
            log("memory: freed tensors are kept for the next batch (no page faults per batch)")
    log(f"compile: {compile_choice.value} ({compile_choice.reason})")
    attention = choose_attention(str(compile_choice.value), hardware, dtype, model.backbone)
    if device.type == "cpu":
        log(f"attention: {attention.value} ({attention.reason})")
    return InferenceEngine(
        model.backbone,
        device=device,
        dtype=dtype,
        compile=str(compile_choice.value),
        attention=str(attention.value),
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
    distributed: bool = False,
) -> StoreSummary:
    """Encode ``paths`` into the store at ``out_dir`` (resuming it when it exists).

    The model is moved to ``options.device`` and cast to the resolved dtype in place; the hash
    of its weights as cast identifies the store (``model_id``, e.g. the path it was loaded
    from, is kept as information). ``engine`` reuses an already prepared (e.g. compiled)
    :func:`build_engine` result for this model and options; ``log`` receives the setup
    decisions (see :func:`build_engine`).

    ``distributed``: this call is made by every process of the initialised default process
    group (``torchrun``), each with the same ``paths`` and its own device in ``options``; each
    encodes its share and all return the same summary (:mod:`raddino.features.ranks`).
    """
    device = options.device
    dtype = resolve_dtype(options.dtype, device)
    model = model.to(device=device, dtype=dtype).eval()
    weights = weights_sha256(model)  # as it runs: the same when an earlier call cast it
    layers = model.backbone.resolve_layers(options.layers)
    options = replace(options, dtype=dtype, layers=tuple(layers))
    meta = store_meta(model, model_id, options, dtype, weights)
    rows = shard_rows(model, options)
    order = list(dict.fromkeys(paths))

    def encode(writer: FeatureStoreWriter, todo: list[str], desc: str) -> None:
        nonlocal engine
        if engine is None:
            engine = build_engine(model, options, len(order), log)
        elif (engine.device, engine.dtype, engine.layers) != (device, dtype, tuple(layers)):
            raise ValueError(
                f"engine runs {engine.dtype} on {engine.device} with layers {engine.layers}; "
                f"the options ask for {dtype} on {device} with layers {tuple(layers)}"
            )
        prepared, registers = engine, model.config.num_register_tokens

        def features(pixels: torch.Tensor) -> dict[str, np.ndarray]:
            return batch_arrays(prepared, pixels, model.preprocess_config, options, registers)

        write_decoded(writer, todo, model.preprocess_config, options, features, desc)

    if distributed and dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        return _encode_on_every_process(order, out_dir, meta, rows, options.batch_size, encode)
    with open_encoder_store(out_dir, meta, rows) as writer:  # the lock, released on leaving
        ranks.absorb_rank_stores(writer, order)  # what a killed multi-process run left
        todo = [path for path in order if path not in writer.done]
        if todo:
            encode(writer, todo, "encode")
        return writer.finalize(order)


def _encode_on_every_process(
    order: list[str],
    out_dir: str | Path,
    meta: dict,
    rows: int,
    batch_size: int,
    encode: Callable[[FeatureStoreWriter, list[str], str], None],
) -> StoreSummary:
    """:func:`encode_to_store` on one of several processes; see :mod:`raddino.features.ranks`."""
    group = ranks.coordination_group()
    rank, world = dist.get_rank(), dist.get_world_size()
    ranks.check_same_job(group, order, meta, batch_size)
    store: FeatureStoreWriter | None = None  # process 0's: it holds the store's lock throughout
    try:
        state, failure = None, None
        if rank == 0:
            try:
                store = open_encoder_store(out_dir, meta, rows)
                ranks.absorb_rank_stores(store, order)
                state = (store.meta, np.array([path in store.done for path in order]))
            except Exception as error:  # raised on every process
                failure = error
        stored_meta, done = ranks.from_first_process(group, state, failure)

        todo = [path for path, finished in zip(order, done, strict=True) if not finished]
        share = ranks.rank_share(todo, rank, world, batch_size)
        failure = None
        try:
            if share:
                own = FeatureStoreWriter(
                    ranks.rank_store_dir(out_dir, rank),
                    stored_meta,
                    rows,
                    info_keys=(MODEL_PATH_KEY,),
                )
                with own:  # keeps the finished shards on errors; the final merge takes them
                    encode(own, share, f"encode {rank}/{world}")
        except Exception as error:
            failure = error
        ranks.raise_if_any_failed(group, failure)  # also: wait until every share is done

        summary, failure = None, None
        if store is not None:
            try:
                ranks.absorb_rank_stores(store, order)
                summary = store.finalize(order)
            except Exception as error:
                failure = error
        return ranks.from_first_process(group, summary, failure)
    finally:
        if store is not None:
            store.close()
        dist.destroy_process_group(group)


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
    ``writer``, with a progress bar. Used by every encoder, the pixel baseline included.

    The workers are threads for CPU jobs (:func:`decode_in_threads`), processes otherwise."""
    dataset = ImageFiles(paths, config, options.max_pixels)
    if options.device.type == "cpu" and options.num_workers > 0:
        loader: Iterable[DecodedBatch] = decode_in_threads(
            dataset, options.batch_size, options.num_workers
        )
    else:  # GPUs: worker processes, pinned memory
        loader = DataLoader(
            dataset,
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
