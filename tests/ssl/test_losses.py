"""DINO / iBOT / KoLeo losses and teacher centerings: hand-computed values and DINOv2 invariants."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from raddino.ssl import losses as losses_module
from raddino.ssl.losses import (
    SoftmaxCentering,
    dino_cross_entropy,
    dino_loss,
    ibot_patch_loss,
    koleo_loss,
    masked_token_weights,
    sinkhorn_knopp,
    soft_cross_entropy,
    teacher_entropy,
)


def hand_cross_entropy(student: list[float], teacher: list[float], temp: float) -> float:
    """-sum_k t_k log softmax(s / temp)_k with math only."""
    scaled = [value / temp for value in student]
    log_normaliser = math.log(sum(math.exp(value) for value in scaled))
    return -sum(t * (s - log_normaliser) for t, s in zip(teacher, scaled, strict=True))


FLOAT32_EPS = torch.finfo(torch.float32).eps
FLOAT32_TINY = torch.finfo(torch.float32).tiny  # below it float32 is subnormal (or flushed to 0)


def numpy_logsumexp(values: np.ndarray, axis: int | None = None) -> np.ndarray:
    """log(sum(exp(values))) over ``axis`` (keepdims), shifted by the maximum; float64."""
    top = values.max(axis=axis, keepdims=True)
    return top + np.log(np.exp(values - top).sum(axis=axis, keepdims=True))


# --------------------------------------------------------------------------- DINO


def test_dino_cross_entropy_matches_hand_computation_on_two_rows():
    student = [[0.1, 0.2, 0.3], [0.3, -0.1, 0.0]]
    teacher = [[0.2, 0.3, 0.5], [0.7, 0.2, 0.1]]
    # Row 1: s/0.1 = (1, 2, 3), lse = log(e + e^2 + e^3) = 3.40760596
    assert hand_cross_entropy(student[0], teacher[0], 0.1) == pytest.approx(
        3.40760596 - (0.2 * 1 + 0.3 * 2 + 0.5 * 3), abs=1e-7
    )
    expected = (
        hand_cross_entropy(student[0], teacher[0], 0.1)
        + hand_cross_entropy(student[1], teacher[1], 0.1)
    ) / 2
    loss = dino_cross_entropy(torch.tensor(student), torch.tensor(teacher))
    assert loss.dtype == torch.float32
    assert loss.item() == pytest.approx(expected, rel=1e-6)


def test_dino_cross_entropy_is_float32_for_half_inputs_and_uses_student_temp():
    student = torch.tensor([[1.0, 2.0, 4.0]])
    teacher = torch.tensor([[0.5, 0.25, 0.25]])
    loss = dino_cross_entropy(student.half(), teacher.half(), student_temp=2.0)
    assert loss.dtype == torch.float32
    assert loss.item() == pytest.approx(hand_cross_entropy([1, 2, 4], [0.5, 0.25, 0.25], 2.0))


def test_dino_loss_sums_every_student_teacher_pair():
    students = [[[0.1, 0.2, 0.3]], [[0.0, 0.4, -0.2]]]
    teachers = [[[0.2, 0.3, 0.5]], [[0.6, 0.3, 0.1]]]
    expected = sum(
        hand_cross_entropy(s[0], t[0], 0.1) for s in students for t in teachers
    )  # 4 pairs, no normalisation
    loss = dino_loss([torch.tensor(s) for s in students], [torch.tensor(t) for t in teachers])
    assert loss.item() == pytest.approx(expected, rel=1e-6)
    single = dino_loss([torch.tensor(students[0])], [torch.tensor(teachers[1])])
    assert single.item() == pytest.approx(hand_cross_entropy(students[0][0], teachers[1][0], 0.1))


def test_dino_loss_rejects_bad_arguments():
    logits = torch.zeros(2, 3)
    with pytest.raises(ValueError, match="student_logits"):
        dino_loss(logits, [logits])
    with pytest.raises(ValueError, match="teacher_probs"):
        dino_loss([logits], [])
    with pytest.raises(ValueError, match=r"teacher_probs\[0\]"):
        dino_loss([logits], [torch.zeros(2, 4)])
    with pytest.raises(ValueError, match="student_temp"):
        dino_cross_entropy(logits, logits, student_temp=0.0)


# --------------------------------------------------------------------------- softmax centering


def test_softmax_centering_uses_current_centre_and_updates_with_momentum():
    torch.manual_seed(0)
    centering = SoftmaxCentering(5)
    assert centering.center.shape == (1, 5) and torch.equal(centering.center, torch.zeros(1, 5))
    first, second = torch.randn(4, 5), torch.randn(6, 5)

    # Step 1: zero centre -> plain tempered softmax.
    torch.testing.assert_close(
        centering.teacher_probs(first, 0.04), torch.softmax(first / 0.04, dim=-1)
    )
    centering.update(first)
    after_first = 0.1 * first.mean(0, keepdim=True)
    torch.testing.assert_close(centering.center, after_first)

    # Step 2: the centre built from step 1 is subtracted.
    probs = centering.teacher_probs(second, 0.07)
    torch.testing.assert_close(probs, torch.softmax((second - after_first) / 0.07, dim=-1))
    torch.testing.assert_close(probs.sum(-1), torch.ones(6))
    centering.update(second)
    torch.testing.assert_close(
        centering.center, 0.9 * after_first + 0.1 * second.mean(0, keepdim=True)
    )


def test_softmax_centering_update_sums_rows_chunk_by_chunk_exactly(monkeypatch):
    """The centre's row sum is accumulated a chunk of rows at a time (here 3 rows of 4): in
    float32 it equals the float64 mean to rounding, for bf16 logits as well."""
    monkeypatch.setattr(losses_module, "_CHUNK_ELEMENTS", 12)
    torch.manual_seed(3)
    logits = torch.randn(11, 4).bfloat16()
    centering = SoftmaxCentering(4, momentum=0.75)
    centering.update(logits)
    expected = 0.25 * logits.double().mean(0, keepdim=True)
    torch.testing.assert_close(centering.center, expected.float(), rtol=1e-6, atol=1e-7)


def test_softmax_centering_state_dict_round_trip_restores_the_centre():
    torch.manual_seed(1)
    trained = SoftmaxCentering(7, momentum=0.8)
    for _ in range(3):
        trained.update(torch.randn(5, 7))
    assert "center" in trained.state_dict()
    restored = SoftmaxCentering(7, momentum=0.8)
    restored.load_state_dict(trained.state_dict())
    assert torch.equal(restored.center, trained.center)
    logits = torch.randn(3, 7)
    assert torch.equal(restored.teacher_probs(logits, 0.05), trained.teacher_probs(logits, 0.05))


def test_softmax_centering_ignores_an_empty_batch_and_takes_half_precision():
    centering = SoftmaxCentering(3)
    centering.update(torch.tensor([[1.0, 2.0, 3.0]]).half())
    before = centering.center.clone()
    assert centering.center.dtype == torch.float32
    centering.update(torch.zeros(0, 3))
    assert torch.equal(centering.center, before)


def test_softmax_centering_rejects_bad_arguments():
    with pytest.raises(ValueError, match="n_prototypes"):
        SoftmaxCentering(0)
    with pytest.raises(ValueError, match="momentum"):
        SoftmaxCentering(3, momentum=1.5)
    centering = SoftmaxCentering(3)
    with pytest.raises(ValueError, match="teacher_logits"):
        centering.update(torch.zeros(2, 4))
    with pytest.raises(ValueError, match="teacher_temp"):
        centering.teacher_probs(torch.zeros(2, 3), -1.0)


def float64_centred_softmax(logits: torch.Tensor, center: torch.Tensor, temp: float) -> np.ndarray:
    """softmax((logits - center) / temp) from the float32 inputs, float64, in log space."""
    scores = (logits.double().numpy() - center.double().numpy()) / temp
    return np.exp(scores - numpy_logsumexp(scores, axis=1))


def test_softmax_centering_is_exact_when_the_score_range_is_hundreds_of_temperatures():
    generator = torch.Generator().manual_seed(0)
    centering = SoftmaxCentering(50)
    centering.update(torch.rand(16, 50, generator=generator) * 4 - 2)  # a non-zero centre
    logits = torch.rand(8, 50, generator=generator) * 2 - 1
    temp = 0.004
    scaled_range = float((logits - centering.center).max() - (logits - centering.center).min())
    scaled_range /= temp
    assert scaled_range > 100
    probs = centering.teacher_probs(logits, temp)
    # A probability is exp(score - log normaliser): its relative error is the absolute error of
    # that exponent, a few float32 roundings (eps 1.2e-7) of values up to the scaled range, plus
    # the K-term sum inside the normaliser. Tiny entries are only absolutely accurate.
    rtol = FLOAT32_EPS * (4 * scaled_range + 50 + 8)
    expected = float64_centred_softmax(logits, centering.center, temp)
    np.testing.assert_allclose(probs.numpy(), expected, rtol=rtol, atol=FLOAT32_TINY)


def test_softmax_centering_stays_finite_when_the_scaled_scores_overflow_float32():
    centering = SoftmaxCentering(4)
    logits = torch.tensor([[1e30, 0.0, -1e30, 5e29], [-2e30, -3e30, -2e30, -1e30]])
    temp = 1e-10  # (logits - max) / temp is beyond float32's range (3.4e38)
    probs = centering.teacher_probs(logits, temp)
    assert torch.isfinite(probs).all()
    torch.testing.assert_close(probs.sum(-1), torch.ones(2))
    # The float64 softmax of the same scores is one-hot on each row's maximum.
    expected = float64_centred_softmax(logits, centering.center, temp)
    np.testing.assert_array_equal(expected, np.eye(4)[[0, 3]])
    assert torch.equal(probs, torch.from_numpy(expected).float())


# --------------------------------------------------------------------------- Sinkhorn-Knopp


def numpy_dinov2_sinkhorn(logits: np.ndarray, temp: float, n_iterations: int) -> np.ndarray:
    """DINOv2's sinkhorn_knopp_teacher on one process, float64, without max subtraction."""
    q = np.exp(logits / temp).T  # (K, B)
    n_prototypes, n_samples = q.shape
    q = q / q.sum()
    for _ in range(n_iterations):
        q = q / q.sum(axis=1, keepdims=True)
        q = q / n_prototypes
        q = q / q.sum(axis=0, keepdims=True)
        q = q / n_samples
    return (q * n_samples).T


