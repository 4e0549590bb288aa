"""``raddino export``: convert weights (or a pre-training run's teacher) between formats."""

from __future__ import annotations

import argparse

HELP = "convert weights or a run's teacher to the Hugging Face or official DINOv2 format"


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("export", help=HELP, description=HELP + ".")
    parser.add_argument(
        "model",
        nargs="?",
        help="raddino run directory, HF Dinov2 directory or DINOv2 .safetensors/.pth",
    )
    parser.add_argument("--model", dest="model_option", help="the same, as an option")
    parser.add_argument(
        "--out",
        required=True,
        help="output directory (hf) or .safetensors/.pth file (dinov2; a run's DINO head is "
        "written beside it as dino_head.safetensors)",
    )
    parser.add_argument("--format", default="hf", choices=["hf", "dinov2"], help="(default: hf)")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from raddino.models.encoder import RadDino
    from raddino.models.formats import is_run_directory, load_run_head

    source = args.model or args.model_option
    if not source:
        raise ValueError("name the weights to export (a run directory, HF directory or file)")
    model = RadDino.from_pretrained(source)
    written = model.export(args.out, format=args.format)
    print(f"wrote {args.format} weights: {written}")
    head = load_run_head(Path(source)) if is_run_directory(Path(source)) else {}
    if head:  # an image-only run's DINO head (a contrastive run exports its image tower alone)
        from safetensors.torch import save_file

        target = (written if written.is_dir() else written.parent) / "dino_head.safetensors"
        save_file({k: v.contiguous() for k, v in head.items()}, str(target))
        print(f"wrote the teacher's DINO head: {target}")
    return 0
