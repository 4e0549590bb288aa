"""The language-supervised pre-training loop: config + (image, report) manifests -> a run directory.

Everything around the step is the image-only recipe's: the run directory and its lock, atomic
keep-last-k checkpoints (:mod:`raddino.ssl.checkpoint`), exact resume (RNG states, data
position = step), ``torchrun`` with DDP on gloo or NCCL (:mod:`raddino.ssl.distributed`), the
precision policy and autocast, ``metrics.jsonl`` + TensorBoard, the divergence stop and the
progress bar. Each step: lr and weight decay -> both towers (autocast) -> the loss of the
global batch (:func:`global_batch_loss`) -> backward -> gradient clipping (all parameters
together, as open_clip) -> AdamW -> the logit scale clamped.

``RUN/tokenizer.json`` is trained by the first process on the run's reports before the first
step and read back by the others and by every resumed run.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import torch
from tokenizers import Tokenizer
from torch.nn.parallel import DistributedDataParallel

from raddino.atomic import write_atomic
from raddino.contrastive.config import ContrastiveConfig
from raddino.contrastive.data import Pairs, PairStream, collate_pairs, read_pairs
from raddino.contrastive.losses import clip_loss, retrieval_accuracy, siglip_loss
from raddino.contrastive.model import ImageTextModel, PairEmbeddings
from raddino.contrastive.optim import build_optimizer, set_lr_and_weight_decay
from raddino.contrastive.tokenizer import (
    PAD,
    TOKENIZER_FILE,
    load_tokenizer,
    save_tokenizer,
    train_tokenizer,
)
from raddino.models.hardware import reuse_freed_memory
from raddino.ssl import distributed
from raddino.ssl.checkpoint import load_latest_checkpoint, save_checkpoint
from raddino.ssl.data import step_loader, step_progress
from raddino.ssl.image_cache import run_image_cache
from raddino.ssl.metrics import MetricsLog
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
from raddino.ssl.schedules import cosine_schedule
from raddino.ssl.trainer import backbone_config, effective_lr


def build_model(config: ContrastiveConfig, tokenizer: Tokenizer) -> ImageTextModel:
    """Both towers; the image tower from ``model.init`` when set (as the image-only recipe)."""
    initial = None
    if config.model.init:
        initial = initial_backbone(config.model.init)
    model = ImageTextModel(
        backbone_config(config, initial.config if initial is not None else None),
        config.text,
        config.contrastive,
        vocab_size=tokenizer.get_vocab_size(),
        pad_id=tokenizer.token_to_id(PAD),
    )
    if initial is not None:
        model.vision.load_state_dict(initial.state_dict())
    model.vision.grad_checkpointing = config.model.grad_checkpointing
    return model


def global_batch_loss(
    out: PairEmbeddings, objective: str, env: distributed.DistEnv
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """This process's loss and logged values for its ``b`` pairs of the global batch.

    The reports' embeddings (and for CLIP the images') of every process are gathered with
    gradients flowing back to their owners. The loss returned is ``world x`` this process's
    share of the global batch's loss: DDP averages gradients over processes, and that average
    is then the gradient of the global loss, as one process with the whole batch computes it;
    the mean over processes of the returned values is the global loss."""
    offset = env.rank * out.image.shape[0]
    texts = distributed.all_gather_with_grad(out.text)
    if objective == "siglip":
        images = distributed.all_gather_rows(out.image)
        share = siglip_loss(out.image, texts, out.logit_scale, out.logit_bias, offset)
    else:
        images = distributed.all_gather_with_grad(out.image)
        share = clip_loss(out.image, out.text, images, texts, out.logit_scale, offset)
    to_text, to_image = retrieval_accuracy(out.image, out.text, images, texts, offset)
    loss = share * env.world_size
    values = {
        "loss": loss.detach(),
        "retrieval_accuracy": (to_text + to_image) / 2,  # in-batch top-1, both directions
        "image_to_text_top1": to_text,
        "text_to_image_top1": to_image,
        "logit_scale": out.logit_scale.detach(),  # t
        "temperature": 1 / out.logit_scale.detach(),  # 1 / t, CLIP's tau
    }
    if out.logit_bias is not None:
        values["logit_bias"] = out.logit_bias.detach()
    return loss, values


def prepare_tokenizer(
    config: ContrastiveConfig, pairs: Pairs, run_dir: Path, env: distributed.DistEnv, resuming: bool
) -> Tokenizer:
    """The run's tokenizer: read back when resuming, else trained by the first process on the
    run's reports and written to ``RUN/tokenizer.json`` for the others."""
    if not resuming and env.is_main:
        t = config.text
        tokenizer = train_tokenizer(pairs.reports, t.vocab_size, t.max_length, t.lowercase)
        save_tokenizer(tokenizer, run_dir)
    distributed.barrier()
    if resuming and not (run_dir / TOKENIZER_FILE).is_file():
        raise ValueError(f"{run_dir}: the run has checkpoints but no {TOKENIZER_FILE}")
    return load_tokenizer(run_dir)