def test_sinkhorn_knopp_matches_direct_numpy_dinov2_at_three_iterations():
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(16, 10)).astype(np.float32)
    expected = numpy_dinov2_sinkhorn(logits.astype(np.float64), 0.5, 3)
    result = sinkhorn_knopp(torch.from_numpy(logits), 0.5)
    assert result.dtype == torch.float32 and result.shape == (16, 10)
    np.testing.assert_allclose(result.numpy(), expected, rtol=1e-5, atol=1e-7)
    # n_rows as an int or a tensor is the local row count: same result.
    assert torch.equal(sinkhorn_knopp(torch.from_numpy(logits), 0.5, n_rows=16), result)
    assert torch.equal(
        sinkhorn_knopp(torch.from_numpy(logits), 0.5, n_rows=torch.tensor(16)), result
    )


def test_sinkhorn_knopp_rows_sum_to_one_and_prototypes_are_used_equally():
    torch.manual_seed(0)
    n_samples, n_prototypes = 64, 8
    logits = torch.randn(n_samples, n_prototypes)
    for n_iterations in (3, 200):
        probs = sinkhorn_knopp(logits, 1.0, n_iterations=n_iterations)
        torch.testing.assert_close(probs.sum(1), torch.ones(n_samples))
    # After many iterations every prototype receives B / K of the mass.
    torch.testing.assert_close(
        probs.sum(0), torch.full((n_prototypes,), n_samples / n_prototypes), rtol=1e-4, atol=1e-4
    )
    # At this temperature three iterations already flatten the column sums (for very peaked
    # logits three iterations are not enough: that is the algorithm, not a bug).
    spread_softmax = torch.softmax(logits, -1).sum(0).std()
    spread_sinkhorn = sinkhorn_knopp(logits, 1.0).sum(0).std()
    assert spread_sinkhorn < 0.1 * spread_softmax


