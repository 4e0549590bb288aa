"""``torchrun -m raddino study``: the same study file, two gloo processes.

Process 0 runs the stages; both processes train every pre-training together (DDP), so each run
sees a global batch of twice the file's batch size, and its stage records the process count.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from raddino.ssl.checkpoint import list_checkpoints
from tests.study.conftest import QUICK
from tests.study.test_study import STAGES, statuses, table_rows


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def torchrun_study(out: Path) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2",
               "--master-addr", "127.0.0.1", "--master-port", str(free_port()),
               "-m", "raddino", "study", "quick", "--out", str(out), *QUICK]  # fmt: skip
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path), OMP_NUM_THREADS="1")
    return subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)


@pytest.fixture(scope="module")
def pair_dir(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    out = tmp_path_factory.mktemp("torchrun_study") / "study"
    result = torchrun_study(out)
    assert result.returncode == 0, result.stderr[-3000:]
    return out, result.stdout + result.stderr


def test_every_stage_runs_once_and_process_0_speaks(pair_dir: tuple[Path, str]):
    out, log = pair_dir
    assert statuses(out) == dict.fromkeys(STAGES, "ran")
    assert log.count("raddino study: finished quick") == 1
    assert log.count("3 arms, reference all_images") == 1
    assert {row["arm"] for row in table_rows(out)} == {"all_images", "half_images", "random"}
    assert (out / "report.html").is_file()


def test_each_pretraining_is_trained_by_both_processes(pair_dir: tuple[Path, str]):
    out, log = pair_dir
    # the quick study's batch of 8 per process: a global batch of 16 in both runs
    assert log.count("2 process(es) x batch 8 = global batch 16") == 2
    for run in ("all_images", "half_images"):
        marker = json.loads((out / "stages" / f"pretrain_{run}.json").read_text())
        assert marker["inputs"]["processes"] == 2
        assert marker["result"]["resumed_from"] == 0
        assert [step for step, _ in list_checkpoints(out / "runs" / run)][-1] == 3


def test_the_same_command_again_reuses_every_stage(pair_dir: tuple[Path, str]):
    out, _ = pair_dir
    before = (out / "table.csv").read_bytes()
    result = torchrun_study(out)
    assert result.returncode == 0, result.stderr[-3000:]
    assert statuses(out) == dict.fromkeys(STAGES, "cached")
    assert (out / "table.csv").read_bytes() == before
