"""``raddino compare``: the same protocols for several encoders, in one table.

All encoders are evaluated on the same images (those every encoder could read), with the same
splits and the same bootstrap resamples, so their metrics are paired: the interval of each
encoder's difference from the first (the reference) is computed resample by resample, and a
difference whose interval excludes 0 is marked.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import numpy as np

from raddino.devices import check_device
from raddino.eval.bootstrap import Estimate, paired_difference
from raddino.eval.concurrent_fits import default_fit_workers, run_fits
from raddino.eval.encoders import EncoderSpec
from raddino.eval.feature_cache import EncodedRows, encode_for_eval, pooled_request
from raddino.eval.pixels import check_pixel_specs
from raddino.eval.probe import ProbeConfig
from raddino.eval.probe_manifest import ProbeInputs, ProbeReport, load_probe_inputs, probe_encoded
from raddino.eval.probe_manifest import write_probe_report as _write_probe
from raddino.eval.segment import SegmentConfig
from raddino.eval.segment_manifest import (
    PreparedSegmentation,
    SegmentInputs,
    SegmentReport,
    load_segment_inputs,
    prepare_segmentation,
    segment_encoded,
    segment_request,
    write_segment_report,
)
from raddino.eval.splits import SPLITS
from raddino.eval.tables import (
    METRIC_NAMES,
    format_counts,
    format_estimate,
    format_percent,
    format_signed,
    interval_note,
    markdown_table,
    write_json,
    write_text,
)
from raddino.eval.targets import TargetKind
from raddino.features.encode import EncodeOptions

COUNTS_HEADER = "n train, val, test"


@dataclass
class ComparisonRow:
    """One metric of one target for every encoder, and the differences from the reference."""

    task: str
    target: str
    metric: str
    values: dict[str, Estimate]
    differences: dict[str, Estimate] = field(default_factory=dict)
    counts: dict[str, dict[str, int]] | None = None  # split -> images (and classes); per target

    def to_dict(self) -> dict:
        return {
            "task": self.task,
            "target": self.target,
            "metric": self.metric,
            "counts": self.counts,
            "values": self.values,
            "differences": {label: d.to_difference_dict() for label, d in self.differences.items()},
        }


@dataclass
class CompareReport:
    encoders: list[dict]
    rows: list[ComparisonRow]
    n_resamples: int
    level: float
    notes: list[str] = field(default_factory=list)

    @property
    def reference(self) -> str:
        return self.encoders[0]["label"]

    def to_dict(self) -> dict:
        return {
            "encoders": self.encoders,
            "reference": self.reference,
            "interval_level": self.level,
            "n_resamples": self.n_resamples,
            "rows": [row.to_dict() for row in self.rows],
            "notes": self.notes,
        }


def unique_labels(specs: Sequence[EncoderSpec]) -> list[str]:
    """Display labels, numbered where two encoders would share one."""
    labels = [spec.label for spec in specs]
    return [
        f"{label} #{i + 1}" if labels.count(label) > 1 else label for i, label in enumerate(labels)
    ]


def paired_row(
    task: str,
    target: str,
    metric: str,
    estimates: list[Estimate],
    labels: list[str],
    level: float = 0.95,
    counts: dict[str, dict[str, int]] | None = None,
) -> ComparisonRow:
    """A table row; each difference from the reference (the first) resample by resample."""
    values = dict(zip(labels, estimates, strict=True))
    row = ComparisonRow(task, target, metric, values, counts=counts)
    reference = estimates[0]
    for label, estimate in zip(labels[1:], estimates[1:], strict=True):
        row.differences[label] = paired_difference(estimate, reference, level)
    return row


def probe_rows(reports: list[ProbeReport], labels: list[str], level: float) -> list[ComparisonRow]:
    rows: list[ComparisonRow] = []
    for protocol, first in reports[0].results.items():
        for name, target in first.targets.items():
            for metric in target.metrics:
                estimates = [r.results[protocol].targets[name].metrics[metric] for r in reports]
                rows.append(
                    paired_row(protocol, name, metric, estimates, labels, level, target.counts)
                )
        if len([t for t in first.targets.values() if t.kind == "binary"]) > 1:
            for metric in first.macro:
                estimates = [r.results[protocol].macro[metric] for r in reports]
                rows.append(paired_row(protocol, "macro", metric, estimates, labels, level))
    return rows


def segment_rows(
    reports: list[SegmentReport], labels: list[str], level: float
) -> list[ComparisonRow]:
    task = f"segment ({reports[0].head})"
    names = list(reports[0].metrics) + (["mean"] if len(reports[0].metrics) > 1 else [])
    rows = []
    for name in names:
        for metric in ("dice", "iou"):
            estimates = [
                r.mean[metric] if name == "mean" else r.metrics[name][metric] for r in reports
            ]
            counts = reports[0].structure_counts.get(name)
            rows.append(paired_row(task, name, metric, estimates, labels, level, counts))
    return rows


def compare_markdown(report: CompareReport) -> str:
    labels = [e["label"] for e in report.encoders]
    table = []
    for row in report.rows:
        counts = ", ".join(format_counts(row.counts[s]) for s in SPLITS) if row.counts else ""
        cells = [row.task, row.target, counts, METRIC_NAMES.get(row.metric, row.metric)]
        for label in labels:
            cell = format_estimate(row.values[label])
            if label in row.differences:
                d = row.differences[label]
                mark = "*" if d.excludes(0.0) else ""
                cell += f" (Δ {format_signed(d.value)}{mark})"
            cells.append(cell)
        table.append(cells)
    lines = [
        "# Encoder comparison",
        "",
        *(f"- **{e['label']}**: `{e['source']}`" + _random_note(e) for e in report.encoders),
        "",
        f"Each cell: test metric [{format_percent(report.level)} CI]. Δ: difference from the "
        f"reference **{report.reference}**; * marks a difference whose paired-bootstrap "
        f"{format_percent(report.level)} "
        "interval excludes 0 (same images, same patient resamples for every encoder). "
        f"{COUNTS_HEADER}: images per split (positive/negative for binary targets).",
        interval_note(report.n_resamples, report.level),
        "",
        markdown_table(["task", "target", COUNTS_HEADER, "metric", *labels], table),
    ]
    if report.notes:
        lines += ["", "Notes:", *(f"- {note}" for note in report.notes)]
    return "\n".join(lines)


def compare_encoders(
    specs: Sequence[EncoderSpec],
    manifest: str | Path,
    out_dir: str | Path,
    options: EncodeOptions,
    *,
    target_specs: Sequence[tuple[str, TargetKind | None]] = (),
    structures: Sequence[str] = (),
    features: str = "cls",
    probe_config: ProbeConfig | None = None,
    segment_config: SegmentConfig | None = None,
    cache_dir: str | Path | None = None,
    fit_workers: int | None = None,
) -> CompareReport:
    """Probe (``target_specs``) and/or segment (``structures``) with every encoder; write
    ``compare.md`` / ``compare.json`` and each encoder's own reports in a sub-directory.

    ``fit_workers``: probes and heads fitted at the same time, with the same results as one at
    a time (:mod:`raddino.eval.concurrent_fits`; None: its default for the device).
    """
    if len(specs) < 2:
        raise ValueError(
            "compare needs at least two encoders (or one and --random-baseline/--pixel-baseline)"
        )
    if not target_specs and not structures:
        raise ValueError("nothing to compare: give --targets and/or --masks")
    check_device(options.device)
    out = Path(out_dir)
    cache = Path(cache_dir) if cache_dir is not None else out / "features"
    labels = unique_labels(specs)
    probe_config = probe_config or ProbeConfig()
    segment_config = segment_config or SegmentConfig()
    check_device(probe_config.device)
    check_device(segment_config.device)
    check_pixel_specs(specs, segment_config if structures else None)  # before any encoding
    rows: list[ComparisonRow] = []
    notes: list[str] = []
    level, n_resamples = probe_config.level, probe_config.n_resamples
    prepared = []
    if structures:  # first: its stores (full patch tokens) serve the probes as well
        seg_inputs = load_segment_inputs(manifest, list(structures), segment_config.seed)
        prepared = [
            prepare_segmentation(s, seg_inputs, options, segment_config, cache) for s in specs
        ]
    probe_jobs: list[Callable[[], ProbeReport]] = []
    if target_specs:
        inputs = load_probe_inputs(manifest, target_specs, probe_config.seed)
        encoded = []
        models = [p.model for p in prepared] or [None] * len(specs)
        for spec, model in zip(specs, models, strict=True):
            request = (
                pooled_request(features)
                if model is None
                else segment_request(segment_config, model.config.depth)
            )
            encoded.append(encode_for_eval(spec, inputs.paths, cache, request, options, model))
        valid = np.logical_and.reduce([e.valid for e in encoded])
        used = inputs.usable(valid)
        probe_jobs = [
            partial(_probe_one, spec, label, inputs, enc, used, features, probe_config, out)
            for spec, label, enc in zip(specs, labels, encoded, strict=True)
        ]
    seg_jobs: list[Callable[[], SegmentReport]] = []
    if structures:
        valid = np.logical_and.reduce([p.encoded.valid for p in prepared])
        used = np.flatnonzero(valid & (seg_inputs.splits.split != ""))
        seg_jobs = [
            partial(_segment_one, spec, label, seg_inputs, prep, used, segment_config, out)
            for spec, label, prep in zip(specs, labels, prepared, strict=True)
        ]
    threads = fit_threads(probe_config, segment_config, bool(probe_jobs), bool(seg_jobs))
    if fit_workers is None:
        devices = {probe_config.device, segment_config.device}
        fit_workers = min(default_fit_workers(d, threads) for d in devices)
    # the heads first: they take longest, and the probes fill the pool's last gaps
    results = run_fits([*seg_jobs, *probe_jobs], fit_workers, threads)
    seg_reports, reports = results[: len(seg_jobs)], results[len(seg_jobs) :]
    if target_specs:
        rows += probe_rows(reports, labels, probe_config.level)
        notes += merged_notes(labels, [r.notes for r in reports])
    if structures:
        rows += segment_rows(seg_reports, labels, segment_config.level)
        notes += merged_notes(labels, [r.notes for r in seg_reports])
        if not target_specs:
            level, n_resamples = segment_config.level, segment_config.n_resamples
    encoders = [{**s.describe(), "label": label} for s, label in zip(specs, labels, strict=True)]
    report = CompareReport(encoders, rows, n_resamples, level, list(dict.fromkeys(notes)))
    write_json(out / "compare.json", report.to_dict())
    write_text(out / "compare.md", compare_markdown(report))
    return report


def fit_threads(
    probe_config: ProbeConfig, segment_config: SegmentConfig, probes: bool, heads: bool
) -> int | None:
    """The intra-op threads of every fit of a comparison (one count: concurrent fits share it)."""
    fits = ((probe_config, probes), (segment_config, heads))
    counts = {config.cpu_threads for config, used in fits if used}
    if len(counts) > 1:
        raise ValueError(
            f"probes on {probe_config.cpu_threads} CPU threads and heads on "
            f"{segment_config.cpu_threads}: a comparison fits both with one count"
        )
    return counts.pop() if counts else None


def _probe_one(
    spec: EncoderSpec,
    label: str,
    inputs: ProbeInputs,
    encoded: EncodedRows,
    used: np.ndarray,
    features: str,
    config: ProbeConfig,
    out: Path,
) -> ProbeReport:
    """One encoder's probes, written to its sub-directory."""
    print(f"probing {label}", file=sys.stderr)
    report = probe_encoded(spec, inputs, encoded, used, features, config)
    _write_probe(report, out / encoder_dir_name(label))
    return report


