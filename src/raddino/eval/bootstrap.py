"""Patient-level bootstrap: confidence intervals that respect images of the same patient.

A resample draws as many patients as the test set has, with replacement, and takes all images of
each drawn patient, as often as the patient was drawn. It is represented as integer weights per
image (B, n), so any metric of :mod:`raddino.eval.metrics` evaluates all resamples at once.

The same seed gives the same resamples: metrics of two encoders on the same test images are then
paired, and the interval of their *difference* says whether one is better (:func:`paired`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import numpy as np

from raddino.eval.metrics import unit_weights


@dataclass
class Estimate:
    """A point estimate with a percentile bootstrap interval; ``samples`` are per resample."""

    value: float
    low: float
    high: float
    samples: np.ndarray = field(repr=False, default_factory=lambda: np.zeros(0))

    def to_dict(self) -> dict[str, float | None]:
        return {"value": _num(self.value), "low": _num(self.low), "high": _num(self.high)}

    def excludes(self, value: float) -> bool:
        """Whether ``value`` lies outside the interval."""
        return bool(self.low > value or self.high < value)

    @property
    def undefined(self) -> int:
        """Resamples in which the metric is undefined (NaN): left out of the interval."""
        return int(np.count_nonzero(~np.isfinite(self.samples)))


def _num(value: float) -> float | None:
    return None if value is None or not np.isfinite(value) else float(value)


def percentile_interval(samples: np.ndarray, level: float = 0.95) -> tuple[float, float]:
    """(low, high) percentiles of the finite samples; NaN when there are none."""
    finite = samples[np.isfinite(samples)]
    if finite.size == 0:
        return float("nan"), float("nan")
    tail = 100 * (1 - level) / 2
    low, high = np.percentile(finite, [tail, 100 - tail])
    return float(low), float(high)


class PatientBootstrap:
    """Resamples of a test set by patient.

    groups: (n,) patient of each test image (any hashable values; one image per patient when
    unknown). The resamples are generated in chunks from ``seed`` so that memory stays at
    ``chunk x n`` weights, and every call sees the same resamples.
    """

    def __init__(
        self,
        groups: np.ndarray,
        n_resamples: int = 1000,
        seed: int = 0,
        level: float = 0.95,
        chunk: int = 250,
    ) -> None:
        if n_resamples < 1:
            raise ValueError(f"n_resamples={n_resamples} must be >= 1")
        if not 0 < level < 1:
            raise ValueError(f"level={level} must be between 0 and 1")
        _, self.patient_of_image = np.unique(np.asarray(groups), return_inverse=True)
        self.patient_of_image = self.patient_of_image.reshape(-1)
        self.n_patients = int(self.patient_of_image.max()) + 1 if len(groups) else 0
        self.n_resamples = n_resamples
        self.seed = seed
        self.level = level
        self.chunk = chunk

    def __len__(self) -> int:
        return len(self.patient_of_image)

    def weights(self, columns: np.ndarray | None = None) -> Iterator[np.ndarray]:
        """Chunks of resample weights (b, n) (or (b, len(columns)) for a subset of images)."""
        rng = np.random.default_rng(self.seed)
        patients = self.n_patients
        image_patient = self.patient_of_image
        if columns is not None:
            image_patient = image_patient[columns]
        done = 0
        while done < self.n_resamples:
            b = min(self.chunk, self.n_resamples - done)
            drawn = rng.integers(0, patients, size=(b, patients))
            flat = drawn + patients * np.arange(b)[:, None]
            counts = np.bincount(flat.ravel(), minlength=b * patients).reshape(b, patients)
            yield counts[:, image_patient].astype(np.float64)
            done += b

    def estimate(
        self,
        metric: Callable[[np.ndarray, np.ndarray, np.ndarray], np.ndarray],
        y: np.ndarray,
        score: np.ndarray,
        columns: np.ndarray | None = None,
    ) -> Estimate:
        """``metric`` on the test images (``columns`` of them when given) with its interval.

        y, score: (len(columns),) or (n,) values of those images.
        """
        point = float(metric(y, score, unit_weights(len(y)))[0])
        samples = np.concatenate([metric(y, score, w) for w in self.weights(columns)])
        return self.from_samples(point, samples)

    def from_samples(self, point: float, samples: np.ndarray) -> Estimate:
        low, high = percentile_interval(samples, self.level)
        return Estimate(point, low, high, samples)


def mean_of(estimates: list[Estimate], bootstrap: PatientBootstrap) -> Estimate:
    """The mean of several metrics (a macro average), resample by resample."""
    point = float(np.mean([e.value for e in estimates]))
    samples = np.mean(np.stack([e.samples for e in estimates]), axis=0)
    return bootstrap.from_samples(point, samples)


def paired(a: Estimate, b: Estimate, bootstrap: PatientBootstrap) -> Estimate:
    """The difference a - b with its interval, from the same resamples (paired bootstrap)."""
    if a.samples.shape != b.samples.shape:
        raise ValueError("paired differences need estimates from the same resamples")
    return bootstrap.from_samples(a.value - b.value, a.samples - b.samples)