def pretrain_contrastive(
    config: ContrastiveConfig,
    data: list[str],
    out_dir: str | Path,
    resume: bool = False,
    progress: bool = True,
) -> RunSummary:
    """Pre-train (or continue) a contrastive run in ``out_dir`` on the pairs of ``data``."""
    run_dir = Path(out_dir)
    env = distributed.init_distributed(config.train.device)
    with hold_run_directory(run_dir, env):  # the image-only recipe's output lock
        return _train(config, data, run_dir, env, resume, progress)


def _train(
    config: ContrastiveConfig,
    data: list[str],
    run_dir: Path,
    env: distributed.DistEnv,
    resume: bool,
    progress: bool,
) -> RunSummary:
    train = config.train
    precision = training_precision(train.precision, env.device)
    if env.device.type == "cpu":
        reuse_freed_memory()  # as the image-only trainer: no fresh pages for each activation
    pairs = read_pairs(data)

    existing = existing_run(run_dir, resume)
    tokenizer = prepare_tokenizer(config, pairs, run_dir, env, resuming=existing is not None)
    seed_everything(train.seed, 0, train.deterministic)  # the same initial weights everywhere
    model = build_model(config, tokenizer).to(env.device)
    if precision == torch.bfloat16 and env.device.type == "cpu":
        # as the ViT's attention (models/vit.py): PyTorch's CPU SDPA backward is slow in bf16;
        # the text tower's step takes 67 ms with explicit matmuls against 94 ms (preset, 32 x 96)
        model.text.encoder.set_attn_implementation("eager")
    if env.distributed:
        distributed.broadcast_module(model)
    seed_everything(train.seed, env.rank, train.deterministic)  # per-process dropout
    model.train()
    towers: torch.nn.Module = model
    if env.distributed:
        device_ids = [env.local_rank] if env.device.type == "cuda" else None
        towers = DistributedDataParallel(model, device_ids=device_ids)
    optimizer = build_optimizer(model, config.optim)
    scaler = gradient_scaler(precision)

    start_step = 0
    if existing is not None:
        existing, state = resume_state(run_dir, config.recipe, config.to_dict())
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        start_step = restore_loop_state(state, scaler, env)

    global_batch = train.batch_size * env.world_size
    lr = effective_lr(config, global_batch)
    if env.is_main:
        write_atomic(run_dir / "config.yaml", lambda temp: temp.write_text(config.to_yaml()))
        skipped = f" ({pairs.skipped_empty} rows without a report skipped)"
        what = (
            f"contrastive pre-training ({config.contrastive.objective}) on {len(pairs.paths)} "
            f"image-report pairs{skipped if pairs.skipped_empty else ''}, vocabulary "
            f"{tokenizer.get_vocab_size()}"
        )
        line = describe_run(what, train, config.optim, env, lr, start_step, precision)
        print(line, file=sys.stderr)
    distributed.barrier()
    log = MetricsLog(run_dir, start_step, train.tensorboard) if env.is_main else None

    images = run_image_cache(
        pairs.paths, config.crops.max_source_size, run_dir, env, progress and env.is_main
    )
    stream = PairStream(pairs, config.crops, train.seed, global_batch, tokenizer, images)
    loader = step_loader(
        stream, collate_pairs, train, start_step, env.rank, env.world_size, env.device
    )
    bar = step_progress(train, start_step, "pretrain (contrastive)", progress and env.is_main)
    o = config.optim
    started = time.perf_counter()
    last: dict[str, float] = {}
    step_start = started  # each step's time starts when it begins waiting for its batch
    try:
        for step, batch in zip(range(start_step, train.steps), loader, strict=False):
            step_lr = cosine_schedule(step, lr, o.min_lr, train.steps, o.warmup_steps)
            weight_decay = cosine_schedule(step, o.weight_decay, o.weight_decay_end, train.steps)
            set_lr_and_weight_decay(optimizer, step_lr, weight_decay)
            batch = batch.to(env.device)
            with autocast_context(precision, env.device):
                out = towers(batch.images, batch.input_ids, batch.attention_mask)
            loss, values = global_batch_loss(out, config.contrastive.objective, env)
            stop_if_diverged(loss, values, step, run_dir, env.device)
            optimizer_step(loss, optimizer, scaler, lambda: clip_gradients(model, o.clip_grad))
            model.clamp_logit_scale()

            if step % train.log_every == 0 or step == train.steps - 1:
                last = distributed.all_reduce_mean(values)
                last.update(
                    lr=step_lr,
                    weight_decay=weight_decay,
                    images_per_s=global_batch / (time.perf_counter() - step_start),
                )
                if log is not None:
                    log.log(step, last)
                bar.set_postfix(
                    loss=f"{last['loss']:.3f}", top1=f"{last['retrieval_accuracy']:.2f}"
                )
            bar.update(1)
            done = step + 1
            if done % train.checkpoint_every == 0 or done == train.steps:
                save_run_checkpoint(run_dir, done, model, optimizer, scaler, config, env)
            step_start = time.perf_counter()
    finally:
        bar.close()
        if log is not None:
            log.close()
    seconds = time.perf_counter() - started
    distributed.barrier()
    return RunSummary(run_dir, start_step, train.steps, seconds, last)


