"""``raddino demo``: the whole RAD-DINO story in one command, on a CPU.

Synthetic cohort -> image-only (DINOv2) and language-supervised (CLIP-style) pre-training ->
evaluation of both against a random-initialised encoder and raw pixels -> report generation
-> figures -> ``OUT/REPORT.md`` and ``OUT/report.html``. Each stage is cached in ``OUT``
(``stages``: the runner; ``pipeline``: the stages; ``summary``: paired differences and the
findings macro; ``figures``; ``document``: REPORT.md and report.html). See ``docs/demo.md``.
"""

from raddino.demo.options import DemoOptions, default_config_path
from raddino.demo.pipeline import Demo, run_demo
from raddino.demo.stages import Stage, StageError, StageRunner

__all__ = [
    "Demo",
    "DemoOptions",
    "Stage",
    "StageError",
    "StageRunner",
    "default_config_path",
    "run_demo",
]
