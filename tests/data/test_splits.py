"""Patient splits: one hash of (seed, patient id) for indexers, the synthetic cohort and eval."""

from __future__ import annotations

import hashlib
import math
from pathlib import Path

import pytest

from raddino.data.datasets import IndexOptions, build_index
from raddino.data.splits import (
    SPLITS,
    check_split_fractions,
    patient_fraction,
    split_by_patient,
    split_for_fraction,
)
from raddino.data.synth.cohort import SynthConfig, assign_splits, patient_id
from raddino.eval.splits import make_splits
from tests.data.datasets.files import write_table

IDS = ["p1", "patient-042", "synth31-000007", "10000032", "Ünïcode id"]
# (seed, val 0.1, test 0.2): the split of each of IDS, pinned so that any change of the hash
# (and so of every public dataset manifest's splits) fails here.
GOLDEN = {
    0: ["val", "test", "train", "train", "train"],
    31: ["val", "train", "train", "train", "train"],
}


def reference_fraction(patient: str, seed: int) -> float:
    """sha256 of "<seed>\\0<id>", the first 8 bytes as a big-endian integer over 2**64."""
    digest = hashlib.sha256(str(seed).encode() + b"\x00" + patient.encode("utf-8")).digest()
    return int(digest[:8].hex(), 16) / 2**64


@pytest.mark.parametrize("seed", sorted(GOLDEN))
def test_patient_split_matches_the_pinned_sha256_assignment(seed: int) -> None:
    for patient in IDS:
        assert patient_fraction(patient, seed) == reference_fraction(patient, seed)
    assert [split_by_patient(p, 0.1, 0.2, seed) for p in IDS] == GOLDEN[seed]


def test_test_comes_first_then_val_then_train() -> None:
    assert [split_for_fraction(u, 0.1, 0.2) for u in (0.0, 0.19, 0.2, 0.29, 0.31, 0.99)] == [
        "test", "test", "val", "val", "train", "train",
    ]  # fmt: skip
    assert split_for_fraction(0.0, 0.0, 0.0) == "train"


def test_adding_patients_never_moves_existing_ones() -> None:
    small = SynthConfig(n=50, seed=5, val_fraction=0.2, test_fraction=0.3)
    large = SynthConfig(n=400, seed=5, val_fraction=0.2, test_fraction=0.3)
    assert assign_splits(400, large)[:50] == assign_splits(50, small)
    rows = [{"path": f"/x/{i}.png", "patient_id": f"p{i}"} for i in range(400)]
    assert list(make_splits(rows[:50]).split) == list(make_splits(rows).split[:50])


@pytest.mark.parametrize(("val", "test", "seed"), [(0.1, 0.2, 0), (0.25, 0.25, 31)])
def test_split_sizes_lie_within_binomial_bounds(val: float, test: float, seed: int) -> None:
    n = 10_000
    splits = [split_by_patient(f"patient{i}", val, test, seed) for i in range(n)]
    for name, p in (("val", val), ("test", test), ("train", 1 - val - test)):
        sd = math.sqrt(n * p * (1 - p))
        assert abs(splits.count(name) - n * p) < 4 * sd, name


def test_another_seed_moves_patients() -> None:
    patients = [f"patient{i}" for i in range(1000)]
    a = [split_by_patient(p, 0.1, 0.2, seed=0) for p in patients]
    b = [split_by_patient(p, 0.1, 0.2, seed=1) for p in patients]
    assert a != b


def test_indexer_synthetic_cohort_and_eval_agree_and_keep_patients_together(
    tmp_path: Path,
) -> None:
    seed, val, test, n = 7, 0.2, 0.3, 200
    patients = [patient_id(seed, i) for i in range(n)]
    expected = [split_by_patient(p, val, test, seed) for p in patients]
    assert set(expected) == set(SPLITS)

    cohort = assign_splits(n, SynthConfig(n=n, seed=seed, val_fraction=val, test_fraction=test))

    # BRAX splits by hash; two images per patient.
    write_table(
        tmp_path / "master_spreadsheet_update.csv",
        ["PngPath", "PatientID", "Cardiomegaly"],
        [[f"images/{p}-{k}.png", p, ""] for p in patients for k in range(2)],
    )
    options = IndexOptions(val_fraction=val, test_fraction=test, seed=seed)
    table = build_index("brax", tmp_path, options)
    indexed = table.column("split")

    rows = [{"path": f"/x/{p}-{k}.png", "patient_id": p} for p in patients for k in range(3)]
    evaluated = make_splits(rows, val_fraction=val, test_fraction=test, seed=seed).split

    assert cohort == expected
    assert indexed == [s for s in expected for _ in range(2)]
    assert list(evaluated) == [s for s in expected for _ in range(3)]


@pytest.mark.parametrize(
    ("val", "test", "message"),
    [
        (-0.1, 0.1, r"val_fraction=-0.1 must be in \[0, 1\)"),
        (0.1, 1.0, r"test_fraction=1.0 must be in \[0, 1\)"),
        (0.5, 0.5, "leaves no training data"),
    ],
)
def test_fractions_that_leave_no_training_data_are_refused(
    val: float, test: float, message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        check_split_fractions(val, test)
    with pytest.raises(ValueError, match=message):
        IndexOptions(val_fraction=val, test_fraction=test)
    with pytest.raises(ValueError, match=message):
        SynthConfig(n=10, val_fraction=val, test_fraction=test)
