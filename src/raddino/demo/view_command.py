"""The ``raddino view`` command that opens the demo's encoders: the closing line of the demo.

The evaluation stage leaves one features store of full patch tokens per encoder in
``OUT/features`` (the segmentation probes need them; ``raddino.eval.feature_cache`` names each
folder after the encoder and its settings). The learned encoders' stores, image-only first,
then language-supervised and random-init, are what ``raddino view`` opens; the raw-pixel
baseline is left out (one grey level per patch: every cosine is +1 or -1).
"""

from __future__ import annotations

import shlex
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from raddino.demo.pipeline import Demo


def view_stores(demo: Demo) -> list[tuple[str, Path]]:
    """(label, store folder) of each learned encoder whose store of patch tokens is finished."""
    from raddino.eval.feature_cache import FeatureRequest, store_directory

    options = demo.encode_options()
    stores = []
    for label, spec in demo.learned_specs().items():
        folder = store_directory(demo.paths.features, spec, FeatureRequest("full"), options)
        if (folder / "index.csv").is_file():
            stores.append((label, folder))
    return stores


def view_command(demo: Demo) -> str | None:
    """``raddino view LABEL=STORE ... --manifest COHORT/manifest.csv``, ready to paste; None
    when the evaluation left no store to open."""
    stores = view_stores(demo)
    if not stores:
        return None
    words = ["raddino", "view", *(f"{label}={folder}" for label, folder in stores)]
    return shlex.join([*words, "--manifest", str(demo.paths.manifest)])
