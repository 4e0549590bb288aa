"""Linear and k-NN probes of frozen image features: findings, sex, age, BMI.

Protocol (the paper's, after DINOv2's linear evaluation): features are fixed; binary targets are
fitted by class-balanced logistic regression and continuous ones by ridge regression, the L2
strength of each target chosen on the validation split, then refitted on train + validation;
the weighted k-NN classifier is a second protocol with k chosen the same way (k clamped to the
labelled training images). Metrics on the test split come with patient-level bootstrap
intervals (:mod:`raddino.eval.bootstrap`). What makes a result fragile (few cases of a class,
undefined resamples, a clamped k, a strength at the edge of its grid) is returned as notes and
raised as warnings (:mod:`raddino.eval.caveats`).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from raddino.devices import check_device
from raddino.eval import caveats, knn, logistic, ridge
from raddino.eval.bootstrap import Estimate, PatientBootstrap, mean_of
from raddino.eval.fit_threads import DEFAULT_CPU_THREADS, cpu_threads
from raddino.eval.metrics import BINARY_METRICS, CONTINUOUS_METRICS, auroc, r2_score
from raddino.eval.splits import SPLITS, Splits
from raddino.eval.targets import Target

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
    cpu_threads: int | None = DEFAULT_CPU_THREADS  # see raddino.eval.fit_threads

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
    """All targets under one protocol; ``macro`` averages the binary targets; ``notes`` are the
    caveats of its results (:mod:`raddino.eval.caveats`)."""

    protocol: str
    targets: dict[str, TargetResult]
    macro: dict[str, Estimate]
    notes: list[str] = field(default_factory=list)


def split_counts(target: Target, splits: Splits) -> dict[str, dict[str, int]]:
    """split -> {"known": n, "positive": n, "negative": n} (the classes for binary targets only)."""
    counts = {}
    for name in SPLITS:
        values = target.values[splits.split == name]
        values = values[~np.isnan(values)]
        entry = {"known": int(values.size)}
        if target.kind == "binary":
            entry["positive"] = int((values > 0.5).sum())
            entry["negative"] = entry["known"] - entry["positive"]
        counts[name] = entry
    return counts


def few_case_notes(target: Target, counts: dict[str, dict[str, int]]) -> list[str]:
    """Caveats for the classes (binary) or known values (continuous) with few cases in a split."""
    keys = (
        {"positive": "positive", "negative": "negative"}
        if target.kind == "binary"
        else {"image with a known value": "known"}
    )
    notes = [
        caveats.few_cases(
            f"target {target.name!r}", split, {noun: counts[split][k] for noun, k in keys.items()}
        )
        for split in SPLITS
    ]
    return [note for note in notes if note]


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
    """Test scores (n_test, T) and the chosen k of the weighted k-NN probe.

    A k larger than a target's labelled training images is clamped to their number: that is
    the k used, and the one reported (:func:`selection_notes` says so).
    """
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
        # knn_scores clips k to the known bank, so every k above it scores as the clamped k
        metric = np.array([_selection_score(target, val, by_k[k][:, i].numpy()) for k in ks])
        best = _best(metric)
        k = min(ks[best], int((~np.isnan(target.values[train])).sum()))
        chosen.append(k)
        name = "val_auroc" if target.kind == "binary" else "val_r2"
        hypers.append({"k": float(k), name: float(metric[best])})
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


def selection_notes(protocol: str, target: TargetResult, config: ProbeConfig) -> list[str]:
    """Caveats on the chosen hyper-parameter: a strength at the edge of its grid (linear), k
    values clamped to the labelled training images (k-NN)."""
    hyper = target.hyper
    if protocol == "knn":
        available = target.counts["train"]["known"]
        over = [k for k in sorted(set(config.ks)) if k > available]
        subject = f"k-NN, target {target.name!r}"
        return [caveats.k_clamped(subject, over, available, int(hyper["k"]))] if over else []
    subject = f"linear probe, target {target.name!r}"
    notes = [
        caveats.at_grid_edge(subject, "lambda", hyper["lambda"], config.lambdas)
        if "lambda" in hyper
        else caveats.at_grid_edge(subject, "alpha", hyper["alpha"], config.alphas)
    ]
    return [note for note in notes if note]


def run_probe(
    features: np.ndarray, targets: list[Target], splits: Splits, config: ProbeConfig
) -> tuple[dict[str, ProtocolResult], PatientBootstrap]:
    """Probe ``features`` (N, F) for every target (values (N,)) under each protocol.

    Returns protocol -> results, and the bootstrap over the test images (shared by all targets,
    protocols and, with the same seed and rows, encoders). Each protocol's caveats are in its
    ``notes`` and raised once as :class:`~raddino.eval.caveats.EvaluationWarning`.
    """
    if features.shape[0] != len(splits.split):
        raise ValueError(f"features have {features.shape[0]} rows, splits {len(splits.split)}")
    check_targets(targets, splits)
    device = check_device(config.device)
    x = torch.as_tensor(np.asarray(features, np.float32), device=device)
    fit_rows = np.concatenate([splits.indices("train"), splits.indices("val")])
    mean = x[fit_rows].mean(0)
    std = x[fit_rows].std(0).clamp(min=1e-6)
    bootstrap = PatientBootstrap(
        splits.groups[splits.indices("test")], config.n_resamples, config.seed, config.level
    )
    few = [note for t in targets for note in few_case_notes(t, split_counts(t, splits))]
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
            {m: mean_of([r.metrics[m] for r in binary], bootstrap.level) for m in BINARY_METRICS}
            if binary
            else {}
        )
        notes = list(few)
        for result in per_target.values():
            notes += selection_notes(protocol, result, config)
            subject = f"target {result.name!r}"
            why = caveats.BOTH_CLASSES if result.kind == "binary" else caveats.NO_VARIANCE
            notes += caveats.undefined_resamples(subject, result.metrics, config.n_resamples, why)
        if len(binary) > 1:  # one binary target: its macro is itself
            notes += caveats.undefined_resamples("macro average", macro, config.n_resamples)
        results[protocol] = ProtocolResult(protocol, per_target, macro, notes)
    caveats.warn(note for result in results.values() for note in result.notes)
    return results, bootstrap
