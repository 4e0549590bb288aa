"""``raddino pretrain``: pre-training into a run directory, with the recipe the config names:
image-only (DINO + iBOT + KoLeo, the default) or language-supervised (``recipe: contrastive``)."""

from __future__ import annotations

import argparse
import os
import sys

from raddino.cli.options import RESUME_RULE, add_command, add_progress_argument, add_retired_flag

HELP = (
    "pre-train an encoder on unlabelled images (the RAD-DINO / DINOv2 recipe) or, with "
    "recipe: contrastive, on image-report pairs"
)
EXAMPLES = """examples:
  raddino pretrain --config tiny_cpu --data images/ --out runs/tiny
  raddino pretrain --config tiny_cpu train.steps=1600 --data images/ --out runs/tiny  # to 1600
  torchrun --nproc-per-node 4 -m raddino pretrain --config vitb14_cxr \\
      --data manifest.csv --out runs/vitb14
  raddino pretrain --config clip_tiny_cpu --data cohort/manifest.csv --out runs/clip
"""


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = add_command(
        subparsers,
        "pretrain",
        help=HELP,
        description=HELP + ". Runs unchanged under torchrun (DDP). Re-running the command "
        "continues the run in --out from its newest checkpoint with the config given, which may "
        "change train.steps (e.g. to extend the run), the device, workers, checkpoint and "
        "logging frequency, and nothing else (refused: use the run's config.yaml); for a new run "
        "choose a new --out.",
        examples=EXAMPLES,
    )
    parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="config overrides")
    parser.add_argument(
        "--config",
        help="a YAML file, or the name of a preset installed with raddino: tiny_cpu and "
        "clip_tiny_cpu (minutes on a CPU), vitb14_cxr and clip_vitb14_cxr (GPU scale); without "
        "one, the defaults (a small ViT at GPU scale)",
    )
    parser.add_argument(
        "--data",
        required=True,
        action="append",
        help="images: folder, file or manifest .csv (contrastive: manifests with a report column)",
    )
    parser.add_argument(
        "--out", required=True, help="run directory (created; continued if it holds a run)"
    )
    add_retired_flag(parser, "--resume", f"--resume is now the default: {RESUME_RULE}")
    add_progress_argument(parser)
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from raddino.ssl import distributed
    from raddino.ssl.config import load_config
    from raddino.ssl.run import TrainingDivergedError
    from raddino.ssl.trainer import pretrain

    config = load_config(args.config, args.overrides)
    if args.config is None and not args.overrides and os.environ.get("RANK", "0") == "0":
        print(
            f"raddino pretrain: no --config: the defaults train a ViT ({config.model.arch}) for "
            f"{config.train.steps} steps of batch {config.train.batch_size}; on a CPU use "
            "--config tiny_cpu",
            file=sys.stderr,
        )
    train = pretrain
    if config.recipe == "contrastive":
        from raddino.contrastive.trainer import pretrain_contrastive

        train = pretrain_contrastive
    try:
        summary = train(config, args.data, args.out, resume=True, progress=not args.no_progress)
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
