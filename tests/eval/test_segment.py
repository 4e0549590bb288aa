"""Segmentation on frozen features: both heads overfit a tiny set; inputs are checked."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from raddino.eval.caveats import EvaluationWarning
from raddino.eval.encoders import EncoderSpec
from raddino.eval.seg_data import FeatureMaps
from raddino.eval.segment import SegmentConfig, batches, score, train_head
from raddino.eval.segment_manifest import (
    head_blocks,
    load_segment_inputs,
    prepare_segmentation,
    segment_manifest,
)
from raddino.eval.segmentation_heads import build_head
from raddino.features.encode import EncodeOptions
from tests.eval.conftest import write_manifest

OPTIONS = EncodeOptions(num_workers=0, progress=False, batch_size=8)


def overfit(spec: EncoderSpec, manifest: Path, cache: Path, config: SegmentConfig):
    """Train on every image and score on the same images."""
    inputs = load_segment_inputs(manifest, ["disk"])
    encoded, masks, model = prepare_segmentation(spec, inputs, OPTIONS, config, cache)
    depth = model.config.depth
    maps = FeatureMaps(encoded, head_blocks(config, depth), depth - 1)
    rows = np.arange(len(inputs.rows))
    torch.manual_seed(0)
    head = build_head(config.head, maps.embed_dim, 1, len(maps.blocks), config.channels)
    history = train_head(head, maps, masks, rows, np.zeros(0, int), config)
    dice, _ = score(head, maps, masks, rows, config)
    return head, maps, dice, history


@pytest.mark.parametrize(
    "config",
    [
        SegmentConfig(head="linear", epochs=40, lr=1e-2, progress=False),
        SegmentConfig(head="upernet", epochs=25, lr=3e-3, channels=16, progress=False),
    ],
    ids=["linear", "upernet"],
)
def test_head_overfits_a_tiny_set(config, tiny_vit_dir, disk_cohort, tmp_path):
    spec = EncoderSpec(str(tiny_vit_dir), image_size=112)
    _, _, dice, history = overfit(spec, disk_cohort, tmp_path / "cache", config)
    assert history[-1]["loss"] < history[0]["loss"]
    assert dice.mean() > 0.9


def test_upernet_receives_four_distinct_blocks_at_four_scales(tiny_vit_dir, disk_cohort, tmp_path):
    spec = EncoderSpec(str(tiny_vit_dir), image_size=112)
    config = SegmentConfig(head="upernet", epochs=1, channels=8, progress=False)
    assert head_blocks(config, 4) == (0, 1, 2, 3)
    seen: list[list[torch.Tensor]] = []
    head, maps, _, _ = overfit(spec, disk_cohort, tmp_path / "cache", config)
    head.neck.register_forward_pre_hook(lambda _module, args: seen.append(args[0]))
    head(maps.batch(np.arange(4)))
    inputs = seen[-1]
    assert len(inputs) == 4 and all(x.shape == (4, 32, 8, 8) for x in inputs)
    for i in range(4):
        for j in range(i + 1, 4):
            assert not torch.allclose(inputs[i], inputs[j])
    scales = {tuple(level.shape[-2:]) for level in head.pyramid(inputs)}
    assert scales == {(32, 32), (16, 16), (8, 8), (4, 4)}


def test_segment_manifest_writes_report_and_overlays(tiny_vit_dir, disk_cohort, tmp_path):
    spec = EncoderSpec(str(tiny_vit_dir), image_size=112)
    config = SegmentConfig(epochs=5, lr=1e-2, n_resamples=200, overlays=2, progress=False)
    with pytest.warns(EvaluationWarning, match="4 annotated images in the val split"):
        report = segment_manifest(
            spec, disk_cohort, ["mask_disk"], tmp_path / "out", OPTIONS, config
        )
    disk = report.metrics["disk"]
    assert disk["dice"].low <= disk["dice"].value <= disk["dice"].high
    assert report.counts["test_disk"] == 4 and len(report.history) == 5
    assert report.structure_counts == {
        "disk": {"train": {"known": 16}, "val": {"known": 4}, "test": {"known": 4}}
    }
    # 16/4/4 images: val and test are thin, train is not; every test image is annotated, so no
    # resample lacks one and none is undefined
    assert [note.split(";")[0] for note in report.notes] == [
        "structure 'disk': 4 annotated images in the val split (fewer than 10)",
        "structure 'disk': 4 annotated images in the test split (fewer than 10)",
    ]
    markdown = (tmp_path / "out" / "segment.md").read_text()
    assert markdown.count("| disk | 16 | 4 | 4 |") == 1
    assert all(f"- {note}" in markdown for note in report.notes)
    saved = json.loads((tmp_path / "out" / "segment.json").read_text())
    assert saved["notes"] == report.notes
    assert saved["structure_counts"] == report.structure_counts
    assert (tmp_path / "out" / "head.safetensors").exists()
    overlays = sorted((tmp_path / "out" / "overlays").glob("*.png"))
    assert len(overlays) == 2 and Image.open(overlays[0]).size == (112, 112)
    with (tmp_path / "out" / "scores_per_image.csv").open() as handle:
        assert len(list(csv.DictReader(handle))) == 4


def copy_cohort(manifest: Path, tmp_path: Path, edit) -> Path:
    with manifest.open() as handle:
        rows = list(csv.DictReader(handle))
    for row in rows:
        for key in ("path", "mask_disk"):
            row[key] = str(manifest.parent / row[key])
    edit(rows)
    return write_manifest(tmp_path / "edited.csv", rows)


def test_mask_of_the_wrong_size_is_refused_naming_the_file(tiny_vit_dir, disk_cohort, tmp_path):
    small = tmp_path / "small_mask.png"
    Image.fromarray(np.zeros((50, 60), np.uint8)).save(small)

    def edit(rows):
        rows[3]["mask_disk"] = str(small)

    manifest = copy_cohort(disk_cohort, tmp_path, edit)
    spec = EncoderSpec(str(tiny_vit_dir), image_size=112)
    with pytest.raises(ValueError, match=r"small_mask\.png: 60x50 .* its image is 112x112"):
        segment_manifest(spec, manifest, ["disk"], tmp_path / "out", OPTIONS, SegmentConfig())


def test_missing_mask_column_and_unannotated_test_split_are_refused(disk_cohort, tmp_path):
    with pytest.raises(ValueError, match=r"lacks column.*'mask_heart'"):
        load_segment_inputs(disk_cohort, ["disk", "heart"])

    def edit(rows):
        for row in rows:
            if row["split"] == "test":
                row["mask_disk"] = ""

    manifest = copy_cohort(disk_cohort, tmp_path, edit)
    with pytest.raises(ValueError, match=r"'disk' .* has no mask in the test split"):
        load_segment_inputs(manifest, ["disk"])


@pytest.mark.parametrize("rows", [1, 2, 4, 5, 8, 9, 13])
@pytest.mark.parametrize("shuffle", [False, True])
def test_batches_cover_every_row_once_without_a_batch_of_one(rows: int, shuffle: bool) -> None:
    rng = np.random.default_rng(0) if shuffle else None
    chunks = batches(np.arange(rows), 4, rng)
    assert sorted(np.concatenate(chunks).tolist()) == list(range(rows))
    assert all(len(c) <= 5 for c in chunks)
    assert rows == 1 or all(len(c) > 1 for c in chunks)