def _segment_one(
    spec: EncoderSpec,
    label: str,
    inputs: SegmentInputs,
    prepared: PreparedSegmentation,
    used: np.ndarray,
    config: SegmentConfig,
    out: Path,
) -> SegmentReport:
    """One encoder's segmentation head, written to its sub-directory."""
    print(f"segmenting with {label}", file=sys.stderr)
    folder = out / encoder_dir_name(label) / "segment"
    report = segment_encoded(spec, inputs, prepared, used, config, folder)
    write_segment_report(report, folder)
    return report


def merged_notes(labels: list[str], notes: list[list[str]]) -> list[str]:
    """Every encoder's notes once: as they are when all encoders share them (data, resamples),
    prefixed by the encoder's label when not (e.g. a strength at the edge of its grid)."""
    shared = set(notes[0]).intersection(*notes[1:])
    merged = [note for note in notes[0] if note in shared]
    for label, own in zip(labels, notes, strict=True):
        merged += [f"{label}: {note}" for note in own if note not in shared]
    return merged


def _random_note(encoder: dict) -> str:
    return " (random initialisation)" if encoder["random_init"] else ""


def encoder_dir_name(label: str) -> str:
    """The sub-directory of the comparison that holds one encoder's results."""
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in label).strip("_") or "encoder"
