"""``raddino export``: convert weights between formats."""

from __future__ import annotations

import argparse

HELP = "convert weights to the Hugging Face (directory) or official DINOv2 (file) format"


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("export", help=HELP, description=HELP + ".")
    parser.add_argument(
        "--model", required=True, help="HF Dinov2 directory or DINOv2 .safetensors/.pth"
    )
    parser.add_argument(
        "--out", required=True, help="output directory (hf) or .safetensors/.pth file (dinov2)"
    )
    parser.add_argument("--format", default="hf", choices=["hf", "dinov2"], help="(default: hf)")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from raddino.models.encoder import RadDino

    model = RadDino.from_pretrained(args.model)
    written = model.export(args.out, format=args.format)
    print(f"wrote {args.format} weights: {written}")
    return 0
