"""The cohort on disk: a valid manifest, identical files for a seed, whatever the workers."""

from __future__ import annotations

import csv
import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from raddino.data.io import read_image
from raddino.data.manifest import read_manifest
from raddino.data.splits import SPLITS
from raddino.data.synth.cohort import MANIFEST_COLUMNS, SynthConfig, generate_cohort
from raddino.data.synth.findings import FINDINGS
from raddino.data.synth.render import MASKS
from raddino.data.synth.report import FORBIDDEN_WORDS
from raddino.data.synth.source import CtSource

SIZE = 64
PREVALENCE = {name: 0.5 for name in FINDINGS}
# Seed 3's ten patient ids hash to all three splits with these fractions.
CONFIG = SynthConfig(
    n=10, seed=3, size=SIZE, prevalence=PREVALENCE, val_fraction=0.2, test_fraction=0.2
)


@pytest.fixture(scope="module")
def cohort(source: CtSource, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("cohort")
    generate_cohort(out, CONFIG, source=source, workers=0, progress=False)
    return out


def files(folder: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(folder)): p.read_bytes()
        for p in sorted(folder.rglob("*"))
        if p.is_file() and p.name != "cohort.json"
    }


def test_manifest_passes_schema_validation(cohort: Path) -> None:
    with (cohort / "manifest.csv").open(newline="") as handle:
        reader = csv.DictReader(handle)
        assert tuple(reader.fieldnames or ()) == MANIFEST_COLUMNS
        raw = list(reader)
    rows = read_manifest(cohort / "manifest.csv")
    assert len(rows) == 10
    by_patient: dict[str, set[str]] = {}
    for line, (row, resolved) in enumerate(zip(raw, rows, strict=True), start=2):
        assert not Path(row["path"]).is_absolute(), line  # relative to the manifest's folder
        image = read_image(resolved["path"])
        assert image.shape == (SIZE, SIZE) and image.dtype == np.uint16, line
        assert row["split"] in SPLITS, line
        by_patient.setdefault(row["patient_id"], set()).add(row["split"])
        assert row["view"] in ("PA", "AP") and row["sex"] in ("F", "M"), line
        assert 18 <= int(row["age"]) <= 95 and 16.0 <= float(row["bmi"]) <= 48.0, line
        for name in FINDINGS:
            assert row[name] in ("0", "1"), (line, name)
        for name in MASKS:
            mask = np.asarray(Image.open(cohort / row[f"mask_{name}"]))
            assert mask.shape == (SIZE, SIZE) and set(np.unique(mask)) <= {0, 255}, (line, name)
            if name in FINDINGS:  # a finding's mask is empty exactly when it is absent
                assert mask.any() == (row[name] == "1"), (line, name)
        assert row["report"].startswith("FINDINGS: ") and "IMPRESSION: " in row["report"]
    assert all(len(splits) == 1 for splits in by_patient.values())  # splits are by patient
    assert {row["split"] for row in raw} == set(SPLITS)


def test_reports_state_findings_and_never_hidden_attributes(cohort: Path) -> None:
    keywords = {
        "nodule": r"nodule|mass",
        "effusion": r"effusion",
        "pneumothorax": r"pneumothorax",
        "consolidation": r"consolidation|airspace",
        "cardiomegaly": r"cardiomegaly|heart|cardiac",
        "chest_tube": r"chest tube|pleural drain",
        "central_line": r"catheter|line",
    }
    for row in read_manifest(cohort / "manifest.csv"):
        report = row["report"].lower()
        words = set(re.findall(r"[a-z]+", report))
        assert not words & set(FORBIDDEN_WORDS), report
        assert row["age"] not in report.split()
        for name, pattern in keywords.items():
            if row[name] == "1":
                assert re.search(pattern, report), (name, report)
        if row["pneumothorax"] == "0":
            assert "no pneumothorax" in report or "no evidence of pneumothorax" in report


def test_same_seed_gives_identical_files_with_any_number_of_workers(
    source: CtSource, cohort: Path, tmp_path: Path
) -> None:
    generate_cohort(tmp_path, CONFIG, source=source, workers=2, progress=False)
    assert files(tmp_path) == files(cohort)


def test_another_seed_gives_other_patients(source: CtSource, cohort: Path, tmp_path: Path) -> None:
    config = SynthConfig(n=2, seed=4, size=SIZE, prevalence=PREVALENCE)
    generate_cohort(tmp_path, config, source=source, workers=0, progress=False)
    assert (tmp_path / "images/000000.png").read_bytes() != (
        cohort / "images/000000.png"
    ).read_bytes()


@pytest.mark.parametrize(
    ("changes", "key"),
    [
        ({"n": 0}, "n"),
        ({"size": 8}, "size"),
        ({"prevalence": {"fracture": 0.1}}, "prevalence"),
        ({"prevalence": {"nodule": 1.5}}, "prevalence"),
        ({"ap_fraction": -0.1}, "ap_fraction"),
    ],
)
def test_config_rejects_bad_values_naming_the_key(changes: dict, key: str) -> None:
    with pytest.raises(ValueError, match=key):
        SynthConfig(**{"n": 1, **changes})
