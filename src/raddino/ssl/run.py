"""What every pre-training loop shares, whichever its recipe (image-only DINOv2, contrastive).

A run directory held by one writer, refused when it holds a run and ``resume`` was not asked for,
resumed from its newest loadable checkpoint of the same recipe and settings (those of
:data:`RESUMABLE_CHANGES` may change); the training precision and its
autocast; seeds and RNG states (one per process, gathered into each checkpoint); the optimiser
step with or without fp16's gradient scaler; the stop on a non-finite loss; the line that
describes a run when it starts.
"""

from __future__ import annotations

import contextlib
import random
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from raddino.models.vit import VisionTransformer
from raddino.output_lock import OutputLock
from raddino.precision import parse_dtype, resolve_dtype, short_name
from raddino.ssl import distributed
from raddino.ssl.checkpoint import latest_checkpoint, load_latest_checkpoint
from raddino.ssl.config import OptimSection, TrainSection


class TrainingDivergedError(RuntimeError):
    """A non-finite loss: the run stops and its last checkpoint stays as it was."""


class RunExistsError(ValueError):
    """The output directory already holds a run and the caller did not ask to resume it."""


RESUMABLE_CHANGES = frozenset(
    {
        "train.steps",  # extend a finished run
        "train.device",  # move a run to another machine
        "train.num_workers",
        "train.checkpoint_every",
        "train.keep_last",
        "train.log_every",
        "train.tensorboard",
    }
)
"""Settings a resumed run may change: how long, where and how often it saves or logs. Every
other setting changes what is trained, so continuing a run with it would mix two runs."""


@dataclass
class RunSummary:
    run_dir: Path
    start_step: int
    end_step: int
    seconds: float
    last_metrics: dict[str, float]


def training_precision(precision: str, device: torch.device) -> torch.dtype:
    """``train.precision`` (a config name) as the autocast dtype on ``device``; ``auto`` by
    :func:`raddino.precision.auto_dtype`. fp16 only on CUDA (its gradient scaler is CUDA's)."""
    try:
        dtype = resolve_dtype(parse_dtype(precision), device)
    except ValueError as error:
        raise ValueError(f"train.precision: {error}") from None
    if dtype == torch.float16 and device.type != "cuda":
        raise ValueError("train.precision=fp16 needs a CUDA device; use bf16 on the CPU")
    return dtype


def autocast_context(precision: torch.dtype, device: torch.device):
    """Autocast to ``precision`` on ``device``; nothing for float32."""
    if precision == torch.float32:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=precision)


def gradient_scaler(precision: torch.dtype) -> torch.amp.GradScaler | None:
    """fp16's loss scaler (CUDA); None for bf16 and fp32, which need none."""
    return torch.amp.GradScaler("cuda") if precision == torch.float16 else None


@contextlib.contextmanager
def hold_run_directory(run_dir: Path, env: distributed.DistEnv) -> Iterator[None]:
    """Hold ``run_dir``'s output lock on the first process, which alone writes there.

    Under torchrun the first process's outcome is broadcast: when it is refused (or fails to
    lock), every process raises the same error instead of waiting at the next collective.
    """
    lock = OutputLock(run_dir) if env.is_main else None
    failure: Exception | None = None
    if lock is not None:
        try:
            lock.acquire()
        except Exception as error:  # re-raised on every process below
            failure = error
    if env.distributed:
        failure = distributed.broadcast_object(failure)
    if failure is not None:
        raise failure
    try:
        yield
    finally:
        if lock is not None:
            lock.release()


def existing_run(run_dir: Path, resume: bool) -> Path | None:
    """The newest checkpoint of ``run_dir`` (None: a new run); RunExistsError without
    ``resume``."""
    existing = latest_checkpoint(run_dir)
    if existing is not None and not resume:
        raise RunExistsError(
            f"{run_dir} already holds a run ({existing.name}); resume it or choose another "
            "output directory"
        )
    return existing


def resume_state(run_dir: Path, recipe: str, config: Mapping) -> tuple[Path, dict]:
    """The newest loadable checkpoint (damaged newer ones skipped) and its state; a checkpoint
    another recipe wrote, or one trained with other settings than ``config`` (the resolved
    config as a dict) beyond :data:`RESUMABLE_CHANGES`, is refused in one line."""
    path, state = load_latest_checkpoint(run_dir)
    written = state.get("recipe", "dino")
    if written != recipe:
        raise ValueError(
            f"{path}: a checkpoint of recipe={written}; resume it with that recipe's config"
        )
    check_same_settings(state.get("config", {}), config, run_dir)
    return path, state


def check_same_settings(written: Mapping, config: Mapping, run_dir: Path) -> None:
    """Refuse to continue the run in ``run_dir`` (its checkpoint's config ``written``) with
    ``config`` when a setting outside :data:`RESUMABLE_CHANGES` differs; precision names are
    compared as dtypes. Keys only one side has (a setting added in a later raddino) pass."""
    old, new = _flatten(written), _flatten(config)
    changed = []
    for key in sorted(old.keys() & new.keys()):
        before, after = old[key], new[key]
        if key.endswith(".precision"):
            before, after = _precision(before), _precision(after)
        if key not in RESUMABLE_CHANGES and before != after:
            changed.append(f"{key} {old[key]!r} -> {new[key]!r}")
    if changed:
        shown = "; ".join(changed[:4]) + (
            f"; ... ({len(changed) - 4} more)" if len(changed) > 4 else ""
        )
        raise ValueError(
            f"{run_dir}: holds a run trained with other settings ({shown}); continue it with its "
            "own config (config.yaml in that folder) or choose another output directory"
        )


