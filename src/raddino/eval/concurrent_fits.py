"""Independent fits at the same time: one encoder's probes beside another's segmentation head.

A comparison's fits do not depend on each other, and each runs on one intra-op thread by
default (:mod:`raddino.eval.fit_threads`). Run one after the other they leave all but one core
idle; run in a pool of Python threads they overlap, since their time goes to torch and numpy
kernels that release the GIL (``benchmarks/concurrent_fits.py`` on a 2-core EPYC: 4 linear
heads 1.85x faster on 2 workers). The results are those of the sequential run, bit for bit:

- every worker sets the fits' thread count before its first fit. torch's thread count is partly
  per thread (OpenMP) and partly process-wide (MKL), and a fit restores the count it found, so
  workers that found different counts would change each other's;
- torch's global random generator (seeded head initialisation) is used under :data:`RNG_LOCK`.

The workers default to as many fits as the CPU cores hold at the fits' thread count (2 cores, 1
thread each: 2 workers); on a GPU the fits share one device and gain nothing, and with torch's
own thread count (every core per fit) they would only compete, so both run one fit at a time.
"""

from __future__ import annotations

import sys
import threading
from collections.abc import Callable, Sequence
from typing import TypeVar

import torch

from raddino.cpus import available_cores
from raddino.devices import check_device

T = TypeVar("T")

# Held by every user of torch's global random generator inside a fit.
RNG_LOCK = threading.Lock()


def default_fit_workers(device: str | torch.device, threads: int | None) -> int:
    """Concurrent fits on ``device`` with ``threads`` intra-op threads each (None: torch's)."""
    if check_device(device).type != "cpu" or threads is None:
        return 1
    return max(1, available_cores() // threads)


def run_fits(jobs: Sequence[Callable[[], T]], workers: int, threads: int | None) -> list[T]:
    """Each job's result, in order; up to ``workers`` jobs at a time, each on ``threads``
    intra-op threads (None: torch's setting).

    A failing job stops the others from starting; the failure of the first job (in order) that
    failed is raised once the running ones have finished. An interrupt (Ctrl-C) is raised at
    once and stops the jobs not yet started; the process exits when the running fits end (a
    thread inside torch cannot be stopped cleanly: daemon threads abort in C++ at exit), and
    says so.
    """
    if workers < 1:
        raise ValueError(f"fit workers {workers}: must be >= 1")
    if workers == 1 or len(jobs) <= 1:
        return [job() for job in jobs]
    results: list[T | None] = [None] * len(jobs)
    failures: list[tuple[int, BaseException]] = []
    order = iter(range(len(jobs)))
    lock = threading.Lock()
    stop = threading.Event()

    pool_size = min(workers, len(jobs))
    active = [pool_size]  # workers still running, under ``lock``
    finished = threading.Event()

    def work() -> None:
        try:
            if threads is not None:
                torch.set_num_threads(threads)
            while not stop.is_set():
                with lock:
                    index = next(order, None)
                if index is None:
                    return
                try:
                    results[index] = jobs[index]()
                except BaseException as error:  # handed to the caller below
                    with lock:
                        failures.append((index, error))
                    stop.set()
        finally:
            with lock:
                active[0] -= 1
                if active[0] == 0:
                    finished.set()

    before = torch.get_num_threads()
    pool = [threading.Thread(target=work, name=f"fit-{k}") for k in range(pool_size)]
    try:
        for thread in pool:
            thread.start()
        # an Event, not Thread.join: an interrupted join marks a running thread as ended
        while not finished.wait(timeout=0.2):
            pass
    except BaseException:
        stop.set()
        with lock:
            running = active[0]
        if running:
            print(f"stopping: waiting for {running} running fit(s) to end", file=sys.stderr)
        raise
    finally:
        torch.set_num_threads(before)
    if failures:
        raise min(failures, key=lambda failure: failure[0])[1]
    return results  # type: ignore[return-value]  # every job ran
