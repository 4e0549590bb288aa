"""Process groups for ``torchrun``: one code path for 1 process, DDP on gloo/NCCL, FSDP on GPU."""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

from raddino.devices import check_device


@dataclass(frozen=True)
class DistEnv:
    rank: int
    world_size: int
    local_rank: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def init_distributed(device: str | torch.device = "auto") -> DistEnv:
    """Read torchrun's environment (RANK, WORLD_SIZE, LOCAL_RANK) and join the process group:
    NCCL on GPUs, gloo on CPUs. Without torchrun: a single process.

    ``device`` (``train.device``) is checked by :func:`raddino.devices.check_device`; on CUDA
    each process takes the GPU of its LOCAL_RANK.
    """
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    use_cuda = check_device(device, option="train.device").type == "cuda"
    if use_cuda:
        torch.cuda.set_device(local_rank)
        target = torch.device("cuda", local_rank)
    else:
        target = torch.device("cpu")
    if world > 1 and not dist.is_initialized():
        dist.init_process_group(backend="nccl" if use_cuda else "gloo")
    return DistEnv(rank=rank, world_size=world, local_rank=local_rank, device=target)


def all_reduce_mean(values: dict[str, torch.Tensor]) -> dict[str, float]:
    """Mean over processes of scalar tensors (one collective), as Python floats."""
    names = sorted(values)
    stacked = torch.stack([values[name].detach().float().reshape(()) for name in names])
    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(stacked)
        stacked /= dist.get_world_size()
    return dict(zip(names, stacked.tolist(), strict=True))


def any_process(flag: bool, device: torch.device) -> bool:
    """True if ``flag`` is True on any process."""
    if not (dist.is_available() and dist.is_initialized()):
        return flag
    tensor = torch.tensor(float(flag), device=device)
    dist.all_reduce(tensor, op=dist.ReduceOp.MAX)
    return bool(tensor.item())


def broadcast_object(value: object, source: int = 0) -> object:
    """Process ``source``'s ``value`` on every process (pickled: for small objects)."""
    if not (dist.is_available() and dist.is_initialized()):
        return value
    box = [value]
    dist.broadcast_object_list(box, src=source)
    return box[0]


class _GatherWithGrad(torch.autograd.Function):
    """all_gather whose backward hands each process the gradient of its own rows, summed over
    every process that used them (all-reduce, then this process's slice): works on gloo, which
    has no reduce-scatter, and on NCCL."""

    @staticmethod
    def forward(ctx, tensor: torch.Tensor) -> torch.Tensor:
        ctx.rank, ctx.rows = dist.get_rank(), tensor.shape[0]
        out = tensor.new_empty((dist.get_world_size() * tensor.shape[0], *tensor.shape[1:]))
        dist.all_gather_into_tensor(out, tensor.contiguous())
        return out

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        grad = grad.contiguous().clone()
        dist.all_reduce(grad)
        return grad[ctx.rank * ctx.rows : (ctx.rank + 1) * ctx.rows]


def all_gather_with_grad(tensor: torch.Tensor) -> torch.Tensor:
    """Every process's ``tensor`` (b, ...) concatenated in rank order: (world * b, ...).

    Gradients flow back to the process that owns each row: with losses whose sum over processes
    is the global loss, each process's rows get the global loss's gradient. The identity
    without a process group."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return tensor
    return _GatherWithGrad.apply(tensor)


@torch.no_grad()
def all_gather_rows(tensor: torch.Tensor) -> torch.Tensor:
    """:func:`all_gather_with_grad` without gradients (for metrics)."""
    return all_gather_with_grad(tensor.detach())


@torch.no_grad()
def broadcast_module(module: torch.nn.Module, source: int = 0) -> None:
    """Copy every parameter and buffer of ``module`` from process ``source`` to all others."""
    for tensor in [*module.parameters(), *module.buffers()]:
        dist.broadcast(tensor.data, src=source)


def shard_branch(branch: torch.nn.Module) -> None:
    """FSDP2 (``fully_shard``) on every block, the rest of the backbone and each head.

    Student and teacher are sharded alike, so their local shards line up for the EMA update.
    The branch itself is not wrapped: calling its backbone or a head gathers what they need.
    """
    from torch.distributed.fsdp import fully_shard

    for block in branch.backbone.blocks:
        fully_shard(block)
    fully_shard(branch.backbone)
    fully_shard(branch.dino_head)
    if branch.ibot_head is not None:
        fully_shard(branch.ibot_head)


def reshard(module: torch.nn.Module) -> None:
    """Return every FSDP2 unit inside ``module`` to its sharded parameters (a root unit keeps
    its gathered parameters after forward; the teacher's never see a backward to free them)."""
    from torch.distributed.fsdp import FSDPModule

    for unit in module.modules():
        if isinstance(unit, FSDPModule):
            unit.reshard()


def barrier() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def shutdown() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