def test_sinkhorn_knopp_is_invariant_to_a_constant_and_does_not_overflow():
    # Multiples of 1/64 below 128 in magnitude: the shifted logits are exact in float32, so any
    # difference would come from the algorithm, not from rounding the input.
    generator = torch.Generator().manual_seed(0)
    logits = torch.randint(-128, 128, (12, 6), generator=generator) / 64.0
    reference = sinkhorn_knopp(logits, 0.04)
    shifted = sinkhorn_knopp(logits + 100.0, 0.04)  # exp(2500) would overflow without the max
    assert torch.isfinite(shifted).all()
    torch.testing.assert_close(shifted, reference, rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(sinkhorn_knopp(logits - 7.0, 0.04), reference, rtol=1e-6, atol=1e-7)
    expected = numpy_dinov2_sinkhorn(logits.double().numpy(), 0.04, 3)
    np.testing.assert_allclose(shifted.numpy(), expected, rtol=1e-4, atol=1e-6)


def logspace_dinov2_sinkhorn(logits: np.ndarray, temp: float, n_iterations: int) -> np.ndarray:
    """DINOv2's sinkhorn_knopp_teacher step by step (total, 1/K and 1/B included), float64 and
    in log space, so nothing underflows whatever the logits."""
    log_q = logits.astype(np.float64).T / temp  # (K, B)
    n_prototypes, n_samples = log_q.shape
    log_q = log_q - numpy_logsumexp(log_q)
    for _ in range(n_iterations):
        log_q = log_q - numpy_logsumexp(log_q, axis=1) - math.log(n_prototypes)
        log_q = log_q - numpy_logsumexp(log_q, axis=0) - math.log(n_samples)
    return np.exp(log_q + math.log(n_samples)).T


def sinkhorn_rtol(logits: torch.Tensor, temp: float, n_iterations: int = 3) -> float:
    """Bound on the relative error of float32 Sinkhorn-Knopp targets against exact arithmetic.

    A target is exp(log q), so its relative error is the absolute error of log q: the scaled
    logits (of size S = range / temp) are rounded twice when made, then every normalisation
    subtracts from values of size <= 2 S (one rounding each, 2 per iteration), and a sum of n
    positive float32 terms is within n eps of exact, which moves its log by n eps.
    """
    n_samples, n_prototypes = logits.shape
    scaled = float(logits.max() - logits.min()) / temp
    sums = n_iterations * (n_samples + n_prototypes)
    return FLOAT32_EPS * ((2 + 4 * n_iterations) * scaled + sums + 16)


def dead_prototype_logits() -> torch.Tensor:
    """64 x 256 cosine-like scores in [-1, 1]; prototype 17 scores about -1.5 for every sample."""
    generator = torch.Generator().manual_seed(0)
    logits = torch.rand(64, 256, generator=generator) * 2 - 1
    logits[:, 17] = -1.5 + 0.01 * torch.rand(64, generator=generator)
    return logits


def test_logspace_reference_equals_the_direct_numpy_dinov2_on_benign_logits():
    rng = np.random.default_rng(1)
    logits = rng.normal(size=(16, 10))
    for temp, n_iterations in ((0.5, 3), (0.1, 1), (1.0, 10)):
        np.testing.assert_allclose(
            logspace_dinov2_sinkhorn(logits, temp, n_iterations),
            numpy_dinov2_sinkhorn(logits, temp, n_iterations),
            rtol=1e-12,  # both float64; the scaled logits stay below 40 in size
        )


@pytest.mark.parametrize(("temp", "n_iterations"), [(0.04, 3), (0.1, 1), (1.0, 10)])
def test_sinkhorn_knopp_keeps_dinov2_results_on_benign_logits(temp: float, n_iterations: int):
    generator = torch.Generator().manual_seed(2)
    logits = torch.randn(32, 16, generator=generator)
    result = sinkhorn_knopp(logits, temp, n_iterations=n_iterations)
    expected = numpy_dinov2_sinkhorn(logits.double().numpy(), temp, n_iterations)
    np.testing.assert_allclose(
        result.numpy(), expected, rtol=sinkhorn_rtol(logits, temp, n_iterations), atol=FLOAT32_TINY
    )
    # n_rows (B_global in DINOv2) only scales by 1/B and back: it changes nothing.
    assert torch.equal(sinkhorn_knopp(logits, temp, n_iterations, n_rows=5), result)


def test_sinkhorn_knopp_with_a_dead_prototype_at_temp_001_is_finite_and_exact():
    logits = dead_prototype_logits()
    temp = 0.01
    # The case that turned every target NaN when only the batch maximum was subtracted: the
    # dead prototype's exp underflows to 0 for every sample (exp(-249) is far below float32).
    assert torch.exp((logits - logits.max()) / temp)[:, 17].max() == 0
    result = sinkhorn_knopp(logits, temp)
    assert torch.isfinite(result).all()
    expected = logspace_dinov2_sinkhorn(logits.numpy(), temp, 3)
    np.testing.assert_allclose(
        result.numpy(), expected, rtol=sinkhorn_rtol(logits, temp), atol=FLOAT32_TINY
    )
    torch.testing.assert_close(result.sum(1), torch.ones(64))
    assert result[:, 17].sum() > 0.1  # the dead prototype still receives mass (B / K = 0.25)


@pytest.mark.parametrize("temp", [0.01, 0.003])
def test_sinkhorn_knopp_is_exact_when_the_logit_range_is_hundreds_of_temperatures(temp: float):
    generator = torch.Generator().manual_seed(3)
    logits = torch.rand(48, 96, generator=generator) * 2 - 1
    logits[:, 40] = -1.8  # a dead prototype
    logits[5] = -3.0 + 0.01 * torch.rand(96, generator=generator)  # below every prototype
    assert (logits.max() - logits.min()) / temp > 100
    # Even shifted by each prototype's own maximum, sample 5 underflows to 0 everywhere: only
    # a per-sample log-sum-exp keeps it from 0 / 0.
    assert torch.exp((logits[5] - logits.amax(0)) / temp).max() == 0
    result = sinkhorn_knopp(logits, temp)
    assert torch.isfinite(result).all()
    expected = logspace_dinov2_sinkhorn(logits.numpy(), temp, 3)
    np.testing.assert_allclose(
        result.numpy(), expected, rtol=sinkhorn_rtol(logits, temp), atol=FLOAT32_TINY
    )


def test_sinkhorn_knopp_stays_finite_when_the_scaled_logits_overflow_float32():
    generator = torch.Generator().manual_seed(4)
    logits = (torch.rand(16, 8, generator=generator) * 2 - 1) * 1e30
    result = sinkhorn_knopp(logits, 1e-10)  # scaled logits up to 2e40: beyond float32
    assert torch.isfinite(result).all()
    torch.testing.assert_close(result.sum(1), torch.ones(16))
    assert (result.amax(1) >= 1 / 8).all()


def test_sinkhorn_knopp_of_an_empty_batch_is_empty():
    assert sinkhorn_knopp(torch.zeros(0, 5), 0.1).shape == (0, 5)
    with pytest.raises(ValueError, match="teacher_logits must have at least one prototype"):
        sinkhorn_knopp(torch.zeros(4, 0), 0.1)


def test_sinkhorn_knopp_rejects_bad_arguments():
    logits = torch.zeros(2, 3)
    with pytest.raises(ValueError, match="teacher_logits"):
        sinkhorn_knopp(torch.zeros(3), 0.1)
    with pytest.raises(ValueError, match="n_iterations"):
        sinkhorn_knopp(logits, 0.1, n_iterations=0)
    with pytest.raises(ValueError, match="n_rows"):
        sinkhorn_knopp(logits, 0.1, n_rows=-1)
    with pytest.raises(ValueError, match="teacher_temp"):
        sinkhorn_knopp(logits, math.nan)


# --------------------------------------------------------------------------- distributed


def _distributed_worker(rank: int, store: str, result_dir: str, data: dict) -> None:
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=2)
    try:
        rows = data["splits"][rank]
        logits, patch_logits = data["logits"][rows], data["patch_logits"][rows]
        centering = SoftmaxCentering(logits.shape[1])
        centering.update(logits)
        dead = data["dead_logits"]
        result = {
            "sinkhorn": sinkhorn_knopp(logits, 0.1),
            "sinkhorn_n_rows": sinkhorn_knopp(patch_logits, 0.1, n_rows=torch.tensor(len(rows))),
            "center": centering.center.clone(),
            "dead": sinkhorn_knopp(dead[data["dead_splits"][rank]], 0.01),
            "dead_rank0_empty": sinkhorn_knopp(dead if rank == 1 else dead[:0], 0.01),
        }
        torch.save(result, Path(result_dir) / f"rank{rank}.pt")
    finally:
        dist.destroy_process_group()


