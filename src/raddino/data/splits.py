"""Patient splits: which of train / val / test a patient belongs to, from a hash of its id.

One recipe for every split raddino draws (dataset indexers, the synthetic cohort, manifests
without a ``split`` column): a patient's `patient_fraction` is a number in [0, 1) fixed by
(seed, patient id); the lowest ``test`` of the interval is the test split, the next ``val`` the
validation split, the rest training. So every image of a patient lands in one split, and a
patient's split never depends on the other patients: adding patients moves nobody, and the
split sizes are close to, not exactly, the fractions.
"""

from __future__ import annotations

import hashlib

__all__ = [
    "SPLITS",
    "check_split_fractions",
    "patient_fraction",
    "split_by_patient",
    "split_for_fraction",
]

SPLITS: tuple[str, ...] = ("train", "val", "test")
"""The split names, in the order tables show them."""


def patient_fraction(patient_id: str, seed: int) -> float:
    """A number in [0, 1) fixed by (seed, patient id), uniform over ids.

    The first 8 bytes (big-endian) of ``sha256(f"{seed}\\x00{patient_id}")`` over 2**64.
    """
    digest = hashlib.sha256(f"{seed}\x00{patient_id}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def split_for_fraction(fraction: float, val: float, test: float) -> str:
    """``test`` below ``test``, ``val`` below ``test + val``, ``train`` above."""
    if fraction < test:
        return "test"
    if fraction < test + val:
        return "val"
    return "train"


def split_by_patient(patient_id: str, val: float, test: float, seed: int) -> str:
    """``train`` / ``val`` / ``test`` for a patient: about ``val`` and ``test`` of all patients
    go to validation and test (see the module docstring)."""
    return split_for_fraction(patient_fraction(patient_id, seed), val, test)


def check_split_fractions(val: float, test: float) -> None:
    """Raise ValueError unless both fractions lie in [0, 1) and leave some training data."""
    for name, value in (("val_fraction", val), ("test_fraction", test)):
        if not 0.0 <= value < 1.0:
            raise ValueError(f"{name}={value!r} must be in [0, 1)")
    if val + test >= 1.0:
        raise ValueError(
            f"val_fraction + test_fraction = {val + test} leaves no training data; "
            "keep the sum below 1"
        )
