"""Weighted k-nearest-neighbour probe (DINOv2's k-NN evaluation, per target).

Features are centred and L2-normalised; the k most cosine-similar bank images whose label is
known vote with weight ``exp(similarity / temperature)``. The score of a query is the weighted
mean of the neighbours' labels: the fraction of positives for a binary target, the predicted
value for a continuous one.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

KS: tuple[int, ...] = (5, 10, 20, 50, 100)
TEMPERATURE = 0.07


def normalise(features: torch.Tensor, centre: torch.Tensor) -> torch.Tensor:
    """(n, F) -> centred, unit-length rows."""
    return F.normalize(features - centre, dim=1)


def knn_scores(
    bank: torch.Tensor,
    bank_labels: torch.Tensor,
    queries: torch.Tensor,
    ks: Sequence[int] = KS,
    temperature: float = TEMPERATURE,
    chunk: int = 2048,
) -> dict[int, torch.Tensor]:
    """k -> (q, T) scores. bank: (m, F) and queries: (q, F) normalised; bank_labels: (m, T), NaN
    = unknown. A k larger than a target's known bank is clipped to it."""
    if bank.shape[0] == 0:
        raise ValueError("the k-NN bank is empty")
    ks = sorted(set(int(k) for k in ks))
    known = ~torch.isnan(bank_labels)  # (m, T)
    labels = torch.nan_to_num(bank_labels, nan=0.0).to(bank.dtype)
    out = {k: torch.empty(queries.shape[0], bank_labels.shape[1], dtype=bank.dtype) for k in ks}
    for start in range(0, queries.shape[0], chunk):
        similarity = queries[start : start + chunk] @ bank.T  # (c, m)
        for t in range(bank_labels.shape[1]):
            available = int(known[:, t].sum())
            if available == 0:
                raise ValueError(f"target column {t} has no known label in the k-NN bank")
            k_max = min(ks[-1], available)
            masked = similarity.masked_fill(~known[:, t][None, :], float("-inf"))
            top, index = masked.topk(k_max, dim=1)  # sorted, most similar first
            votes = torch.exp((top - top[:, :1]) / temperature)
            neighbour_labels = labels[index, t]
            cum_votes = votes.cumsum(1)
            cum_positive = (votes * neighbour_labels).cumsum(1)
            for k in ks:
                last = min(k, k_max) - 1
                score = cum_positive[:, last] / cum_votes[:, last]
                out[k][start : start + chunk, t] = score.cpu()
    return out
