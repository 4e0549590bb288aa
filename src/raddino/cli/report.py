"""``raddino report``: report generation (init-lm, train, generate, eval)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from raddino.cli.options import (
    MODEL_SOURCES,
    RESUME_RULE,
    add_command,
    add_device_argument,
    add_dtype_argument,
    add_model_argument,
    add_progress_argument,
    add_retired_flag,
    add_seed_argument,
    positive_int,
)

HELP = "report generation: a projector + language model on frozen features, and its metrics"
EXAMPLES = """examples (the four steps, on a synthetic cohort and a pre-trained run):
  raddino report init-lm --corpus cohort/manifest.csv --out lm/
  raddino report train --model runs/tiny --lm lm/ --manifest cohort/manifest.csv \\
      --out runs/report --stage full
  raddino report generate --model runs/report --manifest cohort/manifest.csv --out pred.csv
  raddino report eval --pred pred.csv --manifest cohort/manifest.csv
"""


def _common(parser: argparse.ArgumentParser) -> None:
    add_device_argument(parser)
    parser.add_argument(
        "--cache", default=None, help="features cache directory (default: RUN/features)"
    )
    parser.add_argument(
        "--workers", type=int, default=2, help="image decoding processes (default: 2)"
    )
    add_progress_argument(parser)


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = add_command(
        subparsers,
        "report",
        help=HELP,
        description=HELP + ". Steps: init-lm (optional: a small LM for CPUs), train, generate, "
        "eval; 'raddino report STEP --help' for each.",
        examples=EXAMPLES,
    )
    commands = parser.add_subparsers(dest="report_command", required=True, metavar="STEP")
    _add_init_lm(commands)
    _add_train(commands)
    _add_generate(commands)
    _add_eval(commands)


def _add_init_lm(commands: argparse._SubParsersAction) -> None:
    init = add_command(
        commands,
        "init-lm",
        help="train a tokenizer on the manifest's reports + a small random Llama",
        description="Train a BPE tokenizer on the reports of --split and write it with a small "
        "randomly initialised Llama to --out: a language model for 'report train --stage full' "
        "that runs on a CPU and needs no download.",
        examples="""examples:
  raddino report init-lm --corpus cohort/manifest.csv --out lm/
  raddino report init-lm --corpus cohort/manifest.csv --out lm-wide/ --hidden-size 256 --heads 8
""",
    )
    init.add_argument("--corpus", required=True, help="manifest CSV with a 'report' column")
    init.add_argument("--out", required=True, help="language model directory to write")
    init.add_argument(
        "--split", default="train", help="rows used as corpus; all = every row (default: train)"
    )
    init.add_argument(
        "--vocab-size",
        type=positive_int,
        default=1000,
        help="tokens in the vocabulary (default: 1000)",
    )
    init.add_argument(
        "--hidden-size", type=positive_int, default=128, help="the LM's width (default: 128)"
    )
    init.add_argument(
        "--layers", type=positive_int, default=2, help="the LM's decoder blocks (default: 2)"
    )
    init.add_argument(
        "--heads",
        type=positive_int,
        default=4,
        help="attention heads; --hidden-size must be a multiple (default: 4)",
    )
    add_seed_argument(init)
    init.set_defaults(run=run_init_lm)


def _add_train(commands: argparse._SubParsersAction) -> None:
    train = add_command(
        commands,
        "train",
        help="train the projector (+ LoRA / the whole LM)",
        description="Train a report model on frozen features of --model: the projector alone, "
        "+ LoRA adapters, or + every LM weight (--stage). Writes the run directory --out "
        "(config.json, projector.safetensors, checkpoint.pt, metrics.jsonl). Re-running the "
        "command continues the run; an --out holding a run with other settings is refused.",
        examples="""examples:
  raddino report train --model runs/tiny --lm lm/ --manifest cohort/manifest.csv \\
      --out runs/report --stage full
  raddino report train --model rad-dino/ --lm vicuna-7b/ --manifest mimic.csv --out run2 \\
      --stage lora --init run1 --lr 2e-4 --device cuda
