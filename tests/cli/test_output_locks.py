"""One writer per output: every command that writes a folder refuses a second writer cleanly
(exit 2, one line naming the holder, no traceback) and leaves the holder's output loadable."""

from __future__ import annotations

import csv
import errno
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from raddino import load_features
from raddino.cli.main import main
from raddino.demo.options import DemoOptions, default_config_path
from raddino.demo.pipeline import Demo
from raddino.features import encode as encode_module
from raddino.features.store import StoreSummary
from raddino.models.encoder import RadDino
from raddino.output_lock import LOCK_FILE, OutputInUseError, OutputLock
from tests.demo.conftest import run_cli
from tests.lock_holder import held_by_another_process
from tests.ssl.conftest import TINY_OVERRIDES


def subprocess_env() -> dict[str, str]:
    return dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path), OMP_NUM_THREADS="1")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def encode_command(inputs: list[Path], model: Path, out: Path) -> list[str]:
    return [sys.executable, "-m", "raddino", "encode", *map(str, inputs), "--model", str(model),
            "--out", str(out), "--workers", "0", "--batch-size", "4", "--dtype", "fp32",
            "--compile", "off", "--no-progress"]  # fmt: skip


def assert_refused(err: str, command: str, out: Path, holder_pid: int) -> None:
    """One line, ``raddino COMMAND: error: DIR is in use ... pid PID ...``, no traceback."""
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith(f"raddino {command}: error: {out} is in use by another writer: ")
    assert f"pid {holder_pid} on " in lines[0] and "since " in lines[0]


def open_fifo_for_writing(fifo: Path, reader: subprocess.Popen) -> int:
    """Wait until ``reader`` opens ``fifo`` (it then blocks reading it); return our write end."""
    deadline = time.monotonic() + 180
    while True:
        try:
            return os.open(fifo, os.O_WRONLY | os.O_NONBLOCK)
        except OSError as error:
            if error.errno != errno.ENXIO:  # ENXIO: nobody has it open for reading yet
                raise
        if reader.poll() is not None:
            raise AssertionError(f"the encode ended before reading its first input: {reader.args}")
        if time.monotonic() > deadline:
            raise AssertionError("the encode did not reach its first input in 180 s")
        time.sleep(0.02)


def test_two_concurrent_encodes_one_is_refused_and_the_other_completes(
    image_folder: Path, small_hf_dir: Path, tmp_path: Path
):
    # The first run's first input is a FIFO: it opens it after taking the store's lock and then
    # waits for data, so it is certainly mid-run, holding the store, while the second one runs.
    # (The second run is not given the FIFO: were it let in, it would finish, not hang.)
    fifo = tmp_path / "waiting.png"
    os.mkfifo(fifo)
    out = tmp_path / "store"
    first = subprocess.Popen(encode_command([fifo, image_folder], small_hf_dir, out),
                             env=subprocess_env(), stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True)  # fmt: skip
    try:
        write_end = open_fifo_for_writing(fifo, first)
        try:
            second = subprocess.run(encode_command([image_folder], small_hf_dir, out),
                                    env=subprocess_env(), capture_output=True, text=True,
                                    timeout=300)  # fmt: skip
        finally:
            os.close(write_end)  # the first run reads an empty file and goes on
        out_text, err_text = first.communicate(timeout=300)
    finally:
        if first.poll() is None:
            first.kill()
    assert second.returncode == 2, second.stderr
    assert_refused(second.stderr, "encode", out, first.pid)
    assert "encoded" not in second.stdout
    assert first.returncode == 0, err_text
    assert "encoded 5 of 6 images, rejected 1" in out_text
    features = load_features(out)
    assert sorted(Path(p).name for p in features.paths) == [f"img{i}.png" for i in range(5)]
    assert features.rejects == [(str(fifo), "file is empty (0 bytes)")]
    assert not (out / LOCK_FILE).exists()


def test_encode_into_a_held_store_is_refused_and_the_store_still_loads(
    image_folder: Path, small_hf_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
):
    out = tmp_path / "store"
    images = sorted(image_folder.glob("*.png"))
    argv = ["encode", "--model", str(small_hf_dir), "--out", str(out), "--workers", "0",
            "--dtype", "fp32", "--compile", "off", "--no-progress"]  # fmt: skip
    assert main([*argv, str(images[0])]) == 0
    before = load_features(out)
    capsys.readouterr()
    with held_by_another_process(out, "raddino encode --out store") as holder:
        assert main([*argv, *map(str, images)]) == 2
        captured = capsys.readouterr()
        assert_refused(captured.err, "encode", out, holder.pid)
        assert "(raddino encode --out store)" in captured.err
        assert "encoded" not in captured.out
        assert load_features(out).paths == before.paths  # untouched, index included
    assert main([*argv, *map(str, images)]) == 0
    assert len(load_features(out).paths) == 5


