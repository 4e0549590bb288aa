"""``OUT/REPORT.md`` and ``OUT/report.html`` of a study, built from the demo's document blocks
(:mod:`raddino.demo.document`): the same content twice, the HTML with every figure embedded so
that it is one self-contained file."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from raddino.atomic import write_atomic
from raddino.demo.document import SYNTHETIC_NOTE, Block, to_html, to_markdown
from raddino.demo.stages import format_duration
from raddino.eval.tables import format_number, format_percent
from raddino.study.spec import SyntheticData
from raddino.study.table import (
    StudyTable,
    full_block,
    headline_block,
    legend_text,
    statements,
)

if TYPE_CHECKING:
    from raddino.study.pipeline import Study

PROTOCOL = (
    "Each arm is evaluated on the same test patients with the same patient-level bootstrap "
    "resamples, so every difference from the reference is paired. Probes choose their "
    "regularisation on the validation split and are refit on train + validation before the test "
    "split is scored; segmentation heads keep the epoch with the best validation Dice. The arms, "
    "their sizes and the metrics were fixed in the study file before it ran; nothing was chosen "
    "on the test split. Every arm is reported, whatever it showed."
)


def data_sentence(study: Study, markers: dict[str, dict]) -> str:
    spec = study.spec
    splits = (markers.get("data") or {}).get("result", {}).get("splits", {})
    counts = ", ".join(f"{n} {name}" for name, n in splits.items())
    if isinstance(spec.data, SyntheticData):
        d = spec.data
        text = (
            f"The embedded synthetic cohort: {d.images} radiographs of {d.size} px rendered with "
            f"seed {spec.seed} (raddino synth), split by patient"
        )
    else:
        text = f"The manifest {spec.data.path}"
    text += f" ({counts})." if counts else "."
    return (
        text + f" Pre-training sees train-split images only ({study.available} available; "
        "data-scale arms take nested subsets of them, ranked by a hash of the seed and the path)."
    )


def arms_block(study: Study, markers: dict[str, dict]) -> Block:
    header = [
        "arm",
        "group",
        "config",
        "overrides",
        "images",
        "steps",
        "pre-train px",
        "eval px",
        "pre-training time",
        "final loss",
    ]
    rows = []
    for p in study.plans:
        marker = markers.get(p.pretrain or "") or {}
        result = marker.get("result", {})
        loss = result.get("last", {}).get("loss")
        if p.arm.random_init:
            config, time_text = f"{p.arm.config.stem} (random weights)", "not pre-trained"
        else:
            config = p.arm.config.stem
            shared = p.pretrain != f"pretrain_{p.name}"
            time_text = format_duration(marker["seconds"]) if marker.get("seconds") else ""
            if shared:
                time_text = f"shared with {p.pretrain.removeprefix('pretrain_')}"
        rows.append(
            [
                p.name,
                ", ".join(p.arm.groups),
                config,
                " ".join(p.arm.overrides),
                str(p.train_images),
                str(p.steps),
                "" if p.arm.random_init else str(p.pretrain_size),
                str(p.image_size),
                time_text,
                "" if loss is None else format_number(loss),
            ]
        )
    return Block("table", header=header, rows=rows)


def timing_block(study: Study, markers: dict[str, dict]) -> list[Block]:
    rows, total = [], 0.0
    for stage in study.stages():
        marker = markers.get(stage.name) or study.runner.marker(stage.name) or {}
        seconds = marker.get("seconds")
        if seconds is not None:
            total += seconds
        rows.append(
            [stage.name, format_duration(seconds) if seconds is not None else "(this stage)"]
        )
    return [
        Block(
            "p",
            f"Sum of the stages' last runs: {format_duration(total)} (the study's wall time when "
            "it ran without interruption, the report itself excluded).",
        ),
        Block("table", header=["stage", "seconds"], rows=rows),
    ]


def build_blocks(
    study: Study, table: StudyTable, listing: dict, markers: dict[str, dict]
) -> list[Block]:
    spec = study.spec
    blocks: list[Block] = []
    if isinstance(spec.data, SyntheticData):
        blocks.append(Block("note", SYNTHETIC_NOTE))
    if spec.description:
        blocks.append(Block("p", spec.description))
    blocks += [
        Block("h2", "Protocol"),
        Block("p", data_sentence(study, markers)),
        Block(
            "p",
            f"Reference arm: {table.reference}. {PROTOCOL} Intervals: "
            f"{format_percent(table.level)}, {table.n_resamples} resamples, seed {spec.seed}.",
        ),
        Block("h2", "Results"),
        Block("p", legend_text(table)),
        headline_block(table, spec.metrics, study.arm_settings()),
        Block("list", items=statements(table, spec.metrics)),
    ]
    if listing.get("figures"):
        blocks.append(Block("h2", "Plots"))
        for figure in listing["figures"]:
            blocks.append(Block("figure", figure["caption"], path=figure["png"]))
        svgs = ", ".join(f["svg"] for f in listing["figures"])
        blocks.append(Block("p", f"Vector versions for a paper: {svgs}."))
    blocks += [Block("h2", "Arms"), arms_block(study, markers)]
    blocks += [Block("h2", "Every metric"), full_block(table)]
    notes = [*table.notes, *listing.get("notes", [])]
    if notes:
        blocks += [Block("h2", "Notes"), Block("list", items=notes)]
    blocks += [Block("h2", "Stage timings"), *timing_block(study, markers)]
    command = study.options.command or f"raddino study {spec.path} --out {study.paths.root}"
    blocks += [
        Block("h2", "Reproduce"),
        Block("code", command),
        Block("h2", f"Study file ({spec.path.name})"),
        Block("code", spec.path.read_text(encoding="utf-8")),
        Block(
            "p",
            "Files: table.csv (every metric of every arm, full precision), table.md, "
            "study.json, plots/ (PNG and SVG), evaluation/ARM/ (each arm's probe and "
            "segmentation reports, estimates.npz with the per-resample samples), runs/ "
            "(pre-training runs), stages/ (the cached stages' markers), timings.json.",
        ),
    ]
    return blocks


def write_study_report(
    study: Study, table: StudyTable, listing: dict, markers: dict[str, dict]
) -> tuple[Path, Path]:
    """``REPORT.md`` (figures referenced relatively) and ``report.html`` (self-contained)."""
    title = f"raddino study: {study.spec.name}"
    blocks = build_blocks(study, table, listing, markers)
    root = study.paths.root
    md = write_atomic(
        study.paths.report_md,
        lambda t: t.write_text(to_markdown(title, blocks), encoding="utf-8"),
    )
    page = to_html(title, blocks, root)
    html = write_atomic(study.paths.report_html, lambda t: t.write_text(page, encoding="utf-8"))
    return md, html
