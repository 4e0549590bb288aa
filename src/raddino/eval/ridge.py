"""Ridge regression for continuous targets (age, BMI): the whole regularisation path at once.

Minimises ``mean((y - X w - b)^2) + alpha * ||w||^2``. One eigendecomposition gives the
solution for every alpha, so choosing alpha on the validation split costs one decomposition per
training set: of X^T X (F, F) when there are at least as many rows as features, else of X X^T
(n, n) (the dual form, w = X^T (X X^T + n alpha I)^-1 y: with 3,264 pooled features and 1,400
rows, about 0.6 s instead of 4.7 s for the (F, F) one).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

# alphas tried on the validation split (features are standardised)
ALPHAS: tuple[float, ...] = tuple(float(10.0**e) for e in np.arange(-5.0, 3.5, 0.5))


@dataclass
class RidgePath:
    """weights: (A, F), intercepts: (A,) for ``alphas`` (A,)."""

    alphas: np.ndarray
    weights: torch.Tensor
    intercepts: torch.Tensor

    def predict(self, features: torch.Tensor) -> torch.Tensor:
        """(n, F) -> (n, A) predictions, one column per alpha."""
        return features @ self.weights.T + self.intercepts


def ridge_path(
    features: torch.Tensor, values: torch.Tensor, alphas: Sequence[float] = ALPHAS
) -> RidgePath:
    """Fit on rows with known values. features: (n, F); values: (n,) (NaN rows are skipped).

    Computed in float64 on the features' device.
    """
    known = ~torch.isnan(values)
    x = features[known].double()
    y = values[known].double()
    n = x.shape[0]
    if n < 2:
        raise ValueError(f"ridge regression needs at least 2 known values, got {n}")
    x_mean = x.mean(0)
    y_mean = y.mean()
    xc = x - x_mean
    alpha = torch.as_tensor(np.asarray(alphas, np.float64), device=x.device)
    if n >= x.shape[1]:  # primal: X^T X = V diag(e) V^T
        eigenvalues, eigenvectors = torch.linalg.eigh(xc.T @ xc)
        projected = eigenvectors.T @ (xc.T @ (y - y_mean))  # (F,)
        shrink = 1.0 / (eigenvalues.clamp(min=0)[None, :] + n * alpha[:, None])  # (A, F)
        weights = (shrink * projected[None, :]) @ eigenvectors.T  # (A, F)
    else:  # dual: X X^T = U diag(e) U^T, w = X^T U diag(1 / (e + n alpha)) U^T y
        eigenvalues, eigenvectors = torch.linalg.eigh(xc @ xc.T)
        projected = eigenvectors.T @ (y - y_mean)  # (n,)
        shrink = 1.0 / (eigenvalues.clamp(min=0)[None, :] + n * alpha[:, None])  # (A, n)
        weights = ((shrink * projected[None, :]) @ eigenvectors.T) @ xc  # (A, F)
    intercepts = y_mean - weights @ x_mean
    dtype = features.dtype
    return RidgePath(np.asarray(alphas, np.float64), weights.to(dtype), intercepts.to(dtype))
