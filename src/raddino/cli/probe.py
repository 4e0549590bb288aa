"""``raddino probe``: linear and k-NN probes of findings and patient metadata on frozen features.

Also holds the options that ``probe``, ``segment`` and ``compare`` share.
"""

from __future__ import annotations

import argparse
from pathlib import Path

HELP = "linear / k-NN probes of manifest columns (findings, sex, age, BMI) on frozen features"


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from error
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value} must be >= 1")
    return value


def add_evaluation_arguments(parser: argparse.ArgumentParser) -> None:
    """Options every evaluation command takes: data, output, device, encoding, bootstrap."""
    parser.add_argument("--manifest", required=True, help="manifest CSV (path, split, labels...)")
    parser.add_argument("--out", required=True, help="output directory")
    parser.add_argument(
        "--device", default="cpu", help="auto, cpu, cuda, cuda:1, ... (default: cpu)"
    )
    parser.add_argument(
        "--dtype",
        default="auto",
        choices=["auto", "float32", "bfloat16", "float16"],
        help="encoder precision; auto = bfloat16/float16 on GPU, float32 on CPU (default: auto)",
    )
    parser.add_argument(
        "--image-size",
        type=positive_int,
        default=None,
        help="resize and crop to this size instead of the model's (a multiple of the patch size)",
    )
    parser.add_argument(
        "--batch-size", type=positive_int, default=16, help="images per batch (default: 16)"
    )
    parser.add_argument(
        "--workers", type=int, default=2, help="decoding worker processes (default: 2)"
    )
    parser.add_argument(
        "--cache",
        default=None,
        help="features cache directory, shared between runs (default: OUT/features)",
    )
    parser.add_argument(
        "--bootstrap",
        type=positive_int,
        default=1000,
        help="patient-level bootstrap resamples for the intervals (default: 1000)",
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of splits, resamples, training")
    parser.add_argument(
        "--cpu-threads",
        type=int,
        default=1,
        help="threads for fitting probes / training heads on CPU; 0 = torch's default "
        "(default: 1, fastest on a shared CPU; try 0 for UPerNet on an idle many-core machine)",
    )
    parser.add_argument("--no-progress", action="store_true", help="hide progress bars")


def add_probe_arguments(parser: argparse.ArgumentParser, required: bool = True) -> None:
    parser.add_argument(
        "--targets",
        nargs="+",
        required=required,
        default=[],
        metavar="COL",
        help="manifest columns to probe, e.g. pneumonia effusion sex age:continuous "
        "(kind guessed unless given as :binary or :continuous)",
    )
    parser.add_argument(
        "--features",
        default="cls",
        choices=["cls", "cls+mean"],
        help="CLS token, or CLS + mean patch token as DINOv2's linear evaluation (default: cls)",
    )
    parser.add_argument(
        "--protocols",
        default="linear,knn",
        help="comma-separated: linear (logistic; ridge for continuous targets), knn "
        "(default: both)",
    )


def encode_options(args: argparse.Namespace):
    """EncodeOptions from the shared arguments."""
    from raddino.features.encode import EncodeOptions

    if args.workers < 0:
        raise ValueError(f"--workers {args.workers} must be >= 0")
    return EncodeOptions(
        batch_size=args.batch_size,
        num_workers=args.workers,
        device=args.device,
        dtype=args.dtype,
        progress=not args.no_progress,
    )


def probe_config(args: argparse.Namespace):
    from raddino.eval.probe import ProbeConfig

    protocols = tuple(p.strip() for p in args.protocols.split(",") if p.strip())
    return ProbeConfig(
        protocols=protocols,
        n_resamples=args.bootstrap,
        seed=args.seed,
        device=args.device,
        cpu_threads=args.cpu_threads or None,
    )


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "probe",
        help=HELP,
        description=HELP + ". Hyper-parameters are chosen on the validation split; metrics on "
        "the test split come with patient-level bootstrap intervals. Writes probe.md, "
        "probe.json and predictions.csv.",
    )
    parser.add_argument(
        "--model",
        required=True,
        help="HF Dinov2 directory or DINOv2 .safetensors/.pth; random:PATH for a random-"
        "initialised encoder of that architecture",
    )
    add_probe_arguments(parser)
    add_evaluation_arguments(parser)
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from raddino.eval.encoders import EncoderSpec
    from raddino.eval.probe_report import probe_manifest, probe_tables
    from raddino.eval.targets import parse_target_specs

    spec = EncoderSpec.parse(args.model, image_size=args.image_size, seed=args.seed)
    report = probe_manifest(
        spec,
        args.manifest,
        parse_target_specs(args.targets),
        args.out,
        encode_options(args),
        probe_config(args),
        features=args.features,
        cache_dir=args.cache,
    )
    print(probe_tables(report.results))
    out = Path(args.out)
    print(f"probe report: {out / 'probe.md'} (also probe.json, predictions.csv)")
    return 0
