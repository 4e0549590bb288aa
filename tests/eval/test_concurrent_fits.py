"""Fits in a pool of threads: results in order, failures raised, thread counts as set."""

from __future__ import annotations

import _thread
import threading
import time

import pytest
import torch

from raddino.cpus import available_cores
from raddino.eval.concurrent_fits import default_fit_workers, run_fits


def test_results_come_back_in_the_order_of_the_jobs_from_several_threads():
    seen = set()
    barrier = threading.Barrier(2, timeout=10)  # two jobs must run at the same time to pass

    def job(i: int) -> int:
        seen.add(threading.get_ident())
        if i < 2:
            barrier.wait()
        return i * i

    assert run_fits([lambda i=i: job(i) for i in range(5)], workers=2, threads=1) == [
        0, 1, 4, 9, 16,
    ]  # fmt: skip
    assert len(seen) == 2 and threading.get_ident() not in seen


def test_each_worker_runs_its_fits_on_the_given_threads_and_the_caller_keeps_its_own():
    before = torch.get_num_threads()
    counts = run_fits([torch.get_num_threads] * 4, workers=2, threads=1)
    assert counts == [1, 1, 1, 1]
    assert torch.get_num_threads() == before


def test_one_worker_runs_the_jobs_in_the_calling_thread():
    caller = threading.get_ident()
    assert run_fits([threading.get_ident] * 3, workers=1, threads=1) == [caller] * 3


def test_a_failing_job_is_raised_and_later_jobs_are_not_started():
    started = []

    def fail() -> None:
        raise RuntimeError("head diverged")

    def slow(i: int) -> int:
        started.append(i)
        time.sleep(0.02)  # 50 of them take 1 s on the other worker; the failure stops them
        return i

    jobs = [fail, *(lambda i=i: slow(i) for i in range(50))]
    with pytest.raises(RuntimeError, match="head diverged"):
        run_fits(jobs, workers=2, threads=1)
    assert len(started) < 50


def test_worker_counts():
    with pytest.raises(ValueError, match="fit workers 0"):
        run_fits([lambda: 1, lambda: 2], workers=0, threads=1)
    assert default_fit_workers("cpu", None) == 1  # every core per fit: one at a time
    assert default_fit_workers("cpu", 1) == available_cores()
    assert default_fit_workers("cpu", 2) == max(1, available_cores() // 2)


def test_an_interrupt_reaches_the_caller_at_once_and_no_further_fit_starts(capsys):
    release, started = threading.Event(), []

    def long() -> None:
        started.append("long")
        release.wait(10)

    def quick() -> None:
        started.append("quick")

    threading.Timer(0.2, _thread.interrupt_main).start()  # Ctrl-C while two fits run
    begin = time.monotonic()
    with pytest.raises(KeyboardInterrupt):
        run_fits([long, long, quick, quick], workers=2, threads=1)
    assert time.monotonic() - begin < 5  # not the 10 s of the running fits
    err = capsys.readouterr().err
    assert "waiting for 2 running fit(s) to end" in err, (err, started)
    release.set()
    for thread in threading.enumerate():
        if thread.name.startswith("fit-"):
            thread.join(10)
    assert started == ["long", "long"]
