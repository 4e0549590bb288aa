"""A synthetic cohort on disk: images, masks, reports and a manifest, rendered in parallel.

Layout of ``out/``::

    images/000000.png            16-bit radiograph
    masks/<name>/000000.png      8-bit mask (0/255) for every name in `render.MASKS`
    manifest.csv                 the manifest contract (see `MANIFEST_COLUMNS`)
    cohort.json                  the configuration and the source CT's checksums

Image ``i`` is a pure function of (source CT, configuration, ``seed``, ``i``): its random
choices come from ``numpy.random.default_rng([seed, i])`` and rendering runs single-threaded,
so any number of worker processes writes the same files. Splits are by patient (one image per
virtual patient here): `raddino.data.splits` hashes each patient id with ``seed``, so the split
sizes are close to, not exactly, the fractions.
"""

from __future__ import annotations

import json
import multiprocessing
import os
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from raddino.atomic import write_csv_atomic
from raddino.data.splits import check_split_fractions, split_by_patient
from raddino.data.synth.anatomy import PREP_VERSION, cached_anatomy, read_anatomy
from raddino.data.synth.findings import DEFAULT_PREVALENCE, FINDINGS
from raddino.data.synth.patient import CohortOptions, sample_patient
from raddino.data.synth.render import MASKS, Renderer
from raddino.data.synth.report import write_report
from raddino.data.synth.source import CtSource, default_cache_dir, default_source, sha256_file
from raddino.output_lock import OutputLock

METADATA_COLUMNS: tuple[str, ...] = ("view", "age", "sex", "bmi")
MANIFEST_COLUMNS: tuple[str, ...] = (
    "path",
    "patient_id",
    "split",
    *METADATA_COLUMNS,
    *FINDINGS,
    *(f"mask_{name}" for name in MASKS),
    "report",
)
FIELD_AT_PATIENT_MM = 340.0
"""Typical width of the image at the patient; sets the working grid's resolution for a size."""


RENDER_VERSION = 4
"""Raised whenever the same config and seed give a different cohort, images or manifest (2:
larger and denser nodules and consolidations, radio-opaque devices averaged over each pixel's
area; 3: breasts and nodules with partial-volume margins that each ray crosses over one depth
step, without the concentric rings that coarse depth sampling drew in their shadows; 4: the same
images, splits from a hash of each patient id). The demo re-renders its cohort when it changes."""


@dataclass(frozen=True)
class SynthConfig:
    """What to render. ``prevalence``: finding name -> probability (missing names: 0)."""

    n: int
    seed: int = 0
    size: int = 512
    prevalence: dict[str, float] = field(default_factory=lambda: dict(DEFAULT_PREVALENCE))
    ap_fraction: float = 0.25
    sid_pa_mm: float = 1800.0
    sid_ap_mm: float = 1000.0
    parallel_beam: bool = False
    val_fraction: float = 0.1
    test_fraction: float = 0.1

    def __post_init__(self) -> None:
        if self.n < 1:
            raise ValueError(f"n: need at least one image, got {self.n}")
        if not 32 <= self.size <= 2048:
            raise ValueError(f"size: expected 32..2048 pixels, got {self.size}")
        unknown = sorted(set(self.prevalence) - set(FINDINGS))
        if unknown:
            raise ValueError(f"prevalence: unknown findings {unknown}; known: {list(FINDINGS)}")
        for name, value in self.prevalence.items():
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"prevalence: {name}={value} is not a probability")
        if not 0.0 <= self.ap_fraction <= 1.0:
            raise ValueError(f"ap_fraction: {self.ap_fraction} is not a fraction")
        if min(self.sid_pa_mm, self.sid_ap_mm) < 500.0:
            raise ValueError("sid_pa_mm, sid_ap_mm: source-image distances below 500 mm")
        check_split_fractions(self.val_fraction, self.test_fraction)

    def options(self) -> CohortOptions:
        return CohortOptions(
            prevalence=dict(self.prevalence),
            ap_fraction=self.ap_fraction,
            sid_pa_mm=self.sid_pa_mm,
            sid_ap_mm=self.sid_ap_mm,
            parallel_beam=self.parallel_beam,
        )


@dataclass(frozen=True)
class CohortSummary:
    out: Path
    manifest: Path
    images: int
    positives: dict[str, int]


def patient_id(seed: int, index: int) -> str:
    return f"synth{seed}-{index:06d}"


def assign_splits(n: int, config: SynthConfig) -> list[str]:
    """Split of each of the ``n`` patients, from its id and the cohort seed."""
    return [
        split_by_patient(
            patient_id(config.seed, index), config.val_fraction, config.test_fraction, config.seed
        )
        for index in range(n)
    ]


