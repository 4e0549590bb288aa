"""The loss of the global batch under DDP: 2 gloo processes give 1 process's loss and gradients."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F
from torch import nn

from raddino.contrastive.model import PairEmbeddings
from raddino.contrastive.trainer import global_batch_loss
from raddino.ssl.distributed import DistEnv

BATCH, WORLD = 6, 2
OBJECTIVES = ("siglip", "clip")
# float32 throughout; the two runs sum the same terms in another order (per-process shares,
# all-reduced gradients): a few ulps of values of order 1
RTOL = 64 * torch.finfo(torch.float32).eps


class ToyTowers(nn.Module):
    """Linear 'towers' on fixed features, with the recipe's logit scale and bias."""

    def __init__(self, objective: str) -> None:
        super().__init__()
        self.image = nn.Linear(6, 4)
        self.text = nn.Linear(5, 4)
        self.logit_scale = nn.Parameter(torch.tensor(2.0))
        self.logit_bias = nn.Parameter(torch.tensor(-3.0)) if objective == "siglip" else None

    def forward(self, image: torch.Tensor, text: torch.Tensor) -> PairEmbeddings:
        return PairEmbeddings(
            F.normalize(self.image(image), dim=-1),
            F.normalize(self.text(text), dim=-1),
            self.logit_scale.exp(),
            self.logit_bias,
        )


def features() -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(1)
    return torch.randn(BATCH, 6, generator=generator), torch.randn(BATCH, 5, generator=generator)


def gradients(objective: str, env: DistEnv, towers: nn.Module, model: nn.Module) -> dict:
    image, text = features()
    rows = slice(env.rank * BATCH // env.world_size, (env.rank + 1) * BATCH // env.world_size)
    loss, values = global_batch_loss(towers(image[rows], text[rows]), objective, env)
    loss.backward()
    result = {name: p.grad.clone() for name, p in model.named_parameters()}
    result["loss"] = values["loss"].clone()
    if env.distributed:  # the logged loss is the mean over processes
        dist.all_reduce(result["loss"])
        result["loss"] /= env.world_size
    return result


def worker(rank: int, init_file: str, out_dir: str) -> None:
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=WORLD)
    env = DistEnv(rank=rank, world_size=WORLD, local_rank=rank, device=torch.device("cpu"))
    for objective in OBJECTIVES:
        torch.manual_seed(0)
        model = ToyTowers(objective)
        towers = nn.parallel.DistributedDataParallel(model)
        torch.save(
            gradients(objective, env, towers, model), Path(out_dir) / f"{objective}{rank}.pt"
        )
    dist.destroy_process_group()


def test_two_gloo_processes_give_the_gradients_of_the_global_batch(tmp_path: Path):
    mp.spawn(worker, args=(str(tmp_path / "init"), str(tmp_path)), nprocs=WORLD, join=True)
    single = DistEnv(rank=0, world_size=1, local_rank=0, device=torch.device("cpu"))
    for objective in OBJECTIVES:
        torch.manual_seed(0)
        model = ToyTowers(objective)
        expected = gradients(objective, single, model, model)
        for rank in range(WORLD):
            got = torch.load(tmp_path / f"{objective}{rank}.pt", weights_only=True)
            assert got.keys() == expected.keys()
            for name, value in expected.items():
                assert torch.allclose(got[name], value, rtol=RTOL, atol=RTOL), (objective, name)
    # and the gradients are not trivially zero
    assert expected["image.weight"].abs().max() > 1e-3
    assert expected["logit_scale"].abs() > 1e-4


@pytest.mark.parametrize("objective", OBJECTIVES)
def test_one_process_loss_is_the_objective_of_the_whole_batch(objective: str):
    from raddino.contrastive.losses import clip_loss, siglip_loss

    single = DistEnv(rank=0, world_size=1, local_rank=0, device=torch.device("cpu"))
    torch.manual_seed(0)
    out = ToyTowers(objective)(*features())
    loss, _ = global_batch_loss(out, objective, single)
    if objective == "siglip":
        expected = siglip_loss(out.image, out.text, out.logit_scale, out.logit_bias)
    else:
        expected = clip_loss(out.image, out.text, out.image, out.text, out.logit_scale)
    assert loss.item() == expected.item()
