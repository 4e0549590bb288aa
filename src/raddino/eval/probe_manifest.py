"""``raddino probe`` end to end: manifest -> cached features -> probes -> JSON, Markdown, CSV."""

from __future__ import annotations

import sys
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from raddino.atomic import write_csv_atomic
from raddino.data.manifest import read_manifest
from raddino.devices import check_device
from raddino.eval import caveats
from raddino.eval.encoders import EncoderSpec
from raddino.eval.feature_cache import (
    EncodedRows,
    encode_for_eval,
    pooled_features,
    pooled_request,
)
from raddino.eval.probe import ProbeConfig, ProtocolResult, check_targets, run_probe
from raddino.eval.splits import SPLITS, Splits, make_splits
from raddino.eval.tables import (
    METRIC_NAMES,
    PROTOCOL_NAMES,
    format_counts,
    format_estimate,
    format_hyper,
    interval_note,
    markdown_table,
    write_json,
    write_text,
)
from raddino.eval.targets import Target, TargetKind, read_targets
from raddino.features.encode import EncodeOptions


@dataclass
class ProbeInputs:
    """The manifest's rows, the targets (values per row) and the splits."""

    manifest: Path
    rows: list[dict[str, str]]
    targets: list[Target]
    splits: Splits

    @property
    def paths(self) -> list[str]:
        return [row["path"] for row in self.rows]

    def usable(self, valid: np.ndarray) -> np.ndarray:
        """Row indices with features (``valid`` (N,) bool) and a split."""
        return np.flatnonzero(valid & (self.splits.split != ""))

    def subset(self, rows: np.ndarray) -> tuple[list[Target], Splits]:
        targets = [Target(t.name, t.kind, t.values[rows], t.positive) for t in self.targets]
        return targets, self.splits.subset(rows)


def load_probe_inputs(
    manifest: str | Path, target_specs: Sequence[tuple[str, TargetKind | None]], seed: int = 0
) -> ProbeInputs:
    """Read and check everything that does not need features, so errors come before encoding."""
    manifest = Path(manifest)
    rows = read_manifest(manifest)
    if not rows:
        raise ValueError(f"{manifest}: the manifest has no rows")
    targets = read_targets(rows, target_specs, source=str(manifest))
    splits = make_splits(rows, seed=seed, source=str(manifest))
    check_targets(targets, splits)
    return ProbeInputs(manifest, rows, targets, splits)


@dataclass
class ProbeReport:
    """Everything ``raddino probe`` writes."""

    encoder: dict
    features: str
    manifest: str
    store: str
    counts: dict[str, int]
    notes: list[str]
    config: ProbeConfig
    results: dict[str, ProtocolResult]
    test_paths: list[str] = field(repr=False, default_factory=list)
    test_patients: list[str] = field(repr=False, default_factory=list)

    def to_dict(self) -> dict:
        protocols = {}
        for name, result in self.results.items():
            protocols[name] = {
                "targets": {
                    t.name: {
                        "kind": t.kind,
                        "positive": t.positive or None,
                        "counts": t.counts,
                        "selected": t.hyper,
                        "metrics": t.metrics,
                    }
                    for t in result.targets.values()
                },
                "macro": result.macro,
            }
        config = asdict(self.config)
        return {
            "encoder": self.encoder,
            "features": self.features,
            "manifest": self.manifest,
            "features_store": self.store,
            "counts": self.counts,
            "notes": self.notes,
            "config": config,
            "protocols": protocols,
        }


def probe_tables(results: dict[str, ProtocolResult]) -> str:
    """One Markdown section per protocol: a classification table and a regression table, each
    target with its images per split (and positives/negatives for binary targets)."""
    parts: list[str] = []
    for name, result in results.items():
        parts.append(f"## {PROTOCOL_NAMES.get(name, name)}")
        binary = [t for t in result.targets.values() if t.kind == "binary"]
        continuous = [t for t in result.targets.values() if t.kind == "continuous"]
        if binary:
            rows = [
                [
                    t.name + (f" (= {t.positive})" if t.positive not in ("", "1") else ""),
                    *(format_counts(t.counts[split]) for split in SPLITS),
                    format_estimate(t.metrics["auroc"]),
                    format_estimate(t.metrics["auprc"]),
                    format_hyper(t.hyper),
                ]
                for t in binary
            ]
            if len(binary) > 1:
                rows.append(
                    [
                        "**macro**",
                        *([""] * len(SPLITS)),
                        format_estimate(result.macro["auroc"]),
                        format_estimate(result.macro["auprc"]),
                        "",
                    ]
                )
            counts = [f"{split} n (pos/neg)" for split in SPLITS]
            header = ["target", *counts, "AUROC", "AUPRC", "selected"]
            parts.append(markdown_table(header, rows))
        if continuous:
            rows = [
                [t.name, *(format_counts(t.counts[split]) for split in SPLITS)]
                + [format_estimate(t.metrics[m]) for m in ("mae", "r2", "pearson_r")]
                + [format_hyper(t.hyper)]
                for t in continuous
            ]
            header = [
                "target",
                *(f"{split} n" for split in SPLITS),
                METRIC_NAMES["mae"],
                METRIC_NAMES["r2"],
                METRIC_NAMES["pearson_r"],
                "selected",
            ]
            parts.append(markdown_table(header, rows))
    return "\n\n".join(parts)


