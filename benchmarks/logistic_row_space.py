"""Logistic probes with fewer rows than features: L-BFGS in the span of the rows against L-BFGS
on all the features (the solver before 71832e8), on the same data, in interleaved rounds.

Features: ``--rows`` x ``--dim`` (the demo: 1,387 training images x 3,264 ``cls+grid4`` columns
of a 192-wide ViT), standardised, with a 64-dimensional shared structure plus noise; 8 binary
targets from a planted linear signal, 10% of labels unknown. Each round fits the regularisation
path (8 strengths, warm-started, 300 L-BFGS steps at most) both ways on one thread and prints
both times, their ratio and the largest difference of the two paths' validation AUROCs.

    python benchmarks/logistic_row_space.py [--rows 1387] [--dim 3264] [--rounds 3]
"""

from __future__ import annotations

import argparse
import os
import time

import numpy as np
import torch


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1387)
    parser.add_argument("--dim", type=int, default=3264)
    parser.add_argument("--targets", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()

    from raddino.eval import logistic
    from raddino.eval.metrics import auroc
    from raddino.models.hardware import probe_hardware

    torch.set_num_threads(1)  # the evaluation default (raddino.eval.fit_threads)
    print(f"CPU: {probe_hardware('cpu').name}, {os.cpu_count()} cores, torch {torch.__version__}")
    g = torch.Generator().manual_seed(0)
    n = args.rows + 400  # the last 400 rows score the paths
    shared = torch.randn(n, 64, generator=g) @ torch.randn(64, args.dim, generator=g) / 8
    x = shared + 0.7 * torch.randn(n, args.dim, generator=g)
    x = (x - x.mean(0)) / x.std(0)
    planted = torch.randn(args.dim, args.targets, generator=g) / args.dim**0.5
    labels = ((x @ planted + 0.8 * torch.randn(n, args.targets, generator=g)) > 0.3).float()
    labels[torch.rand(n, args.targets, generator=g) < 0.1] = float("nan")
    fit, held = slice(0, args.rows), slice(args.rows, n)

    def full_space() -> list[logistic.LogisticModel]:
        models, init = [], None
        for strength in logistic.sorted_lambdas(logistic.LAMBDAS):
            init = logistic._fit(x[fit], labels[fit], float(strength), init, True, 300)
            models.append(init)
        return models

    def row_space() -> list[logistic.LogisticModel]:
        return logistic.regularisation_path(x[fit], labels[fit])

    def held_out_auroc(models: list[logistic.LogisticModel]) -> np.ndarray:
        """(strengths, targets) AUROC on the held-out rows with a known label."""
        y = labels[held].numpy()
        result = np.zeros((len(models), y.shape[1]))
        for i, model in enumerate(models):
            score = model.decision(x[held]).numpy()
            for t in range(y.shape[1]):
                known = ~np.isnan(y[:, t])
                weights = np.ones((1, int(known.sum())))  # one unweighted resample
                result[i, t] = auroc(y[known, t], score[known, t], weights)[0]
        return result

    ratios = []
    for round_ in range(args.rounds):
        start = time.perf_counter()
        full = full_space()
        full_s = time.perf_counter() - start
        start = time.perf_counter()
        rows = row_space()
        rows_s = time.perf_counter() - start
        ratios.append(full_s / rows_s)
        gap = np.abs(held_out_auroc(full) - held_out_auroc(rows)).max()
        print(
            f"round {round_ + 1}: {args.rows} x {args.dim}, {args.targets} targets, 8 strengths: "
            f"all features {full_s:.1f} s, span of the rows {rows_s:.1f} s: "
            f"{ratios[-1]:.2f}x; largest held-out AUROC difference {gap:.4f}"
        )
    print(f"speed-up, median over rounds: {float(np.median(ratios)):.2f}x")


if __name__ == "__main__":
    main()