@pytest.fixture(scope="module")
def two_processes(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict, list[dict]]:
    """The inputs and each rank's results of `_distributed_worker` on two gloo processes."""
    folder = tmp_path_factory.mktemp("distributed")
    torch.manual_seed(0)
    data = {
        "logits": torch.randn(8, 6),
        "patch_logits": torch.randn(8, 6) * 3,
        "splits": [torch.arange(0, 3), torch.arange(3, 8)],
        "dead_logits": dead_prototype_logits(),
        "dead_splits": [torch.arange(0, 23), torch.arange(23, 64)],
    }
    mp.spawn(
        _distributed_worker, args=(str(folder / "store"), str(folder), data), nprocs=2, join=True
    )
    return data, [torch.load(folder / f"rank{r}.pt", weights_only=True) for r in range(2)]


def test_distributed_reductions_match_one_process_on_the_whole_batch(
    two_processes: tuple[dict, list[dict]],
):
    """Two gloo ranks with uneven batches (3 and 5 rows) equal one process with all 8 rows."""
    data, ranks = two_processes
    torch.testing.assert_close(
        torch.cat([r["sinkhorn"] for r in ranks]), sinkhorn_knopp(data["logits"], 0.1)
    )
    torch.testing.assert_close(
        torch.cat([r["sinkhorn_n_rows"] for r in ranks]), sinkhorn_knopp(data["patch_logits"], 0.1)
    )
    expected_center = 0.1 * data["logits"].mean(0, keepdim=True)
    for result in ranks:
        torch.testing.assert_close(result["center"], expected_center)


