"""``raddino segment`` end to end: manifest -> cached patch tokens -> head -> Dice/IoU, overlays."""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch
from safetensors.torch import save_file

from raddino.atomic import write_csv_atomic
from raddino.data.manifest import read_manifest
from raddino.data.preprocess import PreprocessConfig
from raddino.devices import check_device
from raddino.eval import caveats
from raddino.eval.bootstrap import Estimate, PatientBootstrap, mean_of
from raddino.eval.concurrent_fits import RNG_LOCK
from raddino.eval.encoders import EncoderSpec
from raddino.eval.feature_cache import EncodedRows, FeatureRequest, encode_for_eval
from raddino.eval.metrics import weighted_mean
from raddino.eval.overlays import legend, save_overlay
from raddino.eval.seg_data import FeatureMaps, MaskSet, load_masks, mask_columns, take_rows
from raddino.eval.segment import SegmentConfig, predict, score, train_head
from raddino.eval.segmentation_heads import build_head, linear_blocks, upernet_blocks
from raddino.eval.splits import SPLITS, Splits, make_splits
from raddino.eval.tables import (
    format_counts,
    format_estimate,
    interval_note,
    markdown_table,
    write_json,
    write_text,
)
from raddino.eval.targets import UNKNOWN
from raddino.features.encode import EncodeOptions
from raddino.models.encoder import RadDino


@dataclass
class SegmentInputs:
    """The manifest's rows, mask columns (structure -> column) and splits."""

    manifest: Path
    rows: list[dict[str, str]]
    columns: dict[str, str]
    splits: Splits

    @property
    def paths(self) -> list[str]:
        return [row["path"] for row in self.rows]

    def annotated(self) -> np.ndarray:
        """(N, S) bool: rows with a mask file for each structure."""
        return np.array(
            [
                [(row.get(c) or "").strip().lower() not in UNKNOWN for c in self.columns.values()]
                for row in self.rows
            ],
            dtype=bool,
        ).reshape(len(self.rows), len(self.columns))


def load_segment_inputs(
    manifest: str | Path, structures: list[str], seed: int = 0
) -> SegmentInputs:
    """Read and check the manifest before anything is encoded."""
    manifest = Path(manifest)
    rows = read_manifest(manifest)
    if not rows:
        raise ValueError(f"{manifest}: the manifest has no rows")
    columns = mask_columns(rows, structures, str(manifest))
    splits = make_splits(rows, seed=seed, source=str(manifest))
    inputs = SegmentInputs(manifest, rows, columns, splits)
    annotated = inputs.annotated()
    for s, (structure, column) in enumerate(columns.items()):
        for name in ("train", "test"):
            if not annotated[splits.split == name, s].any():
                raise ValueError(
                    f"structure {structure!r} (column {column!r}) has no mask in the {name} split"
                )
    return inputs


def head_blocks(config: SegmentConfig, depth: int) -> tuple[int, ...]:
    """Blocks whose patch tokens feed the head."""
    if config.head == "upernet":
        return upernet_blocks(depth)
    return linear_blocks(depth, config.linear_layers)


@dataclass
class SegmentReport:
    """Everything ``raddino segment`` writes (per-image scores stay in memory for comparisons)."""

    encoder: dict
    head: str
    blocks: tuple[int, ...]
    manifest: str
    store: str
    counts: dict[str, int]
    notes: list[str]
    config: SegmentConfig
    history: list[dict[str, float]]
    metrics: dict[str, dict[str, Estimate]]
    mean: dict[str, Estimate]
    structure_counts: dict[str, dict[str, dict[str, int]]] = field(default_factory=dict)
    overlays: list[str] = field(default_factory=list)
    test_paths: list[str] = field(repr=False, default_factory=list)
    dice: np.ndarray = field(repr=False, default_factory=lambda: np.zeros((0, 0)))
    iou: np.ndarray = field(repr=False, default_factory=lambda: np.zeros((0, 0)))

    def to_dict(self) -> dict:
        return {
            "encoder": self.encoder,
            "head": self.head,
            "blocks": list(self.blocks),
            "manifest": self.manifest,
            "features_store": self.store,
            "counts": self.counts,
            "structure_counts": self.structure_counts,
            "notes": self.notes,
            "config": asdict(self.config),
            "history": self.history,
            "metrics": self.metrics,
            "mean": self.mean,
            "overlays": self.overlays,
        }