def clip_gradients(model: torch.nn.Module, max_norm: float) -> None:
    """One norm over every parameter (open_clip's ``grad_clip_norm``)."""
    if max_norm > 0:
        torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm)


def save_run_checkpoint(
    run_dir: Path,
    step: int,
    model: ImageTextModel,
    optimizer: torch.optim.Optimizer,
    scaler: torch.amp.GradScaler | None,
    config: ContrastiveConfig,
    env: distributed.DistEnv,
) -> None:
    """Rank 0 writes the state; every rank's RNG state is gathered into it. ``recipe`` and
    ``backbone_config`` tell :mod:`raddino.models.formats` where the image tower is."""
    rng = gathered_rng_states(env)
    if env.is_main:
        state = {
            "step": step,
            "recipe": config.recipe,
            "model": model.state_dict(),
            "optimizer": optimizer.state_dict(),
            "scaler": scaler.state_dict() if scaler is not None else {},
            "rng": rng,
            "config": config.to_dict(),
            "backbone_config": model.vision.config.to_dict(),
            "text_config": model.text.encoder.config.to_dict(),
        }
        save_checkpoint(run_dir, step, state, config.train.keep_last)
    distributed.barrier()


def load_run_model(run_dir: str | Path) -> tuple[ImageTextModel, Tokenizer]:
    """Both towers of a contrastive run's newest checkpoint (CPU, eval mode) and its tokenizer:
    for retrieval with the text tower; ``RadDino.from_pretrained(RUN)`` gives the image tower."""
    from raddino.models.vit import ViTConfig
    from raddino.ssl.config import config_from_dict

    run_dir = Path(run_dir)
    path, state = load_latest_checkpoint(run_dir)
    if state.get("recipe") != "contrastive":
        raise ValueError(f"{path}: not a checkpoint of a contrastive run")
    config = config_from_dict(state["config"])
    tokenizer = load_tokenizer(run_dir)
    model = ImageTextModel(
        ViTConfig(**state["backbone_config"]),
        config.text,
        config.contrastive,
        vocab_size=tokenizer.get_vocab_size(),
        pad_id=tokenizer.token_to_id(PAD),
    )
    model.load_state_dict(state["model"])
    return model.eval(), tokenizer