def probe_markdown(report: ProbeReport) -> str:
    c = report.counts
    lines = [
        f"# Probe: {report.encoder['label']}",
        "",
        f"- encoder: `{report.encoder['source']}`"
        + (" (random initialisation)" if report.encoder.get("random_init") else ""),
        f"- features: {report.features} (frozen)",
        f"- manifest: `{report.manifest}`: {c['rows']} rows, {c['used']} used, "
        f"{c['rejected']} unreadable",
        f"- splits: {c['train']} train, {c['val']} val, {c['test']} test images; "
        f"{c['test_patients']} test patients",
        f"- {interval_note(report.config.n_resamples, report.config.level)}",
        "",
        probe_tables(report.results),
    ]
    if report.notes:
        lines += ["", "Notes:", *(f"- {note}" for note in report.notes)]
    return "\n".join(lines)


def write_predictions(path: Path, report: ProbeReport) -> Path:
    """Test predictions: protocol, target, path, patient_id, label, score."""
    rows = (
        [
            protocol,
            t.name,
            report.test_paths[column],
            report.test_patients[column],
            f"{label:g}",
            f"{score:.6g}",
        ]
        for protocol, result in report.results.items()
        for t in result.targets.values()
        for column, label, score in zip(t.columns, t.y, t.score, strict=True)
    )
    header = ["protocol", "target", "path", "patient_id", "label", "score"]
    return write_csv_atomic(path, header, rows)


def write_probe_report(report: ProbeReport, out_dir: str | Path) -> dict[str, Path]:
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    return {
        "json": write_json(out / "probe.json", report.to_dict()),
        "markdown": write_text(out / "probe.md", probe_markdown(report)),
        "predictions": write_predictions(out / "predictions.csv", report),
    }


def probe_encoded(
    spec: EncoderSpec,
    inputs: ProbeInputs,
    encoded: EncodedRows,
    rows: np.ndarray,
    features: str,
    config: ProbeConfig,
) -> ProbeReport:
    """Probe the manifest ``rows`` (indices) of already encoded features."""
    x = pooled_features(encoded, rows, features)
    targets, splits = inputs.subset(rows)
    print(
        f"probing {len(targets)} targets ({', '.join(config.protocols)}) on {x.shape[1]}-dim "
        f"{features} features of {len(rows)} images; {config.n_resamples} bootstrap resamples",
        file=sys.stderr,
    )
    caveats.warn(splits.notes)
    results, bootstrap = run_probe(x, targets, splits, config)
    notes = [*splits.notes, *(note for result in results.values() for note in result.notes)]
    test = rows[splits.indices("test")]
    counts = {
        "rows": len(inputs.rows),
        "rejected": int((~encoded.valid).sum()),
        "used": len(rows),
        **splits.counts(),
        "test_patients": bootstrap.n_patients,
    }
    return ProbeReport(
        encoder=spec.describe(),
        features=features,
        manifest=str(inputs.manifest),
        store=str(encoded.store),
        counts=counts,
        notes=list(dict.fromkeys(notes)),
        config=config,
        results=results,
        test_paths=[inputs.rows[i]["path"] for i in test],
        test_patients=[str(g) for g in splits.groups[splits.indices("test")]],
    )


def probe_manifest(
    spec: EncoderSpec,
    manifest: str | Path,
    target_specs: Sequence[tuple[str, TargetKind | None]],
    out_dir: str | Path,
    options: EncodeOptions,
    config: ProbeConfig,
    features: str = "cls",
    cache_dir: str | Path | None = None,
) -> ProbeReport:
    """Encode (or reuse) features of the manifest, probe every target, write the report."""
    check_device(options.device)
    check_device(config.device)
    inputs = load_probe_inputs(manifest, target_specs, config.seed)
    cache = Path(cache_dir) if cache_dir is not None else Path(out_dir) / "features"
    encoded = encode_for_eval(spec, inputs.paths, cache, pooled_request(features), options)
    report = probe_encoded(spec, inputs, encoded, inputs.usable(encoded.valid), features, config)
    write_probe_report(report, out_dir)
    return report
