"""Per-step metrics of a run: ``RUN/metrics.jsonl`` and, when installed, TensorBoard.

``metrics.jsonl`` holds one JSON object per logged step, each with its ``step``. It is written
by :class:`MetricsLog` (pre-training, language-supervised pre-training, report-model training)
and read by :func:`read_metrics` only.
"""

from __future__ import annotations

import json
import math
import os
import sys
from pathlib import Path

from raddino.atomic import write_atomic

METRICS_FILE = "metrics.jsonl"


def metrics_path(run: str | os.PathLike) -> Path:
    """``RUN/metrics.jsonl`` for a run directory; a file path is returned as it is."""
    path = Path(run)
    return path / METRICS_FILE if path.is_dir() else path


def read_metrics(run: str | os.PathLike, *, missing_ok: bool = True) -> list[dict]:
    """The rows of a run's ``metrics.jsonl``, in file order.

    run: the run directory or the file itself. A missing file gives no rows (or, with
    ``missing_ok=False``, FileNotFoundError). A last line that is not valid JSON is the torn
    write of a killed run: it is skipped with a warning. Any other line that is not a JSON object
    with a numeric ``step`` is an error naming the file and line. Blank lines are skipped.
    """
    path = metrics_path(run)
    if not path.is_file():
        if missing_ok:
            return []
        raise FileNotFoundError(f"{path}: no {METRICS_FILE} (is this a training run directory?)")
    lines = path.read_text(encoding="utf-8", errors="replace").splitlines()
    rows = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as error:
            if number == len(lines):
                print(
                    f"warning: {path}:{number}: skipped a torn last line (a killed run)",
                    file=sys.stderr,
                )
                break
            raise ValueError(f"{path}:{number}: not valid JSON ({error.msg})") from error
        step = row.get("step") if isinstance(row, dict) else None
        if not isinstance(step, (int, float)) or isinstance(step, bool):
            raise ValueError(f"{path}:{number}: not a metrics row (an object with a 'step')")
        rows.append(row)
    return rows


class MetricsLog:
    """Appends one JSON line per logged step; on resume, drops lines of steps not yet redone."""

    def __init__(self, run_dir: Path, start_step: int, tensorboard: bool) -> None:
        self.path = Path(run_dir) / METRICS_FILE
        kept = [row for row in read_metrics(self.path) if row["step"] < start_step]
        text = "".join(json.dumps(row) + "\n" for row in kept)
        write_atomic(self.path, lambda temp: temp.write_text(text))
        self.handle = self.path.open("a")
        self.writer = None
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self.writer = SummaryWriter(str(run_dir / "tensorboard"), purge_step=start_step)
            except ImportError:
                print(
                    "note: TensorBoard logging needs 'pip install tensorboard'; "
                    "metrics go to metrics.jsonl",
                    file=sys.stderr,
                )

    def log(self, step: int, values: dict[str, float]) -> None:
        self.handle.write(json.dumps({"step": step, **values}) + "\n")
        self.handle.flush()
        if self.writer is not None:
            for name, value in values.items():
                self.writer.add_scalar(name, value, step)

    def close(self) -> None:
        self.handle.close()
        if self.writer is not None:
            self.writer.close()


class CollapseMonitor:
    """Warns (once per kind) when the teacher shows a collapse signal after its warm-up.

    * ``uniform``: teacher entropy above 98% of ln K — every image gets the same flat
      distribution, and the DINO loss sits at ln K (the plateau of failed short runs);
    * ``constant``: the teacher's normalised CLS embeddings barely vary across the batch
      (mean per-dimension std x sqrt(D) below 0.05) — every image maps to one point.
    """

    def __init__(self, n_prototypes: int, embed_dim: int, warmup_steps: int) -> None:
        self.max_entropy = math.log(n_prototypes)
        self.embed_dim = embed_dim
        self.warmup_steps = warmup_steps
        self.fired: set[str] = set()

    def check(self, step: int, values: dict[str, float]) -> list[str]:
        """Names of the signals present at ``step`` (after warm-up); prints each kind once."""
        if step < self.warmup_steps:
            return []
        signals = []
        if values["teacher_entropy"] > 0.98 * self.max_entropy:
            signals.append("uniform")
        if values["cls_std"] * math.sqrt(self.embed_dim) < 0.05:
            signals.append("constant")
        for name in signals:
            if name not in self.fired:
                self.fired.add(name)
                print(
                    f"warning: step {step}: collapse signal '{name}' (teacher entropy "
                    f"{values['teacher_entropy']:.3f} of max {self.max_entropy:.3f}, CLS spread "
                    f"{values['cls_std']:.4f}); see docs/pretraining.md",
                    file=sys.stderr,
                )
        return signals
