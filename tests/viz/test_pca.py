"""PCA of patch tokens as RGB: shapes, range, agreement with an SVD, signs, background removal."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from raddino.viz.pca import pca_rgb, pca_rgb_from_tokens, save_pca_figure, upsample_nearest
from tests.conftest import synthetic_radiograph
from tests.viz.conftest import tiny_model


def radiographs() -> list[np.ndarray]:
    sizes = [(140, 112), (112, 160), (112, 112)]
    return [synthetic_radiograph(h, w, seed=s) for s, (h, w) in enumerate(sizes)]


def test_outputs_are_views_and_uint8_maps_at_patch_resolution():
    images = radiographs()
    images[2] = np.stack([images[2]] * 3, axis=-1)  # colour input is averaged to grey views
    views, maps = pca_rgb(tiny_model(112), images, batch_size=2)
    assert np.array_equal(views[2], radiographs()[2])
    assert [v.shape for v in views] == [(112, 112)] * 3
    assert [m.shape for m in maps] == [(8, 8, 3)] * 3
    assert all(
        v.dtype == np.uint8 and m.dtype == np.uint8 for v, m in zip(views, maps, strict=True)
    )
    every = np.stack(maps).reshape(-1, 3)
    # each channel is scaled between its 1st and 99th percentile over all images together
    assert (every.min(0) == 0).all() and (every.max(0) == 255).all()


def test_red_is_the_first_principal_component_of_the_joint_tokens():
    model = tiny_model(112)
    images = radiographs()
    _, maps = pca_rgb(model, images)
    tokens = model.extract_patch_tokens(images).permute(0, 2, 3, 1).reshape(-1, 32).double()
    centred = tokens.numpy() - tokens.numpy().mean(0)
    _, _, vt = np.linalg.svd(centred, full_matrices=False)
    first = centred @ vt[0]
    red = np.stack(maps)[..., 0].reshape(-1).astype(np.float64)
    assert abs(np.corrcoef(red, first)[0, 1]) > 0.95
    green = np.stack(maps)[..., 1].reshape(-1).astype(np.float64)
    assert abs(np.corrcoef(green, centred @ vt[1])[0, 1]) > 0.95


def test_same_inputs_give_identical_maps():
    model = tiny_model(112)
    first = pca_rgb(model, radiographs())[1]
    second = pca_rgb(model, radiographs())[1]
    assert all(np.array_equal(a, b) for a, b in zip(first, second, strict=True))


def body_and_background_tokens(seed: int = 0) -> list[torch.Tensor]:
    """(8, 8, 16) tokens per image: a varied 'body' in the central 4x4, a flat 'background'."""
    generator = torch.Generator().manual_seed(seed)
    tokens = []
    for _ in range(2):
        grid = torch.full((8, 8, 16), -2.0) + 0.05 * torch.randn(8, 8, 16, generator=generator)
        grid[2:6, 2:6] = 2.0 + torch.randn(4, 4, 16, generator=generator)
        tokens.append(grid)
    return tokens


def test_first_component_is_signed_so_the_central_body_is_high():
    for seed in range(3):
        maps = pca_rgb_from_tokens(body_and_background_tokens(seed))
        for rgb in maps:
            assert rgb[2:6, 2:6, 0].min() > rgb[:2, :, 0].max()


def test_background_threshold_blackens_the_background_and_keeps_the_body():
    tokens = body_and_background_tokens()
    maps = pca_rgb_from_tokens(tokens, background_threshold=0.5)
    for rgb in maps:
        body = np.zeros((8, 8), dtype=bool)
        body[2:6, 2:6] = True
        assert (rgb[~body] == 0).all()
        assert (rgb[body].sum(-1) > 0).mean() > 0.9
    # colours are re-fitted on the body: its channels span the whole range again
    body_colours = np.concatenate([rgb[2:6, 2:6].reshape(-1, 3) for rgb in maps])
    assert (body_colours.min(0) == 0).all() and (body_colours.max(0) == 255).all()


def test_background_threshold_is_checked():
    tokens = body_and_background_tokens()
    with pytest.raises(ValueError, match=r"in \[0, 1\]"):
        pca_rgb_from_tokens(tokens, background_threshold=1.5)
    with pytest.raises(ValueError, match="lower it"):
        pca_rgb_from_tokens(tokens, background_threshold=1.0)


def test_nearest_upsampling_repeats_cells():
    grid = np.array([[1, 2], [3, 4]], dtype=np.uint8)
    assert upsample_nearest(grid, (4, 6)).tolist() == [
        [1, 1, 1, 2, 2, 2],
        [1, 1, 1, 2, 2, 2],
        [3, 3, 3, 4, 4, 4],
        [3, 3, 3, 4, 4, 4],
    ]
    assert upsample_nearest(np.zeros((2, 2, 3)), (5, 5)).shape == (5, 5, 3)


def test_figure_shows_every_image_above_its_map(tmp_path: Path):
    views = [np.full((56, 56), 100, np.uint8)] * 7
    maps = [np.random.default_rng(i).integers(0, 256, (4, 4, 3), dtype=np.uint8) for i in range(7)]
    out = save_pca_figure(views, maps, tmp_path / "pca.png", titles=[f"im{i}" for i in range(7)])
    with Image.open(out) as image:
        assert image.format == "PNG"
    with pytest.raises(ValueError, match="one map per view"):
        save_pca_figure(views, maps[:2], tmp_path / "bad.png")
