"""Encoding with several processes (``torchrun``): each process's share of the inputs, its own
store, and how the shares become one store.

While a multi-process encode runs, the store ``OUT`` looks like this::

    OUT/meta.json, OUT/shards/      the store itself (rows of earlier runs)
    OUT/ranks/rank-00000/           process 0's own store: meta.json, shards/, rejects.jsonl, lock
    OUT/ranks/rank-00001/           process 1's, and so on

Process 0 holds ``OUT``'s lock from start to end. Before anything is encoded it absorbs what a
killed earlier run left in ``OUT/ranks/`` (whatever its number of processes), so that every
process knows what is done; each process then encodes its :func:`rank_share` of the rest into
its own store, never touching another's files; once all are done, process 0 moves their shards
and rejects into ``OUT`` (renames, no copies) and writes ``index.csv`` for the inputs in the
order given. The result is the store one process writes: the same paths in the same order, the
same rejects, the same arrays; only the split of rows into shards (the ``shard`` and ``row``
columns of ``index.csv``) can differ, which ``load_features`` does not show.

The processes talk over a gloo group of their own (small messages, CPU tensors) whose timeout
is long: the shares end at different times, and a process that dies is noticed by torchrun,
which stops the others.
"""

from __future__ import annotations

import contextlib
import hashlib
import pickle
from collections.abc import Sequence
from datetime import timedelta
from pathlib import Path
from typing import Any

import torch.distributed as dist

from raddino.features.identity import MODEL_PATH_KEY
from raddino.features.store import FeatureStoreWriter

__all__ = [
    "RANKS_DIR",
    "absorb_rank_stores",
    "check_same_job",
    "compare_jobs",
    "coordination_group",
    "describe_job",
    "from_first_process",
    "raise_if_any_failed",
    "rank_share",
    "rank_store_dir",
]

RANKS_DIR = "ranks"

# How long a process waits for the others at the end (their shares end at different times).
WAIT_FOR_OTHERS = timedelta(hours=24)


def rank_store_dir(out_dir: str | Path, rank: int) -> Path:
    """Process ``rank``'s own store inside the store ``out_dir``."""
    return Path(out_dir) / RANKS_DIR / f"rank-{rank:05d}"


def rank_share(todo: Sequence[str], rank: int, world_size: int, batch_size: int) -> list[str]:
    """Process ``rank``'s contiguous part of ``todo``: whole batches, as evenly as they go.

    The batches are those one process cuts from ``todo`` (``todo[0:b]``, ``todo[b:2b]``, ...),
    so every image goes through the model in the same batch as in a one-process run, and gets
    the same numbers (per-row results of a CPU matmul can depend on the batch's size).
    """
    if not 0 <= rank < world_size:
        raise ValueError(f"rank {rank} is not in a world of {world_size} processes")
    batches = -(-len(todo) // batch_size)
    first, last = rank * batches // world_size, (rank + 1) * batches // world_size
    return list(todo[first * batch_size : last * batch_size])


def absorb_rank_stores(writer: FeatureStoreWriter, order: Sequence[str]) -> int:
    """Move every process store under ``writer``'s store into it (see
    :meth:`FeatureStoreWriter.absorb`); returns the number of shards moved."""
    ranks_dir = writer.out_dir / RANKS_DIR
    if not ranks_dir.is_dir():
        return 0
    sources = sorted(p for p in ranks_dir.iterdir() if p.is_dir() and p.name.startswith("rank-"))
    moved = writer.absorb(sources, order)
    with contextlib.suppress(OSError):  # not empty: something that is not ours is left there
        ranks_dir.rmdir()
    return moved


# --------------------------------------------------------------------------- talking


def coordination_group() -> dist.ProcessGroup:
    """A gloo group over every process, with a timeout long enough to wait for the slowest
    share (the default group's is 10-30 minutes). Every process must call it."""
    return dist.new_group(backend="gloo", timeout=WAIT_FOR_OTHERS)


def _portable(failure: BaseException | None) -> BaseException | None:
    """``failure`` if it can be sent to the other processes, else a RuntimeError with its text."""
    if failure is None:
        return None
    try:
        pickle.dumps(failure)
        return failure
    except Exception:
        return RuntimeError(f"{type(failure).__name__}: {failure}")


def from_first_process(
    group: dist.ProcessGroup, value: Any, failure: BaseException | None = None
) -> Any:
    """Process 0's ``value`` on every process; when process 0 passes a ``failure``, every
    process raises it instead (rather than waiting at the next collective)."""
    box = [(_portable(failure), value if failure is None else None)]
    dist.broadcast_object_list(box, src=0, group=group)
    sent_failure, sent_value = box[0]
    if failure is not None:
        raise failure
    if sent_failure is not None:
        raise sent_failure
    return sent_value


def raise_if_any_failed(group: dist.ProcessGroup, failure: BaseException | None) -> None:
    """Wait for every process; if any failed, every process raises (its own failure first,
    else that of the first process that failed)."""
    gathered: list[Any] = [None] * dist.get_world_size(group)
    dist.all_gather_object(gathered, _portable(failure), group=group)
    if failure is not None:
        raise failure
    for other in gathered:
        if other is not None:
            raise other


def check_same_job(
    group: dist.ProcessGroup, order: Sequence[str], meta: dict, batch_size: int
) -> None:
    """Every process was given the same inputs (in the same order), the same model and settings
    and the same batch size (the shares are cut in batches); else every process raises the
    same one-line ValueError (:func:`compare_jobs`)."""
    jobs: list[Any] = [None] * dist.get_world_size(group)
    dist.all_gather_object(jobs, describe_job(order, meta, batch_size), group=group)
    compare_jobs(jobs)


def describe_job(order: Sequence[str], meta: dict, batch_size: int) -> tuple[int, str, dict]:
    """What must be the same on every process: the number of inputs, a hash of the inputs, and
    the store's settings (the model's path aside) with the batch size."""
    inputs = hashlib.sha256("\0".join(order).encode("utf-8")).hexdigest()
    settings = {k: v for k, v in meta.items() if k != MODEL_PATH_KEY}
    return len(order), inputs, {**settings, "batch_size": batch_size}


def compare_jobs(jobs: Sequence[tuple[int, str, dict]]) -> None:
    """Raise a one-line ValueError naming the first process whose job (:func:`describe_job`)
    differs from process 0's."""
    first = jobs[0]
    for rank, other in enumerate(jobs):
        if other[:2] != first[:2]:
            raise ValueError(
                f"process {rank} found {other[0]} inputs, process 0 found {first[0]}"
                + (" (other paths)" if other[0] == first[0] else "")
                + ": every process must see the same inputs (the same paths on every node)"
            )
        differing = sorted(
            k for k in set(other[2]) | set(first[2]) if other[2].get(k) != first[2].get(k)
        )
        if differing:
            raise ValueError(
                f"process {rank} would encode with other settings than process 0 "
                f"({', '.join(differing)}): every process must load the same model with the "
                "same options (on GPU nodes, each process must have a GPU)"
            )
