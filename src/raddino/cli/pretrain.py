"""``raddino pretrain``: pre-training into a run directory, with the recipe the config names:
image-only (DINO + iBOT + KoLeo, the default) or language-supervised (``recipe: contrastive``)."""

from __future__ import annotations

import argparse
import os
import sys

HELP = (
    "pre-train an encoder on unlabelled images (the RAD-DINO / DINOv2 recipe) or, with "
    "recipe: contrastive, on image-report pairs"
)
EPILOG = """examples:
  raddino pretrain --config configs/tiny_cpu.yaml --data images/ --out runs/tiny
  raddino pretrain --config configs/tiny_cpu.yaml train.steps=500 optim.base_lr=2e-3 \\
      --data manifest.csv --out runs/tiny --resume
  torchrun --nproc-per-node 4 -m raddino pretrain --config configs/vitb14_cxr.yaml \\
      --data manifest.csv --out runs/vitb14
  raddino pretrain --config configs/clip_tiny_cpu.yaml --data cohort/manifest.csv --out runs/clip
"""


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "pretrain",
        help=HELP,
        description=HELP + ". Runs unchanged under torchrun (DDP).",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="config overrides")
    parser.add_argument("--config", help="YAML preset (see configs/); defaults apply without one")
    parser.add_argument(
        "--data",
        required=True,
        action="append",
        help="images: folder, file or manifest .csv (contrastive: manifests with a report column)",
    )
    parser.add_argument("--out", required=True, help="run directory")
    parser.add_argument("--resume", action="store_true", help="continue the run in --out")
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from raddino.ssl import distributed
    from raddino.ssl.config import load_config
    from raddino.ssl.run import TrainingDivergedError
    from raddino.ssl.trainer import pretrain

    config = load_config(args.config, args.overrides)
    train = pretrain
    if config.recipe == "contrastive":
        from raddino.contrastive.trainer import pretrain_contrastive

        train = pretrain_contrastive
    try:
        summary = train(
            config, args.data, args.out, resume=args.resume, progress=not args.no_progress
        )
    except TrainingDivergedError as error:
        print(f"raddino pretrain: {error}", file=sys.stderr)
        return 3
    finally:
        distributed.shutdown()
    if os.environ.get("RANK", "0") != "0":  # under torchrun only the first process reports
        return 0
    if summary.start_step < summary.end_step:
        loss = summary.last_metrics.get("loss", float("nan"))
        print(
            f"trained steps {summary.start_step} -> {summary.end_step} in {summary.seconds:.0f} s,"
            f" final loss {loss:.4f}"
        )
    else:
        print(f"nothing to do: the run already reached step {summary.end_step}")
    print(f"run directory: {args.out}")
    return 0
