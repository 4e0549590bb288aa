"""The probes' solvers reach their optima."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from raddino.eval.knn import knn_scores, normalise
from raddino.eval.logistic import fit_logistic, regularisation_path, sample_weights
from raddino.eval.ridge import ridge_path


def logistic_objective(x, labels, weight, bias, lam):
    weights = sample_weights(labels)
    logits = x @ weight + bias
    loss = F.binary_cross_entropy_with_logits(
        logits, torch.nan_to_num(labels), weight=weights, reduction="sum"
    )
    return loss + 0.5 * (lam * weight.pow(2).sum(0)).sum()


@pytest.mark.parametrize("features", [10, 600])
def test_logistic_fit_reaches_the_regularised_optimum(features):
    """400 rows and 10 features, or 600 (fitted in the span of the rows): the gradient of the
    objective over all the features vanishes at the returned model."""
    torch.manual_seed(0)
    x = torch.randn(400, features, dtype=torch.float64)
    labels = (x[:, :2] + torch.randn(400, 2, dtype=torch.float64) > 0).double()
    labels[::7, 1] = float("nan")
    lam = torch.tensor([0.1, 0.01], dtype=torch.float64)
    model = fit_logistic(x, labels, lam)
    weight = model.weight.clone().requires_grad_(True)
    bias = model.bias.clone().requires_grad_(True)
    logistic_objective(x, labels, weight, bias, lam).backward()
    assert weight.grad.abs().max() < 1e-5 and bias.grad.abs().max() < 1e-5


@pytest.mark.parametrize("features", [6, 500])
def test_path_equals_separate_fits(features):
    torch.manual_seed(1)
    x = torch.randn(300, features, dtype=torch.float64)
    labels = (x[:, :3] + torch.randn(300, 3, dtype=torch.float64) > 0.3).double()
    path = regularisation_path(x, labels, (1.0, 0.01))
    for model, lam in zip(path, (1.0, 0.01), strict=True):
        alone = fit_logistic(x, labels, lam)
        assert torch.allclose(model.weight, alone.weight, atol=1e-4)


def test_wide_fits_start_from_the_given_model_and_stay_in_the_span_of_the_rows():
    """A warm start with a part outside the rows' span: the fit drops that part (it only adds to
    the penalty), and the weights it returns are combinations of the rows."""
    torch.manual_seed(3)
    x = torch.randn(50, 120, dtype=torch.float64)
    labels = (x[:, :1] > 0).double()
    start = fit_logistic(x[:40], labels[:40], 0.1)
    start.weight += torch.randn(120, 1, dtype=torch.float64)  # mostly outside the rows' span
    model = fit_logistic(x, labels, 0.1, init=start, max_iter=5)
    in_span = x.T @ torch.linalg.lstsq(x.T, model.weight).solution
    assert torch.allclose(model.weight, in_span, atol=1e-10)
    warm = fit_logistic(x, labels, 0.1, init=start)  # run to convergence: the optimum
    weight = warm.weight.clone().requires_grad_(True)
    bias = warm.bias.clone().requires_grad_(True)
    logistic_objective(x, labels, weight, bias, torch.tensor(0.1)).backward()
    assert weight.grad.abs().max() < 1e-5 and bias.grad.abs().max() < 1e-5


def test_strong_strengths_converge_beside_a_nearly_separable_weak_one():
    # A weak strength on separable labels is ill-conditioned; it must not hold back the others.
    torch.manual_seed(2)
    x = torch.randn(300, 20, dtype=torch.float64)
    labels = (x[:, :1] > 0).double()
    strengths = (10.0, 1.0, 1e-6)
    path = regularisation_path(x, labels, strengths, max_iter=40)
    for model, lam in zip(path[:2], strengths[:2], strict=True):
        weight = model.weight.clone().requires_grad_(True)
        bias = model.bias.clone().requires_grad_(True)
        logistic_objective(x, labels, weight, bias, torch.tensor(lam)).backward()
        assert weight.grad.abs().max() < 1e-4 and bias.grad.abs().max() < 1e-4


def test_ridge_path_matches_the_closed_form():
    rng = np.random.default_rng(2)
    x = torch.tensor(rng.normal(size=(80, 5)))
    y = x @ torch.tensor([1.0, -2.0, 0.0, 0.5, 3.0], dtype=torch.float64) + 4
    y = y + torch.tensor(rng.normal(size=80))
    y[3] = float("nan")
    path = ridge_path(x, y, [1e-3, 1.0])
    known = ~torch.isnan(y)
    xk, yk = x[known], y[known]
    for i, alpha in enumerate([1e-3, 1.0]):
        xc, yc = xk - xk.mean(0), yk - yk.mean()
        expected = torch.linalg.solve(xc.T @ xc + len(yk) * alpha * torch.eye(5), xc.T @ yc)
        assert torch.allclose(path.weights[i], expected, atol=1e-8)
    assert path.predict(x).shape == (80, 2)


@pytest.mark.parametrize("features", [30, 200])
def test_ridge_path_matches_the_closed_form_with_fewer_or_more_rows_than_features(features):
    """60 rows and 30 features (the primal form) or 200 (the dual, (n, n) form), against the
    solve in float64 (agreement to 1e-9 of weights of order 0.1: rounding of two float64
    factorisations)."""
    rng = np.random.default_rng(3)
    x = torch.tensor(rng.normal(size=(60, features)))
    y = x[:, :3].sum(1) + torch.tensor(rng.normal(size=60))
    alphas = [1e-4, 1e-2, 1.0, 100.0]
    path = ridge_path(x, y, alphas)
    xc, yc = x - x.mean(0), y - y.mean()
    for i, alpha in enumerate(alphas):
        gram = xc.T @ xc + 60 * alpha * torch.eye(features, dtype=torch.float64)
        expected = torch.linalg.solve(gram, xc.T @ yc)
        assert torch.allclose(path.weights[i], expected, rtol=0, atol=1e-9)
        assert torch.allclose(path.intercepts[i], y.mean() - expected @ x.mean(0), atol=1e-9)


def test_knn_votes_of_the_nearest_known_neighbours():
    bank = torch.tensor([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0], [0.1, 0.9]])
    labels = torch.tensor([[1.0, float("nan")], [1.0, 5.0], [0.0, 7.0], [0.0, 9.0]])
    centre = torch.zeros(2)
    scores = knn_scores(normalise(bank, centre), labels, normalise(bank[:1], centre), ks=(1, 4))
    assert scores[1][0, 0] == 1.0  # itself
    assert scores[1][0, 1] == 5.0  # its own label is unknown: the next neighbour's
    assert 0.5 < scores[4][0, 0] < 1.0  # all four vote, the similar ones more
    with pytest.raises(ValueError, match="empty"):
        knn_scores(bank[:0], labels[:0], bank)
