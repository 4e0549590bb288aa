"""Concurrent fits: a comparison's segmentation heads one at a time against a pool of threads.

The heads of ``--heads`` encoders (planted ViT-B-wide patch tokens of 400 synthetic radiographs
at 224 px, as in segment_throughput.py; one seed per head) are trained and scored one after the
other, then by ``raddino.eval.concurrent_fits.run_fits`` with ``--workers`` threads, each fit on
one intra-op thread (the evaluation default), in interleaved rounds. Prints the CPU, both
times per round, their ratio, and whether every Dice value of the pool equals the sequential
run's (it must: same thread count per fit, seeded initialisation under a lock).

    python benchmarks/concurrent_fits.py [--heads 4] [--workers 2] [--rounds 2] [--epochs 5]
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from dataclasses import replace
from functools import partial
from pathlib import Path

import numpy as np
import torch

from segment_throughput import plant_features, write_cohort


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--heads", type=int, default=4)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--images", type=int, default=400)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--epochs", type=int, default=5)
    args = parser.parse_args()

    from raddino.eval.concurrent_fits import run_fits
    from raddino.eval.encoders import EncoderSpec
    from raddino.eval.segment import SegmentConfig
    from raddino.eval.segment_manifest import (
        load_segment_inputs,
        prepare_segmentation,
        segment_encoded,
    )
    from raddino.features.encode import EncodeOptions
    from raddino.models.encoder import RadDino
    from raddino.models.hardware import probe_hardware
    from raddino.models.vit import vit_config

    print(f"CPU: {probe_hardware('cpu').name}, {os.cpu_count()} cores, torch {torch.__version__}")
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        manifest = write_cohort(root, args.images, args.size + args.size // 7)
        model_dir = root / "encoder"
        torch.manual_seed(0)
        RadDino.from_config(vit_config("base", depth=4)).save_pretrained(model_dir)
        spec = EncoderSpec(str(model_dir), image_size=args.size)
        options = EncodeOptions(batch_size=16, num_workers=2, progress=False)
        config = SegmentConfig(epochs=args.epochs, progress=False, overlays=0, cpu_threads=1)
        inputs = load_segment_inputs(manifest, ["lungs", "heart"])
        plant_features(spec, inputs, options, config, 4, root / "cache", args.size)
        prepared = prepare_segmentation(spec, inputs, options, config, root / "cache")
        rows = np.flatnonzero(prepared.encoded.valid)
        jobs = [
            partial(segment_encoded, spec, inputs, prepared, rows, replace(config, seed=seed), None)
            for seed in range(args.heads)
        ]

        def dice(reports) -> list[float]:
            return [r.metrics[s]["dice"].value for r in reports for s in r.metrics]

        ratios = []
        for round_ in range(args.rounds):
            start = time.perf_counter()
            alone = run_fits(jobs, 1, 1)
            sequential = time.perf_counter() - start
            start = time.perf_counter()
            pooled = run_fits(jobs, args.workers, 1)
            concurrent = time.perf_counter() - start
            ratios.append(sequential / concurrent)
            print(
                f"round {round_ + 1}: {args.heads} heads x {args.epochs} epochs one at a time "
                f"{sequential:.1f} s, {args.workers} workers {concurrent:.1f} s: "
                f"{ratios[-1]:.2f}x; Dice values equal: {dice(alone) == dice(pooled)}"
            )
    print(f"speed-up, median over rounds: {float(np.median(ratios)):.2f}x")


if __name__ == "__main__":
    main()
