"""Pre-training data: a deterministic stream of augmented samples.

Sample ``g`` of the run (``g = step * global_batch + k``) is image ``perm(epoch)[g % N]`` with
``epoch = g // N``, augmented with a generator seeded by ``(seed, g)``. Everything is a function
of ``g``, so the data position in a checkpoint is just the step, a resumed run sees exactly the
images and crops it would have seen, and 1 process with batch 2b sees what 2 processes with
batch b see together. Process ``rank`` takes samples ``k`` in ``[rank * b, (rank + 1) * b)``.

The trainer reads the images from the run's decoded-image cache (:mod:`raddino.ssl.image_cache`,
each image decoded once per run). A sample is its uint8 views with their random draws
(:class:`raddino.ssl.augment.Cuts`); :func:`collate_crops` finishes a batch's views of one size
together, in a loader worker or, with ``train.num_workers: 0``, in the training process between
steps: the same crops either way, bit for bit.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import torch
from torch.utils.data import DataLoader, Dataset, Sampler
from tqdm.auto import tqdm

from raddino.ssl.augment import Cuts, MultiCrop, finish_views
from raddino.ssl.config import CropSection, TrainSection
from raddino.ssl.image_cache import UNREADABLE, ImageCache, grey_uint8


def permutation(n: int, seed: int, epoch: int) -> torch.Tensor:
    """The image order of one epoch (N,)."""
    generator = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    return torch.randperm(n, generator=generator)


class PretrainStream(Dataset):
    """Map-style dataset indexed by the run's global sample number ``g``: sample ``g``'s
    :class:`Cuts` (uint8 views and their draws); :func:`collate_crops` finishes a batch of them.

    ``images``: the run's decoded images (:mod:`raddino.ssl.image_cache`), else every image is
    decoded when it is read."""

    def __init__(
        self,
        paths: Sequence[str],
        crops: CropSection,
        seed: int,
        global_batch: int,
        images: ImageCache | None = None,
    ) -> None:
        if not paths:
            raise ValueError("no images to pre-train on")
        if images is not None and len(images) != len(paths):
            raise ValueError(f"the image cache holds {len(images)} images, not {len(paths)}")
        self.images = images
        self.paths = list(paths)
        self.crops = crops
        self.seed = seed
        self.global_batch = global_batch
        self.augment = MultiCrop(crops)
        self._epoch = -1
        self._order = torch.empty(0, dtype=torch.long)
        self.warned: set[str] = set()

    def __len__(self) -> int:  # the stream is unbounded; the sampler decides what is read
        return sys.maxsize

    def global_size(self, step: int) -> int:
        start, size = self.crops.high_res_start_step, self.crops.high_res_size
        return (
            size
            if start is not None and size is not None and step >= start
            else self.crops.global_size
        )

    def order(self, epoch: int) -> torch.Tensor:
        """Image order of ``epoch`` (cached: consecutive samples share it)."""
        if epoch != self._epoch:
            self._order = permutation(len(self.paths), self.seed, epoch)
            self._epoch = epoch
        return self._order

    def load(self, g: int) -> torch.Tensor:
        """The image of sample ``g``: (1, H, W) uint8. An unreadable file is reported once and
        replaced, deterministically, by the next image of the epoch's order."""
        return self.load_indexed(g)[1]

    def load_indexed(self, g: int) -> tuple[int, torch.Tensor]:
        """:meth:`load`, with the index in ``paths`` of the image it read (another than sample
        ``g``'s own when that one is unreadable)."""
        epoch, position = divmod(g, len(self.paths))
        order = self.order(epoch)
        for offset in range(len(self.paths)):
            index = int(order[(position + offset) % len(self.paths)])
            if self.images is not None:  # unreadable images were reported when it was built
                image = self.images.image(index)
                if image is not None:
                    return index, image
                continue
            path = self.paths[index]
            try:
                return index, grey_uint8(path, self.crops.max_source_size)
            except UNREADABLE as error:
                if path not in self.warned:
                    self.warned.add(path)
                    print(f"warning: skipping unreadable image {error}", file=sys.stderr)
        raise RuntimeError("none of the pre-training images could be read")

    def generator(self, g: int) -> torch.Generator:
        """The augmentation generator of sample ``g``, seeded by ``(seed, g)`` alone."""
        return torch.Generator().manual_seed(self.seed * 1_000_003 + 7919 * g + 1)

    def __getitem__(self, g: int) -> Cuts:
        rng = self.generator(g)
        return self.augment.cuts(self.load(g), rng, self.global_size(g // self.global_batch))


class StreamSampler(Sampler[int]):
    """This process's sample numbers, step after step, from ``start_step`` to ``end_step``."""

    def __init__(self, start_step: int, end_step: int, batch_size: int, rank: int, world: int):
        self.start_step, self.end_step = start_step, end_step
        self.batch_size, self.rank, self.world = batch_size, rank, world

    def __len__(self) -> int:
        return max(0, self.end_step - self.start_step) * self.batch_size

    def __iter__(self) -> Iterator[int]:
        global_batch = self.batch_size * self.world
        for step in range(self.start_step, self.end_step):
            first = step * global_batch + self.rank * self.batch_size
            yield from range(first, first + self.batch_size)


@dataclass
class CropBatch:
    """Crop-major stacks: globals (2B, 3, S, S) = [crop 1 of every image, crop 2 of every image],
    locals (N_local * B, 3, s, s) likewise, or None without local crops."""

    globals_: torch.Tensor
    locals_: torch.Tensor | None

    def pin_memory(self) -> CropBatch:
        return CropBatch(
            self.globals_.pin_memory(),
            None if self.locals_ is None else self.locals_.pin_memory(),
        )


def collate_crops(samples: list[Cuts]) -> CropBatch:
    """Crop-major stacks of the samples' views, each size finished in one batch by
    :func:`raddino.ssl.augment.finish_views` (RAD-DINO's normalisation)."""
    n_globals, n_locals = len(samples[0].globals_), len(samples[0].locals_)
    order = [(i, s) for i in range(n_globals) for s in samples]
    globals_ = finish_views(
        torch.stack([s.globals_[i] for i, s in order]), [s.global_draws[i] for i, s in order]
    )
    locals_ = None
    if n_locals:
        order = [(i, s) for i in range(n_locals) for s in samples]
        locals_ = finish_views(
            torch.stack([s.locals_[i] for i, s in order]), [s.local_draws[i] for i, s in order]
        )
    return CropBatch(globals_, locals_)


def step_loader(
    stream: Dataset,
    collate: Callable,
    train: TrainSection,
    start_step: int,
    rank: int,
    world_size: int,
    device: torch.device,
) -> DataLoader:
    """The batches of steps ``start_step`` .. ``train.steps`` for this process, in either recipe.

    Workers are seeded from a generator of their own, so the global RNG (dropout, drop path)
    stays untouched; every sample's augmentation is seeded by its sample number anyway.
    """
    return DataLoader(
        stream,
        batch_size=train.batch_size,
        sampler=StreamSampler(start_step, train.steps, train.batch_size, rank, world_size),
        num_workers=train.num_workers,
        collate_fn=collate,
        pin_memory=device.type == "cuda",
        persistent_workers=False,
        generator=torch.Generator().manual_seed(train.seed),
    )


def step_progress(train: TrainSection, start_step: int, description: str, enabled: bool) -> tqdm:
    """The progress bar of a pre-training run, in steps, on stderr."""
    return tqdm(
        total=train.steps,
        initial=start_step,
        unit="step",
        desc=description,
        disable=not enabled,
        file=sys.stderr,
        dynamic_ncols=True,
    )