def test_distributed_sinkhorn_knopp_with_a_dead_prototype_matches_the_float64_reference(
    two_processes: tuple[dict, list[dict]],
):
    """Uneven ranks (23 and 41 rows), and one rank without rows, at temp 0.01."""
    data, ranks = two_processes
    logits = data["dead_logits"]
    expected = logspace_dinov2_sinkhorn(logits.numpy(), 0.01, 3)
    rtol = sinkhorn_rtol(logits, 0.01)
    together = torch.cat([r["dead"] for r in ranks])
    assert torch.isfinite(together).all()
    np.testing.assert_allclose(together.numpy(), expected, rtol=rtol, atol=FLOAT32_TINY)
    assert ranks[0]["dead_rank0_empty"].shape == (0, 256)
    np.testing.assert_allclose(
        ranks[1]["dead_rank0_empty"].numpy(), expected, rtol=rtol, atol=FLOAT32_TINY
    )


# --------------------------------------------------------------------------- iBOT


def test_masked_token_weights_are_one_over_the_row_count_in_row_major_order():
    masks = torch.tensor([[True, False, True, True], [False] * 4, [False, True, False, False]])
    weights = masked_token_weights(masks)
    torch.testing.assert_close(weights, torch.tensor([1 / 3, 1 / 3, 1 / 3, 1.0]))
    assert weights.dtype == torch.float32
    assert masked_token_weights(torch.zeros(2, 5, dtype=torch.bool)).shape == (0,)
    with pytest.raises(ValueError, match="masks"):
        masked_token_weights(masks.int())


