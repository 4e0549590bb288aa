"""``torchrun -m raddino encode``: several processes write the store one process writes.

Every run here uses one intra-op thread and the same batch size, so that the one- and
two-process runs put every image through the same arithmetic: each process encodes whole
batches of the one-process run (:func:`rank_share`), and the comparisons are exact.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from raddino import load_features
from raddino.cli.main import main
from raddino.features.encode import EncodeOptions, encode_to_store
from raddino.features.ranks import (
    RANKS_DIR,
    compare_jobs,
    describe_job,
    rank_share,
    rank_store_dir,
)
from raddino.models.encoder import RadDino
from raddino.output_lock import LOCK_FILE
from tests.conftest import synthetic_radiograph

# 12 inputs in batches of 2: process 0 of 2 encodes inputs 0-5, process 1 inputs 6-11
NAMES = [*(f"img{i:02d}.png" for i in range(3)), "broken.png",
         *(f"img{i:02d}.png" for i in range(3, 7)), "waiting.png",
         *(f"img{i:02d}.png" for i in range(7, 10))]  # fmt: skip
WAITING = NAMES.index("waiting.png")  # an empty file; a FIFO while a run is to be killed
SETTINGS = ["--workers", "0", "--batch-size", "2", "--shard-size", "2", "--dtype", "fp32",
            "--compile", "off", "--patch-tokens", "full", "--layers", "0",
            "--no-progress"]  # fmt: skip


@contextmanager
def one_thread() -> Iterator[None]:
    """The thread count of the processes torchrun starts (OMP_NUM_THREADS=1)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def inputs(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    folder = tmp_path_factory.mktemp("images")
    for index, name in enumerate(NAMES):
        Image.fromarray(synthetic_radiograph(260, 300, seed=index)).save(folder / name)
    (folder / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n broken")
    (folder / "waiting.png").write_bytes(b"")
    return [folder / name for name in NAMES]


@pytest.fixture(scope="module")
def reference(
    inputs: list[Path], small_hf_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> Path:
    """The store of one process."""
    out = tmp_path_factory.mktemp("reference") / "store"
    with one_thread():
        code = main(["encode", *map(str, inputs), "--model", str(small_hf_dir), "--out", str(out),
                     *SETTINGS])  # fmt: skip
    assert code == 0
    return out


def torchrun(inputs: list[Path], model: Path, out: Path) -> subprocess.Popen:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2",
               "--master-addr", "127.0.0.1", "--master-port", str(port), "-m", "raddino",
               "encode", *map(str, inputs), "--model", str(model), "--out", str(out),
               *SETTINGS]  # fmt: skip
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path), OMP_NUM_THREADS="1")
    return subprocess.Popen(
        command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )


def assert_same_store(store: Path, reference: Path) -> None:
    """The same paths, rejects and arrays, bit for bit; the same files but for the split of
    rows into shards; nothing of the processes' own stores left."""
    got, expected = load_features(store), load_features(reference)
    assert got.paths == expected.paths and len(got.paths) == 10
    assert got.rejects == expected.rejects and len(got.rejects) == 2
    assert got.meta == expected.meta
    for name in ("cls", "patches"):
        assert np.array_equal(np.asarray(getattr(got, name)), np.asarray(getattr(expected, name)))
    assert np.array_equal(got.layers[0].cls, expected.layers[0].cls)
    assert np.array_equal(np.asarray(got.layers[0].patches), np.asarray(expected.layers[0].patches))
    for name in ("rejects.csv", "meta.json"):
        assert (store / name).read_bytes() == (reference / name).read_bytes(), name
    assert not (store / RANKS_DIR).exists() and not (store / LOCK_FILE).exists()


def test_two_processes_write_the_store_one_process_writes(
    inputs: list[Path], small_hf_dir: Path, reference: Path, tmp_path: Path
):
    out = tmp_path / "store"
    run = torchrun(inputs, small_hf_dir, out)
    stdout, stderr = run.communicate(timeout=300)
    assert run.returncode == 0, stderr[-3000:]
    assert stdout.count("encoded 10 of 12 images, rejected 2") == 1  # the first process speaks
    assert_same_store(out, reference)


def finished_shards(store: Path) -> int:
    shards = store / "shards"
    return len([p for p in shards.iterdir() if p.name.isdigit()]) if shards.is_dir() else 0


