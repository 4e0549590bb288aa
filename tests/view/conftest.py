"""Fixtures for ``raddino view``: a small labelled cohort, features stores of two tiny encoders
(plus a store without patch tokens and one of other images), and a server over them."""

from __future__ import annotations

import csv
import threading
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from raddino.features.encode import EncodeOptions, encode_to_store
from raddino.models.encoder import RadDino
from raddino.view.server import serve_view, url_of
from raddino.view.session import ViewSession
from tests.viz.conftest import tiny_model

SIDE = 168  # 12 x 12 patches of 14 px
IMAGES = 12


def chest_like(side: int, seed: int, effusion: bool) -> np.ndarray:
    """A uint8 (side, side) image with a chest radiograph's layout: a bright body, two dark
    lungs, a spine, rib arcs; an effusion whitens the bottom of the right lung."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:side, 0:side] / side
    image = 70 + 110 * (((xx - 0.5) / 0.46) ** 2 + ((yy - 0.55) / 0.55) ** 2 < 1)
    tilt = rng.uniform(-0.03, 0.03)
    for centre in (0.3 + tilt, 0.7 + tilt):
        lung = ((xx - centre) / 0.16) ** 2 + ((yy - 0.5) / 0.3) ** 2 < 1
        image = np.where(lung, 45 + 25 * np.cos(40 * (yy + 0.3 * np.abs(xx - 0.5))), image)
    image += 60 * np.exp(-(((xx - 0.5 - tilt) / 0.04) ** 2))  # spine
    if effusion:
        image += 90 * ((((xx - 0.3 - tilt) / 0.16) ** 2 < 1) & (yy > 0.62) & (yy < 0.8))
    image += rng.normal(0, 8, image.shape)
    return np.clip(image, 0, 255).astype(np.uint8)


@dataclass
class Cohort:
    root: Path
    paths: list[str]
    manifest: Path
    models: dict[str, RadDino]
    stores: dict[str, Path]  # image-only, random, no-patches, other-images


def encode(model: RadDino, paths: list[str], out: Path, mode: str = "full") -> Path:
    options = EncodeOptions(batch_size=4, num_workers=0, patch_tokens=mode, progress=False)
    encode_to_store(model, paths, out, options)
    return out


@pytest.fixture(scope="session")
def cohort(tmp_path_factory: pytest.TempPathFactory) -> Cohort:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny models: one thread is faster on a shared CPU
    root = tmp_path_factory.mktemp("view-cohort")
    (root / "images").mkdir()
    rows = []
    for index in range(IMAGES):
        effusion = index % 3 == 0
        path = root / "images" / f"case{index:02d}.png"
        Image.fromarray(chest_like(SIDE, index, effusion)).save(path)
        rows.append([f"images/{path.name}", int(effusion), "PA" if index % 2 else "AP"])
    manifest = root / "manifest.csv"
    with manifest.open("w", newline="") as handle:
        csv.writer(handle).writerows([["path", "effusion", "view"], *rows])
    paths = [str(root / row[0]) for row in rows]
    models = {"image-only": tiny_model(SIDE, seed=0), "random": tiny_model(SIDE, seed=1)}
    others = root / "others.png"
    Image.fromarray(chest_like(SIDE, 99, False)).save(others)
    stores = {
        "image-only": encode(models["image-only"], paths, root / "stores" / "image-only"),
        "random": encode(models["random"], paths, root / "stores" / "random"),
        "no-patches": encode(models["image-only"], paths, root / "stores" / "cls", "none"),
        "other-images": encode(models["random"], [str(others)], root / "stores" / "others"),
    }
    torch.set_num_threads(threads)
    return Cohort(root, paths, manifest, models, stores)


@pytest.fixture(scope="session")
def session(cohort: Cohort) -> ViewSession:
    return ViewSession(list(cohort.stores.items()), [cohort.manifest])


@pytest.fixture(scope="session")
def server_url(session: ViewSession):
    """The page served from a background thread on a free port of 127.0.0.1."""
    server = serve_view(session, "127.0.0.1", 0)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield url_of(server)
    server.shutdown()
    thread.join(timeout=10)