def segment_markdown(report: SegmentReport) -> str:
    c = report.counts
    rows = [
        [
            s,
            *(format_counts(report.structure_counts[s][split]) for split in SPLITS),
            format_estimate(m["dice"]),
            format_estimate(m["iou"]),
        ]
        for s, m in report.metrics.items()
    ]
    if len(report.metrics) > 1:
        rows.append(
            [
                "**mean**",
                *([""] * len(SPLITS)),
                format_estimate(report.mean["dice"]),
                format_estimate(report.mean["iou"]),
            ]
        )
    lines = [
        f"# Segmentation: {report.encoder['label']}, {report.head} head",
        "",
        f"- encoder: `{report.encoder['source']}` (frozen); blocks {list(report.blocks)}",
        f"- manifest: `{report.manifest}`: {c['rows']} rows, {c['used']} used, "
        f"{c['rejected']} unreadable; {c['train']} train, {c['val']} val, {c['test']} test",
        f"- trained {report.config.epochs} epochs; per-image Dice/IoU at the crop size, "
        f"threshold {report.config.threshold}; both masks empty counts as 1",
        f"- {interval_note(report.config.n_resamples, report.config.level)}",
        "",
        markdown_table(
            ["structure", *(f"{split} images" for split in SPLITS), "Dice", "IoU"], rows
        ),
    ]
    if report.overlays:
        lines += [
            "",
            f"Overlays (filled: prediction, outline: truth; {legend(list(report.metrics))}):",
        ]
        lines += [f"- `{path}`" for path in report.overlays]
    if report.notes:
        lines += ["", "Notes:", *(f"- {note}" for note in report.notes)]
    return "\n".join(lines)


def write_segment_report(report: SegmentReport, out_dir: str | Path) -> dict[str, Path]:
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    scores = (
        [path, structure, f"{report.dice[i, s]:.6f}", f"{report.iou[i, s]:.6f}"]
        for i, path in enumerate(report.test_paths)
        for s, structure in enumerate(report.metrics)
        if np.isfinite(report.dice[i, s])
    )
    per_image = write_csv_atomic(
        out / "scores_per_image.csv", ["path", "structure", "dice", "iou"], scores
    )
    return {
        "json": write_json(out / "segment.json", report.to_dict()),
        "markdown": write_text(out / "segment.md", segment_markdown(report)),
        "scores": per_image,
    }


def segment_notes(
    structure_counts: dict[str, dict[str, dict[str, int]]],
    metrics: dict[str, dict[str, Estimate]],
    mean: dict[str, Estimate],
    n_resamples: int,
) -> list[str]:
    """Caveats: structures with few annotated images in a split, undefined resamples."""
    notes = []
    for structure, counts in structure_counts.items():
        subject = f"structure {structure!r}"
        for split in SPLITS:
            few = caveats.few_cases(subject, split, {"annotated image": counts[split]["known"]})
            notes += [few] if few else []
        why = caveats.NO_ANNOTATION
        notes += caveats.undefined_resamples(subject, metrics[structure], n_resamples, why)
    if len(metrics) > 1:
        notes += caveats.undefined_resamples("mean over structures", mean, n_resamples, why)
    return notes


class PreparedSegmentation(NamedTuple):
    """An encoder's side of a segmentation: its rows' patch tokens, the masks at its crop, and
    the model (its depth picks the blocks, its preprocessing maps the masks)."""

    encoded: EncodedRows
    masks: MaskSet
    model: RadDino


