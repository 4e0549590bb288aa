"""Patient-level bootstrap: confidence intervals that respect images of the same patient.

A resample draws as many patients as the test set has, with replacement, and takes all images of
each drawn patient, as often as the patient was drawn. It is represented as integer weights per
image (B, n), so any metric of :mod:`raddino.eval.metrics` evaluates all resamples at once.

The same seed gives the same resamples: metrics of two encoders on the same test images are then
paired, and the interval of their *difference* says whether one is better
(:func:`paired_difference`). A macro average is taken resample by resample (:func:`mean_of`).
A resample in which a metric is undefined (NaN: one class only) is left out of the interval and
counted (:attr:`Estimate.undefined`).

This module is the one place these statistics are computed; comparisons (``raddino compare``)
and the demo's summary call it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
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
        """Whether ``value`` lies outside the interval (False when there is no interval)."""
        return bool(self.low > value or self.high < value)

    def to_difference_dict(self) -> dict[str, float | bool | None]:
        """As a paired difference: :meth:`to_dict` and whether the interval excludes 0."""
        return {**self.to_dict(), "significant": self.excludes(0.0)}

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
        return estimate_from_samples(point, samples, self.level)


def estimate_from_samples(point: float, samples: np.ndarray, level: float = 0.95) -> Estimate:
    """``point`` with the percentile interval of its per-resample ``samples`` (NaN left out)."""
    low, high = percentile_interval(samples, level)
    return Estimate(point, low, high, samples)


def mean_of(estimates: Sequence[Estimate], level: float = 0.95) -> Estimate:
    """The mean of several metrics (a macro average), resample by resample.

    A resample in which any of the metrics is undefined is undefined for the mean."""
    point = float(np.mean([e.value for e in estimates]))
    samples = np.mean(np.stack([e.samples for e in estimates]), axis=0)
    return estimate_from_samples(point, samples, level)


def paired_difference(a: Estimate, b: Estimate, level: float = 0.95) -> Estimate:
    """The difference a - b with its interval, resample by resample (paired bootstrap).

    a, b: estimates from the same resamples (the same :class:`PatientBootstrap` seed on the same
    test images); a resample undefined for either is undefined for the difference."""
    if a.samples.shape != b.samples.shape:
        raise ValueError(
            f"paired differences need estimates from the same resamples "
            f"(got {a.samples.shape} and {b.samples.shape} samples)"
        )
    return estimate_from_samples(a.value - b.value, a.samples - b.samples, level)
