"""The run's decoded-image cache: round trip, rebuilds, unreadable images, unfinished builds."""

from __future__ import annotations

import os
import pickle
import shutil
import time
from pathlib import Path

import pytest
import torch

from raddino.ssl.config import CropSection, load_config
from raddino.ssl.data import PretrainStream
from raddino.ssl.image_cache import CACHE_DIR, ImageCache, grey_uint8, open_or_build
from raddino.ssl.metrics import read_metrics
from raddino.ssl.trainer import pretrain
from tests.ssl.conftest import TINY_OVERRIDES

CROPS = CropSection(global_size=32, local_size=16, local_number=2, max_source_size=96)


def paths_of(folder: Path) -> list[str]:
    return sorted(str(p) for p in folder.iterdir())


def cache_dirs(run_dir: Path) -> list[Path]:
    return sorted((run_dir / CACHE_DIR).iterdir())


def broken_png(folder: Path) -> str:
    path = folder / "broken.png"
    path.write_bytes(b"\x89PNG\r\n\x1a\nbroken")
    return str(path)


def test_cache_holds_each_image_as_decoding_gives_it(pretrain_images: Path, tmp_path: Path):
    paths = paths_of(pretrain_images)
    cache = open_or_build(paths, 96, tmp_path, workers=2, progress=False)
    assert len(cache) == len(paths)
    for i, path in enumerate(paths):
        assert torch.equal(cache.image(i), grey_uint8(path, 96))
    expected_bytes = sum(grey_uint8(p, 96).numel() for p in paths)
    assert (cache.directory / "pixels.u8").stat().st_size == expected_bytes


def test_reopening_reuses_the_cache(pretrain_images: Path, tmp_path: Path):
    paths = paths_of(pretrain_images)
    first = open_or_build(paths, 96, tmp_path, workers=0, progress=False)
    written = (first.directory / "pixels.u8").stat()
    second = open_or_build(paths, 96, tmp_path, workers=0, progress=False)
    again = (second.directory / "pixels.u8").stat()
    assert (again.st_ino, again.st_mtime_ns) == (written.st_ino, written.st_mtime_ns)


@pytest.mark.parametrize("change", ["list", "max_source_size", "file"])
def test_a_changed_image_list_size_or_file_rebuilds_and_drops_the_old_cache(
    pretrain_images: Path, tmp_path: Path, change: str
):
    images = tmp_path / "images"
    shutil.copytree(pretrain_images, images)
    paths, side = paths_of(images), 96
    run_dir = tmp_path / "run"
    old = open_or_build(paths, side, run_dir, workers=0, progress=False)
    if change == "list":
        paths = paths[1:]
    elif change == "max_source_size":
        side = 64
    else:  # the same name, other pixels
        shutil.copyfile(paths[1], paths[0])
        os.utime(paths[0], ns=(1, 1))
    new = open_or_build(paths, side, run_dir, workers=0, progress=False)
    assert new.directory != old.directory and cache_dirs(run_dir) == [new.directory]
    assert len(new) == len(paths)
    assert torch.equal(new.image(0), grey_uint8(paths[0], side))


def test_an_unfinished_build_is_redone(pretrain_images: Path, tmp_path: Path):
    paths = paths_of(pretrain_images)
    done = open_or_build(paths, 96, tmp_path, workers=0, progress=False)
    (done.directory / "meta.json").unlink()  # as if killed before the rename
    (done.directory / "pixels.u8").write_bytes(b"")
    leftover = done.directory.parent / ".tmp-leftover"
    leftover.mkdir()
    redone = open_or_build(paths, 96, tmp_path, workers=0, progress=False)
    assert cache_dirs(tmp_path) == [redone.directory]
    assert torch.equal(redone.image(3), grey_uint8(paths[3], 96))


def test_unreadable_image_is_reported_once_and_replaced_like_without_the_cache(
    pretrain_images: Path, tmp_path: Path, capsys: pytest.CaptureFixture
):
    paths = [broken_png(tmp_path), *paths_of(pretrain_images)[:3]]
    cache = open_or_build(paths, 96, tmp_path / "run", workers=0, progress=False)
    assert capsys.readouterr().err.count("broken.png") == 1
    assert cache.image(0) is None and not cache.readable(0) and cache.readable(1)
    cached = PretrainStream(paths, CROPS, seed=0, global_batch=2, images=cache)
    decoding = PretrainStream(paths, CROPS, seed=0, global_batch=2)
    for g in range(12):  # three epochs: the broken image's place moves in the order
        index, image = cached.load_indexed(g)
        expected_index, expected = decoding.load_indexed(g)
        assert index == expected_index != 0 and torch.equal(image, expected)
    assert capsys.readouterr().err.count("broken.png") == 1  # the decoding stream's own report


