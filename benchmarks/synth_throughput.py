"""Throughput of the synthetic cohort: images per second written to disk, end to end.

    python benchmarks/synth_throughput.py [--workers N] [--n256 64] [--n512 16]

Times `generate_cohort` (worker start-up, rendering, PNG writing, manifest) once the source CT
is cached and prepared (the first run of a size prepares it, untimed). Prints images/s at 256
and 512 px and the machine's load, since other processes slow it down.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

from raddino.data.synth.anatomy import cached_anatomy
from raddino.data.synth.cohort import FIELD_AT_PATIENT_MM, SynthConfig, generate_cohort
from raddino.data.synth.source import default_cache_dir, default_source


def images_per_second(size: int, n: int, workers: int) -> float:
    source = default_source()
    cached_anatomy(source, FIELD_AT_PATIENT_MM / size, default_cache_dir())  # untimed
    with tempfile.TemporaryDirectory() as out:
        start = time.perf_counter()
        generate_cohort(
            Path(out), SynthConfig(n=n, seed=0, size=size), source, workers, progress=False
        )
        return n / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--n256", type=int, default=64)
    parser.add_argument("--n512", type=int, default=16)
    args = parser.parse_args()
    print(f"cpu cores {os.cpu_count()}, workers {args.workers}")
    for size, n in ((256, args.n256), (512, args.n512)):
        load = os.getloadavg()[0]
        rate = images_per_second(size, n, args.workers)
        print(f"{size} px: {rate:.2f} images/s ({n} images; load average before: {load:.1f})")


if __name__ == "__main__":
    main()
