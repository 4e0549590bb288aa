"""``raddino encode``: good files encoded, bad files listed, resumable after kill -9."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from raddino import load_features
from raddino.cli.main import main
from raddino.models.encoder import RadDino
from tests.conftest import onednn_fuses_bf16, synthetic_radiograph


def add_bad_files(folder: Path) -> dict[str, str]:
    """Unreadable files of several kinds; returns name -> expected reason fragment."""
    good = folder / "img0.png"
    (folder / "truncated.png").write_bytes(good.read_bytes()[: len(good.read_bytes()) // 2])
    (folder / "empty.png").write_bytes(b"")
    (folder / "notes.dcm").write_text("this is not a DICOM file\n")
    return {"truncated.png": "", "empty.png": "empty", "notes.dcm": ""}


def read_rejects(store: Path) -> dict[str, str]:
    with (store / "rejects.csv").open(newline="") as handle:
        return {Path(row["path"]).name: row["reason"] for row in csv.DictReader(handle)}


def test_folder_with_good_and_bad_files(
    image_folder: Path, small_hf_dir: Path, tmp_path: Path, capsys
):
    bad = add_bad_files(image_folder)
    out = tmp_path / "store"
    code = main(["encode", str(image_folder), "--model", str(small_hf_dir), "--out", str(out),
                 "--workers", "0", "--batch-size", "2", "--dtype", "fp32",
                 "--no-progress"])  # fmt: skip
    assert code == 0
    printed = capsys.readouterr().out
    assert "encoded 5 of 8 images, rejected 3" in printed
    features = load_features(out)
    names = [Path(p).name for p in features.paths]
    assert names == [f"img{i}.png" for i in range(5)]
    rejects = read_rejects(out)
    assert set(rejects) == set(bad)
    assert "empty" in rejects["empty.png"].lower()
    expected = RadDino.from_pretrained(small_hf_dir).extract_cls_token(features.paths)
    assert np.allclose(features.cls, expected.numpy(), atol=1e-5)
    assert features.patches is None


def test_patch_tokens_and_layers_are_stored(image_folder: Path, small_hf_dir: Path, tmp_path: Path):
    out = tmp_path / "store"
    code = main(["encode", str(image_folder / "img1.png"), str(image_folder / "img2.png"),
                 "--model", str(small_hf_dir), "--out", str(out), "--workers", "1",
                 "--patch-tokens", "full", "--layers", "0,-1", "--dtype", "fp32",
                 "--no-progress"])  # fmt: skip
    assert code == 0
    features = load_features(out)
    model = RadDino.from_pretrained(small_hf_dir)
    cls, patches = model.extract_features(features.paths)
    assert features.patches.shape == (2, 64, 37, 37)
    assert np.allclose(np.asarray(features.patches), patches.numpy(), atol=1e-5)
    assert sorted(features.layers) == [0, 1]
    assert np.allclose(features.layers[1].cls, cls.numpy(), atol=1e-5)
    assert features.layers[0].patches.shape == (2, 64, 37, 37)


def test_pooled_patch_tokens_are_the_mean(image_folder: Path, small_hf_dir: Path, tmp_path: Path):
    out = tmp_path / "store"
    main(["encode", str(image_folder), "--model", str(small_hf_dir), "--out", str(out),
          "--workers", "0", "--patch-tokens", "pooled", "--dtype", "fp32",
          "--no-progress"])  # fmt: skip
    features = load_features(out)
    patches = RadDino.from_pretrained(small_hf_dir).extract_patch_tokens(features.paths)
    assert np.allclose(features.patch_mean, patches.mean(dim=(2, 3)).numpy(), atol=1e-5)


def test_manifest_csv_input_resolves_relative_paths(
    image_folder: Path, small_hf_dir: Path, tmp_path: Path
):
    manifest = image_folder / "manifest.csv"
    manifest.write_text("path,label\nimg3.png,1\nimg1.png,0\n")
    out = tmp_path / "store"
    assert main(["encode", str(manifest), "--model", str(small_hf_dir), "--out", str(out),
                 "--workers", "0", "--no-progress"]) == 0  # fmt: skip
    assert [Path(p).name for p in load_features(out).paths] == ["img3.png", "img1.png"]


def test_nothing_encodable_gives_nonzero_exit(small_hf_dir: Path, tmp_path: Path):
    folder = tmp_path / "bad"
    folder.mkdir()
    (folder / "a.png").write_bytes(b"")
    (folder / "b.dcm").write_text("nope")
    code = main(["encode", str(folder), "--model", str(small_hf_dir), "--out", str(tmp_path / "s"),
                 "--workers", "0", "--no-progress"])  # fmt: skip
    assert code == 1
    assert set(read_rejects(tmp_path / "s")) == {"a.png", "b.dcm"}


def test_resuming_with_another_model_is_refused(
    image_folder: Path, small_hf_dir: Path, tmp_path: Path, capsys
):
    from raddino.features.identity import weights_sha256
    from tests.conftest import SMALL_HF_CONFIG, make_hf_model

    other = make_hf_model(tmp_path / "other", seed=1, **SMALL_HF_CONFIG)  # same shapes
    out = tmp_path / "store"
    args = [str(image_folder / "img0.png"), "--out", str(out), "--workers", "0", "--no-progress",
            "--dtype", "fp32"]  # fmt: skip
    assert main(["encode", *args, "--model", str(small_hf_dir)]) == 0
    capsys.readouterr()
    assert main(["encode", *args, "--model", str(other)]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "holds features of another model" in err
    for model in (small_hf_dir, other):
        digest = weights_sha256(RadDino.from_pretrained(model))[:12]
        assert f"'{model}' (sha256 {digest})" in err


def test_the_same_weights_resume_a_store_from_a_relative_or_absolute_path(
    image_folder: Path, small_hf_dir: Path, tmp_path: Path, monkeypatch
):
    out = tmp_path / "store"
    args = ["--out", str(out), "--workers", "0", "--no-progress", "--dtype", "fp32"]
    images = [str(image_folder / f"img{i}.png") for i in range(3)]
    assert main(["encode", *images[:1], "--model", str(small_hf_dir.resolve()), *args]) == 0
    monkeypatch.chdir(small_hf_dir.parent)
    assert main(["encode", *images[:2], "--model", small_hf_dir.name, *args]) == 0
    monkeypatch.chdir(image_folder)
    relative = os.path.relpath(small_hf_dir, image_folder)  # ../../small_hf0 or so
    assert main(["encode", *images, "--model", relative, *args]) == 0
    features = load_features(out)
    assert features.paths == images
    assert features.meta["model_path"] == str(small_hf_dir.resolve())  # as first written
    expected = RadDino.from_pretrained(small_hf_dir).extract_cls_token(images)
    assert np.allclose(features.cls, expected.numpy(), atol=1e-5)


def test_the_same_weights_in_the_official_format_resume_the_store(
    image_folder: Path, small_hf_dir: Path, tmp_path: Path
):
    official = tmp_path / "weights.safetensors"
    assert main(["export", "--model", str(small_hf_dir), "--out", str(official),
                 "--format", "dinov2"]) == 0  # fmt: skip
    out = tmp_path / "store"
    args = ["--out", str(out), "--workers", "0", "--no-progress", "--dtype", "fp32"]
    assert (
        main(["encode", str(image_folder / "img0.png"), "--model", str(small_hf_dir), *args]) == 0
    )
    assert main(["encode", str(image_folder), "--model", str(official), *args]) == 0
    assert len(load_features(out).paths) == 5


def test_a_store_written_before_the_weights_hash_loads_and_resumes_from_its_path(
    image_folder: Path, small_hf_dir: Path, tmp_path: Path, capsys
):
    out = tmp_path / "store"
    args = ["--out", str(out), "--workers", "0", "--no-progress", "--dtype", "fp32"]
    assert (
        main(["encode", str(image_folder / "img0.png"), "--model", str(small_hf_dir), *args]) == 0
    )
    meta = json.loads((out / "meta.json").read_text())  # as raddino wrote it before the hash
    del meta["model_sha256"]
    meta = {"model": meta.pop("model_path"), **meta}
    (out / "meta.json").write_text(json.dumps(meta, indent=2) + "\n")
    assert load_features(out).meta["model"] == str(small_hf_dir)
    capsys.readouterr()

    other_spelling = str(small_hf_dir) + "/"
    assert main(["encode", str(image_folder), "--model", other_spelling, *args]) == 2
    err = capsys.readouterr().err
    assert f"by its path {str(small_hf_dir)!r}" in err and "exactly" in err
    assert main(["encode", str(image_folder), "--model", str(small_hf_dir), *args]) == 0
    features = load_features(out)
    assert len(features.paths) == 5 and features.meta == {"format": "raddino-features",
                                                          "version": 1, **meta}  # fmt: skip


def test_bad_model_path_is_a_clear_error(image_folder: Path, tmp_path: Path, capsys):
    code = main(["encode", str(image_folder), "--model", str(tmp_path / "missing"), "--out",
                 str(tmp_path / "s"), "--no-progress"])  # fmt: skip
    assert code == 2
    assert "missing: no such file or directory" in capsys.readouterr().err


def run_encode(folder: Path, model: Path, out: Path) -> subprocess.Popen:
    command = [sys.executable, "-m", "raddino", "encode", str(folder), "--model", str(model),
               "--out", str(out), "--workers", "0", "--batch-size", "1", "--shard-size", "1",
               "--no-progress"]  # fmt: skip
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))
    return subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def finished_shards(store: Path) -> int:
    shards = store / "shards"
    return (
        len([p for p in shards.iterdir() if not p.name.startswith(".")]) if shards.is_dir() else 0
    )


def test_resume_after_kill_gives_the_uninterrupted_result(small_hf_dir: Path, tmp_path: Path):
    folder = tmp_path / "images"
    folder.mkdir()
    for index in range(24):
        Image.fromarray(synthetic_radiograph(1400, 1200, seed=index)).save(
            folder / f"{index:02d}.png"
        )
    (folder / "00b_broken.png").write_bytes(b"\x89PNG\r\n\x1a\n broken")

    reference = tmp_path / "reference"
    assert run_encode(folder, small_hf_dir, reference).wait(timeout=300) == 0

    killed = tmp_path / "killed"
    process = run_encode(folder, small_hf_dir, killed)
    deadline = time.monotonic() + 120
    while finished_shards(killed) < 3 and time.monotonic() < deadline:
        time.sleep(0.02)
    assert process.poll() is None, "the run finished before it could be killed"
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert not (killed / "index.csv").exists()
    assert 3 <= finished_shards(killed) < 24

    assert run_encode(folder, small_hf_dir, killed).wait(timeout=300) == 0
    expected, resumed = load_features(reference), load_features(killed)
    assert resumed.paths == expected.paths and len(resumed.paths) == 24
    assert np.array_equal(resumed.cls, expected.cls)
    assert read_rejects(killed) == read_rejects(reference) and set(read_rejects(killed)) == {
        "00b_broken.png"
    }


@pytest.mark.parametrize("argv", [["encode", "--help"], ["--help"], ["export", "--help"]])
def test_help_describes_the_commands(argv, capsys):
    with pytest.raises(SystemExit) as info:
        main(argv)
    assert info.value.code == 0
    assert "usage: raddino" in capsys.readouterr().out


def test_export_command_writes_both_formats(small_hf_dir: Path, tmp_path: Path):
    assert main(["export", "--model", str(small_hf_dir), "--out", str(tmp_path / "b.safetensors"),
                 "--format", "dinov2"]) == 0  # fmt: skip
    again = RadDino.from_pretrained(tmp_path / "b.safetensors")
    assert torch.equal(
        again.backbone.pos_embed, RadDino.from_pretrained(small_hf_dir).backbone.pos_embed
    )


# --------------------------------------------------------------------------- precision and speed


def cosine_rows(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Cosine similarity of matching vectors along the last axis."""
    return (a * b).sum(-1) / (np.linalg.norm(a, axis=-1) * np.linalg.norm(b, axis=-1))


