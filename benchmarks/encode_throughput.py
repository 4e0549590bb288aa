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
store) as % of the fast path's model-only rate, interleaved with it: for the whole job of
``--pipeline-images``, and once running (the difference of that job and a one-batch job, which
also gives the fixed cost of a job: hashing the weights, the store, starting the workers);
peak RSS of encoding 100 and 1,000 images with full patch tokens, each count in a fresh child
process (by default with a small ViT at 518 px so it takes seconds, ``--rss-full`` with the
RAD-DINO-sized model).

    python benchmarks/encode_throughput.py [--images 4] [--batch-size 4] [--rounds 3]
        [--pipeline-images 12] [--workers 2] [--eager-bf16] [--rss-full] [--skip-rss | --only-rss]
        [--device cpu|cuda]

With ``--device cuda`` the same candidates run on the GPU (autocast in bf16, or fp16 where the
GPU has no bf16; the fast path is what ``--dtype auto --compile auto`` picks there), timings
wait for the GPU, and the peak-RSS part is skipped (it measures host memory of a CPU job).

``--modes`` instead compares the ways of running the backbone on CPU, one dtype after another
(``--dtypes``), each against eager in the same dtype, interleaved round by round:

    python benchmarks/encode_throughput.py --modes eager,onednn,inductor-freezing,export
        [--dtypes fp32,bf16] [--size 518] [--images 4] [--batch-size 4] [--rounds 14]
        [--cold-setup]

* ``eager``, ``onednn``, ``inductor-freezing``: :class:`InferenceEngine` with ``compile`` off,
  ``onednn`` and ``inductor`` (``torch.compile`` with ``freezing=True``);
* ``onednn-sdpa``: as ``onednn``, with PyTorch's flash-attention kernel inside the traced graph
  instead of oneDNN Graph's attention partition;
* ``onednn-fused``, ``eager-fused``: as ``onednn`` and ``eager``, with raddino's AVX512-BF16
  attention kernel (:mod:`raddino.models.fused_attention`; bf16 only; what ``auto`` picks for
  either mode on CPUs without AMX);
* ``inductor``: ``torch.compile(dynamic=False)`` without freezing;
* ``inductor-max-autotune``: as ``inductor-freezing``, plus ``max_autotune`` (inductor times
  its C++ GEMM templates against the oneDNN kernels and keeps the faster);
* ``export``: ``torch.export`` + AOTInductor (``aoti_compile_and_package``, frozen weights).

For each: set-up seconds (first call: trace/compile; then calls 2 and 3, which TorchScript
spends profiling); img/s (median and best) and the ratio to eager (median over rounds of the
ratio within a round, also over the quiet rounds alone, in which other processes used less than
10% of the CPUs by /proc/stat); the largest |difference| of CLS and patch tokens from fp32
eager (also divided by the largest |fp32 token|). Set-up is timed in the one
process, so a mode may reuse kernels an earlier one compiled; ``--cold-setup`` times each mode
alone in a fresh process with an empty inductor cache, as a first ``raddino encode`` on a
machine runs.

``--profile`` shows where one bf16 batch's time goes, per mode (``off``, ``onednn``,
``inductor``): torch.profiler self time by aten op, and for ``onednn`` by kind of oneDNN Graph
partition (qkv, attention, proj + residual, fc1 + GELU, fc2 + residual), each against the
time its FLOPs would take at the bf16 matmul peak measured in the same run:

    python benchmarks/encode_throughput.py --profile off,onednn [--attention matmul|sdpa|fused]
        [--size 518] [--batch-size 4]
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
from raddino.features.identity import weights_sha256
from raddino.models.encoder import RadDino
from raddino.models.engine import BackboneTuple, InferenceEngine
from raddino.models.hardware import (
    choose_compile,
    choose_dtype,
    configure_cpu_threads,
    cpp_compiler_available,
    probe_hardware,
    reuse_freed_memory,
)
from raddino.models.vit import ViTConfig
from raddino.precision import parse_dtype, short_name

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
    device = torch.device(device)
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