def segment_encoded(
    spec: EncoderSpec,
    inputs: SegmentInputs,
    prepared: PreparedSegmentation,
    rows: np.ndarray,
    config: SegmentConfig,
    out_dir: Path | None,
) -> SegmentReport:
    """Train the head on the manifest ``rows`` (indices) and score it on their test split."""
    encoded, masks, model = prepared
    depth, preprocess = model.config.depth, model.preprocess_config
    blocks = head_blocks(config, depth)
    maps = FeatureMaps(encoded, blocks, depth - 1)
    splits = inputs.splits.subset(rows)
    train, val, test = (rows[splits.indices(s)] for s in ("train", "val", "test"))
    with RNG_LOCK, torch.random.fork_rng(devices=[]):  # fits may run in threads
        torch.manual_seed(config.seed)
        head = build_head(
            config.head, maps.embed_dim, len(masks.structures), len(blocks), config.channels
        )
    history = train_head(head, maps, masks, train, val, config)
    dice, iou = score(head, maps, masks, test, config)
    bootstrap = PatientBootstrap(
        splits.groups[splits.indices("test")], config.n_resamples, config.seed, config.level
    )
    metrics: dict[str, dict[str, Estimate]] = {}
    for s, structure in enumerate(masks.structures):
        columns = np.flatnonzero(np.isfinite(dice[:, s]))
        metrics[structure] = {
            name: bootstrap.estimate(weighted_mean, values[columns, s], values[columns, s], columns)
            for name, values in (("dice", dice), ("iou", iou))
        }
    mean = {m: mean_of([v[m] for v in metrics.values()], bootstrap.level) for m in ("dice", "iou")}
    structure_counts = {
        structure: {
            split: {"known": int(masks.known[rows[splits.indices(split)], s].sum())}
            for split in SPLITS
        }
        for s, structure in enumerate(masks.structures)
    }
    notes = [*splits.notes, *segment_notes(structure_counts, metrics, mean, config.n_resamples)]
    caveats.warn(notes)
    counts = {
        "rows": len(inputs.rows),
        "rejected": int((~encoded.valid).sum()),
        "used": len(rows),
        **splits.counts(),
        **{f"test_{s}": int(np.isfinite(dice[:, i]).sum()) for i, s in enumerate(masks.structures)},
    }
    report = SegmentReport(
        encoder=spec.describe(),
        head=config.head,
        blocks=blocks,
        manifest=str(inputs.manifest),
        store=str(encoded.store),
        counts=counts,
        notes=list(dict.fromkeys(notes)),
        config=config,
        history=history,
        metrics=metrics,
        mean=mean,
        structure_counts=structure_counts,
        test_paths=[inputs.rows[i]["path"] for i in test],
        dice=dice,
        iou=iou,
    )
    if out_dir is not None:
        out_dir = Path(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        save_file(
            {k: v.detach().cpu().contiguous() for k, v in head.state_dict().items()},
            str(out_dir / "head.safetensors"),
        )
        shown = test[: config.overlays]
        size = masks.masks.shape[-2:]
        for chunk, predicted in predict(head, maps, shown, size, config):
            truth = take_rows(masks.masks, chunk) > 0
            for k, row in enumerate(chunk):
                name = f"{len(report.overlays):03d}_{Path(inputs.rows[row]['path']).stem}.png"
                save_overlay(
                    inputs.rows[row]["path"],
                    predicted[k],
                    truth[k],
                    preprocess,
                    out_dir / "overlays" / name,
                )
                report.overlays.append(str(Path("overlays") / name))
    return report


def mask_cache_file(cache_root: Path, manifest: Path, preprocess: PreprocessConfig) -> Path:
    key = json.dumps([str(manifest.resolve()), preprocess.to_dict()], sort_keys=True)
    return cache_root / f"masks-{hashlib.sha256(key.encode()).hexdigest()[:12]}.npy"


def segment_request(config: SegmentConfig, depth: int) -> FeatureRequest:
    """The store a segmentation head needs: full patch tokens of its blocks (the last block's
    are the store's own); such a store also holds CLS and mean patch tokens."""
    blocks = head_blocks(config, depth)
    return FeatureRequest("full", tuple(b for b in blocks if b != depth - 1))


def prepare_segmentation(
    spec: EncoderSpec,
    inputs: SegmentInputs,
    options: EncodeOptions,
    config: SegmentConfig,
    cache: Path,
    model: RadDino | None = None,
) -> PreparedSegmentation:
    """Encode the patch tokens the head needs and read the masks at this encoder's crop size."""
    model = model if model is not None else spec.load()
    request = segment_request(config, model.config.depth)
    encoded = encode_for_eval(spec, inputs.paths, cache, request, options, model=model)
    use = encoded.valid & (inputs.splits.split != "")
    masked_rows = [
        row if use[i] else {**row, **dict.fromkeys(inputs.columns.values(), "")}
        for i, row in enumerate(inputs.rows)
    ]
    masks = load_masks(
        masked_rows,
        inputs.columns,
        inputs.manifest,
        model.preprocess_config,
        mask_cache_file(cache, inputs.manifest, model.preprocess_config),
        workers=options.num_workers,
        progress=options.progress,
    )
    return PreparedSegmentation(encoded, masks, model)


def segment_manifest(
    spec: EncoderSpec,
    manifest: str | Path,
    structures: list[str],
    out_dir: str | Path,
    options: EncodeOptions,
    config: SegmentConfig,
    cache_dir: str | Path | None = None,
) -> SegmentReport:
    """Encode (or reuse) patch tokens, train the head, score it, write the report."""
    check_device(options.device)
    check_device(config.device)
    inputs = load_segment_inputs(manifest, structures, config.seed)
    out = Path(out_dir)
    cache = Path(cache_dir) if cache_dir is not None else out / "features"
    prepared = prepare_segmentation(spec, inputs, options, config, cache)
    rows = np.flatnonzero(prepared.encoded.valid & (inputs.splits.split != ""))
    report = segment_encoded(spec, inputs, prepared, rows, config, out)
    write_segment_report(report, out)
    return report
