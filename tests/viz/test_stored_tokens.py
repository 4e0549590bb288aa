"""Figure 2 and nearest studies from a features store: the same numbers as the model gives.

Tolerance: the store's tokens and ``patch_similarity``'s come from the same float32 model, but
in batches of other sizes, and the cosines are summed in another order (numpy's matmul here,
torch's there). Over D = 32..768 float32 products of unit vectors that is a few ulps of 1
(float32 eps = 1.2e-7); 1e-5 leaves room for any BLAS kernel (AVX2, AVX-512, AMX; AMD or
Intel) and is 400x finer than one step of the 256-colour heatmap.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from raddino.features.encode import EncodeOptions, encode_to_store
from raddino.features.store import ShardedArray, load_features
from raddino.viz.neighbours import cosine_neighbours, cosine_to_rows, mean_patch_tokens
from raddino.viz.similarity import (
    PointOutsideError,
    patch_similarity,
    save_similarity_figure,
    similarity_figure,
    similarity_maps_from_tokens,
    similarity_titles,
    similarity_to_grids,
)
from raddino.viz.tokens import figure_bytes
from tests.viz.conftest import PATCH, patchwork, tiny_model

TOLERANCE = 1e-5


@pytest.fixture(scope="module")
def encoded(tmp_path_factory: pytest.TempPathFactory):
    """Four 56 px patchwork images, a tiny model, and its full and pooled stores of them."""
    root = tmp_path_factory.mktemp("stored")
    paths = []
    for seed in range(4):
        path = root / f"img{seed}.png"
        Image.fromarray(patchwork(4, 4, seed=seed)).save(path)
        paths.append(str(path))
    model = tiny_model(56)
    stores = {}
    for mode in ("full", "pooled"):
        options = EncodeOptions(batch_size=3, num_workers=0, patch_tokens=mode, progress=False)
        encode_to_store(model, paths, root / mode, options)
        stores[mode] = load_features(root / mode)
    return model, paths, stores


def reference_cosines(query: np.ndarray, grids: np.ndarray) -> np.ndarray:
    """float64 cosine of a (D,) token to each token of (n, D, h, w) grids."""
    q = query.astype(np.float64) / np.linalg.norm(query.astype(np.float64))
    g = grids.astype(np.float64)
    return np.einsum("d,ndhw->nhw", q, g) / np.linalg.norm(g, axis=1)


def test_stored_tokens_give_the_maps_of_patch_similarity_with_the_model(encoded):
    model, paths, stores = encoded
    patches = stores["full"].patches
    point = (2 * PATCH + 3, 1 * PATCH + 9)  # patch (row 1, col 2)
    direct = patch_similarity(model, paths[0], point, paths[1:])

    query = patches[0][:, 1, 2]
    maps = similarity_to_grids(query, patches[1:])
    assert maps.dtype == np.float32 and maps.shape == (3, 4, 4)
    assert np.allclose(maps, np.stack(direct.maps), atol=TOLERANCE, rtol=0)
    stored = similarity_maps_from_tokens(
        direct.query_image, patches[0], (1, 2), direct.target_images, patches[1:]
    )
    assert stored.query_patch == direct.query_patch
    assert np.allclose(stored.query_map, direct.query_map, atol=TOLERANCE, rtol=0)
    assert stored.query_map[1, 2] == pytest.approx(1.0, abs=TOLERANCE)


def test_similarity_to_grids_matches_float64_numpy_and_reads_memory_mapped_shards():
    rng = np.random.default_rng(1)
    grids = rng.normal(size=(5, 768, 3, 4)).astype(np.float32)
    query = rng.normal(size=768).astype(np.float32)
    expected = reference_cosines(query, grids)
    sharded = ShardedArray([grids[:2], grids[2:]], [1, 0, 1, 0, 1], [0, 0, 1, 1, 2])
    assert np.allclose(similarity_to_grids(query, grids), expected, atol=TOLERANCE, rtol=0)
    order = [2, 0, 3, 1, 4]  # row i of `sharded` is grids[order[i]]
    got = similarity_to_grids(query, sharded)
    assert np.allclose(got, expected[order], atol=TOLERANCE, rtol=0)


def test_a_zero_token_is_similar_to_nothing_and_shapes_are_checked():
    grids = np.zeros((1, 8, 2, 2), np.float32)
    grids[0, :4, 0, 0] = 1.0
    expected = [[0.5**0.5, 0], [0, 0]]  # half the query's dimensions are shared
    assert np.allclose(similarity_to_grids(np.ones(8), grids)[0], expected, atol=TOLERANCE)
    assert np.array_equal(similarity_to_grids(np.zeros(8), grids), np.zeros((1, 2, 2)))
    with pytest.raises(ValueError, match=r"grid 0 has shape \(8, 2, 2\); expected \(4, h, w\)"):
        similarity_to_grids(np.ones(4), grids)
    with pytest.raises(PointOutsideError, match="off the 2x2 grid"):
        similarity_maps_from_tokens(np.zeros((4, 4)), grids[0], (2, 0), [], grids[:0])


def test_figure_from_stored_tokens_carries_the_cli_titles(encoded, tmp_path: Path):
    model, paths, stores = encoded
    patches = stores["full"].patches
    direct = patch_similarity(model, paths[0], (7, 7), paths[1:3])
    maps = similarity_maps_from_tokens(
        direct.query_image, patches[0], (0, 0), direct.target_images, patches[1:3]
    )
    titles = similarity_titles("img0.png", ["img1.png", "img2.png"], maps)
    assert titles[0] == "img0.png (query)"
    assert titles[1] == f"img1.png (max {maps.maps[0].max():.2f})"
    out = save_similarity_figure(maps, tmp_path / "sim.png", titles=titles)
    with Image.open(out) as image:
        assert image.format == "PNG"
    # what raddino view sends is the file raddino similarity writes, byte for byte
    assert figure_bytes(similarity_figure(maps, titles=titles), "png") == out.read_bytes()


def test_nearest_neighbours_match_a_brute_force_numpy_ranking():
    rng = np.random.default_rng(2)
    bank = rng.normal(size=(50, 16)).astype(np.float32)
    query = bank[7] + 0.1 * rng.normal(size=16).astype(np.float32)
    rows, similarity = cosine_neighbours(query, bank, k=5, exclude=[7])

    unit = bank / np.linalg.norm(bank, axis=1, keepdims=True)
    brute = unit.astype(np.float64) @ (query / np.linalg.norm(query))
    brute[7] = -np.inf
    expected = np.argsort(-brute, kind="stable")[:5]
    assert rows.tolist() == expected.tolist()
    assert np.allclose(similarity, brute[expected], atol=1e-12)
    assert 7 not in rows


def test_neighbour_ties_go_to_the_lower_row_and_k_is_capped():
    bank = np.array([[1, 0], [0, 1], [2, 0], [1, 0]], np.float32)
    rows, similarity = cosine_neighbours(np.array([1.0, 0.0]), bank, k=10)
    assert rows.tolist() == [0, 2, 3, 1]
    assert similarity.tolist() == [1.0, 1.0, 1.0, 0.0]
    assert cosine_neighbours(np.array([1.0, 0.0]), bank, k=0)[0].size == 0
    with pytest.raises(ValueError, match="does not hold 3-dim tokens"):
        cosine_to_rows(np.ones(3), bank)


def test_mean_patch_tokens_of_a_full_store_equal_a_pooled_store_bit_for_bit(encoded):
    _, _, stores = encoded
    means = mean_patch_tokens(stores["full"].patches, chunk=3)
    assert np.array_equal(means, stores["pooled"].patch_mean)
    assert np.array_equal(mean_patch_tokens(stores["full"].patches, rows=[2]), means[2:3])
