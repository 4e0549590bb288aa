"""One arm's evaluation, kept so that arms evaluated apart still pair up.

``raddino compare`` evaluates several encoders together; a study evaluates each arm in its own
stage (an extended study evaluates only its new arms), with the same protocol pieces compare
uses (:mod:`raddino.eval.probe_manifest`, :mod:`raddino.eval.segment_manifest`). Every arm uses
the study's seed for splits and bootstrap, so when two arms saw the same test images their
per-resample metrics pair up. Each arm's estimates are stored with their per-resample samples
(``estimates.npz``) and the test images and patients they were measured on (``result.json``);
:func:`check_pairing` refuses to difference arms whose test images or resamples differ.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from raddino.eval.bootstrap import Estimate, estimate_from_samples
from raddino.eval.encoders import EncoderSpec
from raddino.eval.probe import ProbeConfig
from raddino.eval.segment import SegmentConfig
from raddino.eval.tables import write_json
from raddino.features.encode import EncodeOptions
from raddino.study.spec import SEGMENT

RESULT_FILE = "result.json"
SAMPLES_FILE = "estimates.npz"


class PairingError(ValueError):
    """Two arms' estimates cannot be differenced resample by resample."""


@dataclass
class MetricRow:
    """One metric of one arm: (task, target, metric) and its estimate with samples."""

    task: str  # linear | knn | segment
    target: str
    metric: str
    estimate: Estimate
    counts: dict | None = None

    @property
    def key(self) -> tuple[str, str, str]:
        return self.task, self.target, self.metric


@dataclass
class ArmResult:
    arm: str
    encoder: dict
    rows: list[MetricRow]
    pairing: dict[str, dict]  # "probe" / "segment" -> test paths, patients, resamples, seed
    notes: list[str] = field(default_factory=list)

    def row(self, key: tuple[str, str, str]) -> MetricRow | None:
        return next((r for r in self.rows if r.key == key), None)


def evaluate_arm(
    label: str,
    spec: EncoderSpec,
    manifest: Path,
    out_dir: Path,
    cache: Path,
    options: EncodeOptions,
    targets: Sequence[tuple[str, str | None]],
    structures: Sequence[str],
    features: str,
    probe_config: ProbeConfig,
    segment_config: SegmentConfig,
) -> ArmResult:
    """Probe ``targets`` and segment ``structures`` with one encoder, as ``raddino compare``
    does for each of its encoders; reports go to ``out_dir`` (``probe/``, ``segment/``)."""
    from raddino.eval.compare import probe_rows, segment_rows
    from raddino.eval.feature_cache import encode_for_eval, pooled_request
    from raddino.eval.probe_manifest import load_probe_inputs, probe_encoded, write_probe_report
    from raddino.eval.segment_manifest import (
        load_segment_inputs,
        prepare_segmentation,
        segment_encoded,
        segment_request,
        write_segment_report,
    )

    rows: list[MetricRow] = []
    pairing: dict[str, dict] = {}
    notes: list[str] = []
    prepared = None
    if structures:  # first: its store (full patch tokens) serves the probes as well
        seg_inputs = load_segment_inputs(manifest, list(structures), segment_config.seed)
        prepared = prepare_segmentation(spec, seg_inputs, options, segment_config, cache)
    if targets:
        inputs = load_probe_inputs(manifest, targets, probe_config.seed)
        model = prepared.model if prepared else None
        request = (
            pooled_request(features)
            if model is None
            else segment_request(segment_config, model.config.depth)
        )
        encoded = encode_for_eval(spec, inputs.paths, cache, request, options, model)
        print(f"probing {label}", file=sys.stderr)
        report = probe_encoded(
            spec, inputs, encoded, inputs.usable(encoded.valid), features, probe_config
        )
        write_probe_report(report, out_dir / "probe")
        for r in probe_rows([report], [label], probe_config.level):
            if r.target != "macro":  # compare's macro of every binary target; the study has its own
                rows.append(MetricRow(r.task, r.target, r.metric, r.values[label], r.counts))
        pairing["probe"] = _pairing(
            report.test_paths,
            report.test_patients,
            probe_config.n_resamples,
            probe_config,
            manifest.parent,
        )
        notes += report.notes
    if prepared is not None:
        used = np.flatnonzero(prepared.encoded.valid & (seg_inputs.splits.split != ""))
        print(f"segmenting with {label}", file=sys.stderr)
        folder = out_dir / "segment"
        report = segment_encoded(spec, seg_inputs, prepared, used, segment_config, folder)
        write_segment_report(report, folder)
        for r in segment_rows([report], [label], segment_config.level):
            rows.append(MetricRow(SEGMENT, r.target, r.metric, r.values[label], r.counts))
        test = used[seg_inputs.splits.subset(used).indices("test")]
        patients = [str(g) for g in seg_inputs.splits.groups[test]]
        pairing["segment"] = _pairing(
            report.test_paths, patients, segment_config.n_resamples, segment_config, manifest.parent
        )
        notes += report.notes
    return ArmResult(label, spec.describe(), rows, pairing, list(dict.fromkeys(notes)))


