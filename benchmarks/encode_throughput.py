"""Encoding throughput and accuracy: raddino (fp32 and fast path) vs transformers, one run.

A random ``Dinov2Model`` with RAD-DINO's config (ViT-B/14, 518 px) is saved in the Hugging Face
format and loaded by both libraries; all candidates encode the same preprocessed pixels (model
only), interleaved round by round (median img/s; a shared machine's slow phases hit them alike):

* transformers fp32, and under ``torch.autocast(bfloat16)`` (CPU) / ``float16`` (GPUs without
  bf16);
* raddino fp32 (eager);
* raddino fast path: what ``raddino encode --dtype auto --compile auto`` picks for a large job
  on this machine (on CPUs with native bf16: bf16, traced and fused by oneDNN Graph);
* optionally (``--eager-bf16``) raddino bf16 eager, to separate precision from fusion.

Also printed: the fp32 and bf16 matmul peak at the ViT's linear shape, measured in every round,
and the fast path's fraction of the bf16 peak; the fast path's cosine similarity to raddino
fp32; the ``raddino encode`` pipeline (decoding 518-px PNGs in worker processes, writing the
store) as % of the fast path's model-only rate, interleaved with it; peak RSS of encoding 100
and 1,000 images with full patch tokens, each count in a fresh child process (by default with
a small ViT at 518 px so it takes seconds, ``--rss-full`` with the RAD-DINO-sized model).

    python benchmarks/encode_throughput.py [--images 4] [--batch-size 4] [--rounds 3]
        [--pipeline-images 12] [--workers 2] [--eager-bf16] [--rss-full] [--skip-rss | --only-rss]
        [--device cpu|cuda]

With ``--device cuda`` the same candidates run on the GPU (autocast in bf16, or fp16 where the
GPU has no bf16; the fast path is what ``--dtype auto --compile auto`` picks there), timings
wait for the GPU, and the peak-RSS part is skipped (it measures host memory of a CPU job).
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # as the raddino CLI sets it

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from raddino.features.encode import SHARD_BYTES, EncodeOptions, build_engine, encode_to_store
from raddino.models.encoder import RadDino
from raddino.models.modes import (
    choose_compile,
    choose_dtype,
    configure_cpu_threads,
    probe_hardware,
    short_name,
)
from raddino.models.vit import ViTConfig

RSS_COUNTS = (100, 1000)
# The default RSS run: a small ViT (ViT-Ti width, 1 block) at 518 px, so 1,000 images encode in
# about a minute; full patch tokens are still 1 MB per image.
SMALL_RSS_CONFIG = dict(hidden_size=192, num_hidden_layers=1, num_attention_heads=3)


def vit_flops(config: ViTConfig) -> float:
    """Forward FLOPs per image: patch embedding, linears and attention (2 per multiply-add)."""
    tokens = 1 + config.num_register_tokens + config.grid_size**2
    dim, hidden = config.embed_dim, config.ffn_hidden_dim
    patches = 2 * config.grid_size**2 * dim * config.in_chans * config.patch_size**2
    linears = 2 * tokens * (3 * dim * dim + dim * dim + 2 * dim * hidden)
    attention = 4 * tokens * tokens * dim
    return patches + config.depth * (linears + attention)


def synchronize(device: torch.device) -> None:
    """Wait for queued GPU work, so that wall-clock timings cover it."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def matmul_rate(
    dtype: torch.dtype, rows: int, repeats: int = 3, device: torch.device | str = "cpu"
) -> float:
    """Best FLOP/s in ``dtype`` of ``F.linear`` at the ViT's two MLP shapes (rows x 768 @
    768 x 3072 and rows x 3072 @ 3072 x 768) and of a 2048^3 ``torch.mm``."""
    shapes = [(rows, 768, 3072), (rows, 3072, 768), (2048, 2048, 2048)]
    best = 0.0
    for m, k, n in shapes:
        a = torch.randn(m, k, dtype=dtype, device=device)
        w = torch.randn(n, k, dtype=dtype, device=device)
        F.linear(a, w)
        synchronize(device)
        start = time.perf_counter()
        for _ in range(repeats):
            F.linear(a, w)
        synchronize(device)
        best = max(best, 2 * m * k * n * repeats / (time.perf_counter() - start))
    return best