def cpu_ticks() -> tuple[int, int, int]:
    """(busy ticks of all CPUs, all ticks, this process's ticks), from /proc."""
    with open("/proc/stat", encoding="utf-8") as handle:
        values = [int(v) for v in handle.readline().split()[1:9]]
    with open("/proc/self/stat", encoding="utf-8") as handle:
        fields = handle.read().rsplit(")", 1)[1].split()
    own = int(fields[11]) + int(fields[12])  # utime + stime of all threads
    return sum(values) - values[3] - values[4], sum(values), own


def others_share(before: tuple[int, int, int], after: tuple[int, int, int]) -> float:
    """Fraction of all CPUs' time that other processes used between two :func:`cpu_ticks`."""
    busy, total, own = (b - a for a, b in zip(before, after, strict=True))
    return max(busy - own, 0) / max(total, 1)


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
        dtype=choose_dtype(None, hardware).value,
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


# --------------------------------------------------------------------------- compile modes

Tokens = tuple[torch.Tensor, ...]  # (cls, registers, patches), as BackboneTuple returns them
COMPILE_MODES = (
    "eager", "eager-fused", "onednn", "onednn-sdpa", "onednn-fused", "inductor",
    "inductor-freezing", "inductor-max-autotune", "export",
)  # fmt: skip
# engine modes: (compile, the attention the oneDNN Graph mode traces)
ENGINE_COMPILE = {
    "eager": ("off", "matmul"),
    "eager-fused": ("off", "fused"),
    "onednn": ("onednn", "matmul"),
    "onednn-sdpa": ("onednn", "sdpa"),
    "onednn-fused": ("onednn", "fused"),
    "inductor-freezing": ("inductor", "matmul"),
}
QUIET = 0.1  # a measurement is quiet if other processes used less of the CPUs than this


def engine_runner(
    backbone: torch.nn.Module, dtype: torch.dtype, compile: str, attention: str = "matmul"
):
    """``images -> (cls, registers, patches)`` through :class:`InferenceEngine`, and a check
    that it did not fall back to eager."""
    engine = InferenceEngine(backbone, dtype=dtype, compile=compile, attention=attention)

    def run(images: torch.Tensor) -> Tokens:
        out = engine(images)
        return out.cls, out.registers, out.patches

    def failure() -> str | None:
        return engine.compile_error

    return run, failure


def compiled_runner(backbone: torch.nn.Module, dtype: torch.dtype, options: dict):
    """``torch.compile`` of the backbone with inductor ``options`` (no engine around it)."""
    module = BackboneTuple(backbone.to(dtype=dtype).eval(), ())
    compiled = torch.compile(module, dynamic=False, options=options)

    @torch.inference_mode()
    def run(images: torch.Tensor) -> Tokens:
        return compiled(images)

    return run, lambda: None


def exported_runner(backbone: torch.nn.Module, dtype: torch.dtype, folder: Path):
    """``torch.export`` + AOTInductor, compiled at the first call (for its input shape)."""
    module = BackboneTuple(backbone.to(dtype=dtype).eval(), ())
    loaded = {}

    def run(images: torch.Tensor) -> Tokens:
        if "model" not in loaded:
            with torch.no_grad():
                program = torch.export.export(module, (images.clone(),))
                package = torch._inductor.aoti_compile_and_package(
                    program,
                    package_path=str(folder / f"vit_{short_name(dtype)}.pt2"),
                    inductor_configs={"freezing": True},
                )
            loaded["model"] = torch._inductor.aoti_load_package(package)
        with torch.inference_mode():
            return tuple(loaded["model"](images))

    return run, lambda: None


def build_mode(name: str, model_dir: Path, dtype: torch.dtype, folder: Path):
    backbone = RadDino.from_pretrained(model_dir).backbone
    if name in ENGINE_COMPILE:
        return engine_runner(backbone, dtype, *ENGINE_COMPILE[name])
    if name == "inductor":
        return compiled_runner(backbone, dtype, {})
    if name == "inductor-max-autotune":
        return compiled_runner(backbone, dtype, {"freezing": True, "max_autotune": True})
    return exported_runner(backbone, dtype, folder)


