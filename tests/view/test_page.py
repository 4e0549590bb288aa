"""The page in a real headless Chromium: open it, click a patch, compare what it draws with viz.

Needs Playwright (``raddino[dev]``) and Debian's Chromium (``apt-get install chromium``; ``.ci/run``
installs it); skipped with the reason otherwise. One browser page is shared by the tests, in file
order. ``RADDINO_UPDATE_SCREENSHOT=1`` writes the README's screenshot, docs/images/view.png.

Tolerance against ``raddino similarity``'s computation: as in test_session.py, 1e-5 (a few
float32 ulps of summation order; 400x finer than a colour step). The page's own numbers are the
server's float32 values exactly (sent as float32 bytes), so they equal viz's bit for bit.
"""

from __future__ import annotations

import math
import os
import shutil
from io import BytesIO
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from raddino.view.session import ViewSession
from raddino.viz.pca import pca_rgb_from_tokens
from raddino.viz.similarity import patch_similarity, similarity_to_grids
from tests.view.conftest import IMAGES, Cohort

TOLERANCE = 1e-5
PATCH, GRID = 14, 12
CHROMIUM = os.environ.get("RADDINO_CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"
# the network here is closed: no background connections, a fresh profile (set by Playwright)
CHROMIUM_ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]  # fmt: skip
SCREENSHOT = Path(__file__).resolve().parents[2] / "docs" / "images" / "view.png"


@pytest.fixture(scope="module")
def browser():
    sync_api = pytest.importorskip(
        "playwright.sync_api", reason="Playwright is not installed: pip install 'raddino[dev]'"
    )
    if not Path(CHROMIUM).is_file():
        pytest.skip(f"no Chromium at {CHROMIUM}: apt-get install chromium (.ci/run does)")
    with sync_api.sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield launched
        launched.close()


@pytest.fixture(scope="module")
def page(browser, server_url: str):
    context = browser.new_context(viewport={"width": 1400, "height": 1000}, accept_downloads=True)
    page = context.new_page()
    problems: list[str] = []
    page.on("pageerror", lambda error: problems.append(str(error)))
    page.goto(server_url)
    page.wait_for_selector(".thumb")
    yield page
    context.close()
    assert not problems, f"JavaScript errors: {problems}"


def click_patch(page, row: int, col: int) -> None:
    box = page.locator("#query-image").bounding_box()
    page.mouse.click(
        box["x"] + (col + 0.5) * box["width"] / GRID, box["y"] + (row + 0.5) * box["height"] / GRID
    )


def panels_ready(page, count: int) -> None:
    page.wait_for_function(
        f"document.querySelectorAll('.panel[data-state=ready]').length === {count}"
        " && document.body.dataset.state === 'ready'"
    )


def drawn(page, encoder: int) -> dict:
    """What the page holds for ``encoder``: its targets and the maps it drew, (n, h, w)."""
    result = page.evaluate(
        "(e) => { const r = window.raddinoView.results[e];"
        " return {targets: r.targets.map(t => t.image), grid: r.grid,"
        " values: Array.from(r.values), low: r.low, high: r.high}; }",
        encoder,
    )
    result["maps"] = np.array(result["values"], np.float32).reshape(-1, *result["grid"])
    return result


def test_the_gallery_shows_every_image_and_filters_by_manifest_column(page):
    assert page.locator(".thumb").count() == IMAGES
    page.select_option("#filters select[data-column=effusion]", "1")
    page.wait_for_function("document.querySelectorAll('.thumb').length === 4")
    assert "f.effusion=1" in page.url
    page.select_option("#filters select[data-column=effusion]", "")
    page.wait_for_function(f"document.querySelectorAll('.thumb').length === {IMAGES}")


def test_a_click_on_a_patch_draws_the_heatmaps_viz_computes(
    page, cohort: Cohort, session: ViewSession
):
    page.locator(".thumb[data-image='3']").click()
    page.wait_for_selector("#neighbour-lists li[data-image]")
    click_patch(page, 4, 7)
    panels_ready(page, 1)
    result = drawn(page, 0)
    targets = result["targets"]
    assert targets == [t for t in range(IMAGES) if t != 3][:16]
    patches = session.encoders[0].features.patches
    stored = similarity_to_grids(patches[3][:, 4, 7], [patches[t] for t in targets])
    assert np.array_equal(result["maps"], stored)
    point = (7 * PATCH + 7, 4 * PATCH + 7)
    direct = patch_similarity(
        cohort.models["image-only"], cohort.paths[3], point, [cohort.paths[t] for t in targets]
    )
    assert np.allclose(result["maps"], np.stack(direct.maps), atol=TOLERANCE, rtol=0)

    # the canvas shows each value in the colour map's colour, on one scale for all targets
    lut = np.array(session.describe()["colormap"])
    low, high = result["low"], result["high"]
    for index, (row, col) in ((0, (0, 0)), (5, (4, 7)), (10, (11, 3))):
        pixel = page.evaluate(
            '([i, r, c]) => Array.from(document.querySelectorAll(\'.panel[data-encoder="0"] '
            "canvas:not(.scale)')[i].getContext('2d').getImageData(c, r, 1, 1).data)",
            [index, row, col],
        )
        value = float(result["maps"][index, row, col])  # in float64, as JavaScript computes
        shade = min(255, math.floor(min(1.0, max(0.0, (value - low) / (high - low))) * 256))
        assert pixel == [*lut[shade], 255]


