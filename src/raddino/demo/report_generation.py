"""The demo's report generation: one small language model (``init-lm``), a projector + LM
trained on the frozen features of each encoder, greedy reports for test images, their scores
against the most-common-report baseline, and a few examples side by side."""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

from raddino.atomic import write_csv_atomic
from raddino.demo.options import DemoPaths, ReportSizes
from raddino.demo.stages import write_json_atomic
from raddino.demo.summary import report_examples
from raddino.eval.encoders import EncoderSpec
from raddino.features.encode import EncodeOptions


def generation_rows(paths: DemoPaths, rows: int) -> Path:
    """The first ``rows`` test images of the cohort, as a manifest (absolute paths)."""
    from raddino.data.manifest import read_manifest_table

    fields, cohort = read_manifest_table(paths.manifest)
    chosen = [r for r in cohort if r["split"] == "test"][:rows]
    for row in chosen:
        row["path"] = str(Path(row["path"]).resolve())

    values = ([row.get(field) or "" for field in fields] for row in chosen)
    return write_csv_atomic(paths.reports / "test_rows.csv", fields, values)


def small_lm(paths: DemoPaths, sizes: ReportSizes, seed: int) -> Path:
    """``OUT/reports/lm``: a tokenizer trained on the train split's reports and a random Llama
    (written beside and renamed into place, so a kill never leaves half a model)."""
    from raddino.eval.report_generation.data import read_report_rows
    from raddino.eval.report_generation.lm import SmallLMConfig, init_lm

    lm = paths.reports / "lm"
    if (lm / "config.json").is_file():
        return lm
    config = SmallLMConfig(
        vocab_size=sizes.vocab_size,
        hidden_size=sizes.hidden_size,
        num_layers=sizes.layers,
        num_heads=sizes.heads,
        seed=seed,
    )
    partial = paths.reports / ".lm-partial"
    for folder in (partial, lm):
        if folder.exists():
            shutil.rmtree(folder)
    init_lm(read_report_rows(paths.manifest, "train").reports, partial, config)
    os.replace(partial, lm)
    return lm


def train_and_score(
    specs: dict[str, EncoderSpec],
    paths: DemoPaths,
    sizes: ReportSizes,
    options: EncodeOptions,
    seed: int,
    device: str,
) -> dict:
    """Train, generate and score a report model per encoder; writes ``OUT/reports/`` and
    returns its ``summary.json`` content (scores per encoder, examples, settings)."""
    from dataclasses import asdict

    from raddino.eval.report_generation.evaluate import score_predictions
    from raddino.eval.report_generation.generate import GenerateOptions, generate_reports
    from raddino.eval.report_generation.train import TrainConfig, train_report_model

    folder = paths.reports
    folder.mkdir(parents=True, exist_ok=True)
    lm = small_lm(paths, sizes, seed)
    subset = generation_rows(paths, sizes.test_rows)
    train = TrainConfig(
        stage="full",
        steps=sizes.steps,
        batch_size=sizes.batch_size,
        lr=sizes.lr,
        warmup_steps=sizes.warmup_steps,
        pool=sizes.pool,
        seed=seed,
        device=device,
        save_every=max(1, sizes.steps // 4),
        progress=options.progress,
    )
    generate = GenerateOptions(
        max_new_tokens=sizes.max_new_tokens,
        batch_size=16,
        split="test",
        device=device,
        progress=options.progress,
    )
    scores, predictions = {}, {}
    for label, spec in specs.items():
        run = folder / label
        print(f"report generation with {label}", file=sys.stderr)
        train_report_model(
            spec, lm, paths.manifest, run, train, encode_options=options, cache=paths.features
        )
        predictions[label] = generate_reports(
            run, subset, folder / f"{label}.predictions.csv", generate, paths.features, options
        )
        scores[label] = score_predictions(
            predictions[label], paths.manifest, folder / f"{label}.metrics.json"
        )
    summary = {
        "scores": scores,
        "examples": report_examples(subset, predictions, sizes.examples),
        "settings": asdict(sizes),
    }
    write_json_atomic(folder / "summary.json", summary)
    return summary