def token_errors(tokens: Tokens, reference: Tokens) -> dict[str, float]:
    """Largest |difference| of CLS and patch tokens from the reference, absolute and divided
    by the largest |reference token|."""
    errors = {}
    for key, index in (("cls", 0), ("patches", 2)):
        ours, theirs = tokens[index].float(), reference[index].float()
        errors[key] = (ours - theirs).abs().max().item()
        errors[key + "_rel"] = errors[key] / theirs.abs().max().item()
    return errors


def set_up_mode(
    name: str, model_dir: Path, dtype: torch.dtype, inputs: torch.Tensor, folder: Path
) -> tuple[Callable[[torch.Tensor], Tokens], list[float], Tokens] | None:
    """Build ``name`` and make its first three calls; None (and a line) if it failed."""
    run, failure = build_mode(name, model_dir, dtype, folder)
    seconds = []
    try:
        for _ in range(3):  # TorchScript: traced, profiled, then fused
            start = time.perf_counter()
            tokens = run(inputs)
            seconds.append(time.perf_counter() - start)
    except Exception as error:  # report it and go on with the other modes
        print(f"  {name} {short_name(dtype)}: failed: {type(error).__name__}: {error}")
        return None
    if failure():
        print(f"  {name} {short_name(dtype)}: fell back to eager: {failure()}")
        return None
    return run, seconds, tokens


def cold_set_ups(args: argparse.Namespace, names: list[str]) -> None:
    """Each mode's set-up in a fresh process with an empty inductor cache, one after another:
    what the first ``raddino encode`` on a machine pays."""
    print(f"\nset-up, each mode in a fresh process (batch {args.batch_size}, {args.size} px):")
    for dtype_name in args.dtypes.split(","):
        for name in names:
            command = [
                sys.executable, __file__, "--modes", name, "--dtypes", dtype_name, "--rounds",
                "0", "--size", str(args.size), "--batch-size", str(args.batch_size),
            ]  # fmt: skip
            done = subprocess.run(command, capture_output=True, text=True, check=False)
            lines = done.stdout.strip().splitlines()
            if done.returncode != 0 or not lines or not lines[-1].startswith("{"):
                print(f"  {name} {dtype_name}: no result:\n{done.stdout[-1000:]}")
                print(done.stderr[-2000:])
                continue
            result = json.loads(lines[-1])
            first, later = result["seconds"][0], sum(result["seconds"][1:])
            print(
                f"  {name:22s} {dtype_name}: first call {first:6.1f} s, calls 2-3 {later:5.1f} s",
                flush=True,
            )


PARTITION_KINDS = ("qkv linear", "attention", "proj linear + residual", "fc1 + GELU",
                   "fc2 + residual")  # fmt: skip


def kind_flops(config: ViTConfig, batch: int) -> dict[str, float]:
    """FLOPs of one batch in each kind of :data:`PARTITION_KINDS`, summed over the blocks."""
    tokens = 1 + config.num_register_tokens + config.grid_size**2
    dim, hidden, rows = config.embed_dim, config.ffn_hidden_dim, batch * tokens
    per_block = [
        2 * rows * dim * 3 * dim,
        4 * batch * tokens * tokens * dim,
        2 * rows * dim * dim,
        2 * rows * dim * hidden,
        2 * rows * hidden * dim,
    ]
    return {kind: config.depth * f for kind, f in zip(PARTITION_KINDS, per_block, strict=True)}