def _flatten(data: Mapping, prefix: str = "") -> dict[str, object]:
    """{"train": {"steps": 5}} -> {"train.steps": 5}; lists become tuples."""
    flat: dict[str, object] = {}
    for key, value in data.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat.update(_flatten(value, name + "."))
        else:
            flat[name] = tuple(value) if isinstance(value, list) else value
    return flat


def _precision(name: object) -> object:
    try:
        return parse_dtype(str(name))
    except ValueError:
        return name


def restore_loop_state(
    state: Mapping, scaler: torch.amp.GradScaler | None, env: distributed.DistEnv
) -> int:
    """Restore the gradient scaler and this process's RNG from a checkpoint's state; returns
    the step to continue from. (The model and optimiser are the recipe's to restore.)"""
    if scaler is not None and state.get("scaler"):
        scaler.load_state_dict(state["scaler"])
    rng = state["rng"]
    restore_rng(rng[env.rank] if isinstance(rng, list) else rng)
    return int(state["step"])


def seed_everything(seed: int, rank: int, deterministic: bool) -> None:
    random.seed(seed + rank)
    np.random.seed(seed + rank)
    torch.manual_seed(seed + rank)
    if deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)


def rng_state() -> dict:
    state = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def gathered_rng_states(env: distributed.DistEnv) -> list[dict] | dict:
    """Every process's RNG state (a list by rank under torchrun; one state otherwise), for the
    checkpoint that rank 0 writes. A collective: every process calls it."""
    if not env.distributed:
        return rng_state()
    import torch.distributed as dist

    states: list = [None] * env.world_size
    dist.all_gather_object(states, rng_state())
    return states


def stop_if_diverged(
    loss: torch.Tensor,
    parts: Mapping[str, torch.Tensor],
    step: int,
    run_dir: Path,
    device: torch.device,
) -> None:
    """TrainingDivergedError on every process when ``loss`` is not finite on any of them, naming
    the loss terms and the last good checkpoint."""
    if distributed.any_process(not torch.isfinite(loss).item(), device):
        values = {k: f"{v.item():.4g}" for k, v in parts.items()}
        kept = latest_checkpoint(run_dir)
        raise TrainingDivergedError(
            f"step {step}: the loss is not finite ({values}); the run stops here. "
            f"Last good checkpoint: {kept or 'none yet'}. Lower optim.base_lr, raise "
            "optim.warmup_steps or use train.precision=fp32."
        )


def optimizer_step(
    loss: torch.Tensor,
    optimizer: torch.optim.Optimizer,
    scaler: torch.amp.GradScaler | None,
    clip: Callable[[], None],
) -> None:
    """Backward, clip (``clip()``, on unscaled gradients) and step, with fp16's scaler when
    there is one; gradients are cleared first."""
    optimizer.zero_grad(set_to_none=True)
    if scaler is None:
        loss.backward()
        clip()
        optimizer.step()
        return
    scaler.scale(loss).backward()
    scaler.unscale_(optimizer)
    clip()
    scaler.step(optimizer)
    scaler.update()


def describe_run(
    what: str,
    train: TrainSection,
    optim: OptimSection,
    env: distributed.DistEnv,
    lr: float,
    start_step: int,
    precision: torch.dtype,
) -> str:
    """The line printed when a run starts: data, processes and batch, lr and its scaling, steps,
    device and precision (``(auto)`` when the config left it to the device)."""
    global_batch = train.batch_size * env.world_size
    auto = " (auto)" if parse_dtype(train.precision) is None else ""
    return (
        f"{what}, {env.world_size} process(es) x batch {train.batch_size} = global batch "
        f"{global_batch}, lr {lr:.3g} ({optim.lr_scaling} scaling of {optim.base_lr:g} per "
        f"1024), steps {start_step} -> {train.steps}, device {env.device}, "
        f"{short_name(precision)}{auto}"
    )


def initial_backbone(init: str) -> VisionTransformer:
    """``model.init``'s weights as raddino's ViT (a Hugging Face Dinov2 directory, a DINOv2 file
    or a run); a foreign encoder (CLIP, SigLIP, timm) is refused in one line: pre-training trains
    raddino's ViT, and another library's architecture cannot be loaded into it."""
    from raddino.models.encoder import RadDino

    backbone = RadDino.from_pretrained(init).backbone
    if not isinstance(backbone, VisionTransformer):
        raise ValueError(
            f"model.init={init}: a {backbone.config.family} encoder cannot initialise raddino's "
            "ViT; give a Hugging Face Dinov2 directory, a DINOv2 file or a raddino run"
        )
    return backbone
