"""``raddino probe``: linear and k-NN probes of findings and patient metadata on frozen features."""

from __future__ import annotations

import argparse
from pathlib import Path

from raddino.cli.options import (
    add_command,
    add_evaluation_arguments,
    add_model_argument,
    add_probe_arguments,
    encode_options,
    probe_config,
)

HELP = "linear / k-NN probes of manifest columns (findings, sex, age, BMI) on frozen features"
EXAMPLES = """examples:
  raddino probe --model rad-dino/ --manifest cohort/manifest.csv \\
      --targets effusion nodule sex age:continuous --out eval/probe
  raddino probe --model random:runs/tiny --manifest cohort/manifest.csv --targets effusion \\
      --out eval/probe-random --device cuda --dtype bf16
"""


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = add_command(
        subparsers,
        "probe",
        help=HELP,
        description=HELP + ". Hyper-parameters are chosen on the validation split; metrics on "
        "the test split come with patient-level bootstrap intervals. Writes probe.md, "
        "probe.json and predictions.csv.",
        examples=EXAMPLES,
    )
    add_model_argument(parser, baselines=True)
    add_probe_arguments(parser)
    add_evaluation_arguments(parser)
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from raddino.eval.encoders import EncoderSpec
    from raddino.eval.probe_manifest import probe_manifest, probe_tables
    from raddino.eval.targets import parse_target_specs

    spec = EncoderSpec.parse(args.model, image_size=args.image_size, seed=args.seed)
    report = probe_manifest(
        spec,
        args.manifest,
        parse_target_specs(args.targets),
        args.out,
        encode_options(args),
        probe_config(args),
        features=args.features,
        cache_dir=args.cache,
    )
    print(probe_tables(report.results))
    out = Path(args.out)
    print(f"probe report: {out / 'probe.md'} (also probe.json, predictions.csv)")
    return 0