""",
    )
    add_model_argument(
        train,
        help=f"the frozen image encoder: {MODEL_SOURCES}; random:PATH for a random-initialised one",
        old=("--encoder",),
    )
    train.add_argument(
        "--lm",
        required=True,
        help="Hugging Face causal LM directory (e.g. from 'raddino report init-lm')",
    )
    train.add_argument("--manifest", required=True, help="manifest CSV (path, split, report)")
    train.add_argument(
        "--out", required=True, help="run directory (created; continued if it holds this run)"
    )
    train.add_argument(
        "--stage",
        default="projector",
        choices=["projector", "lora", "full"],
        help="projector only (stage 1), + LoRA (stage 2), or + all LM weights (small LMs) "
        "(default: projector)",
    )
    train.add_argument(
        "--init", default=None, help="start from this report run's projector (e.g. stage 1's)"
    )
    train.add_argument(
        "--steps", type=positive_int, default=1000, help="optimiser steps (default: 1000)"
    )
    train.add_argument(
        "--batch-size",
        type=positive_int,
        default=8,
        help="image-report pairs per batch (default: 8)",
    )
    train.add_argument(
        "--grad-accum",
        type=positive_int,
        default=1,
        help="batches accumulated per optimiser step (default: 1)",
    )
    train.add_argument(
        "--lr",
        type=float,
        default=1e-3,
        help="AdamW peak learning rate, cosine decay (default: 1e-3)",
    )
    train.add_argument(
        "--warmup-steps", type=int, default=0, help="linear warm-up steps (default: 0)"
    )
    train.add_argument(
        "--weight-decay", type=float, default=0.0, help="AdamW weight decay (default: 0)"
    )
    train.add_argument(
        "--pool", type=int, default=0, help="pool patches to POOLxPOOL tokens (default: 0 = all)"
    )
    train.add_argument(
        "--prompt",
        default=None,
        help="prompt with one <image> placeholder, where the image tokens go (default: "
        "'Image: <image>' and 'Findings:' on the next line)",
    )
    train.add_argument(
        "--max-target-tokens",
        type=positive_int,
        default=256,
        help="reports are truncated to this many tokens for training (default: 256)",
    )
    train.add_argument(
        "--lora-r", type=positive_int, default=8, help="LoRA rank, stage lora (default: 8)"
    )
    train.add_argument(
        "--lora-alpha",
        type=positive_int,
        default=16,
        help="LoRA scale numerator, alpha/r, stage lora (default: 16)",
    )
    train.add_argument("--split", default="train", help="training rows (default: train)")
    add_dtype_argument(
        train,
        default="auto",
        what="autocast precision on GPU",
        note="on the CPU report models train in fp32",
        old=("--precision",),
    )
    train.add_argument(
        "--save-every",
        type=positive_int,
        default=200,
        help="checkpoint every this many steps (default: 200)",
    )
    add_seed_argument(train)
    add_retired_flag(
        train,
        "--no-resume",
        f"--no-resume is deprecated (it still starts this run over): {RESUME_RULE}",
        dest="no_resume",
    )
    _common(train)
    train.set_defaults(run=run_train)


def _add_generate(commands: argparse._SubParsersAction) -> None:
    gen = add_command(
        commands,
        "generate",
        help="write reports for manifest rows",
        description="Write a report for each image of --split with the report model of a "
        "'report train' run (LoRA merged into the LM), as a CSV of path, report.",
        examples="""examples:
  raddino report generate --model runs/report --manifest cohort/manifest.csv --out pred.csv
  raddino report generate --model run2 --manifest mimic.csv --out pred.csv --beams 3 --device cuda
""",
    )
    add_model_argument(
        gen, help="report run directory, from 'raddino report train'", old=("--run",)
    )
    gen.add_argument("--manifest", required=True, help="manifest CSV")
    gen.add_argument("--out", required=True, help="predictions CSV (path, report)")
    gen.add_argument(
        "--split", default="test", help="rows to report on; all = every row (default: test)"
    )
    gen.add_argument(
        "--beams", type=positive_int, default=1, help="beam width (default: 1 = greedy)"
    )
    gen.add_argument(
        "--max-new-tokens",
        type=positive_int,
        default=128,
        help="longest report written, in tokens (default: 128)",
    )
    gen.add_argument(
        "--batch-size", type=positive_int, default=8, help="images per batch (default: 8)"
    )
    _common(gen)
    gen.set_defaults(run=run_generate)


def _add_eval(commands: argparse._SubParsersAction) -> None:
    ev = add_command(
        commands,
        "eval",
        help="BLEU, ROUGE-L and clinical F1 of predictions",
        description="Score predicted reports against the manifest's: BLEU-1/4, ROUGE-L, "
        "clinical F1 (micro and macro) and the same for the most common training report as a "
        "baseline. Writes a metrics JSON.",
        examples="""examples:
  raddino report eval --pred pred.csv --manifest cohort/manifest.csv
  raddino report eval --pred pred.csv --manifest mimic.csv --uncertain-as-positive
