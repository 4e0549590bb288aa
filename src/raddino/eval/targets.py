"""Probe targets read from manifest columns: binary (findings, sex) or continuous (age, BMI).

Binary columns hold 1 / 0 (empty = unknown), or two other values such as ``F`` / ``M`` (the
later one in sorted order is the positive class, and the report says which). Columns with more
than two numeric values are continuous. ``name:binary`` or ``name:continuous`` overrides the guess.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np

from raddino.data.manifest import ManifestError

TargetKind = Literal["binary", "continuous"]
UNKNOWN = frozenset({"", "nan", "na", "n/a", "none", "null"})


@dataclass
class Target:
    """One column as numbers: ``values`` (N,) float, NaN where unknown (0/1 for binary)."""

    name: str
    kind: TargetKind
    values: np.ndarray
    positive: str = ""  # the label that became 1 (binary targets)

    @property
    def known(self) -> np.ndarray:
        """(N,) bool: rows whose label is known."""
        return ~np.isnan(self.values)


def parse_target_specs(text: str | Sequence[str]) -> list[tuple[str, TargetKind | None]]:
    """``"pneumonia,age:continuous"`` (or a list of such items) -> [(column, kind or None)]."""
    items = [text] if isinstance(text, str) else list(text)
    specs: list[tuple[str, TargetKind | None]] = []
    for item in items:
        for part in item.split(","):
            part = part.strip()
            if not part:
                continue
            name, _, kind = part.partition(":")
            if kind and kind not in ("binary", "continuous"):
                raise ValueError(f"target {part!r}: the kind must be 'binary' or 'continuous'")
            specs.append((name.strip(), kind or None))  # type: ignore[arg-type]
    if not specs:
        raise ValueError("no targets given")
    return specs


def require_columns(rows: list[dict[str, str]], columns: Sequence[str], source: str) -> None:
    """Raise naming every column of ``columns`` that the manifest lacks."""
    present = set(rows[0]) if rows else set()
    missing = [c for c in columns if c not in present]
    if missing:
        raise ManifestError(
            f"{source}: manifest lacks column(s) {', '.join(repr(c) for c in missing)} "
            f"(it has {', '.join(sorted(present)) or 'no rows'})"
        )


def _as_number(text: str) -> float | None:
    try:
        return float(text)
    except ValueError:
        return None


def read_target(
    rows: list[dict[str, str]], name: str, kind: TargetKind | None = None, source: str = ""
) -> Target:
    """Column ``name`` of the manifest rows as a :class:`Target`."""
    require_columns(rows, [name], source or "manifest")
    raw = [(row.get(name) or "").strip() for row in rows]
    known = [text for text in raw if text.lower() not in UNKNOWN]
    if not known:
        raise ValueError(f"target {name!r}: every value is empty (unknown)")
    numbers = [_as_number(text) for text in known]
    numeric = all(value is not None for value in numbers)
    distinct = sorted(set(numbers)) if numeric else sorted(set(known))
    if kind != "continuous" and numeric and set(distinct) == {-1.0, 0.0, 1.0}:
        raise ValueError(
            f"target {name!r} has the values -1, 0 and 1; map uncertain (-1) labels to 1, 0 or "
            f"empty (unknown) first, or write {name}:continuous"
        )
    if kind is None:
        kind = "continuous" if numeric and len(distinct) > 2 else "binary"
    if kind == "continuous":
        if not numeric:
            bad = next(text for text, number in zip(known, numbers, strict=True) if number is None)
            raise ValueError(f"target {name!r} is continuous but has the value {bad!r}")
        values = np.array(
            [np.nan if text.lower() in UNKNOWN else float(text) for text in raw], np.float64
        )
        return Target(name, "continuous", values)
    if len(distinct) > 2:
        shown = ", ".join(map(str, distinct[:6])) + (", ..." if len(distinct) > 6 else "")
        raise ValueError(
            f"target {name!r} has {len(distinct)} values ({shown}); the probe takes binary and "
            "continuous targets: write one 0/1 column per class"
        )
    if numeric and set(distinct) <= {0.0, 1.0}:
        positive = 1.0
    elif len(distinct) == 2:
        positive = distinct[1]
    else:
        raise ValueError(f"target {name!r} has a single value ({distinct[0]}); nothing to probe")
    lookup = dict(zip(known, numbers, strict=True)) if numeric else {t: t for t in known}
    values = np.full(len(raw), np.nan)
    for i, text in enumerate(raw):
        if text.lower() in UNKNOWN:
            continue
        values[i] = 1.0 if lookup[text] == positive else 0.0
    label = f"{positive:g}" if isinstance(positive, float) else str(positive)
    return Target(name, "binary", values, positive=label)


def read_targets(
    rows: list[dict[str, str]], specs: Sequence[tuple[str, TargetKind | None]], source: str = ""
) -> list[Target]:
    """All requested columns, checked together so that one error names every missing column."""
    require_columns(rows, [name for name, _ in specs], source or "manifest")
    return [read_target(rows, name, kind, source) for name, kind in specs]
