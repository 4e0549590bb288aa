"""The demo's evaluation: ``raddino compare`` of the pre-trained encoders (image-only,
language-supervised, the optional ablation), the random encoder and raw pixels on the cohort
(findings, metadata, segmentation), then the demo's summary of it."""

from __future__ import annotations

from collections.abc import Sequence

from raddino.data.synth import FINDINGS
from raddino.demo.options import (
    LABEL_RANDOM,
    METADATA_TARGETS,
    PAIRS,
    PROBE_FEATURES,
    STRUCTURES,
    DemoPaths,
    Sizes,
)
from raddino.demo.summary import summarise_comparison
from raddino.eval.encoders import EncoderSpec
from raddino.features.encode import EncodeOptions


def usable_targets(
    paths: DemoPaths, seed: int, candidates: Sequence[tuple[str, str | None]] | None = None
) -> tuple[list[tuple[str, str | None]], dict[str, str]]:
    """Findings and metadata (or the ``candidates``: (column, kind) pairs) that can be probed
    (both classes, or several values, in every split), and the reason each other one is left
    out."""
    from raddino.data.manifest import read_manifest
    from raddino.eval.probe import check_targets
    from raddino.eval.splits import make_splits
    from raddino.eval.targets import read_target

    rows = read_manifest(paths.manifest)
    source = str(paths.manifest)
    splits = make_splits(rows, seed=seed, source=source)
    usable, dropped = [], {}
    if candidates is None:
        candidates = [*((f, "binary") for f in FINDINGS), *METADATA_TARGETS]
    for name, kind in candidates:
        try:
            check_targets([read_target(rows, name, kind, source)], splits)
        except ValueError as error:
            dropped[name] = str(error)
            continue
        usable.append((name, kind))
    return usable, dropped


def evaluate_encoders(
    specs: Sequence[EncoderSpec],
    paths: DemoPaths,
    options: EncodeOptions,
    sizes: Sizes,
    seed: int,
    device: str,
) -> dict:
    """Compare ``specs`` (the first is the reference) into ``paths.evaluation``; returns the
    demo's summary (:func:`raddino.demo.summary.summarise_comparison`)."""
    from raddino.eval.compare import compare_encoders
    from raddino.eval.probe import ProbeConfig
    from raddino.eval.segment import SegmentConfig

    targets, dropped = usable_targets(paths, seed)
    report = compare_encoders(
        specs,
        paths.manifest,
        paths.evaluation,
        options,
        target_specs=targets,
        structures=STRUCTURES,
        features=PROBE_FEATURES,
        probe_config=ProbeConfig(n_resamples=sizes.bootstrap, seed=seed, device=device),
        segment_config=SegmentConfig(
            epochs=sizes.seg_epochs,
            n_resamples=sizes.bootstrap,
            seed=seed,
            device=device,
            progress=options.progress,
        ),
        cache_dir=paths.features,
    )
    findings = [name for name, _ in targets if name in FINDINGS]
    return summarise_comparison(report, findings, LABEL_RANDOM, dropped, list(PAIRS))
