"""``raddino data``: index public datasets into manifests, prepare images the RAD-DINO way."""

from __future__ import annotations

import argparse
import sys
import textwrap
from collections.abc import Callable

from raddino.cli.options import add_command, add_progress_argument, add_seed_argument

HELP = "public datasets -> manifests (index) and RAD-DINO's image preparation (preprocess)"
DATASET_NAMES = (
    "mimic-cxr",
    "chexpert",
    "nih",
    "padchest",
    "brax",
    "vindr-cxr",
    "rsna-pneumonia",
    "siim-acr",
    "candid-ptx",
)


def parse_setting(text: str) -> tuple[str, str]:
    key, sep, value = text.partition("=")
    if not sep or not key.strip():
        raise argparse.ArgumentTypeError(f"--set {text!r}: expected KEY=VALUE")
    return key.strip(), value.strip()


class _DetailsParser(argparse.ArgumentParser):
    """Appends ``details()`` to the epilog only when help is shown (keeps ``raddino`` start-up
    light)."""

    def __init__(self, *args, details: Callable[[], str] | None = None, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.details = details

    def format_help(self) -> str:
        if self.details is not None:
            self.epilog = f"{self.epilog or ''}\n{self.details()}"
            self.details = None
        return super().format_help()


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = add_command(
        subparsers,
        "data",
        help=HELP,
        description=HELP + ".",
        examples="""examples:
  raddino data index chexpert --root CheXpert-v1.0/ --out chexpert.csv
  raddino data preprocess --manifest chexpert.csv --out chexpert-518/
""",
    )
    commands = parser.add_subparsers(
        dest="data_command", required=True, metavar="SUBCOMMAND", parser_class=_DetailsParser
    )

    index = add_command(
        commands,
        "index",
        help="write a manifest CSV for a public dataset",
        description="Read a dataset's official files under --root and write a manifest: path, "
        "split, patient_id, view, age, sex, label columns (1/0/empty = unknown), mask_* and "
        "boxes. Rows whose image is missing are left out and listed in <out>.missing.csv. "
        "See docs/datasets.md for each dataset's layout and label rules.",
        examples="""examples:
  raddino data index chexpert --root CheXpert-v1.0/ --out chexpert.csv --uncertain one
  raddino data index mimic-cxr --root mimic-cxr-jpg/ --out mimic.csv --frontal-only
""",
        details=_dataset_options,
    )
    index.add_argument("dataset", metavar="DATASET", help=", ".join(DATASET_NAMES))
    index.add_argument("--root", required=True, help="the dataset's folder as downloaded")
    index.add_argument("--out", required=True, help="manifest .csv to write")
    index.add_argument(
        "--uncertain",
        default="nan",
        choices=["nan", "zero", "one"],
        help="CheXpert-style uncertain labels (-1) become unknown, 0 or 1 (default: nan)",
    )
    index.add_argument(
        "--unmentioned",
        default="nan",
        choices=["nan", "zero"],
        help="CheXpert-style blank labels become unknown or 0 (default: nan)",
    )
    index.add_argument(
        "--keep-no-finding-blanks",
        action="store_true",
        help="do not turn blank findings into 0 when 'No Finding' is 1",
    )
    index.add_argument(
        "--frontal-only", action="store_true", help="drop rows whose view is known and not PA/AP"
    )
    index.add_argument(
        "--val-fraction", type=float, default=0.1, help="patients moved to val (default: 0.1)"
    )
    index.add_argument(
        "--test-fraction",
        type=float,
        default=0.1,
        help="patients put in test where the dataset has no test split (default: 0.1)",
    )
    add_seed_argument(index)
    index.add_argument(
        "--keep-missing", action="store_true", help="keep rows whose image file is missing"
    )
    index.add_argument(
        "--set",
        dest="settings",
        type=parse_setting,
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="dataset-specific setting (repeatable; see below)",
    )
    add_progress_argument(index)
    index.set_defaults(run=run_index)

    prep = add_command(
        commands,
        "preprocess",
        help="prepare a manifest's images as RAD-DINO's training data was prepared",
        description="Resize so the shorter side is --size with cubic B-spline interpolation, "
        "min-max scale to [0, 255], save as PNG under OUT/images; write OUT/manifest.csv (all "
        "columns carried over) and OUT/rejects.csv. Re-running the same command resumes.",
        examples="""examples:
  raddino data preprocess --manifest chexpert.csv --out chexpert-518/
  raddino data preprocess --manifest mimic.csv --out mimic-518/ --workers 8 --size 518
""",
    )
    prep.add_argument("--manifest", required=True, help="manifest .csv with a 'path' column")
    prep.add_argument("--out", required=True, help="output folder")
    prep.add_argument(
        "--workers", type=int, default=None, help="worker processes (default: one per core)"
    )
    prep.add_argument("--size", type=int, default=518, help="shorter side in pixels (default: 518)")
    prep.add_argument(
        "--png-compression",
        type=int,
        default=1,
        choices=range(10),
        metavar="0-9",
        help="PNG zlib level; lossless at every level, 1 is fast (default: 1)",
    )
    add_progress_argument(prep)
    prep.set_defaults(run=run_preprocess)


def run_index(args: argparse.Namespace) -> int:
    from raddino.data.datasets import IndexOptions, LabelPolicy, index_dataset

    options = IndexOptions(
        labels=LabelPolicy(
            uncertain=args.uncertain,
            unmentioned=args.unmentioned,
            no_finding_negative=not args.keep_no_finding_blanks,
        ),
        frontal_only=args.frontal_only,
        val_fraction=args.val_fraction,
        test_fraction=args.test_fraction,
        seed=args.seed,
        extra=dict(args.settings),
    )
    summary = index_dataset(
        args.dataset,
        args.root,
        args.out,
        options,
        keep_missing=args.keep_missing,
        progress=not args.no_progress,
    )
    print(f"indexed {summary.rows} images" + (f", {summary.masks} masks" if summary.masks else ""))
    if summary.missing:
        kept = "kept in the manifest" if args.keep_missing else "left out"
        print(
            f"{summary.missing} rows have no image file ({kept}); listed in "
            f"{summary.missing_report}",
            file=sys.stderr,
        )
    print(f"manifest: {summary.manifest}")
    print(f"summary: {summary.summary}")
    return 0 if summary.rows > 0 else 1


def run_preprocess(args: argparse.Namespace) -> int:
    from raddino.data.prepare import PrepareOptions, prepare_manifest

    options = PrepareOptions(
        shorter_side=args.size,
        workers=args.workers,
        compress_level=args.png_compression,
        progress=not args.no_progress,
    )
    summary = prepare_manifest(args.manifest, args.out, options)
    print(
        f"prepared {summary.prepared} images, {summary.skipped} already done, "
        f"{summary.rejected} rejected"
        + (f" (listed in {summary.rejects})" if summary.rejected else "")
    )
    print(f"manifest: {summary.manifest}")
    done = summary.prepared + summary.skipped
    return 0 if done > 0 or summary.images == 0 else 1


def _dataset_options() -> str:
    from raddino.data.datasets import DATASETS

    lines = ["dataset-specific --set KEY=VALUE settings:"]
    for spec in DATASETS.values():
        lines.append(f"  {spec.name} ({spec.title})")
        for key, text in spec.options.items():
            lines.extend(
                textwrap.wrap(
                    f"{key}: {text}", 88, initial_indent=" " * 4, subsequent_indent=" " * 6
                )
            )
    return "\n".join(lines)
