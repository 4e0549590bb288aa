"""Caveats: when an evaluation's numbers rest on too little to be read at face value.

One function per caveat holds its text, so that ``probe``, ``segment`` and ``compare`` say the
same thing the same way: a class with fewer than :data:`MIN_CASES` cases in a split, bootstrap
resamples where a metric is undefined (dropped from its interval), a k-NN k larger than the
training images it can draw on (clamped), and a regularisation strength chosen at the edge of
its grid. A caveat goes into the report's ``notes`` (Markdown and JSON) and is raised once as an
:class:`EvaluationWarning` (the CLI prints those as one ``warning:`` line on stderr).
"""

from __future__ import annotations

import warnings
from collections.abc import Iterable, Mapping, Sequence

from raddino.eval.bootstrap import Estimate
from raddino.eval.tables import METRIC_NAMES

# Below this many cases of a class (or annotated images, or known values) in a split, a metric
# and its interval say little: with 1 negative, AUROC is where that one image ranks.
MIN_CASES = 10


class EvaluationWarning(UserWarning):
    """An evaluation result that needs a caveat (see :mod:`raddino.eval.caveats`)."""


def warn(notes: Iterable[str]) -> list[str]:
    """Raise each note once as an :class:`EvaluationWarning`; returns them as a list."""
    notes = list(dict.fromkeys(notes))
    for note in notes:
        warnings.warn(note, EvaluationWarning, stacklevel=2)
    return notes


def cases(count: int, noun: str) -> str:
    """``1 negative``, ``3 positives``, ``4 annotated images``: noun given in the singular."""
    if count == 1:
        return f"{count} {noun}"
    head, sep, tail = noun.partition(" with ")
    return f"{count} {head}s{sep}{tail}"


# what a split with few cases undermines
_RESTS_ON_IT = {
    "train": "the fit rests on very few cases",
    "val": "the hyper-parameters (or the kept epoch) are chosen on very few cases",
    "test": "its test metrics and intervals rest on very few cases",
}


def few_cases(subject: str, split: str, counts: Mapping[str, int]) -> str | None:
    """The caveat for the kinds of case (noun in the singular -> count: ``{"positive": 3,
    "negative": 1}``) with fewer than :data:`MIN_CASES` in a split, or None when all have enough.
    """
    few = [cases(count, noun) for noun, count in counts.items() if count < MIN_CASES]
    if not few:
        return None
    each = " each" if len(few) > 1 else ""
    return (
        f"{subject}: {' and '.join(few)} in the {split} split (fewer than {MIN_CASES}{each}); "
        f"{_RESTS_ON_IT.get(split, 'its results rest on very few cases')}"
    )


# why a metric can be undefined in a resample, by kind of target
BOTH_CLASSES = "a resample without both classes"
NO_VARIANCE = "a resample whose values do not vary"
NO_ANNOTATION = "a resample without an annotated image"


def undefined_resamples(
    subject: str, metrics: Mapping[str, Estimate], total: int, why: str = BOTH_CLASSES
) -> list[str]:
    """Resamples in which metrics are undefined (``why``: e.g. :data:`BOTH_CLASSES`), dropped
    from their intervals; one caveat per distinct count, naming the metrics it applies to."""
    by_count: dict[int, list[str]] = {}
    for name, estimate in metrics.items():
        if estimate.undefined:
            by_count.setdefault(estimate.undefined, []).append(METRIC_NAMES.get(name, name))
    return [
        f"{subject}: {', '.join(names)} undefined in {count} of {total} bootstrap resamples "
        f"(e.g. {why}); those were dropped and the interval rests on "
        f"the other {total - count}"
        for count, names in by_count.items()
    ]


def k_clamped(subject: str, requested: Sequence[int], available: int, chosen: int) -> str:
    """k values of the grid larger than the labelled training images (clamped to them)."""
    ks = ", ".join(str(k) for k in requested)
    verb = "exceeds" if len(requested) == 1 else "exceed"
    return (
        f"{subject}: k = {ks} {verb} the {available} training images with a known label and "
        f"{'was' if len(requested) == 1 else 'were'} clamped to k = {available}; "
        f"the selected k is {chosen}"
    )


def at_grid_edge(subject: str, name: str, value: float, grid: Sequence[float]) -> str | None:
    """The caveat for a hyper-parameter chosen at the smallest or largest value of its grid, or
    None when it lies inside (or the grid has one value: nothing was chosen)."""
    low, high = min(grid), max(grid)
    if low == high or low < value < high:
        return None
    edge = "largest" if value == high else "smallest"
    return (
        f"{subject}: the selected {name} = {value:g} is the {edge} value of its grid "
        f"[{low:g}, {high:g}]; the best value may lie beyond it"
    )
