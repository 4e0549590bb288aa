"""Kill a command with SIGKILL at a seeded random point, then run it again to the end.

A kill point is a count of the command's own progress (shards on disk, steps logged, images
written), drawn from a seed, plus a random fraction (also seeded) of the time one unit of that
progress has been taking: the signal lands anywhere inside the next unit of work, including
inside a file being written, on a slow machine as on a fast one. The whole process group is
killed: the command and any worker processes it started, as ``kill -9`` of a job would.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

TIMEOUT_S = 300.0  # generous: these tests share two cores with whatever else runs


def subprocess_env(**extra: str) -> dict[str, str]:
    """This interpreter's import path and one intra-op thread: every run of a command gets the
    same thread count, so runs that should agree bit for bit do the same arithmetic."""
    return dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path), OMP_NUM_THREADS="1", **extra)


def raddino_command(*args: str) -> list[str]:
    return [sys.executable, "-m", "raddino", *args]


@dataclass(frozen=True)
class KillPoint:
    """Kill once ``progress(started) >= at``, after ``fraction`` of the mean time one unit has
    taken so far. ``started`` is when this attempt began (``time.time()``), for commands that
    redo their work rather than skip it (count only what is newer)."""

    progress: Callable[[float], int]
    at: int
    fraction: float
    label: str


def kill_points(
    seed: int,
    thresholds: Sequence[int],
    count: int,
    progress: Callable[[float], int],
    what: str,
) -> list[KillPoint]:
    """``count`` increasing thresholds drawn from ``thresholds``, each with a fraction in [0, 1).

    Thresholds of 2 or more let the delay be measured (the time between the first unit and the
    threshold); ``progress`` counts the units of work done (shards, steps, ...).
    """
    rng = np.random.default_rng(seed)
    chosen = sorted(rng.choice(np.asarray(thresholds), size=count, replace=False).tolist())
    fractions = rng.uniform(0.0, 1.0, size=count).tolist()
    return [
        KillPoint(progress, k, f, f"{what} {k} + {f:.2f} of one")
        for k, f in zip(chosen, fractions, strict=True)
    ]


@dataclass(frozen=True)
class Killed:
    label: str
    returncode: int
    stderr: str


def run_until_killed(command: Sequence[str], point: KillPoint, log: Path) -> Killed:
    """Start ``command``; SIGKILL its process group at ``point``. Fails when the command ends
    first: a kill that never happened would make the test that relies on it vacuous."""
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("wb") as err:
        started = time.time()
        process = subprocess.Popen(
            list(command),
            env=subprocess_env(),
            stdout=subprocess.DEVNULL,
            stderr=err,
            start_new_session=True,
        )
        try:
            deadline = time.monotonic() + TIMEOUT_S
            done = initial = point.progress(started)  # a resumed command starts where it was
            first: tuple[float, int] | None = None  # (when, progress) at this attempt's 1st unit
            while process.poll() is None and done < point.at:
                if time.monotonic() > deadline:
                    raise TimeoutError(f"{point.label}: not reached in {TIMEOUT_S:.0f} s")
                time.sleep(0.002)
                done = point.progress(started)
                if first is None and done > initial:
                    first = (time.monotonic(), done)
            # the time of one unit, measured after the first one (not the start-up before it);
            # when it cannot be measured yet, the kill comes as soon as the threshold is reached
            if process.poll() is None and first is not None and done > first[1]:
                per_unit = (time.monotonic() - first[0]) / (done - first[1])
                time.sleep(point.fraction * per_unit)
        finally:
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGKILL)
            process.wait()
            reap(process.pid)
    stderr = log.read_text(errors="replace")
    assert process.returncode == -signal.SIGKILL, (
        f"the command ended (exit {process.returncode}) before the kill at {point.label}; "
        f"stderr:\n{stderr[-3000:]}"
    )
    return Killed(point.label, process.returncode, stderr)


def reap(group: int) -> None:
    """Wait until every process of the killed group (workers too) has died: none may still
    write when the command runs again. Zombies count as dead; their reaper may be slow."""
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and living_members(group):
        time.sleep(0.01)


def living_members(group: int) -> bool:
    proc = Path("/proc")
    if not proc.is_dir():  # not Linux: whether the group still exists at all
        try:
            os.killpg(group, 0)
        except ProcessLookupError:
            return False
        return True
    for entry in proc.iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue  # it ended while we looked
        state, process_group = fields[0], int(fields[2])
        if process_group == group and state not in ("Z", "X"):
            return True
    return False


def run_to_end(command: Sequence[str], log: Path) -> str:
    """Run ``command`` to the end; fails with its stderr when it does not exit with 0."""
    result = subprocess.run(
        list(command), env=subprocess_env(), capture_output=True, text=True, timeout=TIMEOUT_S
    )
    log.parent.mkdir(parents=True, exist_ok=True)
    log.write_text(result.stderr)
    assert result.returncode == 0, f"{' '.join(command)} failed:\n{result.stderr[-3000:]}"
    return result.stdout


def kill_and_rerun(
    command: Sequence[str],
    points: Sequence[KillPoint],
    logs: Path,
    rerun: Sequence[str] | None = None,
) -> list[Killed]:
    """Run ``command``, killed at the first point; then ``rerun`` (default: the same command),
    killed at each next point; then ``rerun`` once more to the end."""
    again = list(rerun or command)
    killed = [
        run_until_killed(command if i == 0 else again, point, logs / f"killed{i}.log")
        for i, point in enumerate(points)
    ]
    run_to_end(again, logs / "final.log")
    return killed
