"""Package hygiene: licence, citation and version agree; presets ship with the package."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

import raddino
from raddino.ssl.config import PRESETS_DIR

ROOT = Path(__file__).parents[1]
tomllib = pytest.importorskip("tomllib")  # Python 3.11+


def test_licence_citation_and_version_agree_with_pyproject():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert project["license"] == "MIT" and (ROOT / "LICENSE").read_text().startswith("MIT License")
    citation = yaml.safe_load((ROOT / "CITATION.cff").read_text())
    assert citation["cff-version"] == "1.2.0" and citation["license"] == project["license"]
    assert citation["version"] == project["version"] == raddino.__version__
    paper = citation["preferred-citation"]
    assert paper["year"] == 2025 and paper["authors"][0]["family-names"] == "Pérez-García"


def test_presets_are_package_data():
    package = Path(raddino.__file__).parent
    assert package / "presets" == PRESETS_DIR
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert "presets/*.yaml" in project["tool"]["setuptools"]["package-data"]["raddino"]
    assert {p.name for p in PRESETS_DIR.glob("*.yaml")} >= {"tiny_cpu.yaml", "clip_tiny_cpu.yaml"}


def test_changelog_opens_with_unreleased_or_the_current_version():
    """CONTRIBUTING.md's release steps: the newest section is the work since the last release,
    or the release being made; no section names a version newer than the package's."""
    text = (ROOT / "CHANGELOG.md").read_text()
    sections = [line[3:].strip() for line in text.splitlines() if line.startswith("## ")]
    assert sections and sections[0].split()[0] in ("Unreleased", raddino.__version__)

    def version(text: str) -> tuple[int, ...]:
        return tuple(int(part) for part in text.split("."))

    released = [s.split()[0] for s in sections if s[0].isdigit()]
    assert all(version(v) <= version(raddino.__version__) for v in released)
