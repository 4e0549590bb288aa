"""``raddino segment``: a linear or UPerNet head on frozen patch tokens, scored by Dice and IoU."""

from __future__ import annotations

import argparse
from pathlib import Path

from raddino.cli.probe import add_evaluation_arguments, encode_options, positive_int

HELP = "train a segmentation head (linear or UPerNet) on frozen patch tokens; Dice/IoU with CIs"


def add_segment_arguments(parser: argparse.ArgumentParser, required: bool = True) -> None:
    parser.add_argument(
        "--masks",
        nargs="+",
        required=required,
        default=[],
        metavar="STRUCTURE",
        help="structures, read from the manifest's mask_<structure> columns (PNG masks of "
        "the image's size; empty = not annotated), e.g. lungs heart",
    )
    parser.add_argument(
        "--head", default="linear", choices=["linear", "upernet"], help="(default: linear)"
    )
    parser.add_argument(
        "--linear-layers",
        type=positive_int,
        default=1,
        help="linear head over the last N blocks concatenated (DINOv2 uses 1 or 4; default: 1)",
    )
    parser.add_argument(
        "--channels", type=positive_int, default=256, help="UPerNet width (default: 256)"
    )
    parser.add_argument("--epochs", type=positive_int, default=20, help="(default: 20)")
    parser.add_argument("--lr", type=float, default=1e-3, help="AdamW learning rate (1e-3)")
    parser.add_argument(
        "--train-batch-size", type=positive_int, default=8, help="head training batch (default: 8)"
    )
    parser.add_argument(
        "--overlays", type=int, default=4, help="overlay PNGs of this many test images (4)"
    )
    parser.add_argument(
        "--no-amp", action="store_true", help="train in float32 on GPU (default: mixed precision)"
    )


def segment_config(args: argparse.Namespace):
    from raddino.eval.segment import SegmentConfig

    return SegmentConfig(
        head=args.head,
        linear_layers=args.linear_layers,
        channels=args.channels,
        epochs=args.epochs,
        batch_size=args.train_batch_size,
        lr=args.lr,
        n_resamples=args.bootstrap,
        seed=args.seed,
        device=args.device,
        amp=not args.no_amp,
        overlays=max(args.overlays, 0),
        progress=not args.no_progress,
        cpu_threads=args.cpu_threads or None,
    )


def structures(items: list[str]) -> list[str]:
    return [part.strip() for item in items for part in item.split(",") if part.strip()]


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "segment",
        help=HELP,
        description=HELP + ". The encoder runs once (features cache); the head is chosen on the "
        "validation split. Writes segment.md, segment.json, scores_per_image.csv, "
        "head.safetensors and overlays/.",
    )
    parser.add_argument(
        "--model",
        required=True,
        help="HF Dinov2 directory or DINOv2 .safetensors/.pth; random:PATH for a random-"
        "initialised encoder of that architecture",
    )
    add_segment_arguments(parser)
    add_evaluation_arguments(parser)
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from raddino.eval.encoders import EncoderSpec
    from raddino.eval.segment_report import segment_manifest

    spec = EncoderSpec.parse(args.model, image_size=args.image_size, seed=args.seed)
    report = segment_manifest(
        spec,
        args.manifest,
        structures(args.masks),
        args.out,
        encode_options(args),
        segment_config(args),
        cache_dir=args.cache,
    )
    for structure, metrics in report.metrics.items():
        dice, iou = metrics["dice"], metrics["iou"]
        print(
            f"{structure}: Dice {dice.value:.3f} [{dice.low:.3f}, {dice.high:.3f}], "
            f"IoU {iou.value:.3f} [{iou.low:.3f}, {iou.high:.3f}]"
        )
    out = Path(args.out)
    print(f"segmentation report: {out / 'segment.md'} (also segment.json, overlays/)")
    return 0
