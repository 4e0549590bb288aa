"""The pre-training loop: one function from config + images to a run directory.

Runs unchanged as a single process or under ``torchrun`` (DDP on gloo or NCCL). Each step:
schedules -> iBOT masks -> teacher targets -> student losses -> backward -> clip -> AdamW ->
EMA teacher -> metrics; checkpoints every ``train.checkpoint_every`` steps and at the end.
"""

from __future__ import annotations

import math
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
from torch.nn.parallel import DistributedDataParallel

from raddino.atomic import write_atomic
from raddino.data.manifest import collect_inputs
from raddino.models.dino_head import HeadConfig, load_head_file
from raddino.models.hardware import reuse_freed_memory
from raddino.models.vit import ViTConfig, vit_config
from raddino.ssl import distributed
from raddino.ssl.checkpoint import save_checkpoint
from raddino.ssl.config import PretrainConfig
from raddino.ssl.data import PretrainStream, collate_crops, step_loader, step_progress
from raddino.ssl.image_cache import run_image_cache
from raddino.ssl.masking import BlockMasking, sample_batch_masks
from raddino.ssl.meta_arch import StudentTeacher
from raddino.ssl.metrics import CollapseMonitor, MetricsLog
from raddino.ssl.optim import apply_schedule, build_optimizer
from raddino.ssl.run import (
    RunSummary,
    autocast_context,
    describe_run,
    existing_run,
    gathered_rng_states,
    gradient_scaler,
    hold_run_directory,
    initial_backbone,
    optimizer_step,
    restore_loop_state,
    resume_state,
    seed_everything,
    stop_if_diverged,
    training_precision,
)
from raddino.ssl.schedules import Schedules


def backbone_config(config: PretrainConfig, initial: ViTConfig | None = None) -> ViTConfig:
    """The student ViT: the architecture of the initial weights when given, else ``model.*``."""
    m = config.model
    if initial is not None:
        return replace(initial, drop_path_rate=m.drop_path_rate)
    overrides = dict(
        patch_size=m.patch_size,
        image_size=m.image_size,
        layerscale_init=m.layerscale or None,
        num_register_tokens=m.num_register_tokens,
        drop_path_rate=m.drop_path_rate,
    )
    for key in ("embed_dim", "depth", "num_heads"):
        if getattr(m, key) is not None:
            overrides[key] = getattr(m, key)
    return vit_config(m.arch, **overrides)


def head_config(config: PretrainConfig) -> HeadConfig:
    h = config.head
    return HeadConfig(h.out_dim, h.hidden_dim, h.bottleneck_dim, h.n_layers)


def build_meta(config: PretrainConfig) -> StudentTeacher:
    """Student and teacher, initialised from ``model.init`` / ``model.init_head`` if set."""
    initial = None
    if config.model.init:
        initial = initial_backbone(config.model.init)
    meta = StudentTeacher(
        backbone_config(config, initial.config if initial is not None else None),
        head_config(config),
        config.loss,
        config.head.separate_ibot_head,
    )
    if initial is not None:
        meta.student.backbone.load_state_dict(initial.state_dict())
    if config.model.init_head:
        head = load_head_file(config.model.init_head)
        try:
            meta.student.dino_head.load_state_dict(head.state_dict())
        except RuntimeError as error:
            raise ValueError(
                f"model.init_head={config.model.init_head}: does not match head.* ({error})"
            ) from error
    meta.student.backbone.grad_checkpointing = config.model.grad_checkpointing
    meta.sync_teacher()
    return meta


def effective_lr(config: PretrainConfig, global_batch: int) -> float:
    """``base_lr`` scaled from 1024 images to the global batch (DINOv2: square root)."""
    ratio = global_batch / 1024
    rule = config.optim.lr_scaling
    factor = math.sqrt(ratio) if rule == "sqrt" else ratio if rule == "linear" else 1.0
    return config.optim.base_lr * factor


def make_schedules(config: PretrainConfig, lr: float) -> Schedules:
    o, t = config.optim, config.teacher
    return Schedules(
        total_steps=config.train.steps,
        lr=lr,
        min_lr=o.min_lr,
        warmup_steps=o.warmup_steps,
        weight_decay=o.weight_decay,
        weight_decay_end=o.weight_decay_end,
        momentum=t.momentum,
        momentum_end=t.momentum_end,
        teacher_temp_start=t.temp_start,
        teacher_temp=t.temp,
        teacher_temp_warmup_steps=t.temp_warmup_steps,
        freeze_last_layer_steps=o.freeze_last_layer_steps,
    )


