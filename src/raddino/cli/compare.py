"""``raddino compare``: several encoders, the same protocols, one table with paired differences."""

from __future__ import annotations

import argparse
from pathlib import Path

from raddino.cli.probe import (
    add_evaluation_arguments,
    add_probe_arguments,
    encode_options,
    probe_config,
)
from raddino.cli.segment import add_segment_arguments, segment_config, structures

HELP = "compare encoders (probes and/or segmentation) in one table with confidence intervals"


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "compare",
        help=HELP,
        description=HELP + ". Every encoder sees the same images, splits and bootstrap "
        "resamples; differences from the first encoder whose paired interval excludes 0 are "
        "marked. Writes compare.md, compare.json and one sub-directory per encoder.",
    )
    parser.add_argument(
        "--models",
        nargs="+",
        required=True,
        metavar="M",
        help="encoders: HF Dinov2 directories or DINOv2 files, NAME=PATH to name one, "
        "random:PATH for a random-initialised one; the first is the reference",
    )
    parser.add_argument(
        "--random-baseline",
        action="store_true",
        help="add a random-initialised encoder with the first model's architecture",
    )
    add_probe_arguments(parser, required=False)
    add_segment_arguments(parser, required=False)
    add_evaluation_arguments(parser)
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from raddino.eval.compare import compare_encoders, compare_markdown
    from raddino.eval.encoders import EncoderSpec
    from raddino.eval.targets import parse_target_specs

    specs = [EncoderSpec.parse(m, image_size=args.image_size, seed=args.seed) for m in args.models]
    if args.random_baseline:
        specs.append(specs[0].as_random())
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
    )
    print(compare_markdown(report))
    print(f"comparison: {Path(args.out) / 'compare.md'} (also compare.json)")
    return 0
