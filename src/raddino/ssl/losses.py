"""DINOv2 losses and teacher centerings, as pure functions plus one module with explicit state.

* :func:`dino_loss` — cross-entropy between teacher and student prototype distributions of the
  CLS token, summed over (student crop, teacher crop) pairs (DINOv2 ``DINOLoss.forward``).
* :class:`SoftmaxCentering` / :func:`sinkhorn_knopp` — the two ways DINOv2 turns teacher logits
  into targets. The centre is a buffer updated by an explicit call, not a hidden async side effect.
* :func:`ibot_patch_loss` — masked-patch cross-entropy (DINOv2 ``iBOTPatchLoss.forward_masked``).
* :func:`koleo_loss` — Kozachenko-Leonenko entropy regulariser on backbone CLS tokens.
* :func:`teacher_entropy` — a collapse monitor.

Every loss is computed in float32 whatever the input dtype. Cross-process reductions run only
when ``torch.distributed`` is initialised; single-process use needs no process group.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor, nn

# --------------------------------------------------------------------------- helpers


def _is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized()


def _all_reduce_sum(tensor: Tensor) -> Tensor:
    """In-place sum over processes when a process group is initialised; returns ``tensor``."""
    if _is_distributed():
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


def _all_reduce_max(tensor: Tensor) -> Tensor:
    if _is_distributed():
        dist.all_reduce(tensor, op=dist.ReduceOp.MAX)
    return tensor


def _check_matrix(name: str, tensor: Tensor) -> None:
    if not isinstance(tensor, Tensor) or tensor.ndim != 2:
        shape = tuple(tensor.shape) if isinstance(tensor, Tensor) else type(tensor).__name__
        raise ValueError(f"{name} must be a 2-D tensor (B, K), got {shape}")


def _check_pair(student_name: str, student: Tensor, teacher_name: str, teacher: Tensor) -> None:
    _check_matrix(student_name, student)
    _check_matrix(teacher_name, teacher)
    if student.shape != teacher.shape:
        raise ValueError(
            f"{student_name} {tuple(student.shape)} and {teacher_name} {tuple(teacher.shape)} "
            "must have the same shape"
        )


def _check_temperature(name: str, value: float) -> None:
    if not (isinstance(value, (int, float)) and math.isfinite(value) and value > 0):
        raise ValueError(f"{name} must be a finite positive number, got {value!r}")


_CHUNK_ELEMENTS = 1 << 20
"""Rows of (B, K) prototype scores are processed in chunks of about this many entries (4 MB of
float32): with K = 65,536 and hundreds of masked patches, whole-matrix temporaries would be
hundreds of MB each, written and read once per elementwise pass."""


_LOG_TINY = math.log(torch.finfo(torch.float32).tiny)
"""-87.34: ``exp`` of anything below is a float32 subnormal (< 1.18e-38)."""


def _exp_without_subnormals_(x: Tensor) -> Tensor:
    """``x.exp_()`` with 0 wherever the result would be subnormal.

    Sharp teacher distributions (temperature 0.04-0.07 over 65,536 prototypes) put most
    entries below 1e-38. x86 computes a subnormal result 10-100 times slower than a normal
    one (an exp 100x, a product 16x, measured on a Xeon), and every later pass over the
    targets pays again; as probabilities they are 0 to float32 precision anyway. The cut is one
    ``threshold_`` pass (``x <= log(tiny)`` becomes ``-inf``; NaN stays NaN).
    """
    return _cut_below_tiny_(x).exp_()


def _cut_below_tiny_(x: Tensor) -> Tensor:
    """``x`` in place with every entry ``<= log(tiny)`` set to ``-inf`` (its exp is then 0)."""
    return F.threshold_(x, _LOG_TINY, -math.inf)


def _row_chunks(rows: int, width: int) -> list[slice]:
    step = max(1, _CHUNK_ELEMENTS // max(width, 1))
    return [slice(start, min(start + step, rows)) for start in range(0, rows, step)]


def _loss_dtype(tensor: Tensor) -> torch.dtype:
    """float32, or float64 for float64 inputs (exact gradient checks)."""
    return torch.promote_types(tensor.dtype, torch.float32)


def _scaled_float(logits: Tensor, temperature: float) -> Tensor:
    """A float32 (or float64) copy of ``logits / temperature``, never a view of the input."""
    scaled = torch.empty(logits.shape, dtype=_loss_dtype(logits), device=logits.device)
    return scaled.copy_(logits).div_(temperature)


class _SoftCrossEntropy(torch.autograd.Function):
    """Per-row ``-sum_k t_k log_softmax(s / T)_k`` = ``m * logsumexp(s / T) - t . s / T`` with
    ``m = sum_k t_k``, chunk by chunk of rows; the gradient ``(m softmax(s / T) - t) / T`` is
    written straight into a tensor of the logits' dtype. Targets get no gradient."""

    @staticmethod
    def forward(ctx, logits: Tensor, targets: Tensor, temperature: float) -> Tensor:
        rows, width = logits.shape
        losses = torch.empty(rows, dtype=_loss_dtype(logits), device=logits.device)
        normalisers = torch.empty_like(losses)
        for part in _row_chunks(rows, width):
            scaled = _scaled_float(logits[part], temperature)
            target = targets[part].to(scaled.dtype)
            normalisers[part] = torch.logsumexp(scaled, dim=-1)
            dot = (target * scaled).sum(dim=-1)
            losses[part] = normalisers[part] * target.sum(dim=-1) - dot
        ctx.save_for_backward(logits, targets, normalisers)
        ctx.temperature = temperature
        return losses

    @staticmethod
    def backward(ctx, grad_losses: Tensor) -> tuple[Tensor, None, None]:
        logits, targets, normalisers = ctx.saved_tensors
        temperature = ctx.temperature
        grads = torch.empty_like(logits)
        for part in _row_chunks(*logits.shape):
            probs = _scaled_float(logits[part], temperature).sub_(normalisers[part, None])
            target = targets[part].to(probs.dtype)
            _exp_without_subnormals_(probs).mul_(target.sum(dim=-1, keepdim=True))
            factor = (grad_losses[part].to(probs.dtype) / temperature)[:, None]
            grads[part] = probs.sub_(target).mul_(factor)
        return grads, None, None


