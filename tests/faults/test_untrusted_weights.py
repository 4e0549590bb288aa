"""Weights that would run code when unpickled are refused, and the code never runs.

Each file below holds an object whose ``__reduce__`` makes an unpickler call ``open(MARKER,
"w")``. Nothing here unpickles it: that the payload is live is shown by reading its pickle
opcodes (a call of ``open`` by REDUCE), and every loader must refuse the file with an error
that names it while the marker file never appears.
"""

from __future__ import annotations

import io
import pickle
import pickletools
import zipfile
from pathlib import Path

import pytest
import torch

from raddino.cli.main import main
from raddino.models.encoder import RadDino
from raddino.models.formats import WeightFormatError
from raddino.ssl.checkpoint import load_latest_checkpoint, save_checkpoint
from tests.conftest import SMALL_HF_CONFIG, make_hf_model


class CreatesMarker:
    """Unpickling this calls ``open(marker, "w")``, which creates the marker file."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def pickle_bytes(path: Path) -> bytes:
    """The pickle inside a torch file (zip: ``*/data.pkl``; legacy or plain: the file)."""
    if zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as archive:
            name = next(n for n in archive.namelist() if n.endswith("data.pkl"))
            return archive.read(name)
    return path.read_bytes()


def called_globals(data: bytes) -> set[str]:
    """``module.name`` of every global a pickle imports, found without running it."""
    found, strings = set(), []
    stream = io.BytesIO(data)
    while True:  # a legacy torch file holds several pickles in a row
        try:
            ops = list(pickletools.genops(stream))
        except ValueError:
            break
        for op, arg, _ in ops:
            if op.name in ("SHORT_BINUNICODE", "BINUNICODE", "UNICODE"):
                strings.append(arg)
            elif op.name == "GLOBAL":
                found.add(arg.replace(" ", "."))
            elif op.name == "STACK_GLOBAL":
                found.add(".".join(strings[-2:]))
        if stream.tell() >= len(data):
            break
    return found


def live(path: Path) -> bool:
    return {"builtins.open", "io.open"} & called_globals(pickle_bytes(path)) != set()


@pytest.fixture
def marker(tmp_path: Path) -> Path:
    return tmp_path / "PWNED"


def evil_zip(path: Path, marker: Path) -> Path:
    torch.save({"model": {"weight": torch.zeros(2)}, "payload": CreatesMarker(marker)}, path)
    return path


def evil_legacy(path: Path, marker: Path) -> Path:
    state = {"pos_embed": torch.zeros(1), "payload": CreatesMarker(marker)}
    torch.save(state, path, _use_new_zipfile_serialization=False)
    return path


def evil_plain_pickle(path: Path, marker: Path) -> Path:
    path.write_bytes(pickle.dumps({"cls_token": CreatesMarker(marker)}, protocol=2))
    return path


FILES = {"zip": evil_zip, "legacy": evil_legacy, "plain_pickle": evil_plain_pickle}


@pytest.mark.parametrize("kind", sorted(FILES))
@pytest.mark.parametrize("suffix", [".pth", ".bin", ".pt"])
def test_from_pretrained_refuses_a_pickle_that_runs_code(
    tmp_path: Path, marker: Path, kind: str, suffix: str
):
    path = FILES[kind](tmp_path / f"weights{suffix}", marker)
    assert live(path)
    with pytest.raises(WeightFormatError, match=f"{path.name}.*weights_only"):
        RadDino.from_pretrained(path)
    assert not marker.exists()


def test_a_pickle_named_safetensors_is_refused(tmp_path: Path, marker: Path):
    path = evil_zip(tmp_path / "weights.safetensors", marker)
    with pytest.raises(WeightFormatError, match=r"weights\.safetensors"):
        RadDino.from_pretrained(path)
    assert not marker.exists()


def test_a_hugging_face_directory_with_an_evil_bin_is_refused(tmp_path: Path, marker: Path):
    folder = make_hf_model(tmp_path / "hf", **SMALL_HF_CONFIG)
    (folder / "model.safetensors").unlink()
    evil_zip(folder / "pytorch_model.bin", marker)
    assert live(folder / "pytorch_model.bin")
    with pytest.raises(WeightFormatError, match=r"pytorch_model\.bin"):
        RadDino.from_pretrained(folder)
    assert not marker.exists()


def test_a_run_directory_with_an_evil_checkpoint_is_refused(tmp_path: Path, marker: Path):
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    (run / "config.yaml").write_text("{}\n")
    evil_zip(run / "checkpoints" / "step_0000002.pt", marker)
    with pytest.raises(WeightFormatError, match=r"step_0000002\.pt"):
        RadDino.from_pretrained(run)
    assert not marker.exists()


def test_encode_refuses_evil_weights_with_one_line(
    tmp_path: Path, marker: Path, image_folder: Path, capsys: pytest.CaptureFixture[str]
):
    weights = evil_zip(tmp_path / "weights.pth", marker)
    out = tmp_path / "store"
    code = main(["encode", str(image_folder), "--model", str(weights), "--out", str(out),
                 "--workers", "0", "--no-progress"])  # fmt: skip
    assert code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("raddino encode: error:"), err
    assert str(weights) in err[0] and "objects other than tensors, not loaded" in err[0]
    assert "io.open" in err[0]  # what was refused
    assert not marker.exists() and not out.exists()


def test_resume_skips_an_evil_checkpoint_without_running_it(
    tmp_path: Path, marker: Path, capsys: pytest.CaptureFixture[str]
):
    good = {"step": 2, "model": {}, "optimizer": {}, "rng": torch.get_rng_state()}
    save_checkpoint(tmp_path, 2, good, keep_last=5)
    evil_zip(tmp_path / "checkpoints" / "step_0000004.pt", marker)
    path, state = load_latest_checkpoint(tmp_path)
    assert path.name == "step_0000002.pt" and state["step"] == 2
    assert "step_0000004.pt: unreadable checkpoint" in capsys.readouterr().err
    assert not marker.exists()
