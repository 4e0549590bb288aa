"""Segmentation speed: ``raddino segment``'s pipeline on 500 synthetic radiographs at 224 px.

The head trains on cached patch tokens of ViT-B's width (768 x 16 x 16 per block at 224 px) with
masks of two overlapping structures, validates every epoch and is scored on the test split with
bootstrap intervals. By default the features store is filled with planted features (noise plus
a direction where the 'lungs' are), because encoding is benchmarked by encode_throughput.py and
takes far longer on a CPU than the head; ``--features encode`` runs a random-initialised ViT-B
(RAD-DINO's architecture) instead. Both phases are timed separately.

    python benchmarks/segment_throughput.py [--images 500] [--size 224] [--head linear]
        [--epochs 20] [--cpu-threads 1] [--features planted|encode]
"""

from __future__ import annotations

import argparse
import csv
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image


def write_cohort(root: Path, count: int, size: int, seed: int = 0) -> Path:
    """Radiograph-like images with two 'lungs' and a 'heart' overlapping one of them."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size] / size
    rows = []
    for i in range(count):
        shift = rng.normal(0, 0.03, 4)
        left = ((xx - 0.3 - shift[0]) / 0.16) ** 2 + ((yy - 0.5 - shift[1]) / 0.3) ** 2 < 1
        right = ((xx - 0.7 - shift[2]) / 0.16) ** 2 + ((yy - 0.5 - shift[1]) / 0.3) ** 2 < 1
        heart = ((xx - 0.58 - shift[3]) / 0.13) ** 2 + ((yy - 0.62) / 0.12) ** 2 < 1
        lungs = left | right
        image = 170 - 90 * lungs + 50 * heart + rng.normal(0, 12, lungs.shape)
        Image.fromarray(np.clip(image, 0, 255).astype(np.uint8)).save(root / f"img{i}.png")
        Image.fromarray(lungs.astype(np.uint8) * 255).save(root / f"lungs{i}.png")
        Image.fromarray(heart.astype(np.uint8) * 255).save(root / f"heart{i}.png")
        split = "train" if i < 0.8 * count else ("val" if i < 0.9 * count else "test")
        rows.append(
            {
                "path": f"img{i}.png",
                "split": split,
                "patient_id": f"p{i}",
                "mask_lungs": f"lungs{i}.png",
                "mask_heart": f"heart{i}.png",
            }
        )
    manifest = root / "manifest.csv"
    with manifest.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return manifest


def downsampled_mask(image_path: str, structure: str, grid: int) -> np.ndarray:
    """The structure's mask of an image at the patch grid, in [0, 1]."""
    path = Path(image_path)
    mask = Image.open(path.parent / path.name.replace("img", structure))
    return np.asarray(mask.resize((grid, grid), Image.BILINEAR), np.float32) / 255


def plant_features(spec, inputs, options, config, depth: int, cache: Path, size: int) -> None:
    """Fill the features store that ``prepare_segmentation`` will read: noise + structures."""
    from raddino.eval.feature_cache import FeatureRequest, store_directory
    from raddino.eval.segment_manifest import head_blocks
    from raddino.features.store import FeatureStoreWriter

    blocks = head_blocks(config, depth)
    request = FeatureRequest("full", tuple(b for b in blocks if b != depth - 1))
    store = store_directory(cache, spec, request, options)
    grid = size // 14
    rng = np.random.default_rng(0)
    directions = rng.normal(size=(2, 768, 1, 1)).astype(np.float32) / 4
    paths = inputs.paths
    with FeatureStoreWriter(store, {"model": "planted"}, shard_size=256) as writer:
        for start in range(0, len(paths), 64):
            batch = paths[start : start + 64]
            signal = sum(
                np.stack([downsampled_mask(p, structure, grid) for p in batch])[:, None]
                * directions[k][None]
                for k, structure in enumerate(("lungs", "heart"))
            )  # (b, 768, grid, grid)
            arrays = {"cls": rng.normal(size=(len(batch), 768)).astype(np.float32)}
            for block in blocks:
                noise = rng.normal(size=signal.shape).astype(np.float32)
                key = "patches" if block == depth - 1 else f"layer{block}_patches"
                arrays[key] = noise + signal
                if block != depth - 1:
                    arrays[f"layer{block}_cls"] = arrays["cls"]
            writer.add(batch, arrays)
        writer.finalize(paths)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=500)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--head", default="linear", choices=["linear", "upernet"])
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument(
        "--cpu-threads", type=int, default=1, help="threads for the head (0: torch's default)"
    )
    parser.add_argument("--features", default="planted", choices=["planted", "encode"])
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()

    from raddino.eval.encoders import EncoderSpec
    from raddino.eval.segment import SegmentConfig
    from raddino.eval.segment_manifest import (
        load_segment_inputs,
        prepare_segmentation,
        segment_encoded,
    )
    from raddino.features.encode import EncodeOptions
    from raddino.models.encoder import RadDino
    from raddino.models.vit import vit_config

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        manifest = write_cohort(root, args.images, args.size + args.size // 7)
        model_dir = root / "encoder"
        torch.manual_seed(0)
        # ViT-B's width; 4 blocks are all UPerNet needs when the features are planted
        depth = 12 if args.features == "encode" else 4
        RadDino.from_config(vit_config("base", depth=depth)).save_pretrained(model_dir)
        spec = EncoderSpec(str(model_dir), image_size=args.size)
        options = EncodeOptions(batch_size=16, num_workers=2, device=args.device, progress=False)
        config = SegmentConfig(
            head=args.head,
            epochs=args.epochs,
            device=args.device,
            progress=False,
            cpu_threads=args.cpu_threads or None,
        )
        inputs = load_segment_inputs(manifest, ["lungs", "heart"])
        if args.features == "planted":
            plant_features(spec, inputs, options, config, depth, root / "cache", args.size)

        start = time.perf_counter()
        prepared = prepare_segmentation(spec, inputs, options, config, root / "cache")
        encode_s = time.perf_counter() - start
        rows = np.flatnonzero(prepared.encoded.valid)
        start = time.perf_counter()
        report = segment_encoded(spec, inputs, prepared, rows, config, root / "out")
        train_s = time.perf_counter() - start

    counts = report.counts
    steps = config.epochs * -(-counts["train"] // config.batch_size)
    print(
        f"segment ({args.head} head, 768-dim {args.features} features at {args.size} px, "
        f"{args.device}, {config.cpu_threads or torch.get_num_threads()} thread(s)): "
        f"{args.images} images "
        f"({counts['train']}/{counts['val']}/{counts['test']}), "
        f"{'encode' if args.features == 'encode' else 'read store'} + masks {encode_s:.1f} s; "
        f"head {config.epochs} epochs ({steps} steps) + val each epoch + test scoring "
        f"{train_s:.1f} s"
    )
    for structure, metrics in report.metrics.items():
        print(f"  {structure}: test Dice {metrics['dice'].value:.3f}")


if __name__ == "__main__":
    main()