def profile_breakdown(args: argparse.Namespace) -> None:
    """Where one batch's time goes: bf16 eager (aten ops) and the fast path (oneDNN Graph
    partitions by kind, the unfused aten ops between them), each kind's GFLOP/s against the
    bf16 matmul peak measured in the same run."""
    from torch.profiler import ProfilerActivity, profile

    from raddino.models.vit import VisionTransformer

    configure_cpu_threads()
    reuse_freed_memory()  # as raddino encode on CPU
    hardware = probe_hardware("cpu")
    torch.manual_seed(0)
    config = ViTConfig(image_size=args.size)
    batch = args.batch_size
    pixels = torch.randn(batch, 3, args.size, args.size, dtype=torch.bfloat16)
    flops = kind_flops(config, batch)
    rows = batch * (1 + config.grid_size**2)
    peak = max(matmul_rate(torch.bfloat16, rows) for _ in range(3))
    print(
        f"torch {torch.__version__}, {hardware.name}, {torch.get_num_threads()} threads; "
        f"ViT-B/14 at {args.size} px, batch {batch}, bf16; matmul peak {peak / 1e9:.0f} GFLOP/s"
    )
    for compile in args.profile.split(","):
        engine = InferenceEngine(
            VisionTransformer(config), dtype=torch.bfloat16, compile=compile,
            attention=args.attention,
        )  # fmt: skip
        for _ in range(3):  # oneDNN Graph fuses from the third call
            engine(pixels)
        seconds = []
        for _ in range(3):
            start = time.perf_counter()
            engine(pixels)
            seconds.append(time.perf_counter() - start)
        wall = statistics.median(seconds)
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            engine(pixels)
        totals: dict[str, float] = {}
        partitions = sorted(
            (e for e in prof.events() if e.name.startswith("LlgaPartition_")),
            key=lambda e: e.time_range.start,
        )
        labelled = len(partitions) == 2 + len(PARTITION_KINDS) * config.depth
        names = {}
        for index, event in enumerate(partitions):
            kind = "patch embedding" if index < 2 else PARTITION_KINDS[(index - 2) % 5]
            names[id(event)] = f"oneDNN: {kind}" if labelled else "oneDNN: partition"
        for event in prof.events():
            name = names.get(id(event), event.name)
            totals[name] = totals.get(name, 0.0) + event.self_cpu_time_total / 1e3
        profiled = sum(totals.values())
        rate = vit_flops(config) * batch / wall
        print(
            f"\n{engine.mode}: {wall * 1e3:.0f} ms per batch ({batch / wall:.3f} img/s, "
            f"{rate / 1e9:.0f} GFLOP/s = {rate / peak:.0%} of the matmul peak); profiled "
            f"{profiled:.0f} ms, by self time (ms, share; where the FLOPs are known, GFLOP/s "
            "and ms at the matmul peak):"
        )
        for name, ms in sorted(totals.items(), key=lambda item: -item[1])[:16]:
            kind = name.removeprefix("oneDNN: ")
            known = ""
            if kind in flops:
                at_peak = flops[kind] / peak * 1e3
                known = f"  {flops[kind] / ms / 1e6:6.0f} GFLOP/s, {at_peak:6.1f} ms at peak"
            print(f"  {name:48s} {ms:8.1f} {ms / profiled:6.1%}{known}")