def soft_cross_entropy(
    student_logits: Tensor, teacher_probs: Tensor, student_temp: float
) -> Tensor:
    """(B, K), (B, K) -> (B,) float32 of ``-sum_k t_k log_softmax(s / student_temp)_k``.

    Computed chunk by chunk of rows in float32 (float64 for float64 logits), without (B, K)
    float32 temporaries: for DINOv2's 65,536 prototypes the masked-patch rows make those the
    largest tensors of a step.
    The gradient (for ``student_logits`` only) has the logits' dtype. Teacher probabilities
    that require a gradient take the plain autograd formula instead.
    """
    if teacher_probs.requires_grad:
        log_probs = F.log_softmax(student_logits.float() / student_temp, dim=-1)
        return -(teacher_probs.float() * log_probs).sum(dim=-1)
    return _SoftCrossEntropy.apply(student_logits, teacher_probs, student_temp)


# --------------------------------------------------------------------------- DINO (CLS token)


def dino_cross_entropy(
    student_logits: Tensor, teacher_probs: Tensor, student_temp: float = 0.1
) -> Tensor:
    """Mean over rows of ``-sum_k t_k * log_softmax(s / student_temp)_k``.

    ``student_logits``, ``teacher_probs``: (B, K) -> scalar. Computed in float32.
    """
    _check_pair("student_logits", student_logits, "teacher_probs", teacher_probs)
    _check_temperature("student_temp", student_temp)
    if student_logits.shape[0] == 0:
        raise ValueError("student_logits must have at least one row")
    return soft_cross_entropy(student_logits, teacher_probs, student_temp).mean()


