"""``raddino segment``: a linear or UPerNet head on frozen patch tokens, scored by Dice and IoU."""

from __future__ import annotations

import argparse
from pathlib import Path

from raddino.cli.options import (
    add_command,
    add_evaluation_arguments,
    add_model_argument,
    add_segment_arguments,
    encode_options,
    segment_config,
    structures,
)

HELP = "train a segmentation head (linear or UPerNet) on frozen patch tokens; Dice/IoU with CIs"
EXAMPLES = """examples:
  raddino segment --model rad-dino/ --manifest cohort/manifest.csv \\
      --masks left_lung right_lung heart --out eval/segment
  raddino segment --model runs/tiny --manifest cohort/manifest.csv --masks heart \\
      --head upernet --epochs 40 --out eval/segment-upernet --device cuda
"""


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = add_command(
        subparsers,
        "segment",
        help=HELP,
        description=HELP + ". The encoder runs once (features cache); the head is chosen on the "
        "validation split. Writes segment.md, segment.json, scores_per_image.csv, "
        "head.safetensors and overlays/.",
        examples=EXAMPLES,
    )
    add_model_argument(parser, baselines=True)
    add_segment_arguments(parser)
    add_evaluation_arguments(parser)
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from raddino.eval.encoders import EncoderSpec
    from raddino.eval.segment_manifest import segment_manifest
    from raddino.eval.tables import format_estimate

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
        dice, iou = format_estimate(metrics["dice"]), format_estimate(metrics["iou"])
        print(f"{structure}: Dice {dice}, IoU {iou}")
    out = Path(args.out)
    print(f"segmentation report: {out / 'segment.md'} (also segment.json, overlays/)")
    return 0