def compare_modes(args: argparse.Namespace) -> None:
    """Each of ``--modes`` in each of ``--dtypes``: set-up time, img/s vs eager, agreement.

    ``--rounds 0``: set-up only, one JSON line per mode (what :func:`cold_set_ups` reads).
    """
    from transformers import Dinov2Config, Dinov2Model

    from raddino.models.formats import RAD_DINO_HF_CONFIG

    names = args.modes.split(",")
    unknown = set(names) - set(COMPILE_MODES)
    if unknown:
        raise SystemExit(f"--modes: unknown {sorted(unknown)}; choose from {COMPILE_MODES}")
    if args.rounds > 0 and "eager" not in names:
        names.insert(0, "eager")
    if args.cold_setup:
        cold_set_ups(args, names)
        return
    dtypes = [parse_dtype(name) for name in args.dtypes.split(",")]
    threads = configure_cpu_threads()
    reuse_freed_memory()  # as raddino encode on CPU
    hardware = probe_hardware("cpu")
    print(
        f"torch {torch.__version__}, {hardware.name}, native bf16: {hardware.bf16}, "
        f"C++ compiler: {cpp_compiler_available()}, {threads} threads; load {load_average()}"
    )
    print(
        f"ViT-B/14 (random weights) at {args.size} px, {args.images} images per measurement, "
        f"batch {args.batch_size}, median of {args.rounds} interleaved rounds; set-up in this "
        "process (later modes reuse compiled kernels and imports of earlier ones)"
    )
    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        os.environ["TORCHINDUCTOR_CACHE_DIR"] = str(tmp / "inductor")  # start with no cache
        Dinov2Model(Dinov2Config(**RAD_DINO_HF_CONFIG)).save_pretrained(tmp / "model")
        model = RadDino.from_pretrained(tmp / "model")
        pixels = model.preprocess(random_radiographs(max(args.images, args.batch_size), 518))
        if args.size != 518:
            pixels = F.interpolate(pixels, size=(args.size, args.size), mode="bilinear")
        first = pixels[: args.batch_size]
        with torch.inference_mode():
            out = model.encode(first)
            reference = (out.cls, out.registers, out.patches)  # fp32 eager
        del model

        for dtype in dtypes:
            runners, setups, errors = {}, {}, {}
            for name in names:
                built = set_up_mode(name, tmp / "model", dtype, first.to(dtype), tmp)
                if built is None:
                    continue
                runners[name], setups[name], tokens = built
                errors[name] = token_errors(tokens, reference)
                seconds = setups[name]
                if args.rounds == 0:
                    print(json.dumps({"mode": name, "seconds": seconds, **errors[name]}))
                    continue
                print(
                    f"  {name} {short_name(dtype)}: set-up {seconds[0]:.1f} s, then "
                    f"{seconds[1]:.1f} s, {seconds[2]:.1f} s",
                    flush=True,
                )
            if args.rounds == 0:
                continue

            rates: dict[str, list[float]] = {name: [] for name in runners}
            others: dict[str, list[float]] = {name: [] for name in runners}
            batched = pixels[: args.images].to(dtype)
            order = list(runners)
            for round_index in range(args.rounds):
                for name in order:
                    before = cpu_ticks()
                    rates[name].append(images_per_second(runners[name], batched, args.batch_size))
                    others[name].append(others_share(before, cpu_ticks()))
                order = order[1:] + order[:1]  # no mode always runs after the same one
                print(
                    f"  round {round_index + 1}: "
                    + ", ".join(
                        f"{name} {rates[name][-1]:.3f} ({others[name][-1]:.0%})" for name in rates
                    )
                    + " img/s (other processes' share of the CPUs)",
                    flush=True,
                )
            print(
                f"\n{short_name(dtype)}: img/s (median, best), vs eager {short_name(dtype)} "
                f"(median of the rounds' ratios; of the quiet rounds, where other processes "
                f"used < {QUIET:.0%} of the CPUs in both measurements, and their count), first "
                "call s, calls 2-3 s, max |diff| from fp32 eager CLS / patches (and / max |fp32 "
                "token|)"
            )
            for name, values in rates.items():
                pairs = list(
                    zip(values, rates["eager"], others[name], others["eager"], strict=True)
                )
                ratio = statistics.median(v / base for v, base, _, _ in pairs)
                quiet = [v / base for v, base, a, b in pairs if max(a, b) < QUIET]
                quiet_ratio = f"{statistics.median(quiet):5.2f}x" if quiet else "    -"
                e = errors[name]
                print(
                    f"  {name:22s} {statistics.median(values):6.3f} {max(values):6.3f} "
                    f"{ratio:5.2f}x {quiet_ratio} {len(quiet):2d} {setups[name][0]:6.1f} "
                    f"{sum(setups[name][1:]):6.1f}   {e['cls']:.1e} / {e['patches']:.1e} "
                    f"({e['cls_rel']:.1e} / {e['patches_rel']:.1e})"
                )
            print(flush=True)


# --------------------------------------------------------------------------- pipeline


