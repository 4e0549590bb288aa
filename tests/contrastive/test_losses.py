"""The objectives against explicit float64 loops: both directions, temperature, bias, shares."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from raddino.contrastive.losses import clip_loss, retrieval_accuracy, siglip_loss

# The losses compute their logits in float32: E-term dot products and B^2-term sums of values
# up to ~30 carry a rounding error of a few float32 ulps each, far below 64 ulps relative.
RTOL = 64 * torch.finfo(torch.float32).eps


def pairs(batch: int = 5, dim: int = 7, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    image = F.normalize(torch.randn(batch, dim, generator=generator, dtype=torch.float64), dim=-1)
    text = F.normalize(torch.randn(batch, dim, generator=generator, dtype=torch.float64), dim=-1)
    return image, text


def dot(a: torch.Tensor, b: torch.Tensor) -> float:
    return sum(float(x) * float(y) for x, y in zip(a, b, strict=True))


def siglip_reference(image, text, t: float, b: float) -> float:
    """-1/B sum_i sum_j log sigmoid(z_ij (t x_i.y_j + b)), written out pair by pair."""
    n = len(image)
    total = 0.0
    for i in range(n):
        for j in range(n):
            z = 1.0 if i == j else -1.0
            logit = t * dot(image[i], text[j]) + b
            total += math.log1p(math.exp(-z * logit))  # -log sigmoid(z * logit)
    return total / n


def clip_reference(image, text, t: float) -> float:
    """Mean of image->text and text->image cross-entropies, row by row."""
    n = len(image)

    def cross_entropy(queries, keys, i):
        scores = [t * dot(queries[i], keys[j]) for j in range(n)]
        top = max(scores)
        return -(scores[i] - top - math.log(sum(math.exp(s - top) for s in scores)))

    to_text = sum(cross_entropy(image, text, i) for i in range(n)) / n
    to_image = sum(cross_entropy(text, image, i) for i in range(n)) / n
    return (to_text + to_image) / 2


@pytest.mark.parametrize(("t", "b"), [(10.0, -10.0), (1.0, 0.0), (35.0, -4.5)])
def test_siglip_loss_matches_the_pairwise_sum(t: float, b: float):
    image, text = pairs()
    expected = siglip_reference(image, text, t, b)
    got = siglip_loss(image, text, torch.tensor(t), torch.tensor(b))
    assert got.item() == pytest.approx(expected, rel=RTOL)


@pytest.mark.parametrize("t", [1 / 0.07, 1.0, 60.0])
def test_clip_loss_matches_both_cross_entropies(t: float):
    image, text = pairs()
    got = clip_loss(image, text, image, text, torch.tensor(t))
    assert got.item() == pytest.approx(clip_reference(image, text, t), rel=RTOL)


def test_clip_loss_has_both_directions():
    # image -> text and text -> image differ when the similarity matrix is not symmetric;
    # swapping the towers gives the same total only because both directions are counted
    image, text = pairs(seed=3)
    t = torch.tensor(5.0)
    one_way = F.cross_entropy(t * image.float() @ text.float().T, torch.arange(5))
    other_way = F.cross_entropy(t * text.float() @ image.float().T, torch.arange(5))
    assert abs(one_way - other_way) > 1e-3
    both = clip_loss(image, text, image, text, t)
    assert both.item() == pytest.approx(((one_way + other_way) / 2).item(), rel=RTOL)
    assert both.item() == pytest.approx(clip_loss(text, image, text, image, t).item(), rel=RTOL)


def test_shares_of_the_processes_add_up_to_the_global_loss():
    image, text = pairs(batch=6)
    t, b = torch.tensor(7.0), torch.tensor(-3.0)
    whole = siglip_loss(image, text, t, b)
    shares = [siglip_loss(image[k : k + 3], text, t, b, offset=k) for k in (0, 3)]
    assert sum(shares).item() == pytest.approx(whole.item(), rel=RTOL)
    whole = clip_loss(image, text, image, text, t)
    shares = [clip_loss(image[k : k + 3], text[k : k + 3], image, text, t, k) for k in (0, 3)]
    assert sum(shares).item() == pytest.approx(whole.item(), rel=RTOL)


def test_gradients_match_autograd_of_the_float64_reference():
    image, text = pairs(batch=4, dim=3, seed=1)
    for objective in ("siglip", "clip"):
        leaves = [x.clone().requires_grad_() for x in (image, text)]
        scale = torch.tensor(8.0, dtype=torch.float64, requires_grad=True)
        bias = torch.tensor(-2.0, dtype=torch.float64, requires_grad=True)
        x, y = leaves
        if objective == "siglip":
            loss = siglip_loss(x, y, scale, bias)
            signs = 2 * torch.eye(4, dtype=torch.float64) - 1
            reference = -F.logsigmoid(signs * (scale * x @ y.T + bias)).sum() / 4
        else:
            loss = clip_loss(x, y, x, y, scale)
            logits = scale * x @ y.T
            target = torch.arange(4)
            reference = (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target)) / 2
        ours = torch.autograd.grad(loss, [*leaves, scale])
        theirs = torch.autograd.grad(reference, [*leaves, scale])
        for a, b in zip(ours, theirs, strict=True):
            # float32 logits: gradients agree to float32 rounding of values of order 1-10
            assert torch.allclose(a.double(), b, rtol=RTOL, atol=RTOL * 10), objective
        if objective == "siglip":
            (got,) = torch.autograd.grad(siglip_loss(x, y, scale, bias), [bias])
            (expected,) = torch.autograd.grad(
                -F.logsigmoid(signs * (scale * x @ y.T + bias)).sum() / 4, [bias]
            )
            assert got.item() == pytest.approx(expected.item(), rel=RTOL, abs=RTOL)


def test_retrieval_accuracy_counts_matches_in_both_directions():
    eye = torch.eye(4)
    image = eye.clone()
    text = eye[[0, 1, 3, 2]]  # pairs 2 and 3 point at each other's report
    to_text, to_image = retrieval_accuracy(image, text, image, text)
    assert to_text.item() == to_image.item() == 0.5
    # this process's rows 2-3 of the global batch
    to_text, _ = retrieval_accuracy(image[2:], text[2:], image, text, offset=2)
    assert to_text.item() == 0.0
