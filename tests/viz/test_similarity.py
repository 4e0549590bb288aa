"""Patch similarity maps: point -> patch mapping, self-similarity, shift equivariance, figure."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from raddino.data.preprocess import PreprocessConfig
from raddino.models.encoder import RadDino
from raddino.viz.similarity import (
    PointOutsideError,
    SimilarityMaps,
    patch_similarity,
    point_to_patch,
    save_similarity_figure,
)
from tests.conftest import synthetic_radiograph
from tests.viz.conftest import PATCH, patchwork, tiny_model

RAD_DINO = PreprocessConfig()  # shortest edge 518, centre crop 518


def test_point_maps_through_resize_and_crop_of_a_wide_image():
    # 300x700 (h x w) -> resized to 518 x int(518 * 700 / 300) = 518 x 1208, crop left = 345.
    # x = 250: u = 250.5 * 1208 / 700 = 432.29, minus 345 = 87.29 -> col 6;
    # y = 10:  v = 10.5 * 518 / 300 = 18.13 -> row 1.
    assert point_to_patch((250, 10), (300, 700), RAD_DINO, PATCH) == (1, 6)
    # x = 350, y = 150: u = 604.86 - 345 = 259.86 -> col 18; v = 259.86 -> row 18.
    assert point_to_patch((350, 150), (300, 700), RAD_DINO, PATCH) == (18, 18)


def test_point_maps_through_resize_and_crop_of_a_tall_image():
    # 800x640 -> int(518 * 800 / 640) = 647 x 518, crop top = int(129 / 2) = 64.
    # x = 100: u = 100.5 * 518 / 640 = 81.34 -> col 5;
    # y = 700: v = 700.5 * 647 / 800 = 566.53, minus 64 = 502.53 -> row 35.
    assert point_to_patch((100, 700), (800, 640), RAD_DINO, PATCH) == (35, 5)


def test_point_maps_through_zero_padding():
    # No resize; a 20x30 image is padded into a 56x56 crop: 13 columns left, 18 rows on top.
    config = PreprocessConfig(do_resize=False, crop_height=56, crop_width=56)
    assert point_to_patch((0, 0), (20, 30), config, PATCH) == (1, 0)  # (13.5, 18.5)
    assert point_to_patch((1, 0), (20, 30), config, PATCH) == (1, 1)  # u = 14.5
    assert point_to_patch((29, 19), (20, 30), config, PATCH) == (2, 3)  # (42.5, 37.5)


def test_point_maps_through_an_exact_size_resize_and_a_rounded_crop():
    """Foreign processors: SigLIP resizes to an exact square (no crop); timm rounds an odd crop
    margin (torchvision's CenterCrop) where transformers floors it."""
    siglip = PreprocessConfig(resize_size=(224, 224), crop_height=224, crop_width=224,
                              do_center_crop=False)  # fmt: skip
    # 100x400 -> 224x224: u = 399.5 * 224 / 400 = 223.72 -> col 15; v = 0.5 * 224 / 100 = 1.12
    assert point_to_patch((399, 0), (100, 400), siglip, 14) == (0, 15)
    # a 31x31 image, crop 28: margin 1.5 starts the crop at 2 (round) or 1 (floor)
    rounded = PreprocessConfig(shortest_edge=31, crop_height=28, crop_width=28,
                               crop_rounding="round")  # fmt: skip
    floored = PreprocessConfig(shortest_edge=31, crop_height=28, crop_width=28)
    assert point_to_patch((15, 15), (31, 31), rounded, 14) == (0, 0)  # u = 15.5 - 2 = 13.5
    assert point_to_patch((15, 15), (31, 31), floored, 14) == (1, 1)  # u = 15.5 - 1 = 14.5


@pytest.mark.parametrize("point", [(-1, 5), (700, 5), (10, 300), (float("nan"), 3)])
def test_point_off_the_image_raises(point):
    with pytest.raises(ValueError, match=r"outside the image|not finite"):
        point_to_patch(point, (300, 700), RAD_DINO, PATCH)


@pytest.mark.parametrize("point", [(100, 20), (600, 299)])
def test_point_cut_away_by_the_crop_raises(point):
    # x = 100 -> u = 173.4 < 345 (left of the crop); x = 600 -> u - 345 = 691.3 >= 518.
    with pytest.raises(PointOutsideError, match="centre crop"):
        point_to_patch(point, (300, 700), RAD_DINO, PATCH)


def test_query_patch_is_its_own_best_match_on_an_identical_target(small_hf_dir: Path):
    model = RadDino.from_pretrained(small_hf_dir)
    query = synthetic_radiograph(300, 700, seed=1)
    other = synthetic_radiograph(600, 500, seed=2)
    result = patch_similarity(model, query, (350, 150), [query, other], batch_size=2)

    assert result.query_patch == (18, 18)
    assert result.query_image.shape == (518, 518) and result.query_image.dtype == np.uint8
    assert [m.shape for m in result.maps] == [(37, 37), (37, 37)]
    assert all(m.dtype == np.float32 for m in result.maps)
    same = result.maps[0]
    assert same[18, 18] == pytest.approx(1.0, abs=1e-5)
    assert np.unravel_index(np.argmax(same), same.shape) == (18, 18)
    assert np.allclose(same, result.query_map, atol=1e-5)
    assert result.maps[1].min() >= -1.0 and result.maps[1].max() <= 1.0
    expected_view = model.preprocess_uint8(query)[0].numpy()
    assert np.array_equal(result.query_image, expected_view)


@pytest.mark.parametrize(("axis", "expected"), [(1, (1, 3)), (0, (2, 2))])
def test_target_shifted_by_one_patch_peaks_at_the_shifted_patch(axis, expected):
    model = tiny_model(56, zero_pos_embed=True)
    image = patchwork(4, 4)
    shifted = np.roll(image, PATCH, axis=axis)  # circular: the patches are permuted
    point = (2 * PATCH + 7, 1 * PATCH + 7)  # centre of patch (row 1, col 2)
    result = patch_similarity(model, image, point, [shifted, image])

    assert result.query_patch == (1, 2)
    shifted_map, same_map = result.maps
    assert np.unravel_index(np.argmax(shifted_map), (4, 4)) == expected
    assert shifted_map[expected] == pytest.approx(1.0, abs=1e-5)
    assert np.allclose(np.roll(same_map, 1, axis=axis), shifted_map, atol=1e-5)
    others = np.delete(shifted_map.ravel(), np.ravel_multi_index(expected, (4, 4)))
    assert others.max() < 0.999  # distinct patches have distinct tokens


def example_maps() -> SimilarityMaps:
    rng = np.random.default_rng(0)
    return SimilarityMaps(
        query_image=patchwork(4, 4),
        query_patch=(1, 2),
        target_images=[patchwork(4, 4, seed=1), patchwork(4, 4, seed=2)],
        maps=[rng.uniform(-1, 1, (4, 4)).astype(np.float32) for _ in range(2)],
        query_map=rng.uniform(-1, 1, (4, 4)).astype(np.float32),
    )


def test_figure_is_written_atomically_as_a_readable_png(tmp_path: Path):
    out = save_similarity_figure(example_maps(), tmp_path / "figs" / "sim.png")
    assert out == tmp_path / "figs" / "sim.png"
    with Image.open(out) as image:
        assert image.format == "PNG" and image.width > image.height
    assert [p.name for p in out.parent.iterdir()] == ["sim.png"]  # no temporary file left


def test_figure_checks_titles_and_format(tmp_path: Path):
    with pytest.raises(ValueError, match="titles: expected 3"):
        save_similarity_figure(example_maps(), tmp_path / "a.png", titles=["only one"])
    with pytest.raises(ValueError, match="unsupported figure format"):
        save_similarity_figure(example_maps(), tmp_path / "a.npz")
    assert save_similarity_figure(example_maps(), tmp_path / "a.svg", titles=["q", "a", "b"])
