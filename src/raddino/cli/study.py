"""``raddino study``: a study file's arms pre-trained, evaluated and compared, resumable."""

from __future__ import annotations

import argparse
import shlex
from typing import TYPE_CHECKING

from raddino.cli.options import (
    add_command,
    add_device_argument,
    add_dtype_argument,
    add_progress_argument,
    add_seed_argument,
    report_stage_error,
)

if TYPE_CHECKING:
    from raddino.demo.stages import StageOutcome
    from raddino.study.pipeline import Study

HELP = "run a study: arms of pre-training settings, each evaluated, compared in one table"
DESCRIPTION = (
    "Run every arm of a study file (pre-training config and overrides: number of images, "
    "resolution, loss weights, recipe) through pre-training and evaluation, then write a table "
    "with each arm's paired difference from the reference arm (table.csv, table.md), plots "
    "(PNG and SVG) and a self-contained report.html. Every stage is cached in --out: running "
    "the command again skips finished stages, continues an interrupted one, and runs only the "
    "stages of arms added to the study file. STUDY is a YAML file or the name of an installed "
    "study (quick, data_scale, resolution, ablations; see docs/studies.md)."
)
EXAMPLES = """examples:
  raddino study quick --out study-quick
  raddino study ablations --out studies/ablations --dry-run
"""


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = add_command(subparsers, "study", HELP, DESCRIPTION, EXAMPLES)
    parser.add_argument(
        "study", metavar="STUDY", help="a study file (YAML) or an installed study's name"
    )
    parser.add_argument(
        "--out", required=True, help="study directory (created; resumed if it exists)"
    )
    add_seed_argument(parser, default=None, shown="the study file's")
    add_device_argument(parser)
    add_dtype_argument(
        parser,
        default="fp32",
        what="the encoders' precision during evaluation",
        note="fp32 by default so that feature caches and probe numbers are the same on every "
        "machine; pre-training follows its config's train.precision",
    )
    parser.add_argument(
        "--workers",
        type=int,
        default=None,
        help="worker processes for rendering, encoding and pre-training data (default: 2 for "
        "rendering and encoding; pre-training keeps each config's train.num_workers: "
        "tiny_cpu 0, clip_tiny_cpu 2)",
    )
    parser.add_argument(
        "--dry-run",
        action="store_true",
        help="print the arms as resolved and the estimated time of the work left, then stop",
    )
    add_progress_argument(parser)
    parser.set_defaults(run=run)


def build_study(args: argparse.Namespace) -> Study:
    from dataclasses import replace
    from pathlib import Path

    from raddino.study.options import StudyOptions
    from raddino.study.pipeline import Study
    from raddino.study.reader import load_study

    spec = load_study(args.study)
    if args.seed is not None:
        spec = replace(spec, seed=args.seed)
    # what reproduces the numbers (device, workers and progress change only the speed)
    words = ["raddino", "study", args.study, "--out", args.out]
    words += ["--seed", str(args.seed)] if args.seed is not None else []
    command = shlex.join(words)
    options = StudyOptions(
        spec=spec,
        out=Path(args.out),
        device=args.device,
        dtype=args.dtype,
        workers=args.workers,
        progress=not args.no_progress,
        command=command,
    )
    return Study(options)


def plan_lines(study: Study) -> list[str]:
    """The arms as the study resolved them, and the work still to do."""
    from raddino.demo.stages import format_duration

    spec = study.spec
    lines = [
        f"raddino study: {spec.name} ({spec.path})",
        f"  {len(study.plans)} arms, reference {spec.reference}; "
        f"{study.available} train-split images; seed {spec.seed}",
    ]
    for p in study.plans:
        if p.arm.random_init:
            what = "random weights"
        else:
            what = f"{p.train_images} images, {p.steps} steps, {p.pretrain_size} px"
            if p.pretrain != f"pretrain_{p.name}":
                what += f" (pre-training shared with {p.pretrain.removeprefix('pretrain_')})"
        lines.append(f"  - {p.name}: {what}; evaluated at {p.image_size} px")
    lines.append(f"  work left: about {format_duration(study.planned_seconds())}")
    return lines


def summary_lines(study: Study, outcomes: list[StageOutcome]) -> list[str]:
    from raddino.demo.stages import format_duration

    p = study.paths
    lines = ["", f"raddino study: finished {study.spec.name}"]
    lines += [f"  table:   {p.table_md}", f"           {p.table_csv}"]
    lines += [f"  plots:   {p.plots}", f"  report:  {p.report_html}", f"           {p.report_md}"]
    lines += [f"  timings: {p.timings}", ""]
    ran = sum(o.seconds for o in outcomes if o.status == "ran")
    cached = sum(o.status == "cached" for o in outcomes)
    lines.append(f"  {len(outcomes) - cached} stages ran ({format_duration(ran)}), {cached} cached")
    return lines


def run(args: argparse.Namespace) -> int:
    from raddino.demo.stages import StageError
    from raddino.study import ranks

    study = build_study(args)  # a bad study file fails here, before any work
    main = ranks.rank() == 0  # under torchrun, process 0 speaks for the study
    if args.dry_run:
        if main:
            print("\n".join(plan_lines(study)))
        return 0
    if main:
        print("\n".join(plan_lines(study)[:-1]), flush=True)
    try:
        outcomes = study.run()
    except StageError as error:
        return report_stage_error("study", error, study.paths.root)
    if main:
        print("\n".join(summary_lines(study, outcomes)))
    return 0