def images_per_second(
    run_batch: Callable[[torch.Tensor], object], pixels: torch.Tensor, batch: int
) -> float:
    """Throughput of ``run_batch`` over ``pixels`` (N, 3, H, W) in batches."""
    synchronize(pixels.device)
    start = time.perf_counter()
    for begin in range(0, len(pixels), batch):
        run_batch(pixels[begin : begin + batch])
    synchronize(pixels.device)
    return len(pixels) / (time.perf_counter() - start)


def random_radiographs(count: int, size: int, seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size] / size
    base = 120 + 80 * np.sin(6 * xx + 3 * yy) + 30 * np.cos(25 * yy)
    return [
        np.clip(base + rng.normal(0, 20, base.shape), 0, 255).astype(np.uint8) for _ in range(count)
    ]


def write_pngs(folder: Path, images: list[np.ndarray], count: int) -> list[str]:
    """``count`` PNG files cycling through ``images`` (later ones are copies: same decode work)."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for index in range(count):
        path = folder / f"{index:05d}.png"
        if index < len(images):
            Image.fromarray(images[index]).save(path)
        else:
            shutil.copyfile(folder / f"{index % len(images):05d}.png", path)
        paths.append(str(path))
    return paths


def cosine_report(fast, reference) -> tuple[float, float]:
    """Worst CLS and worst patch-token cosine similarity of ``fast`` against ``reference``."""
    cls = F.cosine_similarity(fast.cls.float(), reference.cls.float(), dim=-1).min().item()
    patches = (
        F.cosine_similarity(fast.patches.float(), reference.patches.float(), dim=-1).min().item()
    )
    return cls, patches


def memory_mb(field: str) -> float:
    """``VmHWM`` (peak) or ``VmRSS`` (current) resident memory of this process, in MB.

    Read from /proc: unlike ``getrusage``'s ru_maxrss, VmHWM starts afresh at ``exec``, so a
    child process does not inherit the benchmark's own peak.
    """
    with open("/proc/self/status", encoding="utf-8") as handle:
        for line in handle:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    raise RuntimeError(f"{field} not in /proc/self/status")


def load_average() -> str:
    return " ".join(f"{x:.1f}" for x in os.getloadavg())


# --------------------------------------------------------------------------- peak RSS (child)


def rss_child(args: argparse.Namespace) -> None:
    """Encode ``--rss-count`` images with full patch tokens; print peak RSS as JSON."""
    configure_cpu_threads()
    model = RadDino.from_pretrained(args.rss_model)
    paths = sorted(str(p) for p in Path(args.rss_images).iterdir())[: args.rss_count]
    hardware = probe_hardware("cpu")
    options = EncodeOptions(
        batch_size=args.batch_size,
        num_workers=args.workers,
        dtype=short_name(choose_dtype("auto", hardware).value),
        compile=args.rss_compile,
        patch_tokens="full",
        progress=False,
    )
    before = memory_mb("VmRSS")
    start = time.perf_counter()
    summary = encode_to_store(model, paths, Path(args.rss_out), options)
    seconds = time.perf_counter() - start
    peak = memory_mb("VmHWM")
    store_mb = sum(f.stat().st_size for f in Path(args.rss_out).rglob("*.npy")) / 2**20
    print(
        json.dumps(
            {
                "encoded": summary.encoded,
                "seconds": seconds,
                "rss_before_mb": before,
                "peak_rss_mb": peak,
                "store_mb": store_mb,
                "shards": len(list((Path(args.rss_out) / "shards").iterdir())),
            }
        )
    )


def measure_rss(args: argparse.Namespace, tmp: Path, rad_dino_dir: Path) -> None:
    from transformers import Dinov2Config, Dinov2Model

    from raddino.models.formats import RAD_DINO_HF_CONFIG

    if args.rss_full:
        model_dir, label = rad_dino_dir, "RAD-DINO-sized ViT-B/14"
        compile_mode = "auto"
    else:
        model_dir, label = tmp / "rss_model", "small ViT (192-dim, 1 block, patch 14)"
        compile_mode = "off"
        torch.manual_seed(0)
        config = Dinov2Config(**{**RAD_DINO_HF_CONFIG, **SMALL_RSS_CONFIG})
        Dinov2Model(config).save_pretrained(model_dir)
    images = tmp / "rss_pngs"
    write_pngs(images, random_radiographs(16, 518, seed=1), max(RSS_COUNTS))
    embed = json.loads((model_dir / "config.json").read_text())["hidden_size"]
    print(
        f"\npeak RSS, {label} at 518 px, full patch tokens ({embed} x 37 x 37 float32 = "
        f"{4 * embed * 37 * 37 / 2**20:.2f} MB per image), batch {args.batch_size}, "
        f"{args.workers} workers, compile {compile_mode}, each count in a fresh process (main "
        "process; decoding workers not included):"
    )
    results = {}
    for count in RSS_COUNTS:
        out = tmp / f"rss_store_{count}"
        command = [
            sys.executable, __file__, "--rss-count", str(count), "--rss-model", str(model_dir),
            "--rss-images", str(images), "--rss-out", str(out), "--rss-compile", compile_mode,
            "--batch-size", str(args.batch_size), "--workers", str(args.workers),
        ]  # fmt: skip
        done = subprocess.run(command, capture_output=True, text=True, check=False)
        if done.returncode != 0:
            print(f"  {count} images: child failed:\n{done.stderr[-2000:]}")
            return
        results[count] = json.loads(done.stdout.strip().splitlines()[-1])
        shutil.rmtree(out, ignore_errors=True)
        r = results[count]
        print(
            f"  {count:5d} images: peak RSS {r['peak_rss_mb']:6.0f} MB (RSS after loading the "
            f"model {r['rss_before_mb']:.0f} MB), {r['store_mb']:.0f} MB written in "
            f"{r['shards']} shards, {r['seconds']:.0f} s"
        )
    low, high = (results[c]["peak_rss_mb"] for c in RSS_COUNTS)
    written = results[RSS_COUNTS[1]]["store_mb"] - results[RSS_COUNTS[0]]["store_mb"]
    print(
        f"  peak RSS grew by {high - low:+.0f} MB from {RSS_COUNTS[0]} to {RSS_COUNTS[1]} images "
        f"while the features written grew by {written:.0f} MB (shards of at most "
        f"{SHARD_BYTES >> 20} MB go to disk as they fill)"
    )


# --------------------------------------------------------------------------- main run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=4, help="images per model-only measurement")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds (median)")
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--pipeline-images", type=int, default=12, help="PNGs per pipeline run")
    parser.add_argument("--workers", type=int, default=2, help="decoding workers (CLI default)")
    parser.add_argument("--rss-full", action="store_true", help="RSS with the ViT-B (~15 min)")
    parser.add_argument("--eager-bf16", action="store_true", help="also raddino bf16 eager")
    parser.add_argument("--skip-rss", action="store_true", help="no peak-RSS measurement")
    parser.add_argument("--only-rss", action="store_true", help="only the peak-RSS measurement")
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    parser.add_argument("--rss-count", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--rss-model", help=argparse.SUPPRESS)
    parser.add_argument("--rss-images", help=argparse.SUPPRESS)
    parser.add_argument("--rss-out", help=argparse.SUPPRESS)
    parser.add_argument("--rss-compile", default="off", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.rss_count is not None:
        rss_child(args)
        return

    from transformers import Dinov2Config, Dinov2Model

    from raddino.models.formats import RAD_DINO_HF_CONFIG

    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: no CUDA GPU is visible to torch")
    threads = configure_cpu_threads()
    hardware = probe_hardware(device)
    fast_dtype = choose_dtype("auto", hardware)
    fast_compile = choose_compile("auto", hardware, fast_dtype.value, 10_000)
    autocast_dtype = torch.bfloat16 if device.type == "cpu" or hardware.bf16 else torch.float16
    low = short_name(autocast_dtype)
    print(
        f"torch {torch.__version__}, {hardware.name}, native bf16: {hardware.bf16}, "
        f"C++ compiler: {hardware.compiler}, {threads} threads; load average {load_average()}"
    )
    print(
        f"model only: {args.images} images at 518 px, batch {args.batch_size}, median of "
        f"{args.rounds} interleaved rounds"
    )
    print(
        f"fast path = --dtype auto -> {short_name(fast_dtype.value)} ({fast_dtype.reason}); "
        f"--compile auto for a 10,000-image job -> {fast_compile.value} ({fast_compile.reason})"
    )

    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        Dinov2Model(Dinov2Config(**RAD_DINO_HF_CONFIG)).save_pretrained(tmp / "model")
        if args.only_rss:
            measure_rss(args, tmp, tmp / "model")
            return
        reference = Dinov2Model.from_pretrained(tmp / "model").eval().to(device)
        model = RadDino.from_pretrained(tmp / "model").to(device)
        fast_model = RadDino.from_pretrained(tmp / "model")
        flops = vit_flops(model.config)

        images = random_radiographs(max(args.images, 16), 518)
        pixels = model.preprocess(images[: args.images]).to(device)

        options = EncodeOptions(
            batch_size=args.batch_size,
            num_workers=args.workers,
            device=str(device),
            dtype=short_name(fast_dtype.value),
            compile=str(fast_compile.value),
            progress=False,
        )
        engine = build_engine(fast_model, options, 10_000)
        first = pixels[: args.batch_size].to(engine.dtype)
        setup = []
        for _ in range(3):  # oneDNN Graph: traced at the first call, fused from the third
            start = time.perf_counter()
            with torch.inference_mode():
                fast_out = engine(first)
            setup.append(time.perf_counter() - start)
        if engine.compile_error:
            print(f"compiling failed, the fast path runs eagerly: {engine.compile_error}")
        elif engine.compiled:
            print(
                f"{engine.mode} set-up: first batches {', '.join(f'{t:.1f}' for t in setup)} s "
                "(trace/compile, profiling, then fused; once per process and batch shape)"
            )
        fast_name = f"raddino {engine.mode}"

        @torch.inference_mode()
        def run_transformers(batch: torch.Tensor) -> object:
            return reference(pixel_values=batch).last_hidden_state

        @torch.inference_mode()
        def run_transformers_autocast(batch: torch.Tensor) -> object:
            with torch.autocast(device.type, dtype=autocast_dtype):
                return reference(pixel_values=batch).last_hidden_state

        @torch.inference_mode()
        def run_raddino(batch: torch.Tensor) -> object:
            return model.encode(batch)

        def run_fast(batch: torch.Tensor) -> object:
            return engine(batch.to(engine.dtype))

        candidates = {
            "transformers fp32": run_transformers,
            f"transformers {low} autocast": run_transformers_autocast,
            "raddino fp32": run_raddino,
            fast_name: run_fast,
        }
        if args.eager_bf16:
            eager_bf16 = RadDino.from_pretrained(tmp / "model").to(device, torch.bfloat16)

            @torch.inference_mode()
            def run_eager_bf16(batch: torch.Tensor) -> object:
                return eager_bf16.encode(batch)

            candidates["raddino bf16 eager"] = run_eager_bf16
        with torch.inference_mode():
            # also the warm-up of these two candidates (the fast path had its first batches)
            fp32_out = model.encode(pixels[: args.batch_size])
            hf_out = reference(pixel_values=pixels[: args.batch_size]).last_hidden_state
        for name, run_batch in candidates.items():  # warm-up of the others
            if name not in ("transformers fp32", "raddino fp32", fast_name):
                run_batch(pixels[: args.batch_size])

        rates: dict[str, list[float]] = {name: [] for name in candidates}
        peaks: dict[torch.dtype, list[float]] = {torch.float32: [], autocast_dtype: []}
        repeats = 3 if device.type == "cpu" else 30
        rows = args.batch_size * 1370
        for round_index in range(args.rounds):
            for name, run_batch in candidates.items():
                rates[name].append(images_per_second(run_batch, pixels, args.batch_size))
            for dtype in peaks:
                peaks[dtype].append(matmul_rate(dtype, rows, repeats, device))
            print(
                f"  round {round_index + 1}: "
                + ", ".join(f"{name} {values[-1]:.3f}" for name, values in rates.items())
                + f" img/s; load {load_average()}",
                flush=True,
            )
        median = {name: statistics.median(values) for name, values in rates.items()}
        peak = {dtype: statistics.median(values) for dtype, values in peaks.items()}

        theirs = median["transformers fp32"]
        theirs_low = median[f"transformers {low} autocast"]
        print(f"\nmodel only, img/s (median; {flops / 1e9:.0f} GFLOP per image):")
        for name, rate in median.items():
            print(
                f"  {name:28s} {rate:6.3f} img/s  {rate * flops / 1e9:6.1f} GFLOP/s   "
                f"{rate / theirs:5.2f}x transformers fp32   "
                f"{rate / theirs_low:5.2f}x transformers {low} autocast"
            )
        print(
            f"matmul peak (best of F.linear at the ViT's MLP shapes with {rows} rows and a 2048^3 "
            f"matmul, measured in each round, median): fp32 {peak[torch.float32] / 1e9:.0f} "
            f"GFLOP/s, {low} {peak[autocast_dtype] / 1e9:.0f} GFLOP/s "
            f"(max {max(peaks[autocast_dtype]) / 1e9:.0f})"
        )
        fast_rate = median[fast_name]
        print(
            f"fast path: {fast_rate * flops / peak[autocast_dtype]:.0%} of the {low} matmul peak "
            f"({fast_rate * flops / max(peaks[autocast_dtype]):.0%} of its max); {low} ceiling "
            f"{peak[autocast_dtype] / flops:.2f} img/s"
        )
        cls_cos, patch_cos = cosine_report(fast_out, fp32_out)
        print(
            f"fast path vs raddino fp32 ({args.batch_size} images): worst cosine CLS "
            f"{cls_cos:.6f}, patch tokens {patch_cos:.6f}; raddino fp32 vs transformers fp32: "
            f"max |diff| {(fp32_out.cls - hf_out[:, 0]).abs().max().item():.1e} (CLS), "
            f"{(fp32_out.patches - hf_out[:, 1:]).abs().max().item():.1e} (patches)"
        )

        # ------------------------------------------------------------ end to end
        paths = write_pngs(tmp / "pngs", images, args.pipeline_images)
        cycled = [images[index % len(images)] for index in range(args.pipeline_images)]
        pipeline_pixels = fast_model.preprocess(cycled).to(device)  # the PNGs' pixels
        encode_to_store(
            fast_model, paths[: args.batch_size], tmp / "warmup", options, engine=engine
        )
        # model-only, pipeline, model-only, ...: each pipeline run is compared with the mean of
        # the model-only runs on either side of it, so a change of load hits both alike
        model_rates = [images_per_second(run_fast, pipeline_pixels, args.batch_size)]
        pipeline_rates, ratios = [], []
        for round_index in range(args.rounds):
            start = time.perf_counter()
            encode_to_store(fast_model, paths, tmp / f"store{round_index}", options, engine=engine)
            pipeline_rates.append(len(paths) / (time.perf_counter() - start))
            model_rates.append(images_per_second(run_fast, pipeline_pixels, args.batch_size))
            ratios.append(pipeline_rates[-1] / statistics.mean(model_rates[-2:]))
        print(
            f"\nraddino encode pipeline ({args.pipeline_images} 518-px PNGs, {args.workers} "
            f"decoding workers, CLS to the store, {engine.mode}): "
            f"{statistics.median(pipeline_rates):.3f} img/s = {statistics.median(ratios):.1%} of "
            f"model-only (median of {args.rounds}; each run against the model-only runs on "
            f"either side: {', '.join(f'{r:.0%}' for r in ratios)}; model-only "
            f"{statistics.median(model_rates):.3f} img/s)"
        )

        if not args.skip_rss and device.type == "cpu":
            measure_rss(args, tmp, tmp / "model")


if __name__ == "__main__":
    main()
