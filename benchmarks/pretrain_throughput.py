"""Pre-training step throughput, model-FLOPs utilisation (MFU), and the input pipeline.

1. For the ``tiny_cpu`` preset and for ViT-S/14 with 2 x 224 + 8 x 98 crops, in fp32 and bf16:
   images/s of full training steps (teacher forward, student forward and backward, AdamW, EMA) on
   crops already in memory, FLOPs counted by ``torch.utils.flop_counter`` for one step, and MFU =
   counted FLOPs / step time / this machine's matmul peak, measured right after each row
   (best of 5 timings). Then the bf16 step's time over the fp32 step's for both shapes, the
   two alternating one step at a time (9 rounds for ``tiny_cpu``, 5 for ViT-S; the median
   ratio and its range): the target on CPUs without AMX is <= 0.6x.
2. ``tiny_cpu`` end to end (its own precision, ``auto``): a synthetic cohort rendered to PNG
   files by ``raddino.data.synth`` (``--images`` of ``--size`` px; or ``--cohort DIR``, a folder
   of images), the run's decoded-image cache, and the real loader (``PretrainStream``,
   ``step_loader``, ``collate_crops``) feeding the same step, once per worker count
   (``--workers``) with the cache and once decoding every sample (no cache). In-memory runs of
   the step alternate with these rows in the same process, and each row's ratio is to the mean
   of the in-memory runs just before and after it (a shared machine's slow phases then hit both
   sides; single 32-step rows spread by about 10% on 2 cores). Printed first: the
   data path's cost per image (decode, cached read, draws, geometry per view, photometric part
   per batch) on one thread, as a worker runs it.

   OpenMP's wait policy changes the step itself, so part 2 runs twice, each in a fresh process:
   with ``OMP_WAIT_POLICY=PASSIVE``, as ``raddino``'s CLI sets it (idle threads sleep at once),
   and with OpenMP's default (idle threads spin a while first), as part 1 runs.

    python benchmarks/pretrain_throughput.py [--steps 3] [--e2e-steps 32] [--workers 0,1,2]

``--profile vit-s`` (or ``tiny_cpu``) instead shows where one step's time goes: the phases
(teacher forward and targets, student forward, losses, backward, AdamW, teacher EMA) over
``--steps`` steps (at least 5) and page faults per step, then one step under torch.profiler:
the matmul kernels' share of the op time and GFLOP/s (the largest by shape, against the peak)
and the largest other ops.

    python benchmarks/pretrain_throughput.py --profile vit-s [--precision bf16] [--steps 5]
"""

from __future__ import annotations

import argparse
import os
import resource
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
from torch.utils.flop_counter import FlopCounterMode

from raddino.data.manifest import collect_inputs
from raddino.models.hardware import probe_hardware, reuse_freed_memory
from raddino.ssl.augment import MultiCrop
from raddino.ssl.config import PretrainConfig, load_config
from raddino.ssl.data import PretrainStream, collate_crops, step_loader
from raddino.ssl.image_cache import grey_uint8, open_or_build
from raddino.ssl.masking import sample_batch_masks
from raddino.ssl.optim import apply_schedule, build_optimizer
from raddino.ssl.run import autocast_context, training_precision
from raddino.ssl.trainer import build_meta, make_schedules

CPU = torch.device("cpu")
WARM_UP = 3
"""Untimed steps before an MFU row or a profile: malloc's heap grows over the first three ViT-S
steps (about 530,000, 160,000 and 33,000 page faults, then almost none), which would slow the
first timed ones."""


def matmul_peak(dtype: torch.dtype, size: int = 2048, repeats: int = 5, trials: int = 5) -> float:
    """Measured FLOP/s of a square matmul in ``dtype``: the best of ``trials`` timings (one
    timing on a shared 2-core machine varied from 1,100 to 2,070 GFLOP/s in bf16)."""
    a = torch.randn(size, size, dtype=dtype)
    b = torch.randn(size, size, dtype=dtype)
    a @ b
    best = 0.0
    for _ in range(trials):
        start = time.perf_counter()
        for _ in range(repeats):
            a @ b
        best = max(best, 2 * size**3 * repeats / (time.perf_counter() - start))
    return best