class CaseWriter:
    """Renders image ``index`` and writes its files; one per worker process."""

    def __init__(self, anatomy_dir: Path, config: SynthConfig, out: Path) -> None:
        self.renderer = Renderer(read_anatomy(anatomy_dir))
        self.config = config
        self.options = config.options()
        self.out = out

    def __call__(self, index: int) -> dict[str, str]:
        config = self.config
        rng = np.random.default_rng([config.seed, index])
        patient = sample_patient(
            self.renderer.anatomy, self.options, patient_id(config.seed, index), rng
        )
        rendered = self.renderer.render(patient, config.size)
        report = write_report(patient.findings, supine=patient.view == "AP", rng=rng)
        name = f"{index:06d}.png"
        image_path = self.out / "images" / name
        Image.fromarray(rendered.image).save(image_path, compress_level=1)
        row = {
            "path": f"images/{name}",
            "patient_id": patient.patient_id,
            "view": patient.view,
            "age": str(patient.age),
            "sex": patient.sex,
            "bmi": f"{patient.bmi:.1f}",
            **{key: str(value) for key, value in patient.findings.labels().items()},
            "report": report,
        }
        for mask_name, mask in rendered.masks.items():
            relative = f"masks/{mask_name}/{name}"
            Image.fromarray(mask.astype(np.uint8) * 255).save(self.out / relative, compress_level=1)
            row[f"mask_{mask_name}"] = relative
        return row


_WRITER: CaseWriter | None = None


def _init_worker(anatomy_dir: Path, config: SynthConfig, out: Path) -> None:
    import torch

    global _WRITER
    torch.set_num_threads(1)
    _WRITER = CaseWriter(anatomy_dir, config, out)


def _render_one(index: int) -> dict[str, str]:
    assert _WRITER is not None, "worker not initialised"
    return _WRITER(index)


def render_rows(
    anatomy_dir: Path, config: SynthConfig, out: Path, workers: int
) -> Iterator[dict[str, str]]:
    """Rows in index order, rendered in ``workers`` processes (0: in this process)."""
    if workers <= 0:
        import torch

        threads = torch.get_num_threads()
        torch.set_num_threads(1)  # the same arithmetic as in worker processes
        try:
            writer = CaseWriter(anatomy_dir, config, out)
            yield from (writer(index) for index in range(config.n))
        finally:
            torch.set_num_threads(threads)
        return
    context = multiprocessing.get_context("spawn")
    with context.Pool(
        workers, initializer=_init_worker, initargs=(anatomy_dir, config, out)
    ) as pool:
        yield from pool.imap(_render_one, range(config.n), chunksize=4)


def write_manifest(rows: list[dict[str, str]], path: Path) -> None:
    """Write the manifest atomically (a temporary file renamed into place)."""

    values = ([row.get(column, "") for column in MANIFEST_COLUMNS] for row in rows)
    write_csv_atomic(path, MANIFEST_COLUMNS, values)


def generate_cohort(
    out: str | os.PathLike,
    config: SynthConfig,
    source: CtSource | None = None,
    workers: int = 0,
    cache_dir: Path | None = None,
    progress: bool = True,
) -> CohortSummary:
    """Render ``config.n`` virtual patients into ``out`` (see the module docstring)."""
    from tqdm import tqdm

    out = Path(out)
    with OutputLock(out):  # one writer per cohort folder, before the CT is even fetched
        cache_dir = cache_dir or default_cache_dir()
        source = source or default_source(cache_dir)
        anatomy_dir = cached_anatomy(source, FIELD_AT_PATIENT_MM / config.size, cache_dir)
        (out / "images").mkdir(parents=True, exist_ok=True)
        for name in MASKS:
            (out / "masks" / name).mkdir(parents=True, exist_ok=True)
        splits = assign_splits(config.n, config)
        rows = []
        stream = render_rows(anatomy_dir, config, out, workers)
        for index, row in enumerate(
            tqdm(stream, total=config.n, desc="synth", unit="img", disable=not progress)
        ):
            rows.append({**row, "split": splits[index]})
        manifest = out / "manifest.csv"
        write_manifest(rows, manifest)
        info = {
            "generator": "raddino.data.synth",
            "anatomy_version": PREP_VERSION,
            "render_version": RENDER_VERSION,
            "config": asdict(config),
            "source": {
                "ct": str(source.ct),
                "ct_sha256": sha256_file(Path(source.ct)),
                "labels": str(source.labels),
                "labels_sha256": sha256_file(Path(source.labels)),
            },
        }
        (out / "cohort.json").write_text(json.dumps(info, indent=2) + "\n")
    positives = {name: sum(int(row[name]) for row in rows) for name in FINDINGS}
    return CohortSummary(out=out, manifest=manifest, images=len(rows), positives=positives)