def test_pretrain_into_a_held_run_directory_is_refused(
    image_folder: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
):
    run = tmp_path / "run"
    argv = ["pretrain", *TINY_OVERRIDES, "train.steps=2", "--data", str(image_folder),
            "--out", str(run), "--no-progress"]  # fmt: skip
    with held_by_another_process(run, "raddino pretrain --out run") as holder:
        assert main(argv) == 2
        assert_refused(capsys.readouterr().err, "pretrain", run, holder.pid)
        assert sorted(p.name for p in run.iterdir()) == [LOCK_FILE]
    assert main(argv) == 0
    assert "trained steps 0 -> 2" in capsys.readouterr().out
    assert RadDino.from_pretrained(run).config.embed_dim == 48
    assert not (run / LOCK_FILE).exists()


def test_preprocess_into_a_held_folder_is_refused(
    image_folder: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
):
    manifest = image_folder / "manifest.csv"
    manifest.write_text("path\n" + "".join(f"img{i}.png\n" for i in range(2)))
    out = tmp_path / "prepared"
    argv = ["data", "preprocess", "--manifest", str(manifest), "--out", str(out),
            "--workers", "0", "--size", "64", "--no-progress"]  # fmt: skip
    with held_by_another_process(out, "raddino data preprocess --out prepared") as holder:
        assert main(argv) == 2
        assert_refused(capsys.readouterr().err, "data", out, holder.pid)
        assert sorted(p.name for p in out.iterdir()) == [LOCK_FILE]
    assert main(argv) == 0
    with (out / "manifest.csv").open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert [Path(r["path"]).name for r in rows] == ["img0.png", "img1.png"]
    assert all((out / r["path"]).is_file() for r in rows)


def test_synth_into_a_held_folder_is_refused_before_fetching_anything(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
):
    out = tmp_path / "cohort"
    cache = tmp_path / "empty-cache"  # a fetch would fail here: refusal comes first
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("RADDINO_CACHE", str(cache))
        with held_by_another_process(out, "raddino synth --out cohort") as holder:
            code = main(["synth", "--out", str(out), "--n", "2", "--size", "64", "--workers",
                         "0", "--no-progress"])  # fmt: skip
            assert code == 2
            assert_refused(capsys.readouterr().err, "synth", out, holder.pid)
            assert sorted(p.name for p in out.iterdir()) == [LOCK_FILE]
    assert not cache.exists()


def test_demo_into_a_held_folder_is_refused_before_any_work(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
):
    out = tmp_path / "demo"
    with held_by_another_process(out, "raddino demo --out demo") as holder:
        assert run_cli(["demo", "--out", str(out), "--quick", "--no-progress"]) == 2
        assert_refused(capsys.readouterr().err, "demo", out, holder.pid)
        assert sorted(p.name for p in out.iterdir()) == [LOCK_FILE]


def test_the_demo_holds_its_folder_while_its_stages_run(tmp_path: Path):
    demo = Demo(DemoOptions(out=tmp_path / "demo", config=default_config_path(), quick=True))
    seen = []

    def stages_run(stages):
        with pytest.raises(OutputInUseError):
            OutputLock(tmp_path / "demo").acquire()
        seen.append(len(stages))
        return []

    demo.runner.run = stages_run
    assert demo.run() == []
    assert seen and (tmp_path / "demo" / "timings.json").is_file()
    with OutputLock(tmp_path / "demo"):  # released afterwards
        pass


def test_torchrun_pretrain_into_a_held_run_directory_stops_every_process(
    image_folder: Path, tmp_path: Path
):
    # rank 0 is refused and every rank must stop with it, not wait at the next collective
    run = tmp_path / "run"
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2",
               "--master-addr", "127.0.0.1", "--master-port", str(free_port()),
               "-m", "raddino", "pretrain", *TINY_OVERRIDES, "train.steps=2",
               "--data", str(image_folder), "--out", str(run), "--no-progress"]  # fmt: skip
    with held_by_another_process(run, "raddino pretrain --out run") as holder:
        result = subprocess.run(command, env=subprocess_env(), capture_output=True, text=True,
                                timeout=300)  # fmt: skip
        assert sorted(p.name for p in run.iterdir()) == [LOCK_FILE]
    assert result.returncode != 0
    # both ranks print the error; their lines share one stderr and may interleave, so count the
    # messages rather than the lines
    refusal = f"raddino pretrain: error: {run} is in use by another writer: pid {holder.pid} on"
    assert result.stderr.count(refusal) == 2, result.stderr[-3000:]
    assert result.stderr.count("raddino pretrain: error:") == 2


def test_encode_reports_no_store_when_inputs_are_missing_from_it(
    image_folder: Path, small_hf_dir: Path, tmp_path: Path, capsys, monkeypatch
):
    def incomplete(*args, **kwargs) -> StoreSummary:
        return StoreSummary(encoded=4, rejected=0, missing=1)

    monkeypatch.setattr(encode_module, "encode_to_store", incomplete)
    out = tmp_path / "store"
    code = main(["encode", str(image_folder), "--model", str(small_hf_dir), "--out", str(out),
                 "--workers", "0", "--no-progress"])  # fmt: skip
    captured = capsys.readouterr()
    assert code == 1
    assert f"1 of 5 images are neither encoded nor rejected in {out}" in captured.err
    assert "features store:" not in captured.out
