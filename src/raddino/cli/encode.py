"""``raddino encode``: images -> features store."""

from __future__ import annotations

import argparse
import sys

from raddino.data.io import DEFAULT_MAX_PIXELS

HELP = "encode images (files, folders, manifest CSVs) into a features store"


def parse_layers(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(part) for part in text.split(",") if part.strip())
    except ValueError as error:
        raise argparse.ArgumentTypeError(
            f"--layers {text!r}: expected comma-separated block indices, e.g. 3,6,9,11"
        ) from error


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "encode",
        help=HELP,
        description=HELP + ". Re-running the same command resumes an interrupted run.",
    )
    parser.add_argument(
        "inputs", nargs="+", metavar="INPUT", help="image file, folder or manifest .csv"
    )
    parser.add_argument(
        "--model", required=True, help="HF Dinov2 directory or DINOv2 .safetensors/.pth"
    )
    parser.add_argument("--out", required=True, help="features store directory")
    parser.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1, ... (default: cpu)")
    parser.add_argument(
        "--dtype",
        default="auto",
        choices=["auto", "float32", "bfloat16", "float16"],
        help="model precision; auto = bfloat16/float16 on GPU, float32 on CPU (default: auto)",
    )
    parser.add_argument("--batch-size", type=int, default=16, help="images per batch (default: 16)")
    parser.add_argument(
        "--workers",
        type=int,
        default=2,
        help="decoding worker processes; 0 = in-process (default: 2)",
    )
    parser.add_argument(
        "--patch-tokens",
        default="none",
        choices=["none", "full", "pooled"],
        help="store patch tokens: none, full grid (D x h x w) or pooled mean (D) (default: none)",
    )
    parser.add_argument(
        "--layers",
        type=parse_layers,
        default=(),
        help="also store these blocks' outputs, e.g. 3,6,9,11 (0-based; -1 = last)",
    )
    parser.add_argument(
        "--shard-size", type=int, default=1024, help="images per shard on disk (default: 1024)"
    )
    parser.add_argument(
        "--max-pixels",
        type=int,
        default=DEFAULT_MAX_PIXELS,
        help=f"refuse images larger than this many pixels (default: {DEFAULT_MAX_PIXELS})",
    )
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from raddino.data.manifest import collect_inputs
    from raddino.features.encode import EncodeOptions, encode_to_store
    from raddino.models.encoder import RadDino

    options = EncodeOptions(
        batch_size=args.batch_size,
        num_workers=args.workers,
        device=args.device,
        dtype=args.dtype,
        patch_tokens=args.patch_tokens,
        layers=args.layers,
        shard_size=args.shard_size,
        max_pixels=args.max_pixels,
        progress=not args.no_progress,
    )
    paths = collect_inputs(args.inputs)
    if not paths:
        print("raddino encode: no images found in the inputs", file=sys.stderr)
        return 1
    model = RadDino.from_pretrained(args.model)
    summary = encode_to_store(model, paths, args.out, options, model_id=str(args.model))
    print(
        f"encoded {summary.encoded} of {len(paths)} images, rejected {summary.rejected}"
        + (f" (listed in {args.out}/rejects.csv)" if summary.rejected else "")
    )
    print(f"features store: {args.out}")
    return 0 if summary.encoded > 0 else 1
