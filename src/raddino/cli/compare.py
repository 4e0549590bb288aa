"""``raddino compare``: several encoders, the same protocols, one table with paired differences."""

from __future__ import annotations

import argparse
from pathlib import Path

from raddino.cli.options import (
    add_command,
    add_evaluation_arguments,
    add_probe_arguments,
    add_segment_arguments,
    encode_options,
    positive_int,
    probe_config,
    segment_config,
    structures,
)

# raddino.eval.pixels.DEFAULT_SIDE, spelled out so that parsing does not import torch (a test
# checks that they agree)
PIXEL_SIDE = 16

HELP = "compare encoders (probes and/or segmentation) in one table with confidence intervals"
EXAMPLES = """examples:
  raddino compare --models trained=runs/tiny --random-baseline --pixel-baseline 16 \\
      --manifest cohort/manifest.csv --targets effusion sex --masks heart --out eval/compare

  columns trained (the reference), random-init(tiny) and pixels 16x16, each with its difference
  from trained and the paired interval of that difference
"""


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = add_command(
        subparsers,
        "compare",
        help=HELP,
        description=HELP + ". Every encoder sees the same images, splits and bootstrap "
        "resamples; differences from the first encoder whose paired interval excludes 0 are "
        "marked. Writes compare.md, compare.json and one sub-directory per encoder.",
        examples=EXAMPLES,
    )
    parser.add_argument(
        "--models",
        nargs="+",
        required=True,
        metavar="M",
        help="encoders: HF Dinov2 directories or DINOv2 files, NAME=PATH to name one, "
        "random:PATH for a random-initialised one, pixels:SIDE for raw pixels (see "
        "--pixel-baseline; resized and cropped as the first encoder); the first is the reference",
    )
    parser.add_argument(
        "--random-baseline",
        action="store_true",
        help="add a random-initialised encoder with the first model's architecture",
    )
    parser.add_argument(
        "--pixel-baseline",
        nargs="?",
        const=str(PIXEL_SIDE),
        default=None,
        metavar="SIDE",
        help="add raw pixels as one more encoder, column 'pixels SIDExSIDE' (SIDE default "
        f"{PIXEL_SIDE}): probes read each image's SIDE x SIDE grey thumbnail (area average of "
        "the first model's crop), a linear segmentation head reads the crop averaged over each "
        "patch; e.g. --pixel-baseline 16",
    )
    parser.add_argument(
        "--fit-workers",
        type=positive_int,
        default=None,
        metavar="N",
        help="probes and heads fitted at the same time, each on --cpu-threads threads; the "
        "results are those of one at a time (default: as many as the CPU cores hold; 1 on a GPU "
        "or with --cpu-threads 0)",
    )
    add_probe_arguments(parser, required=False)
    add_segment_arguments(parser, required=False)
    add_evaluation_arguments(parser)
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from raddino.eval.compare import compare_encoders, compare_markdown
    from raddino.eval.encoders import EncoderSpec, borrow_preprocessing
    from raddino.eval.pixels import parse_side
    from raddino.eval.targets import parse_target_specs

    specs = borrow_preprocessing(
        [EncoderSpec.parse(m, image_size=args.image_size, seed=args.seed) for m in args.models]
    )
    if args.random_baseline:
        specs.append(specs[0].as_random())
    if args.pixel_baseline is not None:
        option = f"--pixel-baseline {args.pixel_baseline}"
        reference = next((spec for spec in specs if not spec.pixels), specs[0])
        pixels = reference.as_pixels(parse_side(args.pixel_baseline, option))
        pixels.pixel_encoder(option)  # a thumbnail larger than the crop fails here, named
        specs.append(pixels)
    report = compare_encoders(
        specs,
        args.manifest,
        args.out,
        encode_options(args),
        target_specs=parse_target_specs(args.targets) if args.targets else (),
        structures=structures(args.masks),
        features=args.features,
        probe_config=probe_config(args),
        segment_config=segment_config(args),
        cache_dir=args.cache,
        fit_workers=args.fit_workers,
    )
    print(compare_markdown(report))
    print(f"comparison: {Path(args.out) / 'compare.md'} (also compare.json)")
    return 0
