"""``raddino study`` under ``torchrun``: process 0 runs the stages; every process joins each
pre-training.

The data, evaluation, table, plot and report stages run on process 0 alone (evaluation on its
device); the others wait for a message from it. When process 0 reaches a pre-training stage it
sends that stage's name, and every process runs the same :func:`raddino.ssl.trainer.pretrain`
call in one process group (DDP on gloo or NCCL, as ``raddino pretrain`` under torchrun). When
process 0 is done (or fails) it sends ``None`` and the others return.

The process group lives as long as the study: its timeout is long because the other processes
wait in a collective while process 0 evaluates. torchrun stops every process when one dies, so
a long timeout never leaves one waiting for a dead peer.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import timedelta

import torch
import torch.distributed as dist

WAIT_TIMEOUT = timedelta(hours=48)  # the longest process 0 may evaluate between two pre-trainings


def world_size() -> int:
    """Processes started by torchrun (1 without it)."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def rank() -> int:
    return int(os.environ.get("RANK", "0"))


@contextmanager
def study_group(device: str) -> Iterator[None]:
    """Join torchrun's processes in one group for the whole study (nothing without torchrun).

    ``device``: the pre-trainings' (``train.device`` of the study's configs, resolved): on CUDA
    each process takes the GPU of its LOCAL_RANK and collectives of CUDA tensors go over NCCL,
    the study's own messages over gloo.
    """
    if world_size() <= 1 or dist.is_initialized():
        yield
        return
    if device == "cuda":
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        backend = "cpu:gloo,cuda:nccl"
    else:
        backend = "gloo"
    dist.init_process_group(backend=backend, timeout=WAIT_TIMEOUT)
    try:
        yield
    finally:
        dist.destroy_process_group()


def announce(message: object) -> None:
    """Process 0: send ``message`` (a pre-training stage's name, or None when done) to the
    others; a no-op in one process. After None, wait until every process has read it (see
    :func:`follow`)."""
    if dist.is_initialized() and dist.get_world_size() > 1:
        box = [message]
        dist.broadcast_object_list(box, src=0, device=torch.device("cpu"))
        if message is None:
            dist.barrier()


def follow(pretrain: Callable[[str], object]) -> None:
    """Processes other than 0: run ``pretrain(stage)`` for every stage process 0 announces,
    until it announces ``None``."""
    while True:
        box: list[object] = [None]
        dist.broadcast_object_list(box, src=0, device=torch.device("cpu"))
        if box[0] is None:
            # Meets process 0's barrier after its last message: no process tears the gloo
            # group down while a peer still reads it (that aborted process 0 once in a CI run,
            # "terminate called without an active exception").
            dist.barrier()
            return
        pretrain(str(box[0]))
