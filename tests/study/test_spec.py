"""Study files are read strictly: every mistake is one line naming the file and the key."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from raddino.study.reader import load_study
from raddino.study.spec import STUDIES_DIR, StudyFileError, study_names
from tests.study.conftest import run_cli

QUICK = yaml.safe_load((STUDIES_DIR / "quick.yaml").read_text())


def write(tmp_path: Path, data: dict) -> Path:
    path = tmp_path / "study.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def changed(**top) -> dict:
    return {**QUICK, **top}


def test_the_shipped_studies_are_installed_and_valid():
    assert {"quick", "data_scale", "resolution", "ablations"} <= set(study_names())
    for name in study_names():
        spec = load_study(name)
        assert spec.reference in [arm.name for arm in spec.arms]
        assert spec.path == STUDIES_DIR / f"{name}.yaml"


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (changed(refrence="all_images"), "refrence: unknown key; did you mean 'reference'?"),
        (changed(reference="everything"), "reference: 'everything' is not one of the arms"),
        (
            changed(arms=[*QUICK["arms"], {"name": "random", "random_init": True}]),
            "arms[3].name: 'random': two arms have this name",
        ),
        (
            changed(arms=[{"name": "a", "overrides": ["loss.ibot_weigth=0"]}], reference="a"),
            "arms[0].overrides: ",
        ),
        (
            changed(arms=[{"name": "a", "trian_fraction": 0.5}], reference="a"),
            "arms[0].trian_fraction: unknown key; did you mean 'train_fraction'?",
        ),
        (
            changed(arms=[{"name": "a", "train_fraction": 1.5}], reference="a"),
            "arms[0].train_fraction: 1.5: expected a fraction in (0, 1]",
        ),
        (
            changed(arms=[{"name": "a", "image_size": 50}], reference="a"),
            "arms[0].image_size: 50 is not a multiple of the arm's patch size 16",
        ),
        (
            changed(arms=[{"name": "a", "overrides": ["train.steps"]}], reference="a"),
            "arms[0].overrides[0]: 'train.steps': expected section.key=value",
        ),
        (changed(metrics=["linear.findings.dice"]), "metrics[0]: linear.findings.dice: choose"),
        (changed(metrics=["linear.heart.auroc"]), "target 'heart' is not one of"),
        (
            changed(plots=[{"x": "train_images", "series": ["nope"]}]),
            "plots[0].series: ['nope'] are not groups of any arm",
        ),
        (changed(seed="one"), "seed: expected an integer, got 'one'"),
        (
            changed(evaluation={**QUICK["evaluation"], "features": "cls+grid0"}),
            "evaluation.features: features 'cls+grid0': choose cls, cls+mean or cls+gridN",
        ),
    ],
)
def test_a_bad_study_file_is_refused_naming_the_file_and_key(tmp_path, data, message):
    path = write(tmp_path, data)
    with pytest.raises(StudyFileError) as error:
        load_study(path)
    text = str(error.value)
    assert text.startswith(f"{path}: ") and message in text and "\n" not in text
    if "overrides: " in message:
        assert "unknown config key 'loss.ibot_weigth'; did you mean 'loss.ibot_weight'?" in text


def test_the_command_reports_a_bad_study_in_one_line_before_any_work(tmp_path, capsys):
    path = write(tmp_path, changed(reference="nobody"))
    out = tmp_path / "out"
    assert run_cli(["study", str(path), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"raddino study: error: {path}: reference: 'nobody'")
    assert len(err.strip().splitlines()) == 1 and not out.exists()
    assert run_cli(["study", "no_such_study", "--out", str(out)]) == 2
    assert "installed: ablations, data_scale, quick, resolution" in capsys.readouterr().err


def test_a_dry_run_prints_the_plan_and_does_nothing(tmp_path, capsys):
    out = tmp_path / "out"
    assert run_cli(["study", "resolution", "--out", str(out), "--dry-run"]) == 0
    text = capsys.readouterr().out
    assert "p112_e160: 1387 images, 800 steps, 112 px (pre-training shared with p112_e112)" in text
    assert "work left: about" in text and not out.exists()
