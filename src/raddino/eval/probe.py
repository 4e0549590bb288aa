"""Linear and k-NN probes of frozen image features: findings, sex, age, BMI.

Protocol (the paper's, after DINOv2's linear evaluation): features are fixed; binary targets are
fitted by class-balanced logistic regression and continuous ones by ridge regression, the L2
strength of each target chosen on the validation split, then refitted on train + validation;
the weighted k-NN classifier is a second protocol with k chosen the same way. Metrics on the
test split come with patient-level bootstrap intervals (:mod:`raddino.eval.bootstrap`).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from raddino.eval import knn, logistic, ridge
from raddino.eval.bootstrap import Estimate, PatientBootstrap, mean_of
from raddino.eval.metrics import BINARY_METRICS, CONTINUOUS_METRICS, auroc, r2_score
from raddino.eval.splits import Splits
from raddino.eval.targets import Target
from raddino.eval.threads import DEFAULT_CPU_THREADS, cpu_threads

PROTOCOLS = ("linear", "knn")


@dataclass(frozen=True)
class ProbeConfig:
    """Probe settings; the defaults are the documented protocol."""

    protocols: tuple[str, ...] = PROTOCOLS
    lambdas: tuple[float, ...] = logistic.LAMBDAS
    alphas: tuple[float, ...] = ridge.ALPHAS
    ks: tuple[int, ...] = knn.KS
    temperature: float = knn.TEMPERATURE
    balanced: bool = True
    max_iter: int = 300
    n_resamples: int = 1000
    level: float = 0.95
    seed: int = 0
    device: str = "cpu"
    cpu_threads: int | None = DEFAULT_CPU_THREADS  # see raddino.eval.threads

    def __post_init__(self) -> None:
        unknown = [p for p in self.protocols if p not in PROTOCOLS]
        if unknown or not self.protocols:
            raise ValueError(f"protocols {list(self.protocols)}: choose from {list(PROTOCOLS)}")
        if self.n_resamples < 1:
            raise ValueError(f"n_resamples={self.n_resamples} must be >= 1")


@dataclass
class TargetResult:
    """One target under one protocol: chosen hyper-parameter, test metrics and predictions.

    y, score: (n,) labels and predictions of the test images with a known label; ``columns``
    are their positions among the test images (for paired comparisons).
    """

    name: str
    kind: str
    positive: str
    hyper: dict[str, float]
    counts: dict[str, dict[str, int]]
    metrics: dict[str, Estimate]
    columns: np.ndarray = field(repr=False)
    y: np.ndarray = field(repr=False)
    score: np.ndarray = field(repr=False)


@dataclass
class ProtocolResult:
    """All targets under one protocol; ``macro`` averages the binary targets."""

    protocol: str
    targets: dict[str, TargetResult]
    macro: dict[str, Estimate]


def split_counts(target: Target, splits: Splits) -> dict[str, dict[str, int]]:
    """split -> {"known": n, "positive": n} (positives for binary targets only)."""
    counts = {}
    for name in ("train", "val", "test"):
        values = target.values[splits.split == name]
        values = values[~np.isnan(values)]
        entry = {"known": int(values.size)}
        if target.kind == "binary":
            entry["positive"] = int((values > 0.5).sum())
        counts[name] = entry
    return counts


def check_targets(targets: list[Target], splits: Splits) -> None:
    """Every target needs both classes (or >= 2 distinct values) in every split."""
    for target in targets:
        for name, count in split_counts(target, splits).items():
            known = count["known"]
            if target.kind == "binary":
                positive = count["positive"]
                if positive == 0 or positive == known:
                    raise ValueError(
                        f"target {target.name!r} has one class only in the {name} split "
                        f"({positive} positive, {known - positive} negative of {known} known "
                        "labels); the probe needs both classes in train, val and test"
                    )
            else:
                values = target.values[(splits.split == name) & target.known]
                if known < 2 or np.unique(values).size < 2:
                    raise ValueError(
                        f"target {target.name!r} has fewer than 2 distinct known values in the "
                        f"{name} split ({known} known)"
                    )


def _best(metric_by_setting: np.ndarray) -> int:
    """Index of the best setting (first on ties; NaN never wins)."""
    values = np.where(np.isfinite(metric_by_setting), metric_by_setting, -np.inf)
    return int(np.argmax(values))


def _unit(n: int) -> np.ndarray:
    return np.ones((1, n))


def _selection_score(target: Target, rows: np.ndarray, score: np.ndarray) -> float:
    """Validation metric used to choose hyper-parameters: AUROC or R^2."""
    y = target.values[rows]
    known = ~np.isnan(y)
    metric = auroc if target.kind == "binary" else r2_score
    return float(metric(y[known], score[known], _unit(int(known.sum())))[0])


def fit_linear_protocol(
    x: torch.Tensor, targets: list[Target], splits: Splits, config: ProbeConfig
) -> tuple[np.ndarray, list[dict[str, float]]]:
    """Test scores (n_test, T) and the chosen hyper-parameters of logistic / ridge probes."""
    train, val, test = (splits.indices(s) for s in ("train", "val", "test"))
    fit_rows = np.concatenate([train, val])
    scores = np.zeros((len(test), len(targets)))
    hypers: list[dict[str, float]] = [{} for _ in targets]
    binary = [i for i, t in enumerate(targets) if t.kind == "binary"]
    if binary:
        labels = torch.tensor(
            np.stack([targets[i].values for i in binary], axis=1), dtype=x.dtype, device=x.device
        )
        path = logistic.regularisation_path(
            x[train], labels[train], config.lambdas, config.balanced, config.max_iter
        )
        lambdas = logistic.sorted_lambdas(config.lambdas)
        val_scores = [model.decision(x[val]).cpu().numpy() for model in path]
        chosen = []
        for j, i in enumerate(binary):
            by_lambda = np.array([_selection_score(targets[i], val, s[:, j]) for s in val_scores])
            best = _best(by_lambda)
            chosen.append(best)
            hypers[i] = {"lambda": float(lambdas[best]), "val_auroc": float(by_lambda[best])}
        init = logistic.LogisticModel(
            torch.stack([path[c].weight[:, j] for j, c in enumerate(chosen)], dim=1),
            torch.stack([path[c].bias[j] for j, c in enumerate(chosen)]),
        )
        lam = torch.tensor([lambdas[c] for c in chosen], dtype=x.dtype, device=x.device)
        final = logistic.fit_logistic(
            x[fit_rows], labels[fit_rows], lam, init, config.balanced, config.max_iter
        )
        scores[:, binary] = torch.sigmoid(final.decision(x[test])).cpu().numpy()
    for i, target in enumerate(targets):
        if target.kind != "continuous":
            continue
        values = torch.tensor(target.values, dtype=x.dtype, device=x.device)
        path = ridge.ridge_path(x[train], values[train], config.alphas)
        val_predictions = path.predict(x[val]).cpu().numpy()
        by_alpha = np.array(
            [_selection_score(target, val, val_predictions[:, a]) for a in range(len(path.alphas))]
        )
        best = _best(by_alpha)
        alpha = float(path.alphas[best])
        hypers[i] = {"alpha": alpha, "val_r2": float(by_alpha[best])}
        final = ridge.ridge_path(x[fit_rows], values[fit_rows], [alpha])
        scores[:, i] = final.predict(x[test])[:, 0].cpu().numpy()
    return scores, hypers


def fit_knn_protocol(
    x: torch.Tensor, targets: list[Target], splits: Splits, config: ProbeConfig
) -> tuple[np.ndarray, list[dict[str, float]]]:
    """Test scores (n_test, T) and the chosen k of the weighted k-NN probe."""
    train, val, test = (splits.indices(s) for s in ("train", "val", "test"))
    fit_rows = np.concatenate([train, val])
    normed = knn.normalise(x, x[fit_rows].mean(0))
    labels = torch.tensor(
        np.stack([t.values for t in targets], axis=1), dtype=x.dtype, device=x.device
    )
    by_k = knn.knn_scores(normed[train], labels[train], normed[val], config.ks, config.temperature)
    ks = sorted(by_k)
    chosen, hypers = [], []
    for i, target in enumerate(targets):
        metric = np.array([_selection_score(target, val, by_k[k][:, i].numpy()) for k in ks])
        best = _best(metric)
        chosen.append(ks[best])
        name = "val_auroc" if target.kind == "binary" else "val_r2"
        hypers.append({"k": float(ks[best]), name: float(metric[best])})
    final = knn.knn_scores(
        normed[fit_rows], labels[fit_rows], normed[test], sorted(set(chosen)), config.temperature
    )
    scores = np.stack([final[k][:, i].numpy() for i, k in enumerate(chosen)], axis=1)
    return scores, hypers


def evaluate_target(
    target: Target,
    splits: Splits,
    score: np.ndarray,
    hyper: dict[str, float],
    bootstrap: PatientBootstrap,
) -> TargetResult:
    """Test metrics of one target; score: (n_test,) predictions of every test image."""
    y_all = target.values[splits.indices("test")]
    columns = np.flatnonzero(~np.isnan(y_all))
    y, s = y_all[columns], score[columns]
    table = BINARY_METRICS if target.kind == "binary" else CONTINUOUS_METRICS
    metrics = {name: bootstrap.estimate(fn, y, s, columns) for name, (fn, _) in table.items()}
    counts = split_counts(target, splits)
    return TargetResult(
        target.name, target.kind, target.positive, hyper, counts, metrics, columns, y, s
    )


def run_probe(
    features: np.ndarray, targets: list[Target], splits: Splits, config: ProbeConfig
) -> tuple[dict[str, ProtocolResult], PatientBootstrap]:
    """Probe ``features`` (N, F) for every target (values (N,)) under each protocol.

    Returns protocol -> results, and the bootstrap over the test images (shared by all targets,
    protocols and, with the same seed and rows, encoders).
    """
    if features.shape[0] != len(splits.split):
        raise ValueError(f"features have {features.shape[0]} rows, splits {len(splits.split)}")
    check_targets(targets, splits)
    device = torch.device(config.device)
    x = torch.as_tensor(np.asarray(features, np.float32), device=device)
    fit_rows = np.concatenate([splits.indices("train"), splits.indices("val")])
    mean = x[fit_rows].mean(0)
    std = x[fit_rows].std(0).clamp(min=1e-6)
    bootstrap = PatientBootstrap(
        splits.groups[splits.indices("test")], config.n_resamples, config.seed, config.level
    )
    results: dict[str, ProtocolResult] = {}
    for protocol in config.protocols:
        with cpu_threads(config.cpu_threads, device):
            if protocol == "linear":
                scores, hypers = fit_linear_protocol((x - mean) / std, targets, splits, config)
            else:
                scores, hypers = fit_knn_protocol(x, targets, splits, config)
        per_target = {
            t.name: evaluate_target(t, splits, scores[:, i], hypers[i], bootstrap)
            for i, t in enumerate(targets)
        }
        binary = [r for r in per_target.values() if r.kind == "binary"]
        macro = (
            {m: mean_of([r.metrics[m] for r in binary], bootstrap) for m in BINARY_METRICS}
            if binary
            else {}
        )
        results[protocol] = ProtocolResult(protocol, per_target, macro)
    return results, bootstrap