def test_nearest_studies_are_the_numpy_cosine_ranking(page, session: ViewSession):
    items = page.locator("#neighbour-lists ol[data-encoder='0'] li[data-image]")
    shown = [int(items.nth(i).get_attribute("data-image")) for i in range(items.count())]
    similarity = [
        float(items.nth(i).get_attribute("data-similarity")) for i in range(items.count())
    ]
    cls = session.encoders[0].features.cls.astype(np.float64)
    unit = cls / np.linalg.norm(cls, axis=1, keepdims=True)
    cosine = unit @ unit[3]
    cosine[3] = -np.inf
    expected = np.argsort(-cosine, kind="stable")[:10]
    assert shown == expected.tolist()
    assert np.allclose(similarity, cosine[expected], atol=1e-12)


def test_a_second_encoder_answers_the_same_click_side_by_side(page, session: ViewSession):
    page.select_option("#encoder-b", "1")
    panels_ready(page, 2)
    result = drawn(page, 1)
    patches = session.encoders[1].features.patches
    expected = similarity_to_grids(patches[3][:, 4, 7], [patches[t] for t in result["targets"]])
    assert np.array_equal(result["maps"], expected)
    assert page.locator("#neighbour-lists ol").count() == 2


def test_the_permalink_reopens_the_same_query(page, browser):
    assert all(
        k in page.url.split("?")[1].split("&") for k in ("image=3", "b=1", "x=0.625", "y=0.375")
    )
    other = browser.new_page()
    try:
        other.goto(page.url)
        panels_ready(other, 2)
        for encoder in (0, 1):
            assert np.array_equal(drawn(other, encoder)["maps"], drawn(page, encoder)["maps"])
        assert other.locator("#marker").is_visible()
    finally:
        other.close()


def test_the_pca_overlay_shows_viz_s_colours_at_the_chosen_opacity(
    page, session: ViewSession, tmp_path: Path
):
    page.check("#pca")
    overlay = page.locator("#pca-overlay")
    overlay.wait_for(state="visible")
    page.locator("#opacity").fill("0.35")
    assert overlay.evaluate("o => o.style.opacity") == "0.35"
    source = page.evaluate("document.getElementById('pca-overlay').src")
    png = page.request.get(source).body()
    grid = session.encoders[0].features.patches[3]
    expected = pca_rgb_from_tokens([torch.from_numpy(grid.transpose(1, 2, 0).copy())])[0]
    with Image.open(BytesIO(png)) as image:
        assert np.array_equal(np.asarray(image), expected)
    # the README's picture: both encoders on one click, PCA colours over the query
    update = os.environ.get("RADDINO_UPDATE_SCREENSHOT") == "1"
    out = SCREENSHOT if update else tmp_path / "view.png"
    with Image.open(BytesIO(page.screenshot(full_page=True))) as shot:
        out.parent.mkdir(parents=True, exist_ok=True)
        palette = shot.convert("RGB").quantize(256, method=Image.Quantize.FASTOCTREE)
        palette.save(out, optimize=True)  # 256 colours: a third of the bytes
    assert out.stat().st_size > 10_000


def test_save_figure_downloads_raddino_similarity_s_png(page, session: ViewSession, tmp_path):
    with page.expect_download() as download:
        page.click("#save-figure")
    saved = tmp_path / "figure.png"
    download.value.save_as(saved)
    assert download.value.suggested_filename == "similarity-case03-r4c7.png"
    targets = session.targets(3, {}, 16)
    assert saved.read_bytes() == session.figure_png(0, 3, 4, 7, targets)[1]


def test_a_store_without_patch_tokens_shows_its_problem_in_the_page(page, tmp_path):
    page.select_option("#encoder-b", "2")
    page.wait_for_selector(".panel[data-encoder='2'][data-state=error]")
    message = page.locator(".panel[data-encoder='2'] .panel-error").inner_text()
    assert "this store has no patch tokens" in message and "Traceback" not in message
    assert "no patch tokens" in page.locator("#errors").inner_text()
    page.screenshot(path=str(tmp_path / "error.png"))