""",
    )
    ev.add_argument("--pred", required=True, help="predictions CSV from 'report generate'")
    ev.add_argument("--manifest", required=True, help="manifest CSV with reference reports")
    ev.add_argument("--out", default=None, help="metrics JSON (default: PRED.metrics.json)")
    ev.add_argument(
        "--uncertain-as-positive",
        action="store_true",
        help="count uncertain findings as present",
    )
    ev.set_defaults(run=run_eval)


def run_init_lm(args: argparse.Namespace) -> int:
    from raddino.eval.report_generation.data import read_report_rows
    from raddino.eval.report_generation.lm import SmallLMConfig, init_lm

    rows = read_report_rows(args.corpus, None if args.split == "all" else args.split)
    config = SmallLMConfig(
        vocab_size=args.vocab_size,
        hidden_size=args.hidden_size,
        num_layers=args.layers,
        num_heads=args.heads,
        seed=args.seed,
    )
    out = init_lm(rows.reports, args.out, config)
    print(f"language model ({len(rows.reports)} reports as tokenizer corpus): {out}")
    return 0


def _encode_options(args: argparse.Namespace):
    from raddino.features.encode import EncodeOptions

    return EncodeOptions(
        num_workers=args.workers, device=args.device, progress=not args.no_progress
    )


def run_train(args: argparse.Namespace) -> int:
    from raddino.eval.encoders import EncoderSpec
    from raddino.eval.report_generation.model import DEFAULT_PROMPT
    from raddino.eval.report_generation.train import TrainConfig, train_report_model

    config = TrainConfig(
        stage=args.stage,
        steps=args.steps,
        batch_size=args.batch_size,
        grad_accum=args.grad_accum,
        lr=args.lr,
        weight_decay=args.weight_decay,
        warmup_steps=args.warmup_steps,
        pool=args.pool,
        prompt=args.prompt or DEFAULT_PROMPT,
        max_target_tokens=args.max_target_tokens,
        lora_r=args.lora_r,
        lora_alpha=args.lora_alpha,
        split=args.split,
        seed=args.seed,
        device=args.device,
        precision=args.dtype,
        save_every=args.save_every,
        progress=not args.no_progress,
    )
    out = train_report_model(
        EncoderSpec.parse(args.model),
        args.lm,
        args.manifest,
        args.out,
        config,
        encode_options=_encode_options(args),
        cache=args.cache,
        init_from=args.init,
        resume=not args.no_resume,
    )
    from raddino.ssl.metrics import read_metrics

    rows = read_metrics(out)
    if rows:
        print(f"final loss {rows[-1]['loss']:.4f}")
    print(f"report run: {out}")
    return 0


def run_generate(args: argparse.Namespace) -> int:
    from raddino.eval.report_generation.generate import GenerateOptions, generate_reports

    options = GenerateOptions(
        max_new_tokens=args.max_new_tokens,
        num_beams=args.beams,
        batch_size=args.batch_size,
        split=None if args.split == "all" else args.split,
        device=args.device,
        progress=not args.no_progress,
    )
    out = generate_reports(
        args.model, args.manifest, args.out, options, args.cache, _encode_options(args)
    )
    print(f"reports: {out}")
    return 0


def run_eval(args: argparse.Namespace) -> int:
    from raddino.eval.report_generation.evaluate import score_predictions

    out = Path(args.out) if args.out else Path(args.pred).with_suffix(".metrics.json")
    result = score_predictions(args.pred, args.manifest, out, args.uncertain_as_positive)
    clinical = result["clinical"]
    print(
        f"{result['reports']} reports: BLEU-1 {result['bleu1']:.2f}  BLEU-4 {result['bleu4']:.2f}"
        f"  ROUGE-L {result['rougeL']:.4f}  clinical F1 micro {clinical['micro']['f1']:.4f}"
        f" macro {clinical['macro']['f1']:.4f}"
    )
    base = result.get("baseline_most_common_report")
    if base:
        micro, macro = base["clinical"]["micro"]["f1"], base["clinical"]["macro"]["f1"]
        print(
            f"baseline (most common report): clinical F1 micro {micro:.4f} macro {macro:.4f}"
            f"  BLEU-4 {base['bleu4']:.2f}"
        )
    for name, reason in result["skipped"].items():
        print(f"skipped {name}: {reason}", file=sys.stderr)
    print(f"metrics: {out}")
    return 0
