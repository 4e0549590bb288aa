"""``raddino pca``: patch tokens' first three principal components as RGB (DINOv2's figure)."""

from __future__ import annotations

import argparse
import sys

from raddino.cli.options import add_command, add_device_argument, add_model_argument, positive_int

HELP = "colour each patch by the first three principal components of the patch tokens"
DESCRIPTION = f"""{HELP}.

One PCA is fitted over the patch tokens of all the images together, so a colour means the same
feature direction in every image; components are scaled to [0, 255] between their 1st and 99th
percentiles. Signs are fixed so that the image centre scores higher than the border.

With --background-threshold T (0 to 1), patches whose first component (scaled to [0, 1]) is at
most T become black and the colours are re-fitted on the remaining foreground patches.

Writes OUT/pca.png (each view above its map) and OUT/<image stem>_pca.png per image (the map
upsampled to the model's view size, nearest neighbour; repeated stems get _2, _3... in input
order). Unreadable images are reported and skipped; the exit code is 1 only when none
could be read.
"""
EXAMPLES = """examples:
  raddino pca --model microsoft-rad-dino a.png b.png c.dcm --out figs/pca
  raddino pca --model runs/pretrain scans/ --out figs/pca --background-threshold 0.4
"""


def unit_interval(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"{value} must be between 0 and 1")
    return value


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = add_command(subparsers, "pca", help=HELP, description=DESCRIPTION, examples=EXAMPLES)
    add_model_argument(parser)
    parser.add_argument(
        "images", nargs="+", metavar="IMG", help="image file, or folder (searched recursively)"
    )
    parser.add_argument("--out", required=True, help="output directory")
    parser.add_argument(
        "--background-threshold",
        type=unit_interval,
        default=None,
        metavar="T",
        help="blacken patches whose scaled first component is <= T, in [0, 1] (default: off)",
    )
    add_device_argument(parser)
    parser.add_argument(
        "--batch-size", type=positive_int, default=8, help="images per batch (default: 8)"
    )
    parser.set_defaults(run=run)


def unique_stems(paths: list[str]) -> list[str]:
    """File stems, with _2, _3... appended to repeats (in order)."""
    from pathlib import Path

    seen: dict[str, int] = {}
    stems = []
    for path in paths:
        stem = Path(path).stem
        seen[stem] = seen.get(stem, 0) + 1
        stems.append(stem if seen[stem] == 1 else f"{stem}_{seen[stem]}")
    return stems


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from raddino.data.io import ImageReadError
    from raddino.data.manifest import scan_folder
    from raddino.models.encoder import RadDino
    from raddino.viz.pca import pca_rgb_from_tokens, save_pca_figure, upsample_nearest
    from raddino.viz.tokens import encode_patches, grey, model_view, save_png_atomic

    paths = []
    for item in args.images:
        paths.extend(scan_folder(Path(item)) if Path(item).is_dir() else [item])
    from raddino.devices import check_device

    device = check_device(args.device)
    model = RadDino.from_pretrained(args.model, device=device)
    crops, names = [], []  # decode one at a time, keep only the model's (small) crops
    for path in paths:
        try:
            crops.append(model_view(model, path)[0])
        except (ImageReadError, ValueError) as error:
            print(f"raddino pca: skipping {path}: {error}", file=sys.stderr)
            continue
        names.append(path)
    if not crops:
        print("raddino pca: none of the images could be read", file=sys.stderr)
        return 1
    # pca_rgb's steps, on crops already made
    tokens = encode_patches(model, crops, batch_size=args.batch_size)
    maps = pca_rgb_from_tokens(tokens, background_threshold=args.background_threshold)
    views = [grey(crop) for crop in crops]
    out = Path(args.out)
    stems = unique_stems(names)
    for stem, view, rgb in zip(stems, views, maps, strict=True):
        save_png_atomic(upsample_nearest(rgb, view.shape[:2]), out / f"{stem}_pca.png")
    grid = save_pca_figure(views, maps, out / "pca.png", titles=stems)
    print(f"PCA of {len(crops)} of {len(paths)} images")
    print(f"wrote {grid} and {len(crops)} per-image maps in {out}")
    return 0