def dino_loss(
    student_logits: Sequence[Tensor],
    teacher_probs: Sequence[Tensor],
    student_temp: float = 0.1,
) -> Tensor:
    """Sum of :func:`dino_cross_entropy` over every (student chunk, teacher chunk) pair.

    This is DINOv2's ``DINOLoss.forward``: a plain sum, the caller divides by the number of
    terms (18 for 2 global + 8 local crops). Pairing student crop 1 with teacher crop 2 (and not
    with itself) is the caller's job, by the chunks it passes (DINOv2 swaps the teacher crops).
    """
    if isinstance(student_logits, Tensor) or isinstance(teacher_probs, Tensor):
        raise ValueError(
            "student_logits and teacher_probs must be sequences of (B, K) tensors, not tensors; "
            "wrap a single chunk in a list"
        )
    if len(student_logits) == 0:
        raise ValueError("student_logits must hold at least one chunk")
    if len(teacher_probs) == 0:
        raise ValueError("teacher_probs must hold at least one chunk")
    _check_temperature("student_temp", student_temp)
    total = None
    for s_index, student in enumerate(student_logits):
        for t_index, teacher in enumerate(teacher_probs):
            _check_pair(f"student_logits[{s_index}]", student, f"teacher_probs[{t_index}]", teacher)
            if student.shape[0] == 0:
                raise ValueError(f"student_logits[{s_index}] must have at least one row")
            term = soft_cross_entropy(student, teacher, student_temp).mean()
            total = term if total is None else total + term
    return total


class SoftmaxCentering(nn.Module):
    """DINOv2 softmax centering of teacher logits with an explicit, checkpointed centre.

    Buffer ``center`` (1, K) float32, zeros at start (it is in ``state_dict``). Per step::

        targets = centering.teacher_probs(teacher_logits, teacher_temp)  # uses batches <= t-1
        centering.update(teacher_logits)                                  # then fold in batch t

    DINOv2 applies the update lazily at the start of the next ``softmax_center_teacher`` call
    (after an async all-reduce); calling :meth:`update` after :meth:`teacher_probs` gives the
    same effective ordering. One instance per target kind: one for CLS tokens, one for the
    masked patch tokens (iBOT).
    """

    center: Tensor

    def __init__(self, n_prototypes: int, momentum: float = 0.9) -> None:
        super().__init__()
        if isinstance(n_prototypes, bool) or not isinstance(n_prototypes, int) or n_prototypes < 1:
            raise ValueError(f"n_prototypes must be a positive integer, got {n_prototypes!r}")
        if not (isinstance(momentum, (int, float)) and 0.0 <= momentum <= 1.0):
            raise ValueError(f"momentum must be in [0, 1], got {momentum!r}")
        self.n_prototypes = n_prototypes
        self.momentum = float(momentum)
        self.register_buffer("center", torch.zeros(1, n_prototypes, dtype=torch.float32))

    def extra_repr(self) -> str:
        return f"n_prototypes={self.n_prototypes}, momentum={self.momentum}"

    def _check_logits(self, teacher_logits: Tensor) -> None:
        _check_matrix("teacher_logits", teacher_logits)
        if teacher_logits.shape[1] != self.n_prototypes:
            raise ValueError(
                f"teacher_logits has {teacher_logits.shape[1]} prototypes, "
                f"the centre has {self.n_prototypes}"
            )

    @torch.no_grad()
    def teacher_probs(self, teacher_logits: Tensor, teacher_temp: float) -> Tensor:
        """``softmax((teacher_logits - center) / teacher_temp)``: (B, K) float32, no gradient.

        Each row's largest centred score is subtracted before the division by the temperature,
        so every row's top entry is ``exp(0)`` and the rows stay finite however wide the scores
        and however small the temperature (a score that overflows float32 once divided
        becomes ``-inf``, i.e. probability 0, never ``inf - inf``). Probabilities below
        float32's smallest normal number (1.18e-38) are 0 (see ``_exp_without_subnormals_``).
        """
        self._check_logits(teacher_logits)
        _check_temperature("teacher_temp", teacher_temp)
        probs = torch.empty(teacher_logits.shape, dtype=torch.float32, device=self.center.device)
        for part in _row_chunks(*probs.shape):  # in place, a chunk of rows at a time
            scores = probs[part].copy_(teacher_logits[part]).sub_(self.center)
            scores.sub_(scores.amax(dim=-1, keepdim=True)).div_(teacher_temp)
            _cut_below_tiny_(scores)  # no subnormal inside logsumexp
            _exp_without_subnormals_(scores.sub_(torch.logsumexp(scores, dim=-1, keepdim=True)))
        return probs

    @torch.no_grad()
    def update(self, teacher_logits: Tensor) -> None:
        """``center = m * center + (1 - m) * mean of the rows of all processes``.

        The row sum and the row count are all-reduced together (one call) when torch.distributed
        is initialised, so uneven per-process batches are weighted by their size. A step in
        which no process has a row leaves the centre unchanged. Call after :meth:`teacher_probs`.
        """
        self._check_logits(teacher_logits)
        logits = teacher_logits.detach().to(self.center.device)
        row_sum = logits.new_zeros(logits.shape[1], dtype=torch.float32)
        for part in _row_chunks(*logits.shape):  # 5x faster than one sum over all rows
            row_sum += logits[part].sum(dim=0, dtype=torch.float32)
        stats = torch.cat([row_sum, row_sum.new_tensor([logits.shape[0]])])
        stats = _all_reduce_sum(stats)
        row_sum, count = stats[:-1], stats[-1]
        batch_center = (row_sum / count.clamp(min=1.0)).unsqueeze(0)
        updated = self.momentum * self.center + (1.0 - self.momentum) * batch_center
        self.center.copy_(torch.where(count > 0, updated, self.center))


