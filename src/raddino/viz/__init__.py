"""Figures of what a RAD-DINO encoder sees: patch similarity maps, PCA of patch tokens, loss curves.

* :mod:`raddino.viz.similarity`: the paper's Figure 2 (one query patch against every patch of
  other images);
* :mod:`raddino.viz.correspondence`: Figure 2 as a number over many image pairs (how often the
  best match lands on the same structure);
* :mod:`raddino.viz.neighbours`: nearest studies by cosine of CLS or mean patch tokens;
* :mod:`raddino.viz.pca`: DINOv2's visualisation, the first three principal components of the
  patch tokens as RGB;
* :mod:`raddino.viz.plots`: pre-training curves from ``metrics.jsonl``.

Figures are drawn with matplotlib's object API (no pyplot, no global backend) and written
atomically.
"""

from raddino.viz.correspondence import (
    Correspondence,
    correspondence_from_tokens,
    structure_correspondence,
)
from raddino.viz.neighbours import cosine_neighbours, mean_patch_tokens
from raddino.viz.pca import pca_rgb, pca_rgb_from_tokens, save_pca_figure, upsample_nearest
from raddino.viz.plots import plot_training_curves
from raddino.viz.similarity import (
    SimilarityMaps,
    patch_similarity,
    point_to_patch,
    save_similarity_figure,
    similarity_figure,
    similarity_maps_from_tokens,
    similarity_to_grids,
)

__all__ = [
    "Correspondence",
    "SimilarityMaps",
    "correspondence_from_tokens",
    "cosine_neighbours",
    "mean_patch_tokens",
    "patch_similarity",
    "pca_rgb",
    "pca_rgb_from_tokens",
    "plot_training_curves",
    "point_to_patch",
    "save_pca_figure",
    "save_similarity_figure",
    "similarity_figure",
    "similarity_maps_from_tokens",
    "similarity_to_grids",
    "structure_correspondence",
    "upsample_nearest",
]
