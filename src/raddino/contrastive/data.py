"""Image-report pairs: manifests with a ``report`` column, one augmented view per image.

The images go through the image-only recipe's own stream (:class:`raddino.ssl.data.
PretrainStream`): sample ``g`` of the run is the same image, decoded the same way (grey uint8,
the longer side shrunk to ``crops.max_source_size``; once per run, into the run's image cache,
:mod:`raddino.ssl.image_cache`), with a generator seeded by ``(seed, g)``
alone, so a resumed run and any number of processes see exactly the pairs of an uninterrupted
single-process run. An unreadable image is replaced by the next one of the epoch's order,
together with its report.

The view is one random resized crop at ``crops.global_size`` covering ``crops.global_scale`` of
the image, followed by the flip, rotation and photometric changes the ``crops`` section asks for
(:meth:`raddino.ssl.augment.MultiCrop.view`); ``presets/clip_tiny_cpu.yaml`` turns all of those
off, as ``tiny_cpu`` does. Like the image-only recipe, this one reads every row it is given: to
keep validation and test images out of both, give both the same training-split manifest.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from tokenizers import Tokenizer

from raddino.contrastive.tokenizer import ReportTokens
from raddino.data.manifest import ManifestError, read_manifest
from raddino.ssl.config import CropSection
from raddino.ssl.data import PretrainStream
from raddino.ssl.image_cache import ImageCache


@dataclass
class Pairs:
    """Image paths and their reports, in manifest order (first occurrence of each path)."""

    paths: list[str]
    reports: list[str]
    skipped_empty: int  # rows whose report was empty


def read_pairs(inputs: Sequence[str | Path]) -> Pairs:
    """(image, report) pairs of manifest CSVs; a folder, an image file or a manifest without a
    ``report`` column is refused with a one-line message naming it."""
    found: dict[str, str] = {}
    skipped = 0
    for item in inputs:
        item = Path(item)
        if item.suffix.lower() != ".csv" or item.is_dir():
            raise ManifestError(
                f"{item}: the contrastive recipe trains on (image, report) pairs; give manifest "
                "CSVs with 'path' and 'report' columns"
            )
        if not item.is_file():
            raise FileNotFoundError(f"{item}: no such file")
        rows = read_manifest(item)
        if rows and "report" not in rows[0]:
            columns = ", ".join(rows[0])
            raise ManifestError(
                f"{item}: no 'report' column (found: {columns}); the contrastive recipe trains "
                "on (image, report) pairs"
            )
        for row in rows:
            report = (row.get("report") or "").strip()
            if not report:
                skipped += 1
            elif row["path"] not in found:
                found[row["path"]] = report
    if not found:
        names = ", ".join(str(i) for i in inputs)
        raise ManifestError(f"{names}: no images with a report to pre-train on")
    return Pairs(list(found), list(found.values()), skipped)


class PairStream(PretrainStream):
    """Map-style dataset of the run's sample number ``g`` -> (view (3, S, S), token ids (L,),
    attention mask (L,)); ``images``: the run's decoded images (as the image-only recipe's
    stream), else every image is decoded when it is read."""

    def __init__(
        self,
        pairs: Pairs,
        crops: CropSection,
        seed: int,
        global_batch: int,
        tokenizer: Tokenizer,
        images: ImageCache | None = None,
    ) -> None:
        super().__init__(pairs.paths, crops, seed, global_batch, images)
        self.tokens = ReportTokens(tokenizer, pairs.reports)

    def __getitem__(self, g: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        index, image = self.load_indexed(g)
        size = self.global_size(g // self.global_batch)
        view = self.augment.view(image, size, self.crops.global_scale, self.generator(g))
        ids, mask = self.tokens[index]
        return view, ids, mask


@dataclass
class PairBatch:
    """images (b, 3, S, S), input_ids (b, L), attention_mask (b, L)."""

    images: torch.Tensor
    input_ids: torch.Tensor
    attention_mask: torch.Tensor

    def pin_memory(self) -> PairBatch:
        return PairBatch(
            self.images.pin_memory(), self.input_ids.pin_memory(), self.attention_mask.pin_memory()
        )

    def to(self, device: torch.device) -> PairBatch:
        return PairBatch(
            self.images.to(device, non_blocking=True),
            self.input_ids.to(device, non_blocking=True),
            self.attention_mask.to(device, non_blocking=True),
        )


def collate_pairs(samples: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]) -> PairBatch:
    images, ids, masks = zip(*samples, strict=True)
    return PairBatch(torch.stack(images), torch.stack(ids), torch.stack(masks))
