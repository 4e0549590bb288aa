"""Training of report models: stage 1 (projector), stage 2 (projector + LoRA), or full.

Stages (``TrainConfig.stage``):

- ``projector``: the LM is frozen, only the MLP projector learns (LLaVA stage 1).
- ``lora``: LoRA adapters (``peft``) on the LM's attention/MLP projections + the projector
  (LLaVA stage 2, parameter-efficient); start from a stage-1 run with ``init_from``.
- ``full``: the projector and every LM weight; for the small random LM of ``init-lm``.

The sample order is a pure function of the step (a seeded permutation per epoch), so a resumed
run sees the same batches as an uninterrupted one.

Run directory::

    RUN/config.json            encoder, language model, model and training settings
    RUN/projector.safetensors  the projector
    RUN/lora/                  stage lora: the peft adapter
    RUN/lm/                    stage full: the trained LM and its tokenizer
    RUN/checkpoint.pt          trainable weights, optimiser, scaler, step (resume)
    RUN/metrics.jsonl          step, loss, lr, images/s
"""

from __future__ import annotations

import json
import sys
import time
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

from raddino.atomic import write_atomic
from raddino.devices import check_device
from raddino.eval.encoders import EncoderSpec
from raddino.eval.report_generation.data import ImageTokens, encode_images, read_report_rows
from raddino.eval.report_generation.lm import load_lm
from raddino.eval.report_generation.model import DEFAULT_PROMPT, ReportModel, ReportModelConfig
from raddino.features.encode import EncodeOptions
from raddino.precision import dtype_name, resolve_dtype
from raddino.ssl.metrics import MetricsLog
from raddino.ssl.schedules import cosine_schedule, linear_warmup

STAGES = ("projector", "lora", "full")


@dataclass(frozen=True)
class TrainConfig:
    """Training settings; ``steps`` counts optimiser steps (each of ``grad_accum`` batches)."""

    stage: str = "projector"
    steps: int = 1000
    batch_size: int = 8
    grad_accum: int = 1
    lr: float = 1e-3
    weight_decay: float = 0.0
    warmup_steps: int = 0
    pool: int = 0
    projector_hidden: int = 0
    prompt: str = DEFAULT_PROMPT
    max_target_tokens: int = 256
    lora_r: int = 8
    lora_alpha: int = 16
    lora_dropout: float = 0.05
    lora_targets: tuple[str, ...] = field(default_factory=tuple)  # () = all linear layers
    split: str = "train"
    seed: int = 0
    device: str = "cpu"
    precision: torch.dtype | None = None  # autocast dtype on GPU (None = auto); see compute_dtype
    log_every: int = 10
    save_every: int = 200
    progress: bool = True

    def __post_init__(self) -> None:
        if self.stage not in STAGES:
            raise ValueError(f"stage={self.stage!r}: choose {', '.join(STAGES)}")
        for key in ("steps", "batch_size", "grad_accum", "log_every", "save_every"):
            if getattr(self, key) < 1:
                raise ValueError(f"{key}={getattr(self, key)} must be >= 1")
        if self.lr <= 0:
            raise ValueError(f"lr={self.lr} must be > 0")
        if self.precision is not None and not isinstance(self.precision, torch.dtype):
            raise TypeError(
                f"precision={self.precision!r}: pass a torch.dtype or None (auto); "
                "raddino.precision.parse_dtype reads names"
            )