def test_bf16_features_are_within_tolerance_of_the_fp32_run(
    image_folder: Path, small_hf_dir: Path, tmp_path: Path
):
    from raddino.models.hardware import TOLERANCES

    stores = {}
    for dtype in ("fp32", "bf16"):
        stores[dtype] = tmp_path / dtype
        assert main(["encode", str(image_folder), "--model", str(small_hf_dir), "--out",
                     str(stores[dtype]), "--workers", "0", "--dtype", dtype, "--compile", "off",
                     "--patch-tokens", "full", "--no-progress"]) == 0  # fmt: skip
    fp32, bf16 = load_features(stores["fp32"]), load_features(stores["bf16"])
    assert bf16.meta["dtype"] == "bfloat16" and fp32.meta["dtype"] == "float32"
    assert bf16.paths == fp32.paths and bf16.cls.dtype == np.float32
    tolerance = TOLERANCES[torch.bfloat16]
    assert cosine_rows(bf16.cls, fp32.cls).min() >= tolerance["cls"]
    patches = [np.asarray(f.patches).transpose(0, 2, 3, 1) for f in (bf16, fp32)]
    assert cosine_rows(*patches).min() >= tolerance["patches"]


def test_auto_mode_prints_what_it_chose_and_why(
    image_folder: Path, small_hf_dir: Path, tmp_path: Path, capsys
):
    from raddino.models.hardware import choose_dtype, probe_hardware
    from raddino.precision import short_name

    out = tmp_path / "store"
    assert main(["encode", str(image_folder), "--model", str(small_hf_dir), "--out", str(out),
                 "--workers", "0", "--no-progress"]) == 0  # fmt: skip
    printed = capsys.readouterr().out
    expected = short_name(choose_dtype(None, probe_hardware("cpu")).value)
    assert f"precision: {expected} (auto: " in printed
    assert "compile: off (auto: 5 images are too few" in printed
    assert load_features(out).meta["dtype"] == {"bf16": "bfloat16", "fp32": "float32"}[expected]


