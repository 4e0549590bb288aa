"""The pre-training stream: deterministic samples, process-count independence, bad files."""

from __future__ import annotations

from pathlib import Path

import torch

from raddino.ssl.config import CropSection, TrainSection
from raddino.ssl.data import CropBatch, PretrainStream, StreamSampler, collate_crops, step_loader
from raddino.ssl.image_cache import grey_uint8, open_or_build
from tests.ssl.test_augment import PerViewReference

CROPS = CropSection(global_size=32, local_size=16, local_number=3, max_source_size=96)
PHOTOMETRIC = CropSection(
    global_size=32, local_size=16, local_number=2, max_source_size=96,
    rotation_degrees=10.0, flip_probability=0.5, blur_probability=0.5,
)  # fmt: skip


def paths_of(folder: Path) -> list[str]:
    return sorted(str(p) for p in folder.iterdir())


def views(batch: CropBatch) -> list[torch.Tensor]:
    return [*batch.globals_, *(batch.locals_ if batch.locals_ is not None else [])]


def sample_views(stream: PretrainStream, g: int) -> list[torch.Tensor]:
    """Sample ``g``'s finished views: globals, then locals."""
    return views(collate_crops([stream[g]]))


def test_sample_depends_only_on_its_number(pretrain_images: Path):
    first = PretrainStream(paths_of(pretrain_images), CROPS, seed=3, global_batch=4)
    second = PretrainStream(paths_of(pretrain_images), CROPS, seed=3, global_batch=4)
    a = sample_views(first, 17)
    second[5]  # another order of access must not matter
    b = sample_views(second, 17)
    assert all(torch.equal(x, y) for x, y in zip(a, b, strict=True))
    c = PretrainStream(paths_of(pretrain_images), CROPS, seed=4, global_batch=4)
    assert not torch.equal(a[0], sample_views(c, 17)[0])


def test_shapes_and_crop_major_collation(pretrain_images: Path):
    stream = PretrainStream(paths_of(pretrain_images), CROPS, seed=0, global_batch=2)
    batch = collate_crops([stream[0], stream[1]])
    assert batch.globals_.shape == (4, 3, 32, 32) and batch.locals_.shape == (6, 3, 16, 16)
    assert torch.equal(batch.globals_[1], sample_views(stream, 1)[0])  # crop 1 of image 1
    assert torch.equal(batch.globals_[2], sample_views(stream, 0)[1])  # crop 2 of image 0
    assert torch.equal(batch.locals_[5], sample_views(stream, 1)[4])  # local 3 of image 1


def test_batches_are_the_views_of_the_per_view_pipeline(pretrain_images: Path, tmp_path: Path):
    """What the loader hands the step (cached images, views finished in batches) is, bit for bit,
    what decoding each image and augmenting each view alone gave before."""
    paths = paths_of(pretrain_images)
    images = open_or_build(paths, 96, tmp_path, workers=0, progress=False)
    stream = PretrainStream(paths, PHOTOMETRIC, seed=1, global_batch=4, images=images)
    reference = PerViewReference(PHOTOMETRIC)
    for step in range(2):
        batch = collate_crops([stream[g] for g in range(4 * step, 4 * step + 4)])
        expected = []
        for g in range(4 * step, 4 * step + 4):
            image = grey_uint8(paths[int(stream.order(0)[g])], 96)
            expected.append(reference(image, stream.generator(g), 32))
        per_view = [expected[k][v] for v in range(4) for k in range(4)]
        assert all(torch.equal(a, b) for a, b in zip(views(batch), per_view, strict=True))


def test_loader_batches_do_not_depend_on_the_worker_count(pretrain_images: Path, tmp_path: Path):
    paths = paths_of(pretrain_images)
    images = open_or_build(paths, 96, tmp_path, workers=0, progress=False)
    stream = PretrainStream(paths, PHOTOMETRIC, seed=2, global_batch=4, images=images)
    runs = []
    for workers in (0, 1, 2):
        train = TrainSection(steps=4, batch_size=4, num_workers=workers, seed=2)
        loader = step_loader(stream, collate_crops, train, 1, 0, 1, torch.device("cpu"))
        runs.append([t for batch in loader for t in views(batch)])
    assert len(runs[0]) == 3 * 4 * 4
    for other in runs[1:]:
        assert all(torch.equal(a, b) for a, b in zip(runs[0], other, strict=True))


def test_every_epoch_visits_every_image_once(pretrain_images: Path):
    paths = paths_of(pretrain_images)
    stream = PretrainStream(paths, CROPS, seed=0, global_batch=4)
    n = len(paths)
    for epoch in range(2):
        seen = sorted(int(stream.order(epoch)[i]) for i in range(n))
        assert seen == list(range(n))
    assert not torch.equal(stream.order(0), stream.order(1))


def test_two_processes_share_the_samples_of_one():
    one = list(StreamSampler(start_step=2, end_step=4, batch_size=8, rank=0, world=1))
    rank0 = list(StreamSampler(2, 4, 4, rank=0, world=2))
    rank1 = list(StreamSampler(2, 4, 4, rank=1, world=2))
    assert one == rank0[:4] + rank1[:4] + rank0[4:] + rank1[4:]
    assert one[0] == 16  # resumes at step 2 of a global batch of 8


def test_unreadable_image_is_replaced_and_reported_once(
    pretrain_images: Path, tmp_path: Path, capsys
):
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\nbroken")
    stream = PretrainStream(
        [str(bad), *paths_of(pretrain_images)[:2]], CROPS, seed=0, global_batch=1
    )
    for g in range(6):
        stream[g]
    assert capsys.readouterr().err.count("bad.png") == 1


def test_high_resolution_phase_switches_global_crops(pretrain_images: Path):
    crops = CropSection(global_size=32, local_size=16, local_number=1, max_source_size=96,
                        high_res_start_step=2, high_res_size=48)  # fmt: skip
    stream = PretrainStream(paths_of(pretrain_images), crops, seed=0, global_batch=4)
    assert stream[7].globals_[0].shape[-1] == 32  # step 1
    assert stream[8].globals_[0].shape[-1] == 48  # step 2
