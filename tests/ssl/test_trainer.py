"""The pre-training loop end to end: run directory, resume after kill, distributed, export."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from raddino.models.encoder import RadDino
from raddino.ssl.checkpoint import list_checkpoints, load_checkpoint
from raddino.ssl.config import load_config
from raddino.ssl.metrics import read_metrics
from raddino.ssl.run import RunExistsError, TrainingDivergedError
from raddino.ssl.trainer import pretrain
from tests.ssl.conftest import TINY_OVERRIDES

LOSSES = ("loss", "dino_local", "dino_global", "koleo", "ibot")


def tiny_config(*extra: str):
    return load_config(None, [*TINY_OVERRIDES, *extra])


@pytest.fixture(scope="module")
def tiny_run(pretrain_images: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    run_dir = tmp_path_factory.mktemp("tiny_run")
    config = tiny_config("train.steps=8", "train.tensorboard=true")
    pretrain(config, [str(pretrain_images)], run_dir, progress=False)
    return run_dir


def test_run_directory_holds_config_metrics_and_checkpoints(tiny_run: Path):
    assert (tiny_run / "config.yaml").is_file()
    assert load_config(tiny_run / "config.yaml") == tiny_config(
        "train.steps=8", "train.tensorboard=true"
    )
    assert any((tiny_run / "tensorboard").glob("events.out.tfevents.*"))
    rows = read_metrics(tiny_run)
    assert [row["step"] for row in rows] == list(range(8))
    for key in (*LOSSES, "lr", "weight_decay", "momentum", "teacher_temp", "teacher_entropy",
                "center_norm", "cls_std", "images_per_s"):  # fmt: skip
        assert all(key in row for row in rows), key
    # keep_last=3 of the checkpoints at steps 2, 4, 6, 8
    assert [step for step, _ in list_checkpoints(tiny_run)] == [4, 6, 8]


def test_logged_throughput_includes_the_wait_for_each_batch(
    pretrain_images: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    """``images_per_s`` is the wall rate of the step, its batch's making included: with every
    batch taking 0.3 s to collate (in the training process: 0 workers), no step of 4 images can
    log more than 4 / 0.3 images/s, however fast the model."""
    import raddino.ssl.trainer as trainer_module

    real = trainer_module.collate_crops

    def slow_collate(samples):
        time.sleep(0.3)
        return real(samples)

    monkeypatch.setattr(trainer_module, "collate_crops", slow_collate)
    pretrain(tiny_config("train.steps=3"), [str(pretrain_images)], tmp_path, progress=False)
    rates = [row["images_per_s"] for row in read_metrics(tmp_path)]
    assert len(rates) == 3 and all(0 < rate < 4 / 0.3 for rate in rates)


def test_last_layer_is_frozen_for_the_set_steps(pretrain_images: Path, tmp_path: Path):
    config = tiny_config("train.steps=3", "train.checkpoint_every=1", "train.keep_last=5")
    pretrain(config, [str(pretrain_images)], tmp_path, progress=False)
    states = {step: load_checkpoint(path)["model"] for step, path in list_checkpoints(tmp_path)}
    key = "student.dino_head.last_layer.weight_v"
    other = "student.dino_head.mlp.0.weight"
    # freeze_last_layer_steps=2: steps 0 and 1 leave it untouched, step 2 moves it
    assert torch.equal(states[1][key], states[2][key])
    assert not torch.equal(states[2][key], states[3][key])
    assert not torch.equal(states[1][other], states[2][other])


def test_teacher_is_the_ema_of_the_student(pretrain_images: Path, tmp_path: Path):
    config = tiny_config("train.steps=2", "train.checkpoint_every=1", "train.keep_last=5",
                         "teacher.momentum=0.9", "teacher.momentum_end=0.9")  # fmt: skip
    pretrain(config, [str(pretrain_images)], tmp_path, progress=False)
    one, two = (load_checkpoint(p)["model"] for _, p in list_checkpoints(tmp_path))
    key = "blocks.0.attn.qkv.weight"
    expected = 0.9 * one[f"teacher.backbone.{key}"] + 0.1 * two[f"student.backbone.{key}"]
    assert torch.allclose(two[f"teacher.backbone.{key}"], expected, atol=1e-6)


def test_existing_run_needs_resume(tiny_run: Path, pretrain_images: Path):
    with pytest.raises(RunExistsError, match="resume it or choose another output directory"):
        pretrain(tiny_config("train.steps=9"), [str(pretrain_images)], tiny_run, progress=False)


def test_a_run_is_continued_only_with_its_own_settings(
    tiny_run: Path, pretrain_images: Path, tmp_path: Path
):
    """Resuming is the default of ``raddino pretrain``: another learning rate or precision must
    not be mixed into a run silently; more steps, logging and workers may change."""
    import shutil

    run = tmp_path / "run"
    shutil.copytree(tiny_run, run, ignore=shutil.ignore_patterns(".raddino.lock"))
    for changed in (["optim.base_lr=0.5"], ["train.precision=bf16"], ["loss.ibot_weight=0"]):
        config = tiny_config("train.steps=9", "train.tensorboard=true", *changed)
        key = changed[0].split("=")[0]
        with pytest.raises(ValueError, match=rf"other settings \({key} .*config.yaml"):
            pretrain(config, [str(pretrain_images)], run, resume=True, progress=False)
    # a precision spelled another way is the same precision
    same = tiny_config("train.steps=9", "train.tensorboard=false", "train.log_every=2",
                       "train.precision=float32", "train.num_workers=0")  # fmt: skip
    summary = pretrain(same, [str(pretrain_images)], run, resume=True, progress=False)
    assert (summary.start_step, summary.end_step) == (8, 9)


def test_a_run_of_the_other_recipe_is_refused_on_resume(
    tiny_run: Path, pretrain_images: Path, tmp_path: Path
):
    """A checkpoint written by the language-supervised recipe is never loaded as an image-only
    one: one clear error instead of a failure deep inside load_state_dict."""
    import shutil

    run = tmp_path / "run"
    shutil.copytree(tiny_run, run, ignore=shutil.ignore_patterns(".raddino.lock"))
    step, newest = list_checkpoints(run)[-1]
    state = load_checkpoint(newest)
    state["recipe"] = "contrastive"
    torch.save(state, newest)
    config = tiny_config(f"train.steps={step + 2}")
    with pytest.raises(ValueError, match="recipe=contrastive; resume it with that recipe"):
        pretrain(config, [str(pretrain_images)], run, resume=True, progress=False)


def test_non_finite_loss_stops_and_keeps_the_last_checkpoint(
    pretrain_images: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    from raddino.ssl import meta_arch

    original = meta_arch.StudentTeacher.forward
    calls = {"n": 0}

    def poisoned(self, *args, **kwargs):
        out = original(self, *args, **kwargs)
        calls["n"] += 1
        if calls["n"] == 4:  # the 4th step (step 3) diverges
            out.total = out.total * float("nan")
        return out

    monkeypatch.setattr(meta_arch.StudentTeacher, "forward", poisoned)
    with pytest.raises(TrainingDivergedError, match="step 3: the loss is not finite"):
        pretrain(tiny_config("train.steps=6"), [str(pretrain_images)], tmp_path, progress=False)
    assert [step for step, _ in list_checkpoints(tmp_path)] == [2]
    assert load_checkpoint(list_checkpoints(tmp_path)[0][1])["step"] == 2


def test_export_of_a_run_loads_in_transformers_with_identical_outputs(
    tiny_run: Path, tmp_path: Path
):
    from transformers import AutoModel

    model = RadDino.from_pretrained(tiny_run)
    state = load_checkpoint(list_checkpoints(tiny_run)[-1][1])["model"]
    assert torch.equal(model.backbone.pos_embed, state["teacher.backbone.pos_embed"])
    model.save_pretrained(tmp_path / "hf")
    reference = AutoModel.from_pretrained(tmp_path / "hf").eval()
    pixels = torch.randn(2, 3, 32, 48)
    with torch.no_grad():
        hidden = reference(pixel_values=pixels).last_hidden_state
    out = model.encode(pixels)
    assert torch.allclose(out.cls, hidden[:, 0], atol=1e-5)
    assert torch.allclose(out.patches, hidden[:, 1:], atol=1e-5)


def cli_command(data: Path, out: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "raddino", "pretrain", *TINY_OVERRIDES,
            "train.deterministic=true", *extra, "--data", str(data), "--out", str(out),
            "--no-progress"]  # fmt: skip


def subprocess_env() -> dict[str, str]:
    return dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path), OMP_NUM_THREADS="1")


def losses_by_step(run_dir: Path) -> dict[int, tuple[float, ...]]:
    return {row["step"]: tuple(row[k] for k in LOSSES) for row in read_metrics(run_dir)}


def test_resume_after_kill_gives_the_same_losses(pretrain_images: Path, tmp_path: Path):
    extra = ("train.steps=14", "train.checkpoint_every=3", "train.num_workers=1")
    reference = tmp_path / "reference"
    subprocess.run(cli_command(pretrain_images, reference, *extra), env=subprocess_env(),
                   check=True, capture_output=True)  # fmt: skip

    killed = tmp_path / "killed"
    process = subprocess.Popen(cli_command(pretrain_images, killed, *extra), env=subprocess_env(),
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        steps = [row["step"] for row in read_metrics(killed)]
        if steps and steps[-1] >= 7:
            break
        time.sleep(0.01)
    assert process.poll() is None, "the run finished before it could be killed"
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert list_checkpoints(killed)[-1][0] < 14
    subprocess.run([*cli_command(pretrain_images, killed, *extra)],
                   env=subprocess_env(), check=True, capture_output=True)  # fmt: skip
    assert losses_by_step(killed) == losses_by_step(reference)
    assert sorted(losses_by_step(killed)) == list(range(14))


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.mark.parametrize("strategy", ["ddp", "fsdp"])
def test_two_gloo_processes_match_one_process_with_the_same_global_batch(
    pretrain_images: Path, tmp_path: Path, strategy: str
):
    # KoLeo finds nearest neighbours within each process's batch (as DINOv2 does): its gradient
    # depends on how the global batch is split, and with it every step after the first update
    # (loss.koleo_weight=0.1 moved iBOT by 8e-5 relative at step 2, on every CPU measured).
    # Without it the two runs are the same arithmetic in another order of float sums.
    common = ("train.steps=3", "train.checkpoint_every=2", "model.drop_path_rate=0",
              "loss.koleo_weight=0")  # fmt: skip
    single = tmp_path / "single"
    subprocess.run(cli_command(pretrain_images, single, *common, "train.batch_size=8"),
                   env=subprocess_env(), check=True, capture_output=True)  # fmt: skip
    pair = tmp_path / "pair"
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2",
                "--master-addr", "127.0.0.1"]  # fmt: skip
    command = cli_command(pretrain_images, pair, *common, "train.batch_size=4",
                          f"train.strategy={strategy}")[1:]  # fmt: skip
    result = subprocess.run([*torchrun, "--master-port", str(free_port()), *command],
                            env=subprocess_env(), capture_output=True, text=True)  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    assert RadDino.from_pretrained(pair).config.embed_dim == 48
    one, two = read_metrics(single), read_metrics(pair)
    assert [r["step"] for r in one] == [r["step"] for r in two] == [0, 1, 2]
    for a, b in zip(one, two, strict=True):
        # Same images, crops and masks: the fp32 losses agree up to the order of float sums
        # (measured <= 2e-7 relative at steps 0-2 on AMX, AVX512-BF16 and AVX2 kernels). 1e-5
        # leaves room for other kernels and still fails on a wrong shard or on a gradient that
        # depends on the split, as KoLeo's does (8e-5 at step 2).
        for name in ("loss", "dino_local", "dino_global", "ibot"):
            assert a[name] == pytest.approx(b[name], rel=1e-5), (a["step"], name)
        # The KoLeo value (logged, not trained on) depends on the split: 3-6 % measured.
        assert a["koleo"] == pytest.approx(b["koleo"], rel=0.15)
    if strategy == "fsdp":  # redo the last step from the sharded checkpoint of step 2
        (pair / "checkpoints" / "step_0000003.pt").unlink()
        again = [*torchrun, "--master-port", str(free_port()), *command]
        result = subprocess.run(again, env=subprocess_env(), capture_output=True, text=True)
        assert result.returncode == 0, result.stderr[-3000:]
        assert losses_by_step(pair) == {r["step"]: tuple(r[k] for k in LOSSES) for r in two}