def raise_simulated_failure(*args, **kwargs):
    raise RuntimeError("simulated: C++ compiler not found")


@pytest.mark.parametrize(
    ("mode", "target", "name"),
    [
        ("inductor", torch, "compile"),  # torch.compile itself fails
        ("onednn", torch.jit, "trace"),  # tracing fails
    ],
)
def test_a_failing_compiler_does_not_stop_the_encode(
    image_folder: Path, small_hf_dir: Path, tmp_path: Path, capsys, monkeypatch, mode, target, name
):
    monkeypatch.setattr(target, name, raise_simulated_failure)
    out = tmp_path / "store"
    with pytest.warns(RuntimeWarning, match="failed .*simulated"):
        code = main(["encode", str(image_folder), "--model", str(small_hf_dir), "--out",
                     str(out), "--workers", "0", "--dtype", "fp32", "--compile", mode,
                     "--no-progress"])  # fmt: skip
    assert code == 0
    printed = capsys.readouterr().out
    assert f"compile: {mode} (requested)" in printed and "continuing eagerly" in printed
    features = load_features(out)
    expected = RadDino.from_pretrained(small_hf_dir).extract_cls_token(features.paths)
    assert np.allclose(features.cls, expected.numpy(), atol=1e-5)


@pytest.mark.skipif(
    not onednn_fuses_bf16(), reason="oneDNN Graph has no bf16 kernels without AVX-512"
)
def test_onednn_mode_encodes_within_tolerance(
    image_folder: Path, small_hf_dir: Path, tmp_path: Path, capsys
):
    from raddino.models.hardware import TOLERANCES

    out = tmp_path / "store"
    assert main(["encode", str(image_folder), "--model", str(small_hf_dir), "--out", str(out),
                 "--workers", "1", "--batch-size", "2", "--dtype", "bf16", "--compile",
                 "onednn", "--no-progress"]) == 0  # fmt: skip
    printed = capsys.readouterr().out
    assert "compiled (oneDNN Graph) for input [2, 3, 518, 518]" in printed
    assert "oneDNN Graph fused" in printed  # 3 batches: profiled twice, then fused
    features = load_features(out)
    expected = RadDino.from_pretrained(small_hf_dir).extract_cls_token(features.paths).numpy()
    assert cosine_rows(features.cls, expected).min() >= TOLERANCES[torch.bfloat16]["cls"]


