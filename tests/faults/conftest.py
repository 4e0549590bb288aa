"""Fixtures shared by the fault tests: pre-training images and one uninterrupted tiny run."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from PIL import Image

from raddino.ssl.checkpoint import list_checkpoints
from raddino.ssl.config import PretrainConfig, load_config
from raddino.ssl.trainer import pretrain
from tests.conftest import synthetic_radiograph
from tests.ssl.conftest import TINY_OVERRIDES

RUN_OVERRIDES = [*TINY_OVERRIDES, "train.deterministic=true", "train.keep_last=5"]
"""The tiny run of tests/ssl (6 steps, checkpoints at 2, 4 and 6), deterministic, all kept."""


def run_config(*extra: str) -> PretrainConfig:
    return load_config(None, [*RUN_OVERRIDES, *extra])


@pytest.fixture(autouse=True)
def one_intra_op_thread():
    """Runs in this process compare bit for bit with runs made earlier in it (the session's
    uninterrupted run): the same thread count for all, whatever a command set before."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def pretrain_images(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("fault_pretrain_images")
    for index in range(8):
        image = synthetic_radiograph(110 + 4 * index, 100 + 3 * index, seed=index)
        Image.fromarray(image).save(folder / f"{index}.png")
    return folder


@pytest.fixture(scope="session")
def uninterrupted_run(pretrain_images: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The run every interrupted run in this process must end equal to."""
    run = tmp_path_factory.mktemp("uninterrupted_run")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as one_intra_op_thread (session fixtures are set up before it)
    try:
        pretrain(run_config(), [str(pretrain_images)], run, progress=False)
    finally:
        torch.set_num_threads(threads)
    assert [step for step, _ in list_checkpoints(run)] == [2, 4, 6]
    return run


def prepare_inputs(folder: Path, count: int) -> Path:
    """A manifest of ``count`` radiographs and one unreadable file, for ``data preprocess``."""
    (folder / "img").mkdir(parents=True)
    lines = ["path,label"]
    for index in range(count):
        name = f"img/{index:03d}.png"
        Image.fromarray(synthetic_radiograph(560, 520, seed=index)).save(folder / name)
        lines.append(f"{name},{index % 2}")
    (folder / "img" / "bad.png").write_bytes(b"not a png")
    lines.append("img/bad.png,0")
    (folder / "manifest.csv").write_text("\n".join(lines) + "\n")
    return folder / "manifest.csv"