def sample_indices(step: int, micro: int, config: TrainConfig, n: int) -> np.ndarray:
    """Rows of micro-batch ``micro`` of optimiser step ``step`` (seeded permutation per epoch)."""
    start = (step * config.grad_accum + micro) * config.batch_size
    positions = np.arange(start, start + config.batch_size)
    out = np.empty(len(positions), dtype=np.int64)
    for epoch in np.unique(positions // n):
        perm = np.random.default_rng([config.seed, int(epoch)]).permutation(n)
        where = positions // n == epoch
        out[where] = perm[positions[where] % n]
    return out


def learning_rate(step: int, config: TrainConfig) -> float:
    """Linear warm-up (reaching ``lr`` at the last warm-up step), then cosine decay to 0."""
    if step < config.warmup_steps:
        return linear_warmup(step + 1, 0.0, config.lr, config.warmup_steps)
    return cosine_schedule(step, config.lr, 0.0, config.steps, config.warmup_steps)


def compute_dtype(precision: torch.dtype | None, device: torch.device) -> torch.dtype:
    """The dtype a report model computes in on ``device``.

    On CUDA: ``precision`` (None = auto, :func:`raddino.precision.resolve_dtype`), used for
    autocast and as the dtype of a frozen or generating LM. On the CPU: float32, where report
    models use neither.
    """
    if device.type != "cuda":
        return torch.float32
    return resolve_dtype(precision, device)


def apply_stage(model: ReportModel, config: TrainConfig) -> ReportModel:
    """Freeze / wrap the LM as the stage says; the projector always trains."""
    if config.stage == "full":
        model.lm.requires_grad_(True)
    else:
        model.lm.requires_grad_(False)
    if config.stage == "lora":
        from peft import LoraConfig, get_peft_model

        lora = LoraConfig(
            r=config.lora_r,
            lora_alpha=config.lora_alpha,
            lora_dropout=config.lora_dropout,
            target_modules=list(config.lora_targets) or "all-linear",
            task_type="CAUSAL_LM",
        )
        model.lm = get_peft_model(model.lm, lora)
    model.projector.requires_grad_(True)
    return model


def build_model(
    lm_dir: str | Path, encoder_dim: int, config: TrainConfig, device: torch.device
) -> ReportModel:
    """Projector + LM from ``lm_dir``; a frozen LM is held in the compute dtype (half precision
    on GPU, :func:`compute_dtype`)."""
    compute = compute_dtype(config.precision, device)
    lm_dtype = compute if config.stage != "full" else torch.float32
    lm, tokenizer = load_lm(lm_dir, dtype=lm_dtype)
    model_config = ReportModelConfig(
        encoder_dim=encoder_dim,
        lm_dim=int(lm.get_input_embeddings().weight.shape[1]),
        projector_hidden=config.projector_hidden,
        pool=config.pool,
        prompt=config.prompt,
        max_target_tokens=config.max_target_tokens,
    )
    return ReportModel(model_config, lm, tokenizer)


def trainable_state(model: ReportModel) -> dict[str, torch.Tensor]:
    """Every parameter that receives gradients, by name."""
    return {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}


def _identity(run_config: dict) -> str:
    """What must match to resume: everything but progress display and device."""
    train = {k: v for k, v in run_config["train"].items() if k not in ("progress", "device")}
    return json.dumps({**run_config, "train": train}, sort_keys=True)


def _atomic_save(obj: object, path: Path) -> None:
    write_atomic(path, lambda temp: torch.save(obj, temp))


def train_report_model(
    encoder: EncoderSpec,
    lm_dir: str | Path,
    manifest: str | Path,
    out_dir: str | Path,
    config: TrainConfig,
    encode_options: EncodeOptions | None = None,
    cache: str | Path | None = None,
    init_from: str | Path | None = None,
    resume: bool = True,
) -> Path:
    """Train a report model on the ``config.split`` rows of ``manifest``; returns ``out_dir``.

    The run draws its random numbers (initialisation, dropout) from torch's generators seeded
    with ``config.seed``, and leaves the caller's generator states as they were. A checkpoint
    keeps the generators' states, so a resumed run draws the same dropout masks as an
    uninterrupted one.
    """
    device = check_device(config.device)
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        return _train_report_model(
            encoder,
            lm_dir,
            manifest,
            out_dir,
            config,
            device,
            encode_options,
            cache,
            init_from,
            resume,
        )


def _rng_state(device: torch.device) -> dict[str, torch.Tensor]:
    """The generator states a step's dropout draws from: the CPU's, and the GPU's on CUDA."""
    state = {"cpu": torch.get_rng_state()}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def _set_rng_state(state: dict[str, torch.Tensor], device: torch.device) -> None:
    """Restore :func:`_rng_state`'s states (CPU byte tensors, wherever the checkpoint was
    loaded to)."""
    torch.set_rng_state(state["cpu"].cpu())
    if device.type == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"].cpu(), device)


def _train_report_model(
    encoder: EncoderSpec,
    lm_dir: str | Path,
    manifest: str | Path,
    out_dir: str | Path,
    config: TrainConfig,
    device: torch.device,
    encode_options: EncodeOptions | None,
    cache: str | Path | None,
    init_from: str | Path | None,
    resume: bool,
) -> Path:
    from safetensors.torch import load_file, save_file
    from tqdm.auto import tqdm

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    if not (Path(lm_dir) / "config.json").exists():
        raise FileNotFoundError(
            f"language model {lm_dir}: no config.json (a Hugging Face directory)"
        )
    rows = read_report_rows(manifest, config.split)
    options = encode_options or EncodeOptions(device=config.device, progress=config.progress)
    encoded = encode_images(encoder, rows.paths, cache or out / "features", options)
    tokens = ImageTokens(encoded, config.pool)
    usable = np.flatnonzero(tokens.valid)
    if len(usable) == 0:
        raise ValueError(f"{manifest}: no training image could be encoded")

    torch.manual_seed(config.seed)
    model = build_model(lm_dir, tokens.dim, config, device)
    if init_from is not None:
        model.projector.load_state_dict(load_file(Path(init_from) / "projector.safetensors"))
    apply_stage(model, config)
    model.to(device)
    run_config = {
        "encoder": {**encoder.describe(), "source": str(Path(encoder.source).resolve())},
        "lm": str(Path(lm_dir).resolve()),
        "init_from": str(init_from) if init_from else None,
        "model": model.config.to_dict(),
        "train": {**asdict(config), "precision": dtype_name(config.precision)},
        "train_images": len(usable),
    }
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay)
    compute = compute_dtype(config.precision, device)
    use_autocast = compute != torch.float32
    scaler = torch.amp.GradScaler("cuda", enabled=use_autocast and compute == torch.float16)

    step = 0
    checkpoint = out / "checkpoint.pt"
    if resume and checkpoint.exists():
        state = torch.load(checkpoint, map_location=device, weights_only=True)
        if _identity(state["config"]) != _identity(run_config):
            raise ValueError(f"{out}: the run was started with other settings; use a new --out")
        model.load_state_dict(state["trainable"], strict=False)
        optimizer.load_state_dict(state["optimizer"])
        scaler.load_state_dict(state["scaler"])
        step = int(state["step"])
        if "rng" in state:  # checkpoints before 2026-12-06 did not keep it
            _set_rng_state(state["rng"], device)
        print(f"resuming {out} at step {step}", file=sys.stderr)
    (out / "config.json").write_text(json.dumps(run_config, indent=2))

    def save_checkpoint() -> None:
        state = {
            "config": json.loads(json.dumps(run_config)),
            "trainable": trainable_state(model),
            "optimizer": optimizer.state_dict(),
            "scaler": scaler.state_dict(),
            "step": step,
            "rng": _rng_state(device),
        }
        _atomic_save(state, checkpoint)

    log = MetricsLog(out, step + 1, tensorboard=False)  # rows count the steps done: keep <= step
    model.train()
    bar = tqdm(total=config.steps, initial=step, disable=not config.progress, desc="train")
    start, seen = time.perf_counter(), 0
    while step < config.steps:
        lr = learning_rate(step, config)
        for group in optimizer.param_groups:
            group["lr"] = lr
        total = 0.0
        for micro in range(config.grad_accum):
            batch = usable[sample_indices(step, micro, config, len(usable))]
            images = tokens(batch).to(device)
            context = torch.autocast(device.type, dtype=compute) if use_autocast else nullcontext()
            with context:
                loss = model(images, [rows.reports[i] for i in batch]) / config.grad_accum
            scaler.scale(loss).backward()
            total += float(loss.detach())
            seen += len(batch)
        scaler.unscale_(optimizer)
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        scaler.step(optimizer)
        scaler.update()
        optimizer.zero_grad(set_to_none=True)
        step += 1
        bar.update(1)
        bar.set_postfix(loss=f"{total:.4f}")
        if step % config.log_every == 0 or step == config.steps:
            rate = seen / max(1e-9, time.perf_counter() - start)
            log.log(step, {"loss": total, "lr": lr, "images_s": rate})
        if step % config.save_every == 0 and step < config.steps:
            save_checkpoint()
    bar.close()
    log.close()
    save_checkpoint()
    save_file(
        {k: v.detach().float().cpu().contiguous() for k, v in model.projector.state_dict().items()},
        str(out / "projector.safetensors"),
    )
    if config.stage == "lora":
        model.lm.save_pretrained(out / "lora")
    elif config.stage == "full":
        model.lm.save_pretrained(out / "lm")
        model.tokenizer.save_pretrained(out / "lm")
    return out
