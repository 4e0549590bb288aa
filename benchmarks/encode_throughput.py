"""Encoding throughput: raddino vs transformers on the same random RAD-DINO-sized weights.

One process, one run: a random ``Dinov2Model`` with RAD-DINO's config (ViT-B/14, 518 px) is
saved in the Hugging Face format and loaded by both libraries. Both encode the same
preprocessed pixels (model only); then ``raddino encode``'s pipeline (decoding PNGs in worker
processes, writing the features store) runs on the same images written as 518-px PNGs.

    python benchmarks/encode_throughput.py [--images 8] [--batch-size 8] [--rounds 3]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from PIL import Image


def images_per_second(
    run_batch: Callable[[torch.Tensor], object], pixels: torch.Tensor, batch: int
) -> float:
    """Throughput of ``run_batch`` over ``pixels`` (N, 3, H, W) in batches."""
    start = time.perf_counter()
    for begin in range(0, len(pixels), batch):
        run_batch(pixels[begin : begin + batch])
    return len(pixels) / (time.perf_counter() - start)


def compare(
    candidates: dict[str, Callable[[torch.Tensor], object]],
    pixels: torch.Tensor,
    batch: int,
    rounds: int,
) -> dict[str, float]:
    """Median img/s of each candidate over ``rounds`` interleaved rounds (after a warm-up batch).

    Interleaving spreads slow phases of a shared machine over all candidates alike.
    """
    for run_batch in candidates.values():
        run_batch(pixels[:batch])
    rates: dict[str, list[float]] = {name: [] for name in candidates}
    for _ in range(rounds):
        for name, run_batch in candidates.items():
            rates[name].append(images_per_second(run_batch, pixels, batch))
    return {name: statistics.median(values) for name, values in rates.items()}


def random_radiographs(count: int, size: int, seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size] / size
    base = 120 + 80 * np.sin(6 * xx + 3 * yy)
    return [
        np.clip(base + rng.normal(0, 20, base.shape), 0, 255).astype(np.uint8) for _ in range(count)
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=8, help="images per measurement")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds (median)")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--workers", type=int, default=1, help="decoding workers for the pipeline")
    args = parser.parse_args()

    from transformers import Dinov2Config, Dinov2Model

    from raddino.features.encode import EncodeOptions, encode_to_store
    from raddino.models.encoder import RadDino
    from raddino.models.formats import RAD_DINO_HF_CONFIG

    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        Dinov2Model(Dinov2Config(**RAD_DINO_HF_CONFIG)).save_pretrained(tmp / "model")
        reference = Dinov2Model.from_pretrained(tmp / "model").eval()
        model = RadDino.from_pretrained(tmp / "model")

        images = random_radiographs(args.images, 518)
        pixels = model.preprocess(images)

        @torch.inference_mode()
        def run_transformers(batch: torch.Tensor) -> object:
            return reference(pixel_values=batch).last_hidden_state

        @torch.inference_mode()
        def run_raddino(batch: torch.Tensor) -> object:
            return model.encode(batch)

        print(
            f"torch {torch.__version__}, {torch.get_num_threads()} threads, {args.images} images "
            f"at 518 px, batch {args.batch_size}, median of {args.rounds} interleaved rounds"
        )
        rates = compare(
            {"transformers": run_transformers, "raddino": run_raddino},
            pixels,
            args.batch_size,
            args.rounds,
        )
        ours, theirs = rates["raddino"], rates["transformers"]
        print(f"transformers fp32 (model only): {theirs:6.3f} img/s")
        print(f"raddino fp32      (model only): {ours:6.3f} img/s   ratio {ours / theirs:.3f}x")

        folder = tmp / "pngs"
        folder.mkdir()
        for index, image in enumerate(images):
            Image.fromarray(image).save(folder / f"{index:05d}.png")
        paths = sorted(str(p) for p in folder.iterdir())
        options = EncodeOptions(
            batch_size=args.batch_size, num_workers=args.workers, dtype="float32", progress=False
        )
        encode_to_store(model, paths[: args.batch_size], tmp / "warmup", options)
        start = time.perf_counter()
        encode_to_store(model, paths, tmp / "store", options)
        pipeline = len(paths) / (time.perf_counter() - start)
        print(
            f"raddino encode    (end to end): {pipeline:6.3f} img/s   "
            f"{pipeline / ours:.1%} of model-only"
        )


if __name__ == "__main__":
    main()