def test_ibot_patch_loss_hand_check_counts_unmasked_images_as_zero():
    # 3 images, 4 patches, K = 3. Image 0 masks patches 0 and 2, image 1 nothing, image 2 patch 3.
    masks = torch.tensor([[True, False, True, False], [False] * 4, [False, False, False, True]])
    student = [[0.1, 0.2, 0.3], [0.0, -0.2, 0.5], [0.3, 0.3, -0.1]]
    teacher = [[0.2, 0.3, 0.5], [0.1, 0.1, 0.8], [0.6, 0.3, 0.1]]
    ce = [hand_cross_entropy(s, t, 0.1) for s, t in zip(student, teacher, strict=True)]
    expected = ((ce[0] + ce[1]) / 2 + 0.0 + ce[2]) / 3
    loss = ibot_patch_loss(
        torch.tensor(student), torch.tensor(teacher), masked_token_weights(masks), n_images=3
    )
    assert loss.item() == pytest.approx(expected, rel=1e-6)


def test_ibot_patch_loss_equals_dense_per_image_masked_mean_and_ignores_unmasked_patches():
    torch.manual_seed(0)
    n_images, n_patches, n_prototypes = 4, 9, 5
    student = torch.randn(n_images, n_patches, n_prototypes)
    teacher = torch.softmax(torch.randn(n_images, n_patches, n_prototypes), -1)
    masks = torch.rand(n_images, n_patches) < 0.4
    masks[1] = False  # one unmasked image
    masks[0, 0] = True

    def masked_loss(student_tokens: torch.Tensor) -> torch.Tensor:
        return ibot_patch_loss(
            student_tokens[masks], teacher[masks], masked_token_weights(masks), n_images
        )

    # DINOv2's dense iBOTPatchLoss.forward: per-image mean over masked patches, mean over images.
    per_patch = -(teacher * torch.log_softmax(student / 0.1, -1)).sum(-1)
    dense = ((per_patch * masks).sum(-1) / masks.sum(-1).clamp(min=1)).mean()
    loss = masked_loss(student)
    torch.testing.assert_close(loss, dense)

    perturbed = student.clone()
    perturbed[~masks] += 10 * torch.randn_like(perturbed[~masks])
    assert torch.equal(masked_loss(perturbed), loss)
    perturbed[0, 0, 0] += 1.0  # one prototype (a shift of all K would not change softmax)
    assert not torch.equal(masked_loss(perturbed), loss)


def test_ibot_patch_loss_with_no_masked_token_is_zero_and_checks_arguments():
    student = torch.zeros(0, 4, requires_grad=True)
    loss = ibot_patch_loss(student, torch.zeros(0, 4), torch.zeros(0), n_images=2)
    assert loss.item() == 0.0
    loss.backward()
    with pytest.raises(ValueError, match="weights"):
        ibot_patch_loss(torch.zeros(3, 4), torch.zeros(3, 4), torch.zeros(2), n_images=2)
    with pytest.raises(ValueError, match="n_images"):
        ibot_patch_loss(torch.zeros(3, 4), torch.zeros(3, 4), torch.zeros(3), n_images=0)


# --------------------------------------------------------------------------- KoLeo


@pytest.mark.parametrize(
    ("points", "expected"),
    [
        ([[0.0, 1.0], [0.0, -1.0]], -math.log(2.0)),
        ([[0.0, 1.0], [1.0, 0.0]], -math.log(math.sqrt(2.0))),
        ([[0, 1], [1, 0], [1, 1], [-1, 0], [0, -1], [-1, -1]], 0.2674),
    ],
)
def test_koleo_closed_forms(points: list[list[float]], expected: float):
    loss = koleo_loss(torch.tensor(points, dtype=torch.float32))
    assert loss.item() == pytest.approx(expected, abs=5e-5)