def test_a_run_without_readable_images_is_refused(tmp_path: Path):
    with pytest.raises(RuntimeError, match="none of the pre-training images"):
        open_or_build([broken_png(tmp_path)], 96, tmp_path / "run", workers=0, progress=False)


def test_pickled_cache_leaves_the_pixels_behind(pretrain_images: Path, tmp_path: Path):
    paths = paths_of(pretrain_images)
    cache = open_or_build(paths, 96, tmp_path, workers=0, progress=False)
    cache.image(0)  # maps the pixels
    data = pickle.dumps(cache)
    assert len(data) < 0.1 * (cache.directory / "pixels.u8").stat().st_size
    copy: ImageCache = pickle.loads(data)
    assert torch.equal(copy.image(5), cache.image(5))


def test_a_run_decodes_its_images_once_and_its_continuation_reuses_them(
    pretrain_images: Path, tmp_path: Path
):
    run = tmp_path / "run"
    overrides = [*TINY_OVERRIDES, "train.checkpoint_every=2"]
    pretrain(load_config(None, [*overrides, "train.steps=2"]), [str(pretrain_images)], run,
             progress=False)  # fmt: skip
    [cache] = cache_dirs(run)
    written = (cache / "pixels.u8").stat()
    pretrain(load_config(None, [*overrides, "train.steps=4"]), [str(pretrain_images)], run,
             resume=True, progress=False)  # fmt: skip
    assert [row["step"] for row in read_metrics(run)] == [0, 1, 2, 3]
    assert cache_dirs(run) == [cache]
    again = (cache / "pixels.u8").stat()
    assert (again.st_ino, again.st_mtime_ns) == (written.st_ino, written.st_mtime_ns)


def _cache_in_process(rank: int, init: str, paths: list[str], run_dir: str, out: str) -> None:
    """One of two gloo processes: the run's cache through ``run_image_cache``, the outcome as
    ``out/RANK.json``."""
    import json
    import multiprocessing

    import torch.distributed as dist

    from raddino.ssl import image_cache
    from raddino.ssl.distributed import DistEnv

    multiprocessing.set_start_method("fork", force=True)  # decoding workers as under torchrun
    dist.init_process_group("gloo", init_method=f"file://{init}", rank=rank, world_size=2)
    image_cache.HEARTBEAT_S = 0.0  # a heartbeat after every image
    env = DistEnv(rank, 2, rank, torch.device("cpu"))
    try:
        cache = image_cache.run_image_cache(paths, 96, Path(run_dir), env, progress=False)
        outcome = {"cache": cache.directory.name, "first": cache.image(0).flatten().tolist()}
    except RuntimeError as error:
        outcome = {"error": str(error)}
    finally:
        dist.destroy_process_group()
    Path(out, f"{rank}.json").write_text(json.dumps(outcome))


def outcomes_of_two_processes(paths: list[str], tmp_path: Path) -> list[dict]:
    import json

    import torch.multiprocessing as mp

    args = (str(tmp_path / "init"), paths, str(tmp_path / "run"), str(tmp_path))
    context = mp.start_processes(_cache_in_process, args=args, nprocs=2, join=False)
    deadline = time.monotonic() + 120
    while not context.join(timeout=1):
        if time.monotonic() > deadline:
            for process in context.processes:
                process.kill()
            pytest.fail("the processes did not finish: one waits for the other")
    return [json.loads((tmp_path / f"{rank}.json").read_text()) for rank in (0, 1)]


def test_under_two_processes_the_first_builds_and_the_second_waits_through_heartbeats(
    pretrain_images: Path, tmp_path: Path
):
    paths = paths_of(pretrain_images)
    first, second = outcomes_of_two_processes(paths, tmp_path)
    assert (
        first["cache"] == second["cache"] and cache_dirs(tmp_path / "run")[0].name == first["cache"]
    )
    assert first["first"] == second["first"] == grey_uint8(paths[0], 96).flatten().tolist()


def test_under_two_processes_a_failed_build_stops_both(tmp_path: Path):
    first, second = outcomes_of_two_processes([broken_png(tmp_path)], tmp_path)
    assert "none of the pre-training images" in first["error"]
    assert first == second