def step_masks(
    config: PretrainConfig, step: int, grid: int, env: distributed.DistEnv
) -> torch.Tensor:
    """This process's iBOT masks (2b, grid*grid): drawn for the whole global batch from a
    generator seeded by (seed, step), then sliced, so they do not depend on the process count."""
    b, world = config.train.batch_size, env.world_size
    m = config.masking
    masker = BlockMasking(
        (grid, grid),
        min_patches=m.min_patches,
        max_patches=max(m.min_patches, int(0.5 * grid * grid)),
        min_aspect=m.min_aspect,
    )
    rng = np.random.default_rng([config.train.seed, step])
    masks = sample_batch_masks(
        2 * b * world, (grid, grid), rng, m.probability, (m.ratio_min, m.ratio_max), masker
    )
    g = b * world
    rows = list(range(env.rank * b, (env.rank + 1) * b))
    return masks[rows + [g + r for r in rows]]


def clip_gradients(branch: torch.nn.Module, max_norm: float) -> None:
    """Clip backbone and heads separately, as DINOv2 does."""
    if max_norm <= 0:
        return
    for part in (branch.backbone, branch.dino_head, branch.ibot_head):
        if part is not None:
            torch.nn.utils.clip_grad_norm_(part.parameters(), max_norm)


def pretrain(
    config: PretrainConfig,
    data: list[str],
    out_dir: str | Path,
    resume: bool = False,
    progress: bool = True,
) -> RunSummary:
    """Pre-train (or continue) a run in ``out_dir`` on the images of ``data``.

    The run directory is held with an output lock for the whole run (see
    :func:`hold_run_directory`): a second run into it is refused with ``OutputInUseError``.
    """
    run_dir = Path(out_dir)
    env = distributed.init_distributed(config.train.device)
    with hold_run_directory(run_dir, env):
        return _train(config, data, run_dir, env, resume, progress)


def _train(
    config: PretrainConfig,
    data: list[str],
    run_dir: Path,
    env: distributed.DistEnv,
    resume: bool,
    progress: bool,
) -> RunSummary:
    train = config.train
    precision = training_precision(train.precision, env.device)
    paths = collect_inputs(data)
    if env.device.type == "cpu":
        # A ViT-S step frees and re-allocates gigabytes of activations; fresh pages for each
        # cost ~1.2 million page faults and nearly half the step (4.5 s against 2.6 s, bf16,
        # 2-core Xeon: benchmarks/pretrain_throughput.py).
        reuse_freed_memory()

    existing = existing_run(run_dir, resume)
    seed_everything(train.seed, 0, train.deterministic)  # the same initial weights everywhere
    meta = build_meta(config).to(env.device)
    if env.distributed:
        distributed.broadcast_module(meta)
    seed_everything(train.seed, env.rank, train.deterministic)  # per-process drop path
    meta.train()
    student: torch.nn.Module = meta.student
    sharded = env.distributed and train.strategy == "fsdp"
    if sharded:
        distributed.shard_branch(meta.student)
        distributed.shard_branch(meta.teacher)
    elif env.distributed:
        device_ids = [env.local_rank] if env.device.type == "cuda" else None
        student = DistributedDataParallel(meta.student, device_ids=device_ids)
    optimizer = build_optimizer(meta.student, config.optim)
    scaler = gradient_scaler(precision)

    start_step = 0
    if existing is not None:
        existing, state = resume_state(run_dir, config.recipe, config.to_dict())
        if state.get("sharded", False) != sharded:
            written = "fsdp" if state.get("sharded") else "ddp"
            raise ValueError(
                f"{existing}: written with train.strategy={written}; resume with the same strategy"
            )
        load_training_state(meta, optimizer, state, sharded)
        start_step = restore_loop_state(state, scaler, env)

    global_batch = train.batch_size * env.world_size
    lr = effective_lr(config, global_batch)
    schedules = make_schedules(config, lr)
    if env.is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
        write_atomic(run_dir / "config.yaml", lambda temp: temp.write_text(config.to_yaml()))
        what = f"pre-training {len(paths)} images"
        line = describe_run(what, train, config.optim, env, lr, start_step, precision)
        print(line, file=sys.stderr)
    distributed.barrier()
    log = MetricsLog(run_dir, start_step, train.tensorboard) if env.is_main else None
    monitor = CollapseMonitor(
        config.head.out_dim,
        meta.student.backbone.embed_dim,
        max(config.optim.warmup_steps, config.teacher.temp_warmup_steps),
    )

    images = run_image_cache(
        paths, config.crops.max_source_size, run_dir, env, progress and env.is_main
    )
    stream = PretrainStream(paths, config.crops, train.seed, global_batch, images)
    loader = step_loader(
        stream, collate_crops, train, start_step, env.rank, env.world_size, env.device
    )
    bar = step_progress(train, start_step, "pretrain", progress and env.is_main)
    started = time.perf_counter()
    last: dict[str, float] = {}
    step = start_step
    step_start = started  # each step's time starts when it begins waiting for its batch
    try:
        for step, batch in zip(range(start_step, train.steps), loader, strict=False):
            values = schedules.at(step)
            apply_schedule(optimizer, values)
            globals_ = batch.globals_.to(env.device, non_blocking=True)
            locals_ = (
                None if batch.locals_ is None else batch.locals_.to(env.device, non_blocking=True)
            )
            grid = globals_.shape[-1] // config.model.patch_size
            masks = step_masks(config, step, grid, env).to(env.device)
            with autocast_context(precision, env.device):
                out = meta(globals_, locals_, masks, values.teacher_temp, student=student)
            stop_if_diverged(out.total, out.log_values(), step, run_dir, env.device)
            optimizer_step(
                out.total,
                optimizer,
                scaler,
                lambda: clip_gradients(meta.student, config.optim.clip_grad),
            )
            if sharded:
                distributed.reshard(meta.student)
                distributed.reshard(meta.teacher)
            meta.update_teacher(values.momentum)

            if step % train.log_every == 0 or step == train.steps - 1:
                last = distributed.all_reduce_mean(out.log_values())
                seconds = time.perf_counter() - step_start
                last.update(
                    lr=values.lr,
                    last_layer_lr=values.last_layer_lr,
                    weight_decay=values.weight_decay,
                    momentum=values.momentum,
                    teacher_temp=values.teacher_temp,
                    center_norm=meta.dino_centering.center.norm().item(),
                    images_per_s=global_batch / seconds,
                )
                last["collapse_signals"] = (
                    float(len(monitor.check(step, last))) if env.is_main else 0.0
                )
                if log is not None:
                    log.log(step, last)
                bar.set_postfix(loss=f"{last['loss']:.3f}", H=f"{last['teacher_entropy']:.2f}")
            bar.update(1)
            done = step + 1
            if done % train.checkpoint_every == 0 or done == train.steps:
                save_run_checkpoint(run_dir, done, meta, optimizer, scaler, config, env, sharded)
            step_start = time.perf_counter()
    finally:
        bar.close()
        if log is not None:
            log.close()
    seconds = time.perf_counter() - started
    distributed.barrier()
    return RunSummary(run_dir, start_step, train.steps, seconds, last)


