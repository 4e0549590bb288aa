"""Probe speed on cached features: ``raddino probe``'s pipeline on 10,000 images x 768 dims.

A features store of random 768-dim CLS features (ViT-B's width) with planted signals is written
where ``raddino probe`` looks for its cache, so the timed part is exactly what a second run of
the command does: read the manifest and the store, fit logistic / ridge (regularisation chosen
on the validation split) and k-NN probes for every target, 1000 patient-level bootstrap
resamples per metric, write JSON / Markdown / CSV.

    python benchmarks/probe_throughput.py [--images 10000] [--dim 768] [--targets 10]
"""

from __future__ import annotations

import argparse
import csv
import tempfile
import time
from pathlib import Path

import numpy as np
import torch


def planted_cohort(
    images: int, dim: int, n_targets: int, seed: int = 0
) -> tuple[np.ndarray, list[dict[str, str]], list[str]]:
    """Features (N, D), manifest rows and target names; 2 of every 10 targets are continuous."""
    rng = np.random.default_rng(seed)
    features = rng.normal(size=(images, dim)).astype(np.float32)
    patients = rng.integers(0, images * 2 // 5, images)  # ~2.5 images per patient
    fraction = (patients * 2654435761 % 1000) / 1000
    split = np.where(fraction < 0.7, "train", np.where(fraction < 0.8, "val", "test"))
    columns: dict[str, list[str]] = {}
    names = []
    for t in range(n_targets):
        direction = rng.normal(size=dim) / np.sqrt(dim)
        signal = features @ direction + rng.normal(scale=0.5 + 0.2 * t, size=images)
        unknown = rng.random(images) < 0.1
        if t % 5 == 4:
            name = f"continuous{t}"
            values = [f"{50 + 10 * s:.2f}" for s in signal]
        else:
            name = f"finding{t}"
            prevalence = 0.05 + 0.45 * t / n_targets
            threshold = np.quantile(signal, 1 - prevalence)
            values = [str(int(s > threshold)) for s in signal]
        columns[name] = ["" if u else v for u, v in zip(unknown, values, strict=True)]
        names.append(name)
    rows = [
        {"path": f"img{i:05d}.png", "split": str(split[i]), "patient_id": f"p{patients[i]}"}
        | {name: columns[name][i] for name in names}
        for i in range(images)
    ]
    return features, rows, names


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=10_000)
    parser.add_argument("--dim", type=int, default=768)
    parser.add_argument("--targets", type=int, default=10)
    parser.add_argument("--bootstrap", type=int, default=1000)
    parser.add_argument(
        "--cpu-threads", type=int, default=1, help="threads for the fits (0: torch's setting)"
    )
    args = parser.parse_args()

    from raddino.eval.encoders import EncoderSpec
    from raddino.eval.feature_cache import pooled_request, store_directory
    from raddino.eval.probe import ProbeConfig
    from raddino.eval.probe_manifest import probe_manifest
    from raddino.eval.targets import parse_target_specs
    from raddino.features.encode import EncodeOptions
    from raddino.features.store import FeatureStoreWriter
    from raddino.models.encoder import RadDino
    from raddino.models.vit import ViTConfig

    features, rows, names = planted_cohort(args.images, args.dim, args.targets)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        model_dir = root / "model"  # a stand-in encoder: only its fingerprint keys the cache
        stand_in = RadDino.from_config(ViTConfig(embed_dim=64, depth=1, num_heads=2))
        stand_in.save_pretrained(model_dir)
        manifest = root / "manifest.csv"
        with manifest.open("w", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)
        spec = EncoderSpec(str(model_dir))
        options = EncodeOptions(progress=False)
        store = store_directory(root / "cache", spec, pooled_request("cls"), options)
        paths = [str(root / row["path"]) for row in rows]
        with FeatureStoreWriter(store, {"model": "benchmark"}, shard_size=4096) as writer:
            for start in range(0, len(paths), 4096):
                writer.add(paths[start : start + 4096], {"cls": features[start : start + 4096]})
            writer.finalize(paths)

        config = ProbeConfig(n_resamples=args.bootstrap, cpu_threads=args.cpu_threads or None)
        start = time.perf_counter()
        report = probe_manifest(
            spec,
            manifest,
            parse_target_specs(names),
            root / "out",
            options,
            config,
            cache_dir=root / "cache",
        )
        elapsed = time.perf_counter() - start

    counts = report.counts
    print(
        f"probe: {args.images} images x {args.dim} dims, {args.targets} targets "
        f"({counts['train']}/{counts['val']}/{counts['test']} train/val/test), "
        f"protocols {', '.join(config.protocols)}, {args.bootstrap} bootstrap resamples, "
        f"fits on {config.cpu_threads or torch.get_num_threads()} thread(s): {elapsed:.1f} s"
    )
    for protocol, result in report.results.items():
        for metric in ("auroc",):
            print(f"  {protocol} macro {metric}: {result.macro[metric].value:.3f}")


if __name__ == "__main__":
    main()
