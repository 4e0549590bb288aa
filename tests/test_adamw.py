"""The shared AdamW: fused where PyTorch's fused kernel applies, the same update as the textbook
loop otherwise."""

from __future__ import annotations

import torch

from raddino.adamw import build_adamw, fused_applies


def test_fused_applies_to_plain_float_tensors_on_cpu_only():
    assert fused_applies([torch.zeros(3), torch.zeros(2, dtype=torch.bfloat16)])
    assert not fused_applies([torch.zeros(3), torch.zeros(3, dtype=torch.int64)])
    assert not fused_applies([torch.zeros(3, device="meta")])

    class Wrapped(torch.Tensor):  # a tensor subclass (as DTensor, FSDP2's sharded parameter)
        pass

    assert not fused_applies([torch.zeros(3).as_subclass(Wrapped)])


def test_fused_adamw_takes_the_textbook_steps_with_per_group_settings():
    """Three steps of two groups (different lr and weight decay) against the single-tensor
    loop: float32 rounding differs (a few ulps after three steps), a wrong lr, weight decay or
    bias correction would differ by >= 1e-4 relative."""
    torch.manual_seed(0)
    params = [torch.randn(40, 30), torch.randn(30), torch.randn(7, 5)]
    grads = [[torch.randn_like(p) for p in params] for _ in range(3)]

    def run(fused: bool) -> list[torch.Tensor]:
        copies = [p.clone().requires_grad_() for p in params]
        groups = [
            {"params": copies[:2], "lr": 1e-2, "weight_decay": 0.04},
            {"params": copies[2:], "lr": 3e-3, "weight_decay": 0.0},
        ]
        if fused:
            optimizer = build_adamw(groups, (0.9, 0.999))
            assert optimizer.defaults["fused"]  # the groups' own lr and weight decay apply
        else:
            optimizer = torch.optim.AdamW(groups, betas=(0.9, 0.999), foreach=False)
        for step in grads:
            for p, g in zip(copies, step, strict=True):
                p.grad = g.clone()
            optimizer.step()
        return [p.detach() for p in copies]

    for fused, loop in zip(run(True), run(False), strict=True):
        torch.testing.assert_close(fused, loop, rtol=1e-6, atol=1e-7)
