"""Options that several commands share: value types, ``--device``, ``--dtype``, and the option
groups of the evaluation commands (``probe``, ``segment``, ``compare``) with what they build.

Command modules import these from here and never from each other. Parsing stays torch-free
until a value is converted: ``--dtype`` becomes a ``torch.dtype`` (None for ``auto``) through
:func:`raddino.precision.parse_dtype`, imported when argparse converts the value.
"""

from __future__ import annotations

import argparse


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from error
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value} must be >= 1")
    return value


def dtype_argument(text: str):
    """A ``--dtype``/``--precision`` value as a ``torch.dtype``, or None for ``auto``."""
    from raddino.precision import parse_dtype

    try:
        return parse_dtype(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


MODEL_SOURCES = "a Hugging Face Dinov2 directory, a DINOv2 .safetensors/.pth file or a raddino run"


def add_model_argument(parser: argparse.ArgumentParser, baselines: bool = False) -> None:
    """``--model``: the weights to load (:meth:`raddino.RadDino.from_pretrained`); with
    ``baselines`` also ``random:PATH`` and ``pixels:SIDE``
    (:class:`raddino.eval.encoders.EncoderSpec`)."""
    extra = (
        "; random:PATH for a random-initialised encoder of that architecture, pixels:SIDE for "
        "the raw-pixel baseline"
        if baselines
        else ""
    )
    parser.add_argument("--model", required=True, help=f"{MODEL_SOURCES}{extra}")


def add_device_argument(parser: argparse.ArgumentParser, default: str = "cpu") -> None:
    """``--device``; ``raddino.cli.main`` checks it before the command runs."""
    parser.add_argument(
        "--device",
        default=default,
        help=f"cpu, cuda, cuda:1, ...; auto = cuda when available, else cpu (default: {default})",
    )


def add_dtype_argument(
    parser: argparse.ArgumentParser, default: str, what: str, note: str = "", flag: str = "--dtype"
) -> None:
    """``--dtype`` (or ``flag``): auto or a precision name, converted by :func:`dtype_argument`.

    The help reads ``what``, the values and the ``auto`` rule, then ``note`` and the default.
    """
    parser.add_argument(
        flag,
        default=default,
        type=dtype_argument,
        metavar="{auto,float32,bfloat16,float16}",
        help=f"{what}: auto, float32 (fp32), bfloat16 (bf16) or float16 (fp16); auto = bf16 "
        "where the device computes it natively (recent GPUs, CPUs with AVX512-BF16 or AMX), "
        f"else fp16 on GPUs and fp32 on CPUs{'; ' + note if note else ''} (default: {default})",
    )


# --------------------------------------------------------------------------- evaluation


def add_evaluation_arguments(parser: argparse.ArgumentParser) -> None:
    """Options every evaluation command takes: data, output, device, encoding, bootstrap."""
    parser.add_argument("--manifest", required=True, help="manifest CSV (path, split, labels...)")
    parser.add_argument("--out", required=True, help="output directory")
    add_device_argument(parser, default="cpu")
    add_dtype_argument(
        parser,
        default="float32",
        what="the encoder's precision",
        note="float32 by default so that feature caches and probe numbers are the same on "
        "every machine",
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


def encode_options(args: argparse.Namespace):
    """EncodeOptions from :func:`add_evaluation_arguments`' options."""
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


def probe_config(args: argparse.Namespace):
    """ProbeConfig from :func:`add_probe_arguments` and :func:`add_evaluation_arguments`."""
    from raddino.eval.probe import ProbeConfig

    protocols = tuple(p.strip() for p in args.protocols.split(",") if p.strip())
    return ProbeConfig(
        protocols=protocols,
        n_resamples=args.bootstrap,
        seed=args.seed,
        device=args.device,
        cpu_threads=args.cpu_threads or None,
    )


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
    """SegmentConfig from :func:`add_segment_arguments` and :func:`add_evaluation_arguments`."""
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
    """``--masks`` values, split on commas as well as spaces."""
    return [part.strip() for item in items for part in item.split(",") if part.strip()]
