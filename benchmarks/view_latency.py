"""``raddino view``: click-to-heatmap latency for 50 and 500 target images, server round trip
included.

A features store of RAD-DINO's shape (ViT-B/14 at 518 px: D = 768, a 37 x 37 patch grid, float32,
4.2 MB of patch tokens per image) is filled with random tokens, opened by a ``ViewSession`` and
served on 127.0.0.1 as ``raddino view`` serves it. Each click is what the page sends: one
``/api/similarity`` request (a random query image and patch, the first N images as targets),
timed from sending it to holding the N float32 heatmaps decoded from the answer. The tokens are
read from the memory-mapped store; the store was just written, so they are in the page cache, as
after a first pass over the images (a cold disk adds its read time: 210 MB for 50 images).
Printed: the CPU, then per N the median and 90th percentile of the latency, the server's
compute time alone and the answer's size.

    python benchmarks/view_latency.py [--targets 50,500] [--clicks 30] [--store DIR] [--browser]

``--store DIR`` keeps the 2.1 GB store for the next run (default: a temporary folder, deleted).
``--browser`` also clicks in the page itself, in headless Chromium (Playwright and Debian's
``chromium``): from the click to the last heatmap drawn, as the page reports it
(``window.raddinoView.clickMs``; every row's image is one picture, so the browser caches it).
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # as the raddino CLI sets it

import argparse
import base64
import http.client
import json
import platform
import statistics
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
from PIL import Image

from raddino.data.preprocess import PreprocessConfig
from raddino.features.store import FeatureStoreWriter
from raddino.view.server import serve_view, url_of
from raddino.view.session import ViewSession

DIM, GRID = 768, 37  # RAD-DINO: ViT-B/14 at 518 px


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def write_store(folder: Path, images: int, seed: int = 0) -> None:
    """A finished store of ``images`` rows of random tokens (skipped when already there)."""
    if (folder / "index.csv").is_file():
        return
    meta = {
        "model": "random-tokens",
        "preprocess": PreprocessConfig().to_dict(),
        "dtype": "float32",
        "patch_tokens": "full",
        "layers": [],
        "embed_dim": DIM,
    }
    rng = np.random.default_rng(seed)
    # the page shows the images: one 518 px picture, linked under every row's name
    picture = folder.parent / f"{folder.name}-images" / "picture.png"
    picture.parent.mkdir(parents=True, exist_ok=True)
    ramp = np.add.outer(np.arange(518), np.arange(518)) * 255 // 1034
    Image.fromarray(ramp.astype(np.uint8)).save(picture)
    paths = []
    for index in range(images):
        link = picture.with_name(f"image{index:04d}.png")
        if not link.exists():
            link.symlink_to(picture.name)
        paths.append(str(link))
    with FeatureStoreWriter(folder, meta, shard_size=16) as writer:
        for start in range(0, images, 16):
            rows = paths[start : start + 16]
            patches = rng.standard_normal((len(rows), DIM, GRID, GRID), dtype=np.float32)
            writer.add(rows, {"cls": patches.mean(axis=(2, 3)), "patches": patches})
        writer.finalize(paths)


def click(port: int, query: int, row: int, col: int, count: int) -> tuple[float, dict]:
    """One click as the page sends it: seconds until the heatmaps are decoded, and the answer."""
    started = time.perf_counter()
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
    connection.request(
        "GET", f"/api/similarity?encoder=0&image={query}&row={row}&col={col}&count={count}"
    )
    response = connection.getresponse()
    body = response.read()
    connection.close()
    answer = json.loads(body)
    if response.status != 200:
        raise RuntimeError(answer.get("error"))
    maps = np.frombuffer(base64.b64decode(answer["maps"]), "<f4").reshape(-1, GRID, GRID)
    seconds = time.perf_counter() - started
    assert len(maps) == count
    answer["bytes"] = len(body)
    return seconds, answer


def browser_clicks(url: str, count: int, clicks: int, seed: int = 2) -> list[float]:
    """Seconds from a click on the page to its heatmaps drawn, ``clicks`` times."""
    from playwright.sync_api import sync_playwright

    arguments = [
        "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync",
    ]  # fmt: skip
    rng = np.random.default_rng(seed)
    seconds = []
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path="/usr/bin/chromium", args=arguments)
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        page.goto(f"{url}?image=0&count={count}")
        page.wait_for_function("document.body.dataset.state === 'idle'")
        box = page.locator("#query-image").bounding_box()
        for index in range(clicks + 1):
            page.evaluate("window.raddinoView.clickMs = null")
            x, y = rng.uniform(0.05, 0.95, size=2)
            page.mouse.click(box["x"] + x * box["width"], box["y"] + y * box["height"])
            page.wait_for_function("window.raddinoView.clickMs !== null", timeout=120_000)
            if index:  # the first click warms up
                seconds.append(page.evaluate("window.raddinoView.clickMs") / 1000)
        browser.close()
    return seconds


def percentile(values: list[float], q: float) -> float:
    return float(np.percentile(values, q))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--targets", default="50,500", help="target counts (default: 50,500)")
    parser.add_argument("--clicks", type=int, default=30, help="timed clicks per count (30)")
    parser.add_argument("--store", default=None, help="keep the store here (default: temporary)")
    parser.add_argument("--browser", action="store_true", help="also click in headless Chromium")
    args = parser.parse_args()
    counts = [int(part) for part in args.targets.split(",")]

    print(f"CPU: {cpu_model()}; {os.cpu_count()} cores; load {os.getloadavg()[0]:.1f}")
    print(f"store: {max(counts) + 1} images, D = {DIM}, {GRID} x {GRID} patches, float32")
    with tempfile.TemporaryDirectory(prefix="view-latency-") as temporary:
        folder = Path(args.store) if args.store else Path(temporary) / "store"
        started = time.perf_counter()
        write_store(folder, max(counts) + 1)
        print(f"  written or found in {time.perf_counter() - started:.1f} s")
        session = ViewSession([("random", folder)])
        server = serve_view(session, "127.0.0.1", 0)
        thread = threading.Thread(target=server.serve_forever, daemon=True)
        thread.start()
        rng = np.random.default_rng(1)
        try:
            for count in counts:
                for _ in range(2):  # warm-up: the first answers build caches and fault pages in
                    click(server.port, int(rng.integers(count + 1)), 0, 0, count)
                latency, compute, size = [], [], 0
                for _ in range(args.clicks):
                    query = int(rng.integers(count + 1))
                    row, col = (int(v) for v in rng.integers(GRID, size=2))
                    seconds, answer = click(server.port, query, row, col, count)
                    latency.append(seconds)
                    compute.append(answer["seconds"])
                    size = answer["bytes"]
                print(
                    f"{count:>4} targets: click-to-heatmap median {statistics.median(latency):.3f}"
                    f" s, p90 {percentile(latency, 90):.3f} s (server compute median "
                    f"{statistics.median(compute):.3f} s; answer {size / 1e6:.1f} MB; "
                    f"{args.clicks} clicks)"
                )
                if args.browser:
                    page = browser_clicks(url_of(server), count, args.clicks)
                    print(
                        f"{count:>4} targets, in Chromium (click to heatmaps drawn): median "
                        f"{statistics.median(page):.3f} s, p90 {percentile(page, 90):.3f} s"
                    )
        finally:
            server.shutdown()
            thread.join()


if __name__ == "__main__":
    main()
