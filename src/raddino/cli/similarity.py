"""``raddino similarity``: the RAD-DINO paper's Figure 2 for your own images."""

from __future__ import annotations

import argparse
import math

from raddino.cli.options import add_command, add_device_argument, add_model_argument, positive_int

HELP = "similarity of one query patch to every patch of other images (the paper's Figure 2)"
DESCRIPTION = f"""{HELP}.

The query patch is the one under --point on QUERY_IMG; each target is drawn with a heatmap of
the cosine similarity between that patch's token and each of the target's patch tokens (one
colour scale for all targets, a cross on each target's most similar patch). The query is drawn
with its patch outlined in red. Images are seen as the model sees them: shortest side resized,
centre-cropped.

Writes OUT (format from its suffix: .png, .pdf, .svg...) and OUT with the suffix .npz holding
the numbers: maps (targets, h, w) float32, query_map (h, w), query_patch (row, col), and the
model's views query_image (H, W) and target_images (targets, H, W) uint8 (map_I and
target_image_I per target instead when the views differ in size).
"""
EXAMPLES = """examples:
  raddino similarity --model microsoft-rad-dino QUERY.png --point 260,310 A.png B.dcm --out sim.png
  raddino similarity --model runs/pretrain QUERY.dcm --point 1024,900 QUERY.dcm OTHER.png \\
      --out figs/clavicle.pdf --device cuda
"""


def parse_point(text: str) -> tuple[float, float]:
    """``"X,Y"`` -> (x, y) floats; an argparse error naming --point otherwise."""
    parts = text.split(",")
    try:
        if len(parts) != 2:
            raise ValueError
        x, y = (float(part) for part in parts)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r}: expected X,Y in pixels of the original query image, e.g. 260,310"
        ) from None
    if not (math.isfinite(x) and math.isfinite(y)):
        raise argparse.ArgumentTypeError(f"{text!r}: X and Y must be finite numbers")
    return x, y


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = add_command(
        subparsers, "similarity", help=HELP, description=DESCRIPTION, examples=EXAMPLES
    )
    add_model_argument(parser)
    parser.add_argument("query", metavar="QUERY_IMG", help="image holding the query patch")
    parser.add_argument(
        "--point",
        required=True,
        type=parse_point,
        metavar="X,Y",
        help="query position in pixels of the original QUERY_IMG: X = column, Y = row "
        "(0,0 = top-left pixel); it must survive the model's centre crop",
    )
    parser.add_argument(
        "targets", nargs="+", metavar="TARGET_IMG", help="images to compare the patch with"
    )
    parser.add_argument("--out", required=True, help="figure file (.png, .pdf, .svg...)")
    add_device_argument(parser)
    parser.add_argument(
        "--batch-size", type=positive_int, default=8, help="images per batch (default: 8)"
    )
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from io import BytesIO
    from pathlib import Path

    import numpy as np

    from raddino.atomic import write_bytes_atomic
    from raddino.data.io import ImageReadError
    from raddino.devices import check_device
    from raddino.models.encoder import RadDino
    from raddino.viz.similarity import (
        PointOutsideError,
        patch_similarity,
        save_similarity_figure,
    )

    device = check_device(args.device)
    model = RadDino.from_pretrained(args.model, device=device)
    try:
        maps = patch_similarity(
            model, args.query, args.point, args.targets, batch_size=args.batch_size
        )
    except PointOutsideError as error:
        x, y = args.point
        raise ValueError(f"--point {x:g},{y:g}: {error}") from None
    except ImageReadError as error:
        raise ValueError(f"cannot read {error}") from None
    out = Path(args.out)
    titles = [f"{Path(args.query).name} (query)"] + [
        f"{Path(t).name} (max {m.max():.2f})" for t, m in zip(args.targets, maps.maps, strict=True)
    ]
    figure = save_similarity_figure(maps, out, titles=titles)
    arrays = {
        "query_map": maps.query_map,
        "query_patch": np.asarray(maps.query_patch),
        "query_image": maps.query_image,
    }
    if len({m.shape for m in maps.maps}) == 1 and len({v.shape for v in maps.target_images}) == 1:
        arrays.update(maps=np.stack(maps.maps), target_images=np.stack(maps.target_images))
    else:  # views of different sizes (a processor without centre crop): one array per target
        for index, (grid, view) in enumerate(zip(maps.maps, maps.target_images, strict=True)):
            arrays.update({f"map_{index}": grid, f"target_image_{index}": view})
    buffer = BytesIO()
    np.savez(buffer, **arrays)
    numbers = write_bytes_atomic(out.with_suffix(".npz"), buffer.getvalue())
    row, col = maps.query_patch
    print(f"query patch: row {row}, col {col} of a {maps.query_map.shape[0]}x"
          f"{maps.query_map.shape[1]} grid")  # fmt: skip
    print(f"wrote {figure}")
    print(f"wrote {numbers}")
    return 0
