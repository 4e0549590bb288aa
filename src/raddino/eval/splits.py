"""Train / validation / test splits and patients, from the manifest's ``split`` and ``patient_id``.

Without a ``split`` column, patients are assigned by `raddino.data.splits` (a hash of the
patient id, as dataset indexers and the synthetic cohort assign them), so that no patient has
images on both sides; without a validation split, one is carved out of the training patients
by the same hash. Every such decision is recorded in ``Splits.notes``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from raddino.data.manifest import ManifestError
from raddino.data.splits import SPLITS, patient_fraction, split_for_fraction

__all__ = ["SPLITS", "SPLIT_NAMES", "Splits", "make_splits"]

SPLIT_NAMES = {
    "train": "train",
    "training": "train",
    "val": "val",
    "valid": "val",
    "validation": "val",
    "dev": "val",
    "test": "test",
    "testing": "test",
}


@dataclass
class Splits:
    """split: (N,) "train" / "val" / "test" / "" (unused row); groups: (N,) patient ids."""

    split: np.ndarray
    groups: np.ndarray
    notes: list[str] = field(default_factory=list)

    def indices(self, name: str) -> np.ndarray:
        """Row indices of one split, in manifest order."""
        return np.flatnonzero(self.split == name)

    def counts(self) -> dict[str, int]:
        return {name: int((self.split == name).sum()) for name in SPLITS}

    def subset(self, rows: np.ndarray) -> Splits:
        """The splits of the given rows only (e.g. the images that could be encoded)."""
        return Splits(self.split[rows], self.groups[rows], list(self.notes))


def make_splits(
    rows: list[dict[str, str]],
    val_fraction: float = 0.1,
    test_fraction: float = 0.2,
    seed: int = 0,
    source: str = "manifest",
) -> Splits:
    """Read or make the splits of the manifest rows (see the module docstring)."""
    notes: list[str] = []
    n = len(rows)
    has_patients = bool(rows) and "patient_id" in rows[0]
    patients = [(row.get("patient_id") or "").strip() for row in rows] if has_patients else []
    if has_patients and all(patients):
        groups = np.array(patients, dtype=object)
    else:
        groups = np.array(
            [p or f"path:{row['path']}" for p, row in zip(patients or [""] * n, rows, strict=True)],
            dtype=object,
        )
        notes.append(
            "no patient_id for some or all images: each of those images is its own patient "
            "in splits and bootstrap resampling"
        )
    fraction = np.array([patient_fraction(str(g), seed) for g in groups])

    if rows and "split" in rows[0]:
        split = np.empty(n, dtype=object)
        for i, row in enumerate(rows):
            value = (row.get("split") or "").strip().lower()
            if value and value not in SPLIT_NAMES:
                raise ManifestError(
                    f"{source}: line {i + 2}: split {row.get('split')!r} is not one of "
                    "train, val, test"
                )
            split[i] = SPLIT_NAMES.get(value, "")
        unused = int((split == "").sum())
        if unused:
            notes.append(f"{unused} rows without a split value are not used")
        if not (split == "val").any():
            # The top of the interval: a manifest whose splits were themselves drawn by this
            # hash with no validation share has its test patients at the bottom, and its
            # training patients would hold none of the bottom slice.
            carve = (split == "train") & (fraction >= 1 - val_fraction / (1 - test_fraction))
            split[carve] = "val"
            notes.append(
                f"no validation split in the manifest: {int(carve.sum())} training images "
                "(by patient) are used to choose hyper-parameters"
            )
    else:
        split = np.array(
            [split_for_fraction(u, val_fraction, test_fraction) for u in fraction], dtype=object
        )
        notes.append(
            f"no split column: patients assigned {1 - val_fraction - test_fraction:.0%} train, "
            f"{val_fraction:.0%} val, {test_fraction:.0%} test by a hash of their id (seed {seed})"
        )
    shared = _patients_in_several_splits(split, groups)
    if shared:
        notes.append(f"{shared} patients have images in more than one split")
    return Splits(split.astype(str), groups, notes)


def _patients_in_several_splits(split: np.ndarray, groups: np.ndarray) -> int:
    seen: dict[object, set[str]] = {}
    for name, group in zip(split, groups, strict=True):
        if name:
            seen.setdefault(group, set()).add(name)
    return sum(1 for names in seen.values() if len(names) > 1)