def pairwise_distance_koleo_terms(x: torch.Tensor) -> torch.Tensor:
    """DINOv2's per-row KoLeo terms: PairwiseDistance(eps=1e-8) to the nearest other row."""
    normed = torch.nn.functional.normalize(x, eps=1e-8)
    with torch.no_grad():
        dots = normed @ normed.T
        dots.fill_diagonal_(-1.0)  # no antipodal ties in these tests
    distance = torch.nn.PairwiseDistance(p=2, eps=1e-8)(normed, normed[dots.argmax(1)])
    return -torch.log(distance + 1e-8)


def koleo_with_duplicates() -> tuple[torch.Tensor, list[int]]:
    """6 x 8 features: rows 0, 3 and 5 are copies of a unit vector whose entries (+-0.5) and
    norm (exactly 1) are exact in float16 and float32, so the copies stay bitwise identical
    after normalisation whatever the kernel; rows 1, 2 and 4 are random."""
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(6, 8, generator=generator)
    for row in (0, 3, 5):
        x[row] = torch.tensor([0.5, -0.5, 0.5, 0.5, 0.0, 0.0, 0.0, 0.0])
    return x, [0, 3, 5]


def test_koleo_duplicates_give_a_finite_loss_and_finite_gradients():
    x, copies = koleo_with_duplicates()
    features = x.clone().requires_grad_()
    loss = koleo_loss(features)
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(features.grad).all()

    # Value: a copy's nearest neighbour is another copy (whichever the tie picks), at distance
    # ||eps * ones(8)|| = eps * sqrt(8); the other rows follow DINOv2's formula.
    copy_term = -math.log(1e-8 * math.sqrt(8) + 1e-8)
    assert copy_term == pytest.approx(17.0782, abs=1e-4)
    reference = x.clone().requires_grad_()
    terms = pairwise_distance_koleo_terms(reference)
    others = [row for row in range(6) if row not in copies]
    expected = (terms[others].sum() + len(copies) * copy_term) / 6
    # float32 norms and logs of O(1) values: a few eps (1.2e-7) relative; 1e-5 is ample.
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5)
    # Gradient: the copies' terms are constants, the other rows' terms are DINOv2's.
    expected.backward()
    torch.testing.assert_close(features.grad, reference.grad)
    assert features.grad[others].abs().sum() > 0


def test_koleo_duplicates_in_half_precision_give_finite_gradients():
    x, _ = koleo_with_duplicates()
    for dtype in (torch.float16, torch.bfloat16):
        features = x.to(dtype).requires_grad_()
        loss = koleo_loss(features)
        loss.backward()
        assert loss.dtype == torch.float32 and torch.isfinite(loss)
        assert features.grad.dtype == dtype and torch.isfinite(features.grad).all()


def test_koleo_of_a_single_row_is_zero_with_zero_gradients():
    for dtype in (torch.float32, torch.bfloat16):
        features = torch.tensor([[0.3, -1.2, 2.0]], dtype=dtype, requires_grad=True)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            loss = koleo_loss(features)
        assert loss.dtype == torch.float32 and loss.item() == 0.0
        loss.backward()
        assert torch.equal(features.grad, torch.zeros_like(features))


def test_koleo_matches_pairwise_distance_formula_and_ignores_autocast():
    torch.manual_seed(0)
    x = torch.randn(16, 8)
    normed = torch.nn.functional.normalize(x, eps=1e-8)
    dots = normed @ normed.T
    dots.fill_diagonal_(-1.0)  # DINOv2's formulation; no antipodal ties in random data
    distance = torch.nn.PairwiseDistance(p=2, eps=1e-8)(normed, normed[dots.argmax(1)])
    expected = -torch.log(distance + 1e-8).mean()
    torch.testing.assert_close(koleo_loss(x), expected)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = koleo_loss(x.bfloat16())
    assert loss.dtype == torch.float32
    torch.testing.assert_close(loss, koleo_loss(x.bfloat16().float()))
    with pytest.raises(ValueError, match="x"):
        koleo_loss(torch.zeros(0, 3))


# --------------------------------------------------------------------------- entropy, gradients


def test_teacher_entropy_uniform_is_log_k_and_one_hot_is_zero():
    assert teacher_entropy(torch.full((3, 8), 1 / 8)).item() == pytest.approx(math.log(8))
    assert teacher_entropy(torch.eye(4)).item() == 0.0
    mixed = torch.tensor([[0.5, 0.5, 0.0, 0.0], [1.0, 0.0, 0.0, 0.0]])
    assert teacher_entropy(mixed).item() == pytest.approx(math.log(2) / 2)