@torch.no_grad()
def sinkhorn_knopp(
    teacher_logits: Tensor,
    teacher_temp: float,
    n_iterations: int = 3,
    n_rows: Tensor | int | None = None,
) -> Tensor:
    """Sinkhorn-Knopp teacher targets: (B, K) logits -> (B, K) float32 probabilities, no gradient.

    DINOv2's algorithm: ``Q = exp(t / temp)^T`` (K, B_global), divided by its total, then
    ``n_iterations`` times: divide each prototype row by its (global) sum and by K, divide each
    sample column by its sum and by B_global; finally multiply by B_global so every sample's
    distribution sums to 1. Sums over the batch are all-reduced across processes when
    torch.distributed is initialised.

    Computed in log space, with the same result for any logits:

    * Each prototype's maximum over the global batch (all-reduced MAX) is subtracted from its
      logits before dividing by the temperature. That multiplies prototype k's row of ``Q`` by
      a constant, which the first prototype normalisation (the row divided by its own sum)
      removes exactly, and every prototype keeps an entry ``exp(0)``. DINOv2 subtracts
      nothing, and one global maximum is not enough: at temp 0.01 a prototype scoring more
      than ~1.03 below the batch maximum for every sample underflows to a zero row, and 0 / 0
      makes every target NaN.
    * The divisions by the grand total, by K and by B_global are scalar factors that the next
      normalisation (or the final multiplication by B_global) undoes exactly, so they are left
      out and ``n_rows`` does not change the result (it is still checked, for DINOv2's
      signature).
    * Each normalisation subtracts a max-shifted log-sum-exp, so a sample far below every
      prototype's maximum still gets a distribution instead of 0 / 0.

    Finite logits give finite targets: each row sums to 1 and has an entry >= 1 / K (scaled
    logits below float32's range are clamped to its lowest finite value). A process with no
    rows returns (0, K) and still joins every all-reduce. Terms and targets below float32's
    smallest normal number (1.18e-38) are 0 (see ``_exp_without_subnormals_``).
    """
    _check_matrix("teacher_logits", teacher_logits)
    _check_temperature("teacher_temp", teacher_temp)
    if isinstance(n_iterations, bool) or not isinstance(n_iterations, int) or n_iterations < 1:
        raise ValueError(f"n_iterations must be a positive integer, got {n_iterations!r}")
    if teacher_logits.shape[1] == 0:
        raise ValueError("teacher_logits must have at least one prototype (column), got (B, 0)")
    if isinstance(n_rows, Tensor):
        if n_rows.numel() != 1:
            raise ValueError(f"n_rows must be a scalar, got shape {tuple(n_rows.shape)}")
    elif n_rows is not None and (
        isinstance(n_rows, bool) or not isinstance(n_rows, int) or n_rows < 0
    ):
        raise ValueError(f"n_rows must be None, a non-negative int or a tensor, got {n_rows!r}")

    logits = teacher_logits.float()
    # log_q[b, k] = log Q[k, b] up to a constant per prototype; (B_local, K) like the logits.
    log_q = logits - _all_reduce_max(_max_over_batch(logits))
    log_q.div_(teacher_temp).clamp_(min=torch.finfo(torch.float32).min)
    scratch = torch.empty_like(log_q)
    for iteration in range(n_iterations):
        # Each prototype: total mass 1 over the global batch (then 1/K, a constant).
        shift = _all_reduce_max(_max_over_batch(log_q)) if iteration else log_q.new_zeros(())
        mass = _exp_without_subnormals_(torch.sub(log_q, shift, out=scratch)).sum(dim=0)
        log_q -= shift + _all_reduce_sum(mass).log()
        # Each sample: mass 1 (then 1/B_global, a constant).
        shift = log_q.amax(dim=1, keepdim=True)
        mass = _exp_without_subnormals_(torch.sub(log_q, shift, out=scratch)).sum(
            dim=1, keepdim=True
        )
        log_q -= shift + mass.log()
    return _exp_without_subnormals_(log_q)


