"""CPU jobs decode in threads: batches in input order, failures as reasons, torch threads kept."""

from __future__ import annotations

import threading
from pathlib import Path

import torch

from raddino.data.preprocess import PreprocessConfig, load_crop
from raddino.features.encode import ImageFiles, decode_in_threads


class RecordingFiles(ImageFiles):
    """ImageFiles that notes which thread decoded each item with how many torch threads."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.seen: list[tuple[str, int]] = []

    def __getitem__(self, index: int):
        self.seen.append((threading.current_thread().name, torch.get_num_threads()))
        return super().__getitem__(index)


def test_batches_come_in_input_order_with_failures_as_reasons(image_folder: Path):
    paths = sorted(str(p) for p in image_folder.iterdir())
    broken = image_folder / "broken.png"
    broken.write_bytes(b"\x89PNG\r\n\x1a\nnot really")
    paths.insert(2, str(broken))
    config = PreprocessConfig()
    dataset = RecordingFiles(paths, config, max_pixels=10**8)
    before = torch.get_num_threads()

    batches = list(decode_in_threads(dataset, batch_size=2, workers=2))

    assert [len(b.paths) + len(b.rejects) for b in batches] == [2, 2, 2]
    assert [p for b in batches for p in b.paths] == [p for p in paths if p != str(broken)]
    assert [path for b in batches for path, _ in b.rejects] == [str(broken)]
    for batch in batches:
        for row, path in enumerate(batch.paths):
            assert torch.equal(batch.pixels[row], load_crop(path, config))
    main = threading.current_thread().name
    assert all(name != main and threads == 1 for name, threads in dataset.seen)
    assert torch.get_num_threads() == before


def test_stopping_early_ends_the_threads_and_restores_torch_threads(image_folder: Path):
    paths = sorted(str(p) for p in image_folder.iterdir())
    before = torch.get_num_threads()
    batches = decode_in_threads(ImageFiles(paths, PreprocessConfig(), 10**8), 1, workers=2)
    first = next(batches)
    batches.close()
    assert first.paths == paths[:1]
    assert torch.get_num_threads() == before
    assert not [t for t in threading.enumerate() if t.name.startswith("ThreadPoolExecutor")]