def test_a_killed_process_resumes_with_the_same_command(
    inputs: list[Path], small_hf_dir: Path, reference: Path, tmp_path: Path
):
    # Process 1 writes a shard of its first batch, then blocks opening the FIFO of its second:
    # it is certainly mid-share when it is killed (kill -9, by the pid its store's lock names).
    out, waiting = tmp_path / "store", inputs[WAITING]
    waiting.unlink()
    os.mkfifo(waiting)
    try:
        run = torchrun(inputs, small_hf_dir, out)
        second = rank_store_dir(out, 1)
        deadline = time.monotonic() + 240
        while finished_shards(second) < 1:
            assert run.poll() is None, run.communicate()[1][-3000:]
            assert time.monotonic() < deadline, "process 1 wrote no shard in 240 s"
            time.sleep(0.05)
        holder = json.loads((second / LOCK_FILE).read_text())
        os.kill(holder["pid"], signal.SIGKILL)
        run.communicate(timeout=120)  # torchrun stops process 0 and fails
        assert run.returncode != 0
    finally:
        waiting.unlink()
        waiting.write_bytes(b"")
    assert not (out / "index.csv").exists() and finished_shards(second) == 1

    again = torchrun(inputs, small_hf_dir, out)
    stdout, stderr = again.communicate(timeout=300)
    assert again.returncode == 0, stderr[-3000:]
    assert "encoded 10 of 12 images, rejected 2" in stdout
    assert_same_store(out, reference)


def test_one_process_finishes_what_three_processes_left(
    inputs: list[Path], small_hf_dir: Path, reference: Path, tmp_path: Path
):
    """The number of processes may change between runs: what each left is taken as done."""
    paths = [str(p) for p in inputs]
    options = EncodeOptions(batch_size=2, num_workers=0, dtype=torch.float32, compile="off",
                            patch_tokens="full", layers=(0,), shard_size=2,
                            progress=False)  # fmt: skip
    model = RadDino.from_pretrained(small_hf_dir)
    out = tmp_path / "store"
    with one_thread():
        encode_to_store(model, [], out, options, str(small_hf_dir))  # created by process 0
        # processes 0, 1 and 2 of a killed run each finished a batch of their share
        for rank, done in enumerate([paths[0:2], paths[4:6], paths[8:10]]):
            encode_to_store(model, done, rank_store_dir(out, rank), options, str(small_hf_dir))
        summary = encode_to_store(model, paths, out, options, str(small_hf_dir))
    assert (summary.encoded, summary.rejected, summary.missing) == (10, 2, 0)
    assert_same_store(out, reference)


@pytest.mark.parametrize("count", [0, 1, 5, 12, 13])
@pytest.mark.parametrize("world", [1, 2, 3, 5])
def test_process_shares_are_whole_batches_covering_every_path_once(count: int, world: int):
    todo = [f"p{i}" for i in range(count)]
    shares = [rank_share(todo, rank, world, batch_size=4) for rank in range(world)]
    assert [p for share in shares for p in share] == todo  # contiguous, in order, all of them
    assert all(len(share) % 4 == 0 for share in shares[:-1])
    sizes = [-(-len(share) // 4) for share in shares]  # batches per process
    assert max(sizes) - min(sizes) <= 1


@pytest.mark.parametrize(
    ("order", "batch_size", "message"),
    [
        (["a.png", "c.png"], 2, "process 1 found 2 inputs, process 0 found 2 (other paths): "
         "every process must see the same inputs (the same paths on every node)"),
        (["a.png"], 2, "process 1 found 1 inputs, process 0 found 2: every process must see"),
        (["a.png", "b.png"], 16, "process 1 would encode with other settings than process 0 "
         "(batch_size)"),
    ],
)  # fmt: skip
def test_processes_given_other_inputs_or_settings_are_stopped(
    order: list[str], batch_size: int, message: str
):
    meta = {"model_sha256": "0" * 64, "dtype": "float32"}
    first = describe_job(["a.png", "b.png"], {**meta, "model_path": "rad-dino"}, 2)
    compare_jobs([first, describe_job(["a.png", "b.png"], {**meta, "model_path": "../x"}, 2)])
    with pytest.raises(ValueError) as error:
        compare_jobs([first, describe_job(order, meta, batch_size)])
    assert str(error.value).startswith(message)