def _max_over_batch(scores: Tensor) -> Tensor:
    """(B, K) -> (K,) column maxima; ``-inf`` for an empty batch (another process has rows)."""
    if scores.shape[0] == 0:
        return scores.new_full((scores.shape[1],), -math.inf)
    return scores.amax(dim=0)


# --------------------------------------------------------------------------- iBOT (patch tokens)


def masked_token_weights(masks: Tensor) -> Tensor:
    """(B, N) bool -> (M,) float32: ``1 / (number of True in the row)`` for each True entry.

    Entries are in row-major order, as ``masks.nonzero()`` or ``tensor[masks]`` enumerate them,
    so the weights line up with ``patch_tokens.flatten(0, 1)[masks.flatten()]``.
    """
    if not isinstance(masks, Tensor) or masks.ndim != 2 or masks.dtype != torch.bool:
        got = (
            f"{tuple(masks.shape)} {masks.dtype}"
            if isinstance(masks, Tensor)
            else type(masks).__name__
        )
        raise ValueError(f"masks must be a 2-D bool tensor (B, N), got {got}")
    per_row = 1.0 / masks.sum(dim=1).clamp(min=1).float()
    return per_row.unsqueeze(1).expand(masks.shape)[masks]


def ibot_patch_loss(
    student_logits: Tensor,
    teacher_probs: Tensor,
    weights: Tensor,
    n_images: int,
    student_temp: float = 0.1,
) -> Tensor:
    """Masked-patch cross-entropy, DINOv2's ``iBOTPatchLoss.forward_masked``.

    ``student_logits``, ``teacher_probs``: (M, K) for the M masked tokens only; ``weights``:
    (M,) = 1 / (masked count of the token's image), see :func:`masked_token_weights`.
    Returns ``sum_i w_i * CE_i / n_images``: each masked image's mean token cross-entropy,
    averaged over ``n_images`` = all global crops of the batch, unmasked ones included (they
    count as 0). Float32; M = 0 gives a zero that still backpropagates.
    """
    _check_pair("student_logits", student_logits, "teacher_probs", teacher_probs)
    _check_temperature("student_temp", student_temp)
    if not isinstance(weights, Tensor) or weights.shape != (student_logits.shape[0],):
        shape = tuple(weights.shape) if isinstance(weights, Tensor) else type(weights).__name__
        raise ValueError(
            f"weights must be a 1-D tensor with one entry per masked token "
            f"({student_logits.shape[0]},), got {shape}"
        )
    if isinstance(n_images, bool) or not isinstance(n_images, int) or n_images < 1:
        raise ValueError(f"n_images must be a positive integer, got {n_images!r}")
    per_token = soft_cross_entropy(student_logits, teacher_probs, student_temp)
    return (per_token * weights.float()).sum() / n_images