def pipeline_summary(
    args: argparse.Namespace,
    model: RadDino,
    engine: InferenceEngine,
    options: EncodeOptions,
    images: list[np.ndarray],
    tmp: Path,
    run_fast: Callable[[torch.Tensor], object],
) -> None:
    """``raddino encode`` (518-px PNGs decoded in workers, CLS to a new store) against the
    model alone, interleaved: a whole job of ``--pipeline-images`` and a one-batch job in
    every round. Their difference gives the steady rate (per image once running) and the
    job's fixed cost (hashing the weights, opening and finalising the store, starting the
    workers, the first batch's decoding)."""
    count, batch = args.pipeline_images, args.batch_size
    paths = write_pngs(tmp / "pngs", images, count)
    cycled = [images[index % len(images)] for index in range(count)]
    pixels = model.preprocess(cycled).to(options.device)  # the PNGs' pixels
    encode_to_store(model, paths[:batch], tmp / "warmup", options, engine=engine)
    start = time.perf_counter()
    weights_sha256(model)
    hashing = time.perf_counter() - start

    def job(size: int, name: str) -> float:
        start = time.perf_counter()
        encode_to_store(model, paths[:size], tmp / name, options, engine=engine)
        return time.perf_counter() - start

    # model-only, pipeline, model-only, ...: each pipeline run is compared with the mean of
    # the model-only runs on either side of it, so a change of load hits both alike
    model_rates = [images_per_second(run_fast, pixels, batch)]
    whole, short, ratios, steady_ratios, fixed = [], [], [], [], []
    for round_index in range(args.rounds):
        short.append(job(batch, f"short{round_index}"))
        whole.append(job(count, f"store{round_index}"))
        model_rates.append(images_per_second(run_fast, pixels, batch))
        model_rate = statistics.mean(model_rates[-2:])
        ratios.append(count / whole[-1] / model_rate)
        per_image = (whole[-1] - short[-1]) / (count - batch)
        steady_ratios.append(1 / per_image / model_rate)
        fixed.append(short[-1] - batch * per_image)
    print(
        f"\nraddino encode pipeline ({count} 518-px PNGs, {args.workers} decoding workers, CLS "
        f"to the store, {engine.mode}): {count / statistics.median(whole):.3f} img/s = "
        f"{statistics.median(ratios):.1%} of model-only for the whole job (median of "
        f"{args.rounds}; each against the model-only runs on either side: "
        f"{', '.join(f'{r:.0%}' for r in ratios)}; model-only "
        f"{statistics.median(model_rates):.3f} img/s)"
    )
    print(
        f"  once running (from a {batch}-image and a {count}-image job): "
        f"{statistics.median(steady_ratios):.1%} of model-only "
        f"({', '.join(f'{r:.0%}' for r in steady_ratios)}); fixed cost per job "
        f"{statistics.median(fixed):.2f} s, of which hashing the weights {hashing:.2f} s"
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
    parser.add_argument("--modes", help=f"compare compile modes on CPU: {','.join(COMPILE_MODES)}")
    parser.add_argument(
        "--profile", help="where one batch's time goes, bf16: comma-separated off,onednn,inductor"
    )
    parser.add_argument(
        "--attention", default="matmul", choices=("matmul", "sdpa", "fused"),
        help="with --profile: the attention the oneDNN Graph mode traces",
    )  # fmt: skip
    parser.add_argument("--dtypes", default="fp32,bf16", help="with --modes")
    parser.add_argument("--size", type=int, default=518, help="image size, with --modes")
    parser.add_argument(
        "--cold-setup", action="store_true", help="with --modes: set-up only, fresh processes"
    )
    parser.add_argument("--rss-count", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--rss-model", help=argparse.SUPPRESS)
    parser.add_argument("--rss-images", help=argparse.SUPPRESS)
    parser.add_argument("--rss-out", help=argparse.SUPPRESS)
    parser.add_argument("--rss-compile", default="off", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.rss_count is not None:
        rss_child(args)
        return
    if args.modes:
        compare_modes(args)
        return
    if args.profile:
        profile_breakdown(args)
        return

    from transformers import Dinov2Config, Dinov2Model

    from raddino.models.formats import RAD_DINO_HF_CONFIG

    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: no CUDA GPU is visible to torch")
    threads = configure_cpu_threads()
    hardware = probe_hardware(device)
    fast_dtype = choose_dtype(None, hardware)
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
            dtype=fast_dtype.value,
            compile=str(fast_compile.value),
            progress=False,
        )
        engine = build_engine(fast_model, options, 10_000, log=lambda line: print(f"  {line}"))
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
        pipeline_summary(args, fast_model, engine, options, images, tmp, run_fast)

        if not args.skip_rss and device.type == "cpu":
            measure_rss(args, tmp, tmp / "model")


if __name__ == "__main__":
    main()
