"""What the page is told: heatmaps, nearest studies, gallery pages, figures and store problems.

Tolerance for heatmaps against ``raddino similarity``'s computation (``patch_similarity`` with
the model): the stored tokens come from the same float32 model in batches of another size, and
the cosines are summed in another order; that moves a cosine by a few float32 ulps of 1
(1.2e-7 each). 1e-5 holds for any BLAS kernel on AMD or Intel and is 400x finer than one step of
the 256-colour heatmap.
"""

from __future__ import annotations

import base64
from io import BytesIO

import numpy as np
import pytest
from PIL import Image

from raddino.view.session import FIGURE_TARGETS, ViewError, ViewSession
from raddino.viz.similarity import patch_similarity, similarity_to_grids
from tests.view.conftest import IMAGES, Cohort

TOLERANCE = 1e-5
PATCH = 14


def decode(text: str, shape) -> np.ndarray:
    return np.frombuffer(base64.b64decode(text), dtype="<f4").reshape(shape)


def test_heatmaps_are_the_maps_of_raddino_similarity(session: ViewSession, cohort: Cohort):
    targets = session.targets(3, {}, 5)
    answer = session.similarity(0, 3, 4, 7, targets)
    assert [t["image"] for t in answer["targets"]] == targets == [0, 1, 2, 4, 5]
    maps = decode(answer["maps"], (5, 12, 12))

    point = (7 * PATCH + 7, 4 * PATCH + 7)  # centre of patch (row 4, col 7)
    model = cohort.models["image-only"]
    direct = patch_similarity(model, cohort.paths[3], point, [cohort.paths[t] for t in targets])
    assert np.allclose(maps, np.stack(direct.maps), atol=TOLERANCE, rtol=0)
    query_map = decode(answer["query_map"], (12, 12))
    assert np.allclose(query_map, direct.query_map, atol=TOLERANCE, rtol=0)
    assert answer["low"] == maps.min() and answer["high"] == maps.max()
    for target, grid in zip(answer["targets"], maps, strict=True):
        assert target["max"] == grid.max()
        assert tuple(target["best"]) == np.unravel_index(np.argmax(grid), grid.shape)


def test_nearest_studies_match_a_numpy_ranking_by_cls_and_by_mean_token(
    session: ViewSession,
):
    features = session.encoders[1].features
    for by, tokens in (("cls", features.cls), ("mean", features.patches[:].mean(axis=(2, 3)))):
        answer = session.neighbours(1, 5, by, k=4)
        unit = tokens / np.linalg.norm(tokens, axis=1, keepdims=True)
        cosine = unit.astype(np.float64) @ unit[5].astype(np.float64)
        cosine[5] = -np.inf
        expected = np.argsort(-cosine, kind="stable")[:4]
        assert [item["image"] for item in answer["items"]] == expected.tolist(), by
        got = [item["similarity"] for item in answer["items"]]
        assert np.allclose(got, cosine[expected], atol=TOLERANCE), by


def test_gallery_pages_and_filters_follow_the_manifest(session: ViewSession):
    assert session.labels.filters == {"effusion": ["0", "1"], "view": ["AP", "PA"]}
    everything = session.page({}, 0, per_page=5)
    assert (everything["total"], everything["pages"], len(everything["items"])) == (IMAGES, 3, 5)
    effusions = session.page({"effusion": "1"}, 0)
    assert [item["image"] for item in effusions["items"]] == [0, 3, 6, 9]
    assert effusions["items"][0]["labels"] == "effusion · AP"
    assert session.targets(3, {"effusion": "1"}, 2) == [0, 6]
    with pytest.raises(ViewError, match="unknown filter 'finding'"):
        session.select({"finding": "1"})


def test_a_store_without_patch_tokens_or_of_other_images_is_named_as_the_problem(
    session: ViewSession, cohort: Cohort
):
    problems = {store.name: store.problem for store in session.encoders}
    assert problems["image-only"] is None and problems["random"] is None
    assert (
        "this store has no patch tokens (encoded with --patch-tokens none)"
        in problems["no-patches"]
    )
    assert problems["other-images"].startswith("mismatched stores: ")
    assert str(cohort.stores["other-images"]) in problems["other-images"]
    with pytest.raises(ViewError, match="no patch tokens") as raised:
        session.similarity(2, 0, 0, 0, [1])
    assert raised.value.status == 422
    assert session.neighbours(2, 0, "cls", k=3)["items"]  # CLS tokens still rank studies
    with pytest.raises(ViewError, match="is not in the store of other-images"):
        session.neighbours(3, 0)


def test_bad_requests_say_what_is_wrong(session: ViewSession):
    with pytest.raises(ViewError, match="off the 12x12 grid"):
        session.similarity(0, 0, 12, 0, [1])
    with pytest.raises(ViewError, match="no image 99: the gallery holds 12"):
        session.similarity(0, 99, 0, 0, [1])
    with pytest.raises(ViewError, match="no encoder 7: 4 are open"):
        session.neighbours(7, 0)
    with pytest.raises(ViewError, match="neighbours by 'median'"):
        session.neighbours(0, 0, "median")


def test_figure_is_raddino_similarity_s_figure_of_the_first_targets(cohort: Cohort, tmp_path):
    session = ViewSession(list(cohort.stores.items())[:1], figures=tmp_path / "figs")
    name, data = session.figure_png(0, 1, 2, 3, list(range(2, IMAGES)))
    assert name == "similarity-case01-r2c3.png"
    assert (tmp_path / "figs" / name).read_bytes() == data
    with Image.open(BytesIO(data)) as image:
        assert image.format == "PNG"
        # one row of 1 + FIGURE_TARGETS panels of 3.2 in and a colour bar, at 150 dpi
        assert image.width == round((3.2 * (1 + FIGURE_TARGETS) + 0.8) * 150)


def test_views_and_pca_colours_come_from_the_store_s_processor(session: ViewSession):
    with Image.open(BytesIO(session.view_png(0, 2))) as view:
        assert view.size == (168, 168) and view.mode == "L"
    with Image.open(BytesIO(session.pca_png(0, 2))) as pca:
        assert pca.size == (12, 12) and pca.mode == "RGB"


def test_the_served_maps_are_viz_s_numbers_bit_for_bit(session: ViewSession):
    store = session.encoders[0]
    maps = similarity_to_grids(store.features.patches[0][:, 1, 1], store.features.patches[1:4])
    answer = session.similarity(0, 0, 1, 1, [1, 2, 3])
    assert np.array_equal(decode(answer["maps"], maps.shape), maps)  # exactly viz's numbers