# --------------------------------------------------------------------------- KoLeo, monitoring


_DUPLICATE_GAP = 4 * torch.finfo(torch.float32).eps
"""Largest per-coordinate gap between unit rows that :func:`koleo_loss` treats as duplicates:
a few ulps of 1, so rows normalised from one input by kernels that round differently match."""


def koleo_loss(x: Tensor, eps: float = 1e-8) -> Tensor:
    """Kozachenko-Leonenko entropy regulariser of (B, D) features, float32 with autocast off.

    Rows are L2-normalised, each row's nearest neighbour is the other row of largest dot product,
    and the loss is ``-mean_i log(||x_i - x_nn(i) + eps|| + eps)``: the ``+ eps`` inside the
    norm is what ``torch.nn.PairwiseDistance(eps=eps)`` adds, as in DINOv2. Self is excluded
    with a -inf diagonal. DINOv2 writes -1 there, which only differs for an exactly antipodal
    neighbour (dot product -1): on a tie ``max`` returns the first index, which can be the row
    itself.

    Duplicates (a row whose nearest neighbour equals it to float32 rounding, max |difference|
    <= 4 float32 eps on the unit sphere): the ``+ eps`` keeps the distance at about
    ``eps * sqrt(D)``, so the term is finite (``-log(eps * sqrt(D) + eps)``, 17.0782 for D = 8)
    and keeps that value, but it is a constant for autograd. Its gradient would have size
    ``1 / (eps * (sqrt(D) + 1))`` (3.5e6 for D = 768) along the arbitrary all-ones direction
    of ``eps``: features of identical inputs stay identical whatever the weights, so it cancels
    between the copies in exact arithmetic, and what survives is rounding noise that dominates
    a clipped step, or overflows to inf for half-precision inputs. Features are cast to
    float32 first, so ``eps`` = 1e-8 never underflows (it is 0 in float16: distance 0, log 0).

    B = 1: no other row, so no neighbour. The loss is 0 with zero gradients (still attached to
    ``x``, so ``backward`` works). A ValueError would crash a run whose per-process batch
    (or last batch) holds one image, and DINOv2's self-neighbour gives a constant of ~18 that
    only distorts the logged loss.
    """
    _check_matrix("x", x)
    if x.shape[0] == 0:
        raise ValueError("x must have at least one row")
    if not (isinstance(eps, (int, float)) and eps > 0):
        raise ValueError(f"eps must be a positive number, got {eps!r}")
    with torch.autocast(device_type=x.device.type, enabled=False):
        if x.shape[0] == 1:
            return x.float().sum() * 0.0
        x = F.normalize(x.float(), p=2.0, dim=-1, eps=eps)
        with torch.no_grad():
            dots = x @ x.t()
            dots.fill_diagonal_(-math.inf)
            neighbour = dots.argmax(dim=1)
        difference = x - x[neighbour]
        duplicate = difference.detach().abs().amax(dim=1) <= _DUPLICATE_GAP
        distance = torch.linalg.vector_norm(difference + eps, ord=2, dim=-1)
        distance = torch.where(duplicate, distance.detach(), distance)
        return -torch.log(distance + eps).mean()


def teacher_entropy(teacher_probs: Tensor) -> Tensor:
    """Mean row entropy in nats of (B, K) probabilities; ln K when uniform, 0 when one-hot.

    A collapse signal: near 0 the teacher puts everything on one prototype per image, near ln K
    it says nothing. ``0 * log 0`` counts as 0.
    """
    _check_matrix("teacher_probs", teacher_probs)
    if teacher_probs.shape[0] == 0:
        raise ValueError("teacher_probs must have at least one row")
    probs = teacher_probs.float()
    return -torch.xlogy(probs, probs).sum(dim=-1).mean()
