"""What ``raddino study`` is asked to do (:class:`StudyOptions`) and where each stage writes
(:class:`StudyPaths`, the demo's paths plus a study's own)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from raddino.demo.options import DemoPaths, pool_workers
from raddino.study.spec import StudySpec


@dataclass(frozen=True)
class StudyPaths(DemoPaths):
    """Where each stage writes, under ``--out``; ``source_manifest``: the user's data (else the
    rendered cohort's manifest)."""

    source_manifest: Path | None = None

    @property
    def manifest(self) -> Path:
        return self.source_manifest or self.cohort / "manifest.csv"

    def arm_train_list(self, arm: str) -> Path:
        return self.root / "train_lists" / f"{arm}.csv"

    def random_encoder(self, arm: str) -> Path:
        return self.root / "random" / arm

    def arm_evaluation(self, arm: str) -> Path:
        return self.evaluation / arm

    @property
    def plots(self) -> Path:
        return self.root / "plots"

    @property
    def table_md(self) -> Path:
        return self.root / "table.md"

    @property
    def table_csv(self) -> Path:
        return self.root / "table.csv"


@dataclass(frozen=True)
class StudyOptions:
    """How to run a study: where, on which device, how fast; none of these change its numbers
    except ``seed`` (which replaces the file's) and ``dtype`` (the encoders' precision)."""

    spec: StudySpec
    out: Path
    device: str = "auto"
    dtype: torch.dtype | None = torch.float32  # the encoders' (None: auto); float32 by default
    # as every evaluation command: feature caches and numbers then agree across machines
    workers: int | None = None  # None: 2 for rendering and encoding, each config's loader
    progress: bool = True
    command: str = ""  # the command line, quoted in the report

    def __post_init__(self) -> None:
        if self.workers is not None and self.workers < 0:
            raise ValueError(f"--workers {self.workers}: must be >= 0")

    @property
    def pool_workers(self) -> int:
        return pool_workers(self.workers)

    @property
    def eval_device(self) -> str:
        from raddino.devices import check_device

        return check_device(self.device).type