class PhaseClock:
    """Seconds spent in each phase of the training step, summed over the steps run."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = defaultdict(float)

    @contextmanager
    def phase(self, name: str) -> Iterator[None]:
        start = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[name] += time.perf_counter() - start

    def wrap(self, name: str, function: Callable) -> Callable:
        def timed(*args, **kwargs):
            with self.phase(name):
                return function(*args, **kwargs)

        return timed


def make_batch_step(
    config: PretrainConfig, clock: PhaseClock | None = None
) -> Callable[[torch.Tensor, torch.Tensor | None], None]:
    """A closure running one training step on the crops it is given: globals (2b, 3, S, S),
    locals (N b, 3, s, s) or None (fixed iBOT masks); ``clock`` times its phases."""
    torch.manual_seed(0)
    meta = build_meta(config)
    meta.train()
    optimizer = build_optimizer(meta.student, config.optim)
    apply_schedule(optimizer, make_schedules(config, 1e-4).at(10))
    precision = training_precision(config.train.precision, CPU)
    grid = config.crops.global_size // config.model.patch_size
    masks = sample_batch_masks(2 * config.train.batch_size, (grid, grid), np.random.default_rng(0))
    clock = clock or PhaseClock()
    meta.teacher_targets = clock.wrap("teacher forward + targets", meta.teacher_targets)
    meta.student.forward = clock.wrap("student forward", meta.student.forward)

    def step(globals_: torch.Tensor, locals_: torch.Tensor | None) -> None:
        with clock.phase("forward"), autocast_context(precision, CPU):
            out = meta(globals_, locals_, masks, 0.07)
        with clock.phase("backward"):
            optimizer.zero_grad(set_to_none=True)
            out.total.backward()
        with clock.phase("AdamW"):
            optimizer.step()
        with clock.phase("teacher EMA"):
            meta.update_teacher(0.99)

    return step


def make_step(
    config: PretrainConfig, clock: PhaseClock | None = None
) -> tuple[Callable[[], None], int]:
    """A closure running one training step on fixed random crops, and the batch size."""
    b, crops = config.train.batch_size, config.crops
    globals_ = torch.randn(2 * b, 3, crops.global_size, crops.global_size)
    locals_ = (
        torch.randn(crops.local_number * b, 3, crops.local_size, crops.local_size)
        if crops.local_number
        else None
    )
    batch_step = make_batch_step(config, clock)
    return lambda: batch_step(globals_, locals_), b


def measure(name: str, config: PretrainConfig, steps: int) -> None:
    """One row: the step's rate and FLOPs, and MFU against the matmul peak measured right after
    the timed steps (the machine's speed drifts: a peak from minutes earlier can be off by 30%)."""
    step, batch = make_step(config)
    counter = FlopCounterMode(display=False)
    with counter:
        step()
    flops = counter.get_total_flops()
    for _ in range(WARM_UP - 1):
        step()
    start = time.perf_counter()
    for _ in range(steps):
        step()
    seconds = (time.perf_counter() - start) / steps
    dtype = torch.bfloat16 if config.train.precision == "bf16" else torch.float32
    peak = matmul_peak(dtype)
    print(
        f"{name:<28} {config.train.precision:>5}  batch {batch:>3}  {batch / seconds:7.2f} img/s"
        f"  {flops / 1e9:8.1f} GFLOP/step  {flops / seconds / 1e9:7.1f} GFLOP/s"
        f"  peak {peak / 1e9:5.0f}  MFU {flops / seconds / peak:6.1%}"
    )
    counts = counter.get_flop_counts().get("Global", {})
    top = sorted(counts.items(), key=lambda kv: -kv[1])[:3]
    print("    largest FLOP counts: " + ", ".join(f"{op}: {n / flops:.0%}" for op, n in top))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--e2e-steps", type=int, default=32, help="timed steps per e2e row")
    parser.add_argument("--workers", default="0,1,2", help="loader worker counts of e2e rows")
    parser.add_argument("--images", type=int, default=64, help="synthetic images to render")
    parser.add_argument("--size", type=int, default=160, help="their size (the demo's: 160)")
    parser.add_argument("--cohort", help="a folder of images instead of rendering a cohort")
    parser.add_argument("--e2e-only", action="store_true", help="skip the MFU table")
    parser.add_argument(
        "--profile", choices=sorted(PROFILED), help="instead: where one step's time goes"
    )
    parser.add_argument(
        "--precision", default="bf16", choices=["bf16", "fp32"], help="of --profile"
    )
    parser.add_argument("--policy-child", help=argparse.SUPPRESS)  # one end-to-end part
    args = parser.parse_args()
    workers = [int(w) for w in args.workers.split(",")]
    if args.policy_child:
        reuse_freed_memory()  # as the trainer does on CPU
        paths = collect_inputs([args.cohort])
        with tempfile.TemporaryDirectory() as temp:
            end_to_end(paths, Path(temp), args.e2e_steps, workers, args.policy_child == "first")
        return
    print(f"CPU: {probe_hardware('cpu').name}, {os.cpu_count()} cores")
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    # As the trainer does on CPU (raddino.ssl.trainer), before the first large tensor.
    print(f"freed memory kept for reuse (no page faults per step): {reuse_freed_memory()}")
    if args.profile:
        profile_step(args.profile, args.precision, max(args.steps, 5))
        return
    if not args.e2e_only:
        mfu_table(args.steps)
    with tempfile.TemporaryDirectory() as temp:
        folder = Path(args.cohort) if args.cohort else render_cohort(Path(temp), args)
        for which, policy in (("first", "PASSIVE"), ("second", None)):
            env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
            env.update({"OMP_WAIT_POLICY": policy} if policy else {})
            print(f"\n--- OMP_WAIT_POLICY={policy} (as raddino's CLI)" if policy else
                  "\n--- OpenMP's default wait policy (as part 1)", flush=True)  # fmt: skip
            command = [sys.executable, __file__, "--policy-child", which, "--cohort", str(folder),
                       "--workers", args.workers, "--e2e-steps", str(args.e2e_steps)]  # fmt: skip
            subprocess.run(command, env=env, check=True)


VIT_S = [
    "model.arch=small", "model.patch_size=14", "model.image_size=224", "crops.global_size=224",
    "crops.local_size=98", "crops.local_number=8", "train.batch_size=8",
]  # fmt: skip
PROFILED = {"vit-s": (None, VIT_S), "tiny_cpu": ("tiny_cpu", [])}
MATMUL_OPS = ("aten::mm", "aten::addmm", "aten::bmm", "aten::baddbmm",
              "aten::_scaled_dot_product_flash_attention_for_cpu")  # fmt: skip


def mfu_table(steps: int) -> None:
    print("peak: GFLOP/s of a 2048^2 matmul in the row's precision, best of 5, after the row")
    for precision in ("fp32", "bf16"):
        tiny = load_config("tiny_cpu", [f"train.precision={precision}"])
        measure("tiny_cpu (2x112 + 4x48)", tiny, steps)
        small = load_config(None, [*VIT_S, f"train.precision={precision}"])
        measure("ViT-S/14 (2x224 + 8x98)", small, steps)
    print("bf16 against fp32, steps alternating (the target on CPUs without AMX: <= 0.6x)")
    precision_ratio("tiny_cpu (2x112 + 4x48)", [], "tiny_cpu", rounds=9)
    precision_ratio("ViT-S/14 (2x224 + 8x98)", VIT_S, None, rounds=5)


def precision_ratio(name: str, overrides: list[str], preset: str | None, rounds: int) -> None:
    """The bf16 step's time over the fp32 step's: the two alternate, one step each, for
    ``rounds`` rounds after the warm-up (median and range of the per-round ratios)."""
    steps = {}
    for precision in ("fp32", "bf16"):
        steps[precision] = make_step(
            load_config(preset, [*overrides, f"train.precision={precision}"])
        )[0]
        for _ in range(WARM_UP):
            steps[precision]()
    ratios = []
    for _ in range(rounds):
        seconds = {}
        for precision, step in steps.items():
            start = time.perf_counter()
            step()
            seconds[precision] = time.perf_counter() - start
        ratios.append(seconds["bf16"] / seconds["fp32"])
    ratios.sort()
    print(f"{name:<28} bf16 step / fp32 step {ratios[len(ratios) // 2]:5.2f}x "
          f"(median of {rounds} alternating rounds; {ratios[0]:.2f}-{ratios[-1]:.2f})")  # fmt: skip


def page_faults() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt


def profile_step(which: str, precision: str, steps: int) -> None:
    """Where one training step's time goes: its phases, timed over ``steps`` steps, then one
    step under torch.profiler: the matmul kernels (their share, GFLOP/s by shape against the
    peak) and the largest other ops by self time."""
    from torch.profiler import ProfilerActivity, profile

    preset, overrides = PROFILED[which]
    config = load_config(preset, [*overrides, f"train.precision={precision}"])
    clock = PhaseClock()
    step, batch = make_step(config, clock)
    for _ in range(WARM_UP):
        step()
    clock.seconds.clear()
    faults, start = page_faults(), time.perf_counter()
    for _ in range(steps):
        step()
    total = (time.perf_counter() - start) / steps
    faults = (page_faults() - faults) / steps
    dtype = torch.bfloat16 if precision == "bf16" else torch.float32
    peak = matmul_peak(dtype)
    print(f"{which} {precision}, batch {batch}: {total * 1e3:.0f} ms per step "
          f"({batch / total:.2f} img/s), {faults:.0f} page faults per step; "
          f"matmul peak {peak / 1e9:.0f} GFLOP/s")  # fmt: skip
    ms = {name: seconds / steps * 1e3 for name, seconds in clock.seconds.items()}
    teacher, student = ms.pop("teacher forward + targets"), ms.pop("student forward")
    rows = [("teacher forward + targets", teacher), ("student forward", student),
            ("losses", ms.pop("forward") - teacher - student), *ms.items()]  # fmt: skip
    for name, value in rows:
        print(f"  {name:<28} {value:8.1f} ms  {value / (total * 1e3):6.1%}")

    with profile(activities=[ProfilerActivity.CPU], record_shapes=True, with_flops=True) as prof:
        step()
    events = prof.key_averages(group_by_input_shape=True)
    profiled = sum(e.self_cpu_time_total for e in events) / 1e6
    matmuls = [e for e in events if e.key in MATMUL_OPS]
    seconds = sum(e.self_cpu_time_total for e in matmuls) / 1e6
    flops = sum(e.flops for e in matmuls)
    rate = flops / seconds
    print(f"one step under the profiler: {profiled * 1e3:.0f} ms of op self time; matmul "
          f"kernels {seconds * 1e3:.0f} ms ({seconds / profiled:.0%}) at "
          f"{rate / 1e9:.0f} GFLOP/s, {rate / peak:.0%} of the peak")  # fmt: skip
    print("  largest matmul kernels (op, shapes, ms, GFLOP/s):")
    for e in sorted(matmuls, key=lambda e: -e.self_cpu_time_total)[:12]:
        rate = e.flops / (e.self_cpu_time_total / 1e6) / 1e9 if e.self_cpu_time_total else 0
        shapes = [list(shape) for shape in e.input_shapes if shape]
        print(f"    {e.key.removeprefix('aten::')[:12]:<12} {str(shapes)[:60]:<60} "
              f"{e.self_cpu_time_total / 1e3:7.1f} {rate:6.0f}")  # fmt: skip
    others: dict[str, float] = defaultdict(float)
    for e in events:
        if e.key not in MATMUL_OPS:
            others[e.key] += e.self_cpu_time_total / 1e3
    print("  largest other ops (self ms):")
    for name, value in sorted(others.items(), key=lambda kv: -kv[1])[:12]:
        print(f"    {name[:52]:<52} {value:7.1f}  {value / (profiled * 1e3):6.1%}")


# --------------------------------------------------------------------------- end to end


def render_cohort(temp: Path, args: argparse.Namespace) -> Path:
    from raddino.data.synth.cohort import SynthConfig, generate_cohort

    start = time.perf_counter()
    config = SynthConfig(n=args.images, seed=0, size=args.size)
    generate_cohort(temp / "cohort", config, workers=os.cpu_count() or 1, progress=False)
    print(f"\nrendered {args.images} synthetic radiographs of {args.size} px as PNG files "
          f"({time.perf_counter() - start:.0f} s)")  # fmt: skip
    return temp / "cohort" / "images"


def per_call_ms(function: Callable[[], object], repeats: int) -> float:
    start = time.perf_counter()
    for _ in range(repeats):
        function()
    return (time.perf_counter() - start) / repeats * 1e3


def profile_data_path(paths: list[str], config: PretrainConfig, stream: PretrainStream) -> None:
    """Milliseconds per image of each part of the data path, on one thread (as in a worker)."""
    crops, b = config.crops, config.train.batch_size
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        n = len(paths)
        decode = per_call_ms(lambda: [grey_uint8(p, crops.max_source_size) for p in paths], 1) / n
        cached = per_call_ms(lambda: [stream.load(g) for g in range(n)], 1) / n
        augment = MultiCrop(crops)
        image = stream.load(0)
        h, w = image.shape[-2:]
        rng = torch.Generator().manual_seed(0)
        draws = per_call_ms(lambda: augment.cuts(image, rng, crops.global_size), 50)
        draw_g = augment.draw(h, w, crops.global_size, crops.global_scale, rng)
        draw_l = augment.draw(h, w, crops.local_size, crops.local_scale, rng)
        cut_g = per_call_ms(lambda: augment.cut(image, draw_g), 200)
        cut_l = per_call_ms(lambda: augment.cut(image, draw_l), 200)
        samples = [stream[g] for g in range(b)]
        collate = per_call_ms(lambda: collate_crops(samples), 10) / b
        sample = per_call_ms(lambda: [stream[g] for g in range(b)], 3) / b
    finally:
        torch.set_num_threads(threads)
    views = 2 + crops.local_number
    print(f"data path per image, 1 thread ({crops.max_source_size} px max source, 2 x "
          f"{crops.global_size} + {crops.local_number} x {crops.local_size} views):")  # fmt: skip
    print(f"  decode PNG + shrink (grey_uint8)  {decode:6.3f} ms   (once per run with the cache)")
    print(f"  read from the cache               {cached:6.3f} ms")
    print(f"  cut one global view (uint8)       {cut_g:6.3f} ms   one local view {cut_l:.3f} ms")
    print(f"  draws + cuts of all {views} views      {draws:6.3f} ms   whole sample (read, "
          f"seed, cuts) {sample:.3f} ms")  # fmt: skip
    print(f"  finish + collate, per image       {collate:6.3f} ms   (batched over {b} images)")
    print(f"  total per image                   {sample + collate:6.3f} ms")


def e2e_rate(
    step: Callable[[torch.Tensor, torch.Tensor | None], None],
    stream: PretrainStream,
    config: PretrainConfig,
    workers: int,
    steps: int,
) -> float:
    """img/s of ``steps`` steps fed by the real loader, after 2 untimed steps (worker start)."""
    train = replace(config.train, num_workers=workers, steps=steps + 2)
    loader = iter(step_loader(stream, collate_crops, train, 0, 0, 1, CPU))
    for _ in range(2):
        batch = next(loader)
        step(batch.globals_, batch.locals_)
    start = time.perf_counter()
    for batch in loader:
        step(batch.globals_, batch.locals_)
    return steps * config.train.batch_size / (time.perf_counter() - start)


def end_to_end(
    paths: list[str], temp: Path, steps: int, worker_counts: list[int], profile: bool
) -> None:
    config = load_config("tiny_cpu")
    b = config.train.batch_size
    precision = training_precision(config.train.precision, CPU)
    start = time.perf_counter()
    cache = open_or_build(paths, config.crops.max_source_size, temp / "run",
                          workers=os.cpu_count() or 0, progress=False)  # fmt: skip
    built = time.perf_counter() - start
    cached = PretrainStream(paths, config.crops, config.train.seed, b, images=cache)
    decoding = PretrainStream(paths, config.crops, config.train.seed, b)
    if profile:
        print(f"decoded-image cache: {len(paths)} images in {built:.1f} s")
        profile_data_path(paths, config, cached)

    step, in_memory_step = make_batch_step(config), make_step(config)[0]
    for _ in range(3):  # warm-up: malloc's heap grows over the first steps
        in_memory_step()

    def in_memory_rate() -> float:
        return steps * b / per_call_ms(lambda: [in_memory_step() for _ in range(steps)], 1) * 1e3

    before = in_memory_rate()
    name = f"tiny_cpu {str(precision).removeprefix('torch.')}, batch {b}"
    print(f"{name}: in memory {before:7.2f} img/s ({1e3 / before:.1f} ms per image); each row "
          "against the mean of the in-memory runs just before and after it")  # fmt: skip
    for workers in worker_counts:
        for label, stream in (("cache", cached), ("decode every sample", decoding)):
            rate = e2e_rate(step, stream, config, workers, steps)
            after = in_memory_rate()
            ratio = rate / ((before + after) / 2)
            print(f"  end to end, {workers} workers, {label:<20} {rate:7.2f} img/s  "
                  f"{ratio:6.1%} of in memory ({before:.1f}, {after:.1f})")  # fmt: skip
            before = after


if __name__ == "__main__":
    main()