def test_losses_backpropagate_finite_nonzero_gradients():
    torch.manual_seed(0)
    students = [torch.randn(4, 6, requires_grad=True) for _ in range(2)]
    teachers = [torch.softmax(torch.randn(4, 6), -1) for _ in range(2)]
    patch_student = torch.randn(5, 6, requires_grad=True)
    masks = torch.tensor([[True, True, False], [False, False, False], [True, True, True]])
    features = torch.randn(8, 16, requires_grad=True)

    total = (
        dino_loss(students, teachers)
        + ibot_patch_loss(
            patch_student, torch.softmax(torch.randn(5, 6), -1), masked_token_weights(masks), 3
        )
        + koleo_loss(features)
    )
    total.backward()
    for tensor in (*students, patch_student, features):
        assert tensor.grad is not None
        assert torch.isfinite(tensor.grad).all()
        assert tensor.grad.abs().sum() > 0


# --------------------------------------------------------------------------- fused cross-entropy


def plain_soft_cross_entropy(student: torch.Tensor, teacher: torch.Tensor, temp: float):
    """The textbook form, as DINOv2 writes it: -(t * log_softmax(s / T)).sum(-1)."""
    return -(teacher * torch.log_softmax(student / temp, dim=-1)).sum(dim=-1)


@pytest.mark.parametrize("chunk_elements", [1 << 20, 7])  # one chunk; rows one at a time
def test_soft_cross_entropy_equals_the_plain_formula_and_its_gradient(monkeypatch, chunk_elements):
    monkeypatch.setattr(losses_module, "_CHUNK_ELEMENTS", chunk_elements)
    torch.manual_seed(0)
    student = torch.randn(5, 6, dtype=torch.float64, requires_grad=True)
    teacher = torch.softmax(torch.randn(5, 6, dtype=torch.float64), -1)
    teacher[0] *= 0.5  # a row that does not sum to 1 uses its own mass
    # float64 throughout: the custom backward must be the exact derivative.
    assert torch.autograd.gradcheck(lambda s: soft_cross_entropy(s, teacher, 0.3), (student,))
    expected = plain_soft_cross_entropy(student, teacher, 0.3)
    got = soft_cross_entropy(student, teacher, 0.3)
    # The fused form m * logsumexp - t.s computes in float32 (the losses' contract).
    torch.testing.assert_close(got, expected.float(), rtol=1e-6, atol=1e-6, check_dtype=False)


def test_soft_cross_entropy_of_bf16_logits_gives_a_bf16_gradient_of_the_float32_loss():
    torch.manual_seed(1)
    logits = torch.randn(9, 300).bfloat16()
    teacher = torch.softmax(torch.randn(9, 300) / 0.07, -1)
    weights = torch.rand(9)
    fused = logits.clone().requires_grad_()
    (soft_cross_entropy(fused, teacher, 0.1) * weights).sum().backward()
    reference = logits.float().requires_grad_()
    (plain_soft_cross_entropy(reference, teacher, 0.1) * weights).sum().backward()
    assert fused.grad.dtype == torch.bfloat16
    # One bf16 rounding of each gradient entry: relative 2^-8.
    torch.testing.assert_close(fused.grad.float(), reference.grad, rtol=2**-8, atol=1e-7)


def test_teacher_targets_hold_no_subnormal_numbers_and_match_softmax_elsewhere():
    torch.manual_seed(2)
    logits = torch.randn(4, 5000) * 3  # at temp 0.01 most entries fall far below 1e-38
    probs = SoftmaxCentering(5000).teacher_probs(logits, 0.01)
    reference = torch.softmax(logits.double() / 0.01, dim=-1)
    tiny = torch.finfo(torch.float32).tiny
    # An exp kernel may land one ulp under the cut: 0.999 tiny still rules out real subnormals.
    assert ((probs == 0) | (probs >= 0.999 * tiny)).all()
    assert (probs == 0).float().mean() > 0.5  # the case that matters: most entries flushed
    normal = reference >= 4 * tiny  # clear of the cut at 2 tiny, whatever the exp kernel
    torch.testing.assert_close(probs[normal].double(), reference[normal], rtol=1e-5, atol=0)
    assert (probs[~normal] <= 4 * tiny).all()
    torch.testing.assert_close(probs.sum(-1), torch.ones(4), rtol=1e-6, atol=0)
    targets = sinkhorn_knopp(logits, 0.01)
    assert ((targets == 0) | (targets >= 0.999 * tiny)).all()