@pytest.mark.skipif(
    not onednn_fuses_bf16(), reason="oneDNN Graph has no bf16 kernels without AVX-512"
)
def test_onednn_mode_with_64_wide_heads_uses_the_attention_it_announces(
    image_folder: Path, tmp_path: Path, capsys, monkeypatch
):
    """Heads 64 wide (as every DINOv2 size): in bf16 without AMX the run uses raddino's
    attention kernel where it builds, else oneDNN Graph's, says which, and stays within the
    bf16 tolerance either way."""
    from raddino.models import fused_attention
    from raddino.models.hardware import TOLERANCES, probe_hardware
    from tests.conftest import make_hf_model

    model = make_hf_model(
        tmp_path / "wide", hidden_size=128, num_attention_heads=2, num_hidden_layers=2
    )
    kernel = fused_attention.unavailable_reason() is None and not probe_hardware("cpu").amx
    traced_calls = []  # the blocks' calls of the kernel while the model is traced

    def spy(qkv: torch.Tensor, heads: int) -> torch.Tensor:
        traced_calls.append(heads)
        return fused_attention.fused_attention(qkv, heads)

    monkeypatch.setattr("raddino.models.vit.fused_attention", spy)
    out = tmp_path / "store"
    assert main(["encode", str(image_folder), "--model", str(model), "--out", str(out),
                 "--workers", "1", "--batch-size", "2", "--dtype", "bf16", "--compile",
                 "onednn", "--no-progress"]) == 0  # fmt: skip
    printed = capsys.readouterr().out
    assert f"attention: {'fused' if kernel else 'matmul'} (" in printed
    assert traced_calls == ([2, 2] if kernel else [])  # 2 blocks of 2 heads, traced once
    assert "oneDNN Graph fused" in printed
    features = load_features(out)
    expected = RadDino.from_pretrained(model).extract_cls_token(features.paths).numpy()
    assert cosine_rows(features.cls, expected).min() >= TOLERANCES[torch.bfloat16]["cls"]


def test_full_patch_shards_are_capped_in_bytes(
    image_folder: Path, small_hf_dir: Path, tmp_path: Path, monkeypatch
):
    import raddino.features.encode as encode_module

    row_bytes = 4 * 64 * (1 + 37 * 37)  # CLS + patch tokens of the 64-dim model, float32
    monkeypatch.setattr(encode_module, "SHARD_BYTES", 2 * row_bytes)
    out = tmp_path / "store"
    assert main(["encode", str(image_folder), "--model", str(small_hf_dir), "--out", str(out),
                 "--workers", "0", "--dtype", "fp32", "--patch-tokens", "full",
                 "--no-progress"]) == 0  # fmt: skip
    assert finished_shards(out) == 3  # 5 images, 2 per shard
    features = load_features(out)
    assert [Path(p).name for p in features.paths] == [f"img{i}.png" for i in range(5)]
    assert np.asarray(features.patches).shape == (5, 64, 37, 37)
