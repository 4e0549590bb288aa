"""``raddino demo``: synthetic cohort -> pre-training -> evaluation -> REPORT.md, resumable."""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING

from raddino.cli.options import (
    add_command,
    add_device_argument,
    add_progress_argument,
    add_seed_argument,
    report_stage_error,
)

if TYPE_CHECKING:
    from raddino.demo.options import DemoOptions
    from raddino.demo.pipeline import Demo
    from raddino.demo.stages import StageOutcome

HELP = (
    "the end-to-end demo: synthetic cohort, image-only and language-supervised pre-training, "
    "evaluation against random weights and raw pixels, report"
)
EXAMPLES = """examples:
  raddino demo --out demo/            # the full demo (timings: README.md); re-run to resume
  raddino demo --out demo/ --quick    # a smoke run of every stage at toy sizes
  raddino demo --out demo/ --steps 600 optim.base_lr=1e-3 --no-reports
  raddino demo --out demo/ --ablation --no-language   # image-only with and without iBOT
"""
# raddino.demo.options.DEMO_SEED, spelled out so that parsing does not import torch (a test
# checks that they agree)
DEMO_SEED = 31


def _count(text: str) -> int:
    try:
        return int(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from error


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = add_command(
        subparsers,
        "demo",
        help=HELP,
        description=HELP + ". Every stage is cached in --out: running the command again skips "
        "finished stages, continues an interrupted one, and redoes the stages whose options "
        f"changed (and those after them). The default seed, {DEMO_SEED}, is one no recipe or "
        "setting was chosen on (docs/protocol.md).",
        examples=EXAMPLES,
    )
    parser.add_argument(
        "overrides", nargs="*", metavar="KEY=VALUE", help="pre-training config overrides"
    )
    parser.add_argument(
        "--out", required=True, help="demo directory (created; resumed if it exists)"
    )
    parser.add_argument(
        "--images", type=_count, default=None, help="cohort size (default: 2000; --quick: 48)"
    )
    parser.add_argument(
        "--size", type=_count, default=None, help="image side in pixels (default: 160; --quick: 64)"
    )
    add_seed_argument(parser, default=DEMO_SEED)
    parser.add_argument(
        "--config",
        default=None,
        help="image-only pre-training preset: a YAML file or an installed preset's name "
        "(default: tiny_cpu)",
    )
    parser.add_argument(
        "--language-config",
        default=None,
        help="language-supervised preset: a YAML file or an installed preset's name "
        "(default: clip_tiny_cpu)",
    )
    parser.add_argument(
        "--no-language", action="store_true", help="skip the language-supervised encoder"
    )
    parser.add_argument(
        "--steps", type=_count, default=None, help="pre-training steps of every run"
    )
    parser.add_argument(
        "--ablation", action="store_true", help="also pre-train and evaluate without iBOT"
    )
    parser.add_argument("--no-reports", action="store_true", help="skip report generation")
    parser.add_argument(
        "--workers",
        type=_count,
        default=None,
        help="worker processes for rendering, encoding and pre-training data (default: 2 for "
        "rendering and encoding; pre-training keeps each config's train.num_workers: "
        "tiny_cpu 0, clip_tiny_cpu 2)",
    )
    add_device_argument(parser)
    parser.add_argument(
        "--bootstrap",
        type=_count,
        default=None,
        help="bootstrap resamples (default: 1000; --quick: 200)",
    )
    parser.add_argument(
        "--quick", action="store_true", help="tiny sizes for a smoke run (numbers mean nothing)"
    )
    add_progress_argument(parser)
    parser.set_defaults(run=run)


def options_from_args(args: argparse.Namespace) -> DemoOptions:
    from pathlib import Path

    from raddino.demo.options import (
        FULL,
        LANGUAGE_PRESET,
        QUICK,
        DemoOptions,
        default_config_path,
    )
    from raddino.ssl.config import resolve_config_path

    sizes = QUICK if args.quick else FULL
    bad = [o for o in args.overrides if "=" not in o or o.startswith("-")]
    if bad:
        raise ValueError(f"overrides {bad}: expected section.key=value, e.g. train.steps=500")
    language = None
    if not args.no_language:
        language = (
            resolve_config_path(args.language_config, "--language-config")
            if args.language_config
            else default_config_path(LANGUAGE_PRESET)
        )
    return DemoOptions(
        out=Path(args.out),
        config=resolve_config_path(args.config) if args.config else default_config_path(),
        language_config=language,
        images=sizes.images if args.images is None else args.images,
        size=sizes.size if args.size is None else args.size,
        seed=args.seed,
        steps=args.steps,
        overrides=tuple(args.overrides),
        ablation=args.ablation,
        reports=not args.no_reports,
        workers=args.workers,
        device=args.device,
        quick=args.quick,
        bootstrap=sizes.bootstrap if args.bootstrap is None else args.bootstrap,
        progress=not args.no_progress,
    )


def summary_lines(demo: Demo, outcomes: list[StageOutcome]) -> list[str]:
    """The closing summary: where everything is, the headline, and each stage's time."""
    from raddino.demo.stages import format_duration, read_json

    p = demo.paths
    lines = ["", "raddino demo: finished", f"  report:     {p.report_md}"]
    lines += [f"              {p.report_html}", f"  figures:    {p.figures}"]
    lines += [f"  runs:       {p.runs}", f"  evaluation: {p.evaluation / 'compare.md'}"]
    if demo.reports_enabled()[0] and (p.reports / "summary.json").is_file():
        lines.append(f"  reports:    {p.reports}")
    lines.append(f"  timings:    {p.timings}")
    headline = (read_json(p.eval_summary) or {}).get("headline", {})
    if headline.get("statement"):
        lines += ["", "  " + headline["statement"]]
    lines.append("")
    for outcome in outcomes:
        if outcome.status == "ran":
            text = format_duration(outcome.seconds)
        elif outcome.status == "cached":
            last = (outcome.marker or {}).get("seconds")
            text = "cached" + (f" (took {format_duration(last)})" if last is not None else "")
        else:
            text = f"skipped ({outcome.reason})"
        lines.append(f"  {outcome.name:<17} {text}")
    from raddino.demo.view_command import view_command

    command = view_command(demo)
    if command:  # the last line: the encoders' patch tokens, to click in the browser
        lines += ["", "explore the encoders in the browser:", f"  {command}"]
    return lines


def run(args: argparse.Namespace) -> int:
    from raddino.demo.pipeline import Demo
    from raddino.demo.stages import StageError

    demo = Demo(options_from_args(args))  # bad options and configs fail here, before any work
    try:
        outcomes = demo.run()
    except StageError as error:
        return report_stage_error("demo", error, demo.paths.root)
    print("\n".join(summary_lines(demo, outcomes)))
    return 0
