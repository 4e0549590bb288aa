"""Arms evaluated in separate stages are differenced only when they pair up."""

from __future__ import annotations

import numpy as np
import pytest

from raddino.eval.bootstrap import estimate_from_samples
from raddino.study.evaluation import ArmResult, MetricRow, PairingError
from raddino.study.table import build_table


def arm(name: str, paths: list[str], samples: np.ndarray, n_resamples: int = 4) -> ArmResult:
    pairing = {
        "probe": {
            "test_images": len(paths),
            "test_paths": paths,
            "test_patients": [f"p-{p}" for p in paths],
            "n_resamples": n_resamples,
            "seed": 31,
            "level": 0.95,
        }
    }
    rows = [
        MetricRow("linear", target, "auroc", estimate_from_samples(float(s.mean()), s))
        for target, s in zip(("a", "b"), samples, strict=True)
    ]
    return ArmResult(name, {"label": name}, rows, pairing)


def test_differences_and_macros_are_taken_resample_by_resample():
    ref = arm("ref", ["x.png", "y.png"], np.array([[0.5, 0.6, 0.7, 0.8], [0.6, 0.6, 0.6, 0.6]]))
    other = arm("other", ["x.png", "y.png"], np.array([[0.6, 0.7, 0.8, 0.9], [0.6, 0.7, 0.6, 0.7]]))
    table = build_table([ref, other], "ref", {"both": ("a", "b")})
    macro = table.rows[0]
    assert (macro.target, macro.metric, macro.members) == ("both", "auroc", ("a", "b"))
    np.testing.assert_allclose(macro.differences["other"].samples, [0.05, 0.1, 0.05, 0.1])
    assert macro.differences["other"].excludes(0.0)
    assert "ref" not in macro.differences


def test_arms_measured_on_other_test_images_are_refused():
    samples = np.full((2, 4), 0.5)
    ref = arm("ref", ["x.png", "y.png"], samples)
    other = arm("other", ["x.png", "z.png"], samples)
    with pytest.raises(PairingError, match=r"'ref' and 'other' .* different test images for probe"):
        build_table([ref, other], "ref", {})
    fewer = arm("fewer", ["x.png", "y.png"], samples, n_resamples=3)
    with pytest.raises(PairingError, match=r"bootstrap resamples for probe \(4 vs 3\)"):
        build_table([ref, fewer], "ref", {})