def training_state(
    meta: StudentTeacher, optimizer: torch.optim.Optimizer, sharded: bool
) -> tuple[dict, dict]:
    """Full (unsharded) model and optimiser state dicts; with FSDP gathered on rank 0."""
    if not sharded:
        return meta.state_dict(), optimizer.state_dict()
    from torch.distributed.checkpoint.state_dict import (
        StateDictOptions,
        get_model_state_dict,
        get_optimizer_state_dict,
    )

    options = StateDictOptions(full_state_dict=True, cpu_offload=True)
    model = get_model_state_dict(meta, options=options)
    optim = get_optimizer_state_dict(meta.student, optimizer, options=options)
    return model, optim


def load_training_state(
    meta: StudentTeacher, optimizer: torch.optim.Optimizer, state: dict, sharded: bool
) -> None:
    if not sharded:
        meta.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        return
    from torch.distributed.checkpoint.state_dict import (
        StateDictOptions,
        set_model_state_dict,
        set_optimizer_state_dict,
    )

    options = StateDictOptions(full_state_dict=True)
    set_model_state_dict(meta, state["model"], options=options)
    set_optimizer_state_dict(meta.student, optimizer, state["optimizer"], options=options)


def save_run_checkpoint(
    run_dir: Path,
    step: int,
    meta: StudentTeacher,
    optimizer: torch.optim.Optimizer,
    scaler: torch.amp.GradScaler | None,
    config: PretrainConfig,
    env: distributed.DistEnv,
    sharded: bool = False,
) -> None:
    """Rank 0 writes the full state; every rank's RNG state is gathered into it."""
    model_state, optim_state = training_state(meta, optimizer, sharded)
    rng = gathered_rng_states(env)
    if env.is_main:
        state = {
            "step": step,
            "model": model_state,
            "optimizer": optim_state,
            "sharded": sharded,
            "scaler": scaler.state_dict() if scaler is not None else {},
            "rng": rng,
            "config": config.to_dict(),
            "backbone_config": meta.teacher.backbone.config.to_dict(),
            "head_config": meta.teacher.dino_head.config.to_dict(),
        }
        save_checkpoint(run_dir, step, state, config.train.keep_last)
    distributed.barrier()
