"""``raddino report``: report generation (init-lm, train, generate, eval)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from raddino.cli.options import add_device_argument, add_dtype_argument, positive_int

HELP = "report generation: a projector + language model on frozen features, and its metrics"


def _common(parser: argparse.ArgumentParser) -> None:
    add_device_argument(parser, default="cpu")
    parser.add_argument(
        "--cache", default=None, help="features cache directory (default: RUN/features)"
    )
    parser.add_argument(
        "--workers", type=int, default=2, help="image decoding processes (default: 2)"
    )
    parser.add_argument("--no-progress", action="store_true", help="hide progress bars")


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("report", help=HELP, description=HELP)
    commands = parser.add_subparsers(dest="report_command", required=True, metavar="STEP")

    init = commands.add_parser(
        "init-lm", help="train a tokenizer on the manifest's reports + a small random Llama"
    )
    init.add_argument("--corpus", required=True, help="manifest CSV with a 'report' column")
    init.add_argument("--out", required=True, help="language model directory to write")
    init.add_argument("--split", default="train", help="rows used as corpus (default: train)")
    init.add_argument("--vocab-size", type=positive_int, default=1000)
    init.add_argument("--hidden-size", type=positive_int, default=128)
    init.add_argument("--layers", type=positive_int, default=2)
    init.add_argument("--heads", type=positive_int, default=4)
    init.add_argument("--seed", type=int, default=0)
    init.set_defaults(run=run_init_lm)

    train = commands.add_parser("train", help="train the projector (+ LoRA / the whole LM)")
    train.add_argument("--encoder", required=True, help="HF Dinov2 dir, DINOv2 file or run dir")
    train.add_argument("--lm", required=True, help="Hugging Face causal LM directory")
    train.add_argument("--manifest", required=True, help="manifest CSV (path, split, report)")
    train.add_argument("--out", required=True, help="run directory")
    train.add_argument(
        "--stage",
        default="projector",
        choices=["projector", "lora", "full"],
        help="projector only (stage 1), + LoRA (stage 2), or + all LM weights (small LMs)",
    )
    train.add_argument("--init", default=None, help="start from this run's projector")
    train.add_argument("--steps", type=positive_int, default=1000, help="optimiser steps")
    train.add_argument("--batch-size", type=positive_int, default=8)
    train.add_argument("--grad-accum", type=positive_int, default=1)
    train.add_argument("--lr", type=float, default=1e-3)
    train.add_argument("--warmup-steps", type=int, default=0)
    train.add_argument("--weight-decay", type=float, default=0.0)
    train.add_argument(
        "--pool", type=int, default=0, help="pool patches to POOLxPOOL tokens (0 = all)"
    )
    train.add_argument("--prompt", default=None, help="prompt with one <image> placeholder")
    train.add_argument("--max-target-tokens", type=positive_int, default=256)
    train.add_argument("--lora-r", type=positive_int, default=8)
    train.add_argument("--lora-alpha", type=positive_int, default=16)
    train.add_argument("--split", default="train", help="training rows (default: train)")
    add_dtype_argument(
        train,
        default="auto",
        flag="--precision",
        what="autocast precision on GPU",
        note="on the CPU report models train in float32",
    )
    train.add_argument("--save-every", type=positive_int, default=200)
    train.add_argument("--seed", type=int, default=0)
    train.add_argument("--no-resume", action="store_true", help="start over even if RUN exists")
    _common(train)
    train.set_defaults(run=run_train)

    gen = commands.add_parser("generate", help="write reports for manifest rows")
    gen.add_argument("--run", dest="run_dir", required=True, help="report run directory")
    gen.add_argument("--manifest", required=True, help="manifest CSV")
    gen.add_argument("--out", required=True, help="predictions CSV (path, report)")
    gen.add_argument("--split", default="test", help="rows to report on; 'all' = every row")
    gen.add_argument("--beams", type=positive_int, default=1, help="beam width (1 = greedy)")
    gen.add_argument("--max-new-tokens", type=positive_int, default=128)
    gen.add_argument("--batch-size", type=positive_int, default=8)
    _common(gen)
    gen.set_defaults(run=run_generate)

    ev = commands.add_parser("eval", help="BLEU, ROUGE-L and clinical F1 of predictions")
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
        precision=args.precision,
        save_every=args.save_every,
        progress=not args.no_progress,
    )
    out = train_report_model(
        EncoderSpec.parse(args.encoder),
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
        args.run_dir, args.manifest, args.out, options, args.cache, _encode_options(args)
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
