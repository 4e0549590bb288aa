"""The demo's figures, drawn by ``raddino.viz``: loss curves, the paper's Figure 2 (patch
similarity across images), PCA of patch tokens as RGB, and segmentation overlays.

Figure 2 of the paper: a query point on one radiograph, and the similarity of its patch token to
every patch of other radiographs. Here the query is the centre of a test image's nodule (its
mask's centroid), the targets are other test images with nodules: a trained encoder should light
up the nodules, a random one should not.
"""

from __future__ import annotations

import shutil
from dataclasses import asdict
from pathlib import Path

import numpy as np

from raddino.data.io import read_mask
from raddino.data.manifest import read_manifest, resolve_manifest_path
from raddino.demo.options import STRUCTURES, DemoPaths
from raddino.eval.compare import encoder_dir_name
from raddino.eval.encoders import EncoderSpec
from raddino.eval.overlays import legend

N_TARGETS = 4
N_PCA = 4
N_OVERLAYS = 3


def nodule_centroid(mask_path: str) -> tuple[float, float] | None:
    """(x, y) centre of a mask in image pixels, or None when it is empty."""
    mask = read_mask(mask_path)
    if not mask.any():
        return None
    ys, xs = np.nonzero(mask)
    return float(xs.mean()), float(ys.mean())


def similarity_images(manifest: Path) -> tuple[str, tuple[float, float], list[str]] | None:
    """(query image, its nodule centre, target images): test images with a nodule first,
    then any split; None when the cohort has no nodule."""
    rows = read_manifest(manifest)
    order = {"test": 0, "val": 1, "train": 2}
    nodules = [r for r in rows if r.get("nodule") == "1" and r.get("mask_nodule")]
    nodules.sort(key=lambda r: order.get(r.get("split", ""), 3))
    for i, row in enumerate(nodules):
        point = nodule_centroid(resolve_manifest_path(manifest, row["mask_nodule"]))
        if point is None:
            continue
        targets = [r["path"] for r in nodules[:i] + nodules[i + 1 :]][:N_TARGETS]
        if not targets:  # a single nodule in the cohort: compare with other images
            targets = [r["path"] for r in rows if r is not row][:N_TARGETS]
        return row["path"], point, targets
    return None


def correspondence_inputs(manifest: Path) -> tuple[list[str], list[str], list[list[str]]]:
    """Test images with a nodule: (images, nodule masks, [left, right lung masks]) as paths."""
    rows = [
        r
        for r in read_manifest(manifest)
        if r.get("split") == "test" and r.get("nodule") == "1" and r.get("mask_nodule")
    ]

    def mask(row: dict[str, str], key: str) -> str:
        return resolve_manifest_path(manifest, row[key])  # read_manifest resolved "path" only

    return (
        [r["path"] for r in rows],
        [mask(r, "mask_nodule") for r in rows],
        [[mask(r, "mask_left_lung"), mask(r, "mask_right_lung")] for r in rows],
    )


def _viz_missing(error: ImportError, what: str) -> str:
    return f"{what} skipped: raddino.viz is not available ({error})"


def make_figures(
    paths: DemoPaths,
    runs: dict[str, Path],
    specs: dict[str, EncoderSpec],
    seed: int = 0,
) -> dict:
    """Write ``paths.figures/*.png``: loss curves of ``runs``, and for each encoder of ``specs``
    (label -> spec) Figure 2, its correspondence
    score, PCA maps and segmentation overlays; returns {"figures": [{key, path, caption}],
    "notes", "correspondence"}."""
    out = paths.figures
    out.mkdir(parents=True, exist_ok=True)
    figures: list[dict[str, str]] = []
    notes: list[str] = []
    correspondence: dict[str, dict] = {}

    def add(key: str, png: Path, caption: str) -> None:
        figures.append({"key": key, "path": str(png.relative_to(paths.root)), "caption": caption})

    try:
        from raddino.viz.plots import plot_training_curves
    except ImportError as error:
        notes.append(_viz_missing(error, "loss curves"))
    else:
        png = plot_training_curves(
            {label: run for label, run in runs.items()}, out / "loss_curves.png"
        )
        add("loss_curves", Path(png), "Pre-training losses per step: " + ", ".join(runs) + ".")

    models = {label: spec.load() for label, spec in specs.items()}
    chosen = similarity_images(paths.manifest)
    try:
        from raddino.viz.similarity import patch_similarity, save_similarity_figure
    except ImportError as error:
        notes.append(_viz_missing(error, "similarity maps"))
    else:
        if chosen is None:
            notes.append("similarity maps skipped: no image of the cohort has a nodule")
        else:
            query, point, targets = chosen
            for label, model in models.items():
                maps = patch_similarity(model, query, point=point, targets=targets)
                png = save_similarity_figure(maps, out / f"similarity_{label}.png")
                add(
                    f"similarity_{label}",
                    Path(png),
                    f"{label}: similarity of the patch at the centre of the nodule of "
                    f"{Path(query).name} (x={point[0]:.0f}, y={point[1]:.0f} px) to the patches "
                    f"of {len(targets)} other images with nodules (the paper's Figure 2).",
                )
            correspondence = _nodule_correspondence(paths.manifest, models)

    try:
        from raddino.viz.pca import pca_rgb, save_pca_figure
    except ImportError as error:
        notes.append(_viz_missing(error, "PCA maps"))
    else:
        rows = read_manifest(paths.manifest)
        images = [r["path"] for r in rows if r.get("split") == "test"][:N_PCA] or [
            r["path"] for r in rows[:N_PCA]
        ]
        for label, model in models.items():
            views, rgb_maps = pca_rgb(model, images)
            png = save_pca_figure(views, rgb_maps, out / f"pca_{label}.png")
            add(
                f"pca_{label}",
                Path(png),
                f"{label}: the first three principal components of the patch tokens of "
                f"{len(images)} test images, as RGB.",
            )

    for label in specs:
        source = paths.evaluation / encoder_dir_name(label) / "segment" / "overlays"
        for png in sorted(source.glob("*.png"))[:N_OVERLAYS]:
            target = out / "overlays" / f"{encoder_dir_name(label)}_{png.name}"
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(png, target)
            add(
                f"overlay_{label}_{png.stem}",
                target,
                f"{label}: linear-head segmentation of {png.stem.split('_', 1)[-1]} "
                f"(filled: prediction, outline: truth; {legend(list(STRUCTURES))}).",
            )
    return {"figures": figures, "notes": notes, "seed": seed, "correspondence": correspondence}


def _nodule_correspondence(manifest: Path, models: dict) -> dict[str, dict]:
    """Figure 2 over every pair of test images with nodules, per encoder (empty: too few)."""
    from raddino.viz.correspondence import structure_correspondence

    images, nodules, lungs = correspondence_inputs(manifest)
    if len(images) < 2:
        return {}
    return {
        label: asdict(structure_correspondence(model, images, nodules, lungs))
        for label, model in models.items()
    }