def _pairing(paths: list[str], patients: list[str], n_resamples: int, config, root: Path) -> dict:
    """What must agree between arms for paired differences; paths relative to the manifest's
    folder, so a study folder may move."""
    return {
        "test_images": len(paths),
        "test_paths": [os.path.relpath(p, root) for p in paths],
        "test_patients": list(patients),
        "n_resamples": int(n_resamples),
        "seed": int(config.seed),
        "level": float(config.level),
    }


# --------------------------------------------------------------------------- storage


def save_arm_result(result: ArmResult, folder: Path) -> Path:
    """``result.json`` (values, intervals, counts, pairing) and ``estimates.npz`` (samples)."""
    from raddino.atomic import write_atomic

    folder.mkdir(parents=True, exist_ok=True)
    samples = {f"row{i}": r.estimate.samples for i, r in enumerate(result.rows)}

    def save(temp: Path) -> None:
        with temp.open("wb") as handle:
            np.savez(handle, **samples)

    write_atomic(folder / SAMPLES_FILE, save)
    data = {
        "arm": result.arm,
        "encoder": result.encoder,
        "rows": [
            {"task": r.task, "target": r.target, "metric": r.metric, "counts": r.counts}
            | r.estimate.to_dict()
            for r in result.rows
        ],
        "pairing": result.pairing,
        "notes": result.notes,
    }
    return write_json(folder / RESULT_FILE, data)


def load_arm_result(folder: Path) -> ArmResult:
    data = json.loads((folder / RESULT_FILE).read_text(encoding="utf-8"))
    with np.load(folder / SAMPLES_FILE) as stored:
        samples = [stored[f"row{i}"] for i in range(len(data["rows"]))]
    rows = []
    for row, values in zip(data["rows"], samples, strict=True):
        value = np.nan if row["value"] is None else row["value"]
        estimate = estimate_from_samples(
            value, values, data["pairing"][_part(row["task"])]["level"]
        )
        rows.append(MetricRow(row["task"], row["target"], row["metric"], estimate, row["counts"]))
    return ArmResult(data["arm"], data["encoder"], rows, data["pairing"], data["notes"])


def _part(task: str) -> str:
    return "segment" if task == SEGMENT else "probe"


def check_pairing(results: Sequence[ArmResult]) -> None:
    """Every arm measured on the same test images and patients with the same resamples, so
    differences may be taken resample by resample; :class:`PairingError` naming the first arm
    that differs from the first one otherwise."""
    first = results[0]
    for other in results[1:]:
        for part in sorted(set(first.pairing) | set(other.pairing)):
            a, b = first.pairing.get(part), other.pairing.get(part)
            if a is None or b is None:
                missing = first.arm if a is None else other.arm
                raise PairingError(f"arm {missing!r} has no {part} results; re-run its evaluation")
            for key, what in (
                ("test_paths", "test images"),
                ("test_patients", "test patients"),
                ("n_resamples", "bootstrap resamples"),
                ("seed", "bootstrap seed"),
                ("level", "interval level"),
            ):
                if a[key] != b[key]:
                    detail = (
                        f"{a['test_images']} vs {b['test_images']} images"
                        if key == "test_paths"
                        else f"{a[key]!r} vs {b[key]!r}"
                        if key != "test_patients"
                        else "same images, other patient ids"
                    )
                    raise PairingError(
                        f"arms {first.arm!r} and {other.arm!r} were evaluated with different "
                        f"{what} for {part} ({detail}): their differences would not be paired. "
                        "Every arm must see the same data; delete the evaluation markers "
                        "(stages/evaluate_*.json) and re-run to evaluate them again"
                    )
