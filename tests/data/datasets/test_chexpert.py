"""CheXpert on its real train.csv (223,414 images, 64,540 patients) and label policies."""

from __future__ import annotations

import csv
import gzip
from pathlib import Path

import numpy as np
import pytest

from raddino.data.datasets import IndexOptions, LabelPolicy, build_index
from raddino.data.datasets.chexpert import CHEXPERT_LABELS
from raddino.data.datasets.index_table import IndexTable
from tests.data.datasets.conftest import link
from tests.data.datasets.files import write_png, write_table

VALID_ROW = ["No Finding", "Edema", "Pleural Effusion", "Support Devices"]


@pytest.fixture(scope="module")
def chexpert_root(xrv_data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("chexpert")
    folder = root / "CheXpert-v1.0-small"
    link(xrv_data / "chexpert_train.csv.gz", folder / "train.csv.gz")
    write_table(
        folder / "valid.csv",
        ["Path", "Sex", "Age", "Frontal/Lateral", "AP/PA", *VALID_ROW],
        [
            ["CheXpert-v1.0-small/valid/patient64541/study1/view1_frontal.jpg", "Male", 73,
             "Frontal", "AP", "", "1.0", "0.0", "1.0"],
            ["CheXpert-v1.0-small/valid/patient64542/study1/view2_lateral.jpg", "Female", 70,
             "Lateral", "", "1.0", "", "", ""],
        ],
    )  # fmt: skip
    write_png(folder / "train/patient00001/study1/view1_frontal.jpg")
    write_png(folder / "valid/patient64541/study1/view1_frontal.jpg")
    return root


@pytest.fixture(scope="module")
def raw_rows(xrv_data: Path) -> list[dict[str, str]]:
    """The first 30,000 rows of the real train.csv (label policies are checked on these)."""
    with gzip.open(xrv_data / "chexpert_train.csv.gz", "rt", newline="") as handle:
        reader = csv.DictReader(handle)
        return [row for _, row in zip(range(30_000), reader, strict=False)]


@pytest.fixture(scope="module")
def subset_root(raw_rows: list[dict[str, str]], tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("chexpert_subset")
    header = list(raw_rows[0])
    write_table(
        root / "CheXpert-v1.0-small" / "train.csv.gz", header, [list(r.values()) for r in raw_rows]
    )
    return root


@pytest.fixture(scope="module")
def chexpert(chexpert_root: Path) -> IndexTable:
    return build_index("chexpert", chexpert_root)


def train_only(table: IndexTable, name: str) -> np.ndarray:
    split = np.array(table.column("split"))
    return table.label(name)[split == "train"]


def test_counts_match_the_published_numbers(chexpert: IndexTable) -> None:
    split = chexpert.column("split")
    train = [p for p, s in zip(chexpert.column("patient_id"), split, strict=True) if s == "train"]
    assert len(train) == 223_414
    assert len(set(train)) == 64_540
    assert split.count("val") == 2


def test_views_and_frontal_filter(chexpert: IndexTable, subset_root: Path) -> None:
    views = chexpert.column("view")
    assert views.count("LATERAL") == 32_387 + 1
    assert views.count("AP") == 161_590 + 1 and views.count("PA") == 29_420
    # Frontal rows whose AP/PA says LL (16) or RL (1) keep it; none has a blank AP/PA.
    assert views.count("LL") == 16 and views.count("RL") == 1
    assert "FRONTAL" not in views
    subset = build_index("chexpert", subset_root)
    frontal = build_index("chexpert", subset_root, IndexOptions(frontal_only=True))
    assert len(frontal) == len(subset) - subset.column("view").count("LATERAL") > 20_000
    assert "LATERAL" not in frontal.column("view")


def test_recorded_projections_stay_and_only_ap_pa_or_unrecorded_pass_the_frontal_filter(
    tmp_path: Path,
) -> None:
    # train.csv's real columns; the AP/PA values are those of the real file (LL and RL on
    # frontal rows), plus a frontal row without one.
    rows = [
        ("patient00001", "Frontal", "AP"),
        ("patient00002", "Frontal", "PA"),
        ("patient00003", "Frontal", "LL"),
        ("patient00004", "Frontal", "RL"),
        ("patient00005", "Frontal", ""),
        ("patient00006", "Lateral", ""),
    ]
    write_table(
        tmp_path / "CheXpert-v1.0-small" / "train.csv",
        ["Path", "Sex", "Age", "Frontal/Lateral", "AP/PA", *CHEXPERT_LABELS],
        [
            [f"CheXpert-v1.0-small/train/{patient}/study1/view1_{kind.lower()}.jpg", "Female",
             60, kind, projection, "1.0", *[""] * (len(CHEXPERT_LABELS) - 1)]
            for patient, kind, projection in rows
        ],
    )  # fmt: skip
    table = build_index("chexpert", tmp_path)
    assert table.column("view") == ["AP", "PA", "LL", "RL", "FRONTAL", "LATERAL"]
    frontal = build_index("chexpert", tmp_path, IndexOptions(frontal_only=True))
    assert frontal.column("view") == ["AP", "PA", "FRONTAL"]
    assert frontal.column("patient_id") == ["patient00001", "patient00002", "patient00005"]


def test_paths_resolve_against_the_chexpert_folder(chexpert: IndexTable) -> None:
    missing = set(chexpert.missing)
    present = [chexpert.column("path")[i] for i in range(len(chexpert)) if i not in missing]
    assert len(present) == 2 and all(Path(p).is_file() for p in present)
    assert len(chexpert.missing) == len(chexpert) - 2


@pytest.mark.parametrize("uncertain", ["nan", "zero", "one"])
def test_uncertain_policy_on_real_labels(
    uncertain: str, subset_root: Path, raw_rows: list[dict[str, str]]
) -> None:
    table = build_index(
        "chexpert", subset_root, IndexOptions(labels=LabelPolicy(uncertain=uncertain))
    )
    raw = [r["Pleural Effusion"] for r in raw_rows]
    no_finding_blank = sum(
        1 for r in raw_rows if r["No Finding"] == "1.0" and r["Pleural Effusion"] == ""
    )
    ones, zeros, uncertain_count = raw.count("1.0"), raw.count("0.0"), raw.count("-1.0")
    assert min(ones, zeros, uncertain_count, no_finding_blank) > 1000
    values = train_only(table, "Pleural Effusion")
    positives, negatives = int((values == 1).sum()), int((values == 0).sum())
    unknown = int(np.isnan(values).sum())
    extra = {"nan": (0, 0), "zero": (0, uncertain_count), "one": (uncertain_count, 0)}[uncertain]
    assert positives == ones + extra[0]
    assert negatives == zeros + no_finding_blank + extra[1]
    assert unknown == len(raw) - positives - negatives


def test_no_finding_rule_on_real_labels(subset_root: Path, raw_rows: list[dict[str, str]]) -> None:
    chexpert = build_index("chexpert", subset_root)
    # Support Devices is never set by the rule: unknown exactly where it is blank.
    devices = train_only(chexpert, "Support Devices")
    unknown = sum(1 for r in raw_rows if r["Support Devices"] in ("", "-1.0"))
    assert int(np.isnan(devices).sum()) == unknown
    # Blank "No Finding" becomes 0 only when some finding is positive.
    findings = [n for n in chexpert.label_names if n not in ("No Finding", "Support Devices")]
    with_positive = sum(
        1 for r in raw_rows if r["No Finding"] == "" and any(r[n] == "1.0" for n in findings)
    )
    no_finding = train_only(chexpert, "No Finding")
    assert int((no_finding == 0).sum()) == with_positive
    assert int((no_finding == 1).sum()) == sum(1 for r in raw_rows if r["No Finding"] == "1.0")
    kept = build_index(
        "chexpert", subset_root, IndexOptions(labels=LabelPolicy(no_finding_negative=False))
    )
    assert int((train_only(kept, "No Finding") == 0).sum()) == 0
    effusion = train_only(kept, "Pleural Effusion")
    assert int((effusion == 0).sum()) == sum(1 for r in raw_rows if r["Pleural Effusion"] == "0.0")


def test_blank_labels_can_be_negative(subset_root: Path, raw_rows: list) -> None:
    table = build_index(
        "chexpert", subset_root, IndexOptions(labels=LabelPolicy(unmentioned="zero"))
    )
    values = train_only(table, "Edema")
    assert int(np.isnan(values).sum()) == sum(1 for r in raw_rows if r["Edema"] == "-1.0")
