"""``raddino export``: convert weights (or a pre-training run's teacher) between formats."""

from __future__ import annotations

import argparse

from raddino.cli.options import add_command

HELP = "convert weights or a run's teacher to the Hugging Face or official DINOv2 format"


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = add_command(
        subparsers,
        "export",
        help=HELP,
        description=HELP + ".",
        examples="""examples:
  raddino export runs/tiny --out tiny-hf/      # a run's teacher backbone, Hugging Face format
  raddino export runs/tiny --out tiny-hf/ --license mit --metrics probe/probe.json --overwrite
  raddino export rad-dino/ --format dinov2 --out rad-dino.safetensors
""",
    )
    parser.add_argument(
        "model",
        nargs="?",
        help="raddino run directory, HF Dinov2 directory or DINOv2 .safetensors/.pth",
    )
    parser.add_argument("--model", dest="model_option", help="the same, as an option")
    parser.add_argument(
        "--out",
        required=True,
        help="hf: a new or empty directory (config.json, model.safetensors, "
        "preprocessor_config.json, a model card README.md; from a run also raddino_config.yaml "
        "and the teacher's dino_head.safetensors). dinov2: a .safetensors/.pth file, with "
        "NAME.json (architecture and preprocessing) and a run's dino_head.safetensors beside it",
    )
    parser.add_argument(
        "--format",
        default="hf",
        choices=["hf", "dinov2"],
        help="hf: a Hugging Face Dinov2 directory for transformers' AutoModel; dinov2: one file "
        "with the official DINOv2 key names (default: hf)",
    )
    parser.add_argument(
        "--license",
        help="the weights' licence for the model card (a Hugging Face licence id such as mit or "
        "cc-by-4.0; default: an HF source's own, else 'other', the card noting none was stated)",
    )
    parser.add_argument(
        "--base-model",
        help="the Hugging Face id of the model these weights started from, for the model card "
        "(default: an HF source's own base_model, else none)",
    )
    parser.add_argument(
        "--metrics",
        metavar="FILE",
        help="a raddino probe.json or compare.json report of this model, shown in the model card "
        "(default: the card says no evaluation was recorded)",
    )
    parser.add_argument(
        "--overwrite",
        action="store_true",
        help="replace an earlier export at --out (a directory with config.json, or the dinov2 "
        "files); without it an --out that holds files is refused",
    )
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from raddino.models.export import export_model

    source = args.model or args.model_option
    if not source:
        raise ValueError("name the weights to export (a run directory, HF directory or file)")
    written = export_model(
        source,
        args.out,
        args.format,
        license=args.license,
        base_model=args.base_model,
        metrics=args.metrics,
        overwrite=args.overwrite,
    )
    if args.format == "hf":
        names = ", ".join(path.name for path in written[1:])
        print(f"wrote hf model: {written[0]} ({names})")
    else:
        print(f"wrote dinov2 weights: {', '.join(str(path) for path in written)}")
    return 0
