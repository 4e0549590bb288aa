"""``OUT/REPORT.md`` and ``OUT/report.html``: one document, two renderings.

The report is built as a list of blocks (headings, paragraphs, tables, figures, code), then
written as Markdown (figures referenced relatively: ``figures/...png``, so REPORT.md reads
correctly inside OUT/) and as HTML with every figure embedded as a base64 data URI (report.html
is one self-contained file that can be mailed or moved).
"""

from __future__ import annotations

import base64
import html
from dataclasses import dataclass, field
from pathlib import Path

from raddino.atomic import write_atomic
from raddino.demo.options import (
    LABEL_LANGUAGE,
    LABEL_NO_IBOT,
    LABEL_PIXELS,
    LABEL_SSL,
    PAIRS,
    PROBE_FEATURES,
    STRUCTURES,
    DemoPaths,
)
from raddino.demo.stages import format_duration, read_json
from raddino.eval.feature_kinds import describe_features
from raddino.eval.tables import (
    METRIC_NAMES,
    format_interval,
    format_number,
    format_percent,
    markdown_table,
)

TITLE = "RAD-DINO demo: image-only vs language-supervised pre-training on synthetic radiographs"
SYNTHETIC_NOTE = (
    "Synthetic data from one CT; not for clinical conclusions. Every image is a virtual patient "
    "rendered from the same chest CT (see docs/synthetic_cohort.md): the numbers show that the "
    "pipeline works and what pre-training does on this cohort, nothing about real patients."
)
METADATA = ("age", "bmi", "sex")
PROTOCOLS = {"linear": "linear", "knn": "k-NN"}


@dataclass
class Block:
    kind: str  # h2 | h3 | p | note | list | table | figure | code
    text: str = ""
    items: list[str] = field(default_factory=list)
    header: list[str] = field(default_factory=list)
    rows: list[list[str]] = field(default_factory=list)
    path: str = ""  # figure: relative to OUT


# --------------------------------------------------------------------------- rendering


def to_markdown(title: str, blocks: list[Block]) -> str:
    lines = [f"# {title}", ""]
    for b in blocks:
        if b.kind in ("h2", "h3"):
            lines += [("## " if b.kind == "h2" else "### ") + b.text, ""]
        elif b.kind == "p":
            lines += [b.text, ""]
        elif b.kind == "note":
            lines += [f"> **{b.text}**", ""]
        elif b.kind == "list":
            lines += [*(f"- {item}" for item in b.items), ""]
        elif b.kind == "table":
            lines += [markdown_table(b.header, b.rows), ""]
        elif b.kind == "figure":
            lines += [f"![{b.text}]({b.path})", "", f"*{b.text}*", ""]
        elif b.kind == "code":
            lines += ["```", b.text.rstrip("\n"), "```", ""]
    return "\n".join(lines)


STYLE = """
body { font-family: system-ui, sans-serif; max-width: 70rem; margin: 2rem auto; padding: 0 1rem;
       color: #222; line-height: 1.45; }
table { border-collapse: collapse; margin: 0.5rem 0 1.2rem; font-size: 0.9rem; }
th, td { border: 1px solid #ccc; padding: 0.25rem 0.5rem; text-align: left; }
th { background: #f2f2f2; }
.note { border-left: 4px solid #c33; background: #fff4f4; padding: 0.6rem 1rem; }
figure { margin: 1rem 0; } figure img { max-width: 100%; border: 1px solid #ddd; }
figcaption { font-size: 0.9rem; color: #555; }
pre { background: #f6f6f6; padding: 0.8rem; overflow-x: auto; font-size: 0.8rem; }
"""


def to_html(title: str, blocks: list[Block], root: Path) -> str:
    e = html.escape
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f"<title>{e(title)}</title><style>{STYLE}</style></head><body>",
        f"<h1>{e(title)}</h1>",
    ]
    for b in blocks:
        if b.kind in ("h2", "h3"):
            parts.append(f"<{b.kind}>{e(b.text)}</{b.kind}>")
        elif b.kind == "p":
            parts.append(f"<p>{e(b.text)}</p>")
        elif b.kind == "note":
            parts.append(f'<p class="note"><strong>{e(b.text)}</strong></p>')
        elif b.kind == "list":
            parts.append("<ul>" + "".join(f"<li>{e(i)}</li>" for i in b.items) + "</ul>")
        elif b.kind == "table":
            head = "".join(f"<th>{e(c)}</th>" for c in b.header)
            body = "".join(
                "<tr>" + "".join(f"<td>{e(c)}</td>" for c in row) + "</tr>" for row in b.rows
            )
            parts.append(f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>")
        elif b.kind == "figure":
            data = base64.b64encode((root / b.path).read_bytes()).decode("ascii")
            parts.append(
                f'<figure><img alt="{e(b.text)}" src="data:image/png;base64,{data}">'
                f"<figcaption>{e(b.text)}</figcaption></figure>"
            )
        elif b.kind == "code":
            parts.append(f"<pre>{e(b.text)}</pre>")
    parts.append("</body></html>")
    return "\n".join(parts) + "\n"


# --------------------------------------------------------------------------- content


def estimate_cell(e: dict) -> str:
    """An estimate of the summary JSON: ``0.912 [0.890, 0.931]``."""
    return format_interval(e.get("value"), e.get("low"), e.get("high"))


def difference_cell(d: dict | None) -> str:
    """A paired difference of the summary JSON: ``+0.021 [-0.004, +0.045]``, `` *`` appended
    when its interval excludes 0; empty when there is none."""
    if not d or d.get("value") is None:
        return ""
    text = format_interval(d["value"], d.get("low"), d.get("high"), signed=True)
    return text + (" *" if d.get("significant") else "")


def result_table(summary: dict, rows: list[dict], first: str) -> Block:
    """One row per metric: each encoder's value [CI], then each paired difference."""
    labels = [e["label"] for e in summary["encoders"]]
    pairs = summary["pairs"]
    header = [first, "metric", *labels, *(f"Δ {p}" for p in pairs)]
    body = []
    for row in rows:
        cells = [row["target"], METRIC_NAMES.get(row["metric"], row["metric"])]
        cells += [estimate_cell(row["values"][label]) for label in labels]
        cells += [difference_cell(row["differences"].get(p)) for p in pairs]
        body.append(cells)
    return Block("table", header=header, rows=body)


ENCODER_DESCRIPTIONS = {
    LABEL_SSL: "the ViT pre-trained on the train split's images alone (DINO + iBOT + KoLeo)",
    LABEL_LANGUAGE: "the same ViT pre-trained on the same images paired with their reports "
    "(CLIP-style image-text contrast against a small text transformer)",
    LABEL_NO_IBOT: "the image-only recipe without the iBOT loss",
    LABEL_PIXELS: "the grey image itself, area-averaged to 16 x 16 pixels (the floor every "
    "encoder must clear)",
}


def encoders_sentence(summary: dict) -> str:
    labels = [e["label"] for e in summary["encoders"]]
    parts = [
        f"{label}: {ENCODER_DESCRIPTIONS[label]}"
        for label in labels
        if label in ENCODER_DESCRIPTIONS
    ]
    random = f"{summary['random']}: the same ViT with random weights"
    if summary.get("random_is_start"):
        random += " (exactly the weights the image-only run started from)"
    parts.append(random)
    return "Encoders. " + "; ".join(parts) + "."


FOREST_ROWS = (
    ("linear", "findings macro", "auroc", "findings macro AUROC"),
    ("linear", "findings macro", "auprc", "findings macro AUPRC"),
    ("linear", "sex", "auroc", "sex AUROC"),
    ("linear", "age", "r2", "age R²"),
    ("linear", "bmi", "r2", "BMI R²"),
    *(("segment (linear)", s, "dice", f"Dice {s.replace('_', ' ')}") for s in STRUCTURES),
    ("segment (linear)", "mean", "dice", "Dice mean"),
)
"""(task, target, metric, label) of the forest plot's rows; every metric: higher is better."""
FOREST_PAIRS = PAIRS[:4]


def forest_block(paths: DemoPaths, summary: dict) -> list[Block]:
    """The answer in one picture: paired differences of the main comparisons, with CIs."""
    from raddino.viz.forest import Difference, ForestRow, write_forest_plot

    names = {f"{a} - {b}" for a, b in FOREST_PAIRS}
    comparisons = [p for p in summary["pairs"] if p in names]
    if not comparisons:
        return []
    rows = []
    for task, target, metric, label in FOREST_ROWS:
        row = next(
            (
                r
                for r in summary["rows"]
                if (r["task"], r["target"], r["metric"]) == (task, target, metric)
            ),
            None,
        )
        if row is None:
            continue
        differences = {
            p: Difference(d["value"], d.get("low"), d.get("high"))
            for p in comparisons
            if (d := row["differences"].get(p)) and d.get("value") is not None
        }
        rows.append(ForestRow(label, differences))
    hits = ((read_json(paths.figures / "figures.json") or {}).get("correspondence")) or {}
    hit_rows = {}
    for p in comparisons:
        a, b = p.split(" - ")
        if hits.get(a, {}).get("pairs") and hits.get(b, {}).get("pairs"):
            hit_rows[p] = Difference(hits[a]["hit_rate"] - hits[b]["hit_rate"])
    if hit_rows:
        rows.append(ForestRow("Figure 2 hit rate (no CI)", hit_rows))
    if not rows:
        return []
    png = write_forest_plot(paths.figures / "forest.png", rows, comparisons)
    write_forest_plot(paths.figures / "forest.svg", rows, comparisons)
    caption = (
        "Paired differences a - b on the test split with "
        f"{format_percent(summary['interval_level'])} bootstrap CIs over patients (filled: the CI "
        "excludes 0); right of 0 favours a. The Figure 2 hit rate has no interval (its pairs "
        "share images)."
    )
    return [Block("figure", caption, path=str(png.relative_to(paths.root)))]


def evaluation_blocks(summary: dict) -> list[Block]:
    rows, level = summary["rows"], summary["interval_level"]
    blocks = [
        Block("h2", "Headline results"),
        Block("p", summary["headline"].get("statement", "")),
        Block(
            "p",
            f"Each cell: test-split value [{format_percent(level)} bootstrap CI over patients, "
            f"{summary['n_resamples']} resamples]. Δ a - b: paired difference (the same "
            "resamples for every encoder); * marks an interval that excludes 0. Features: "
            f"{describe_features(PROBE_FEATURES)}, frozen encoders; probes chosen on the "
            "validation split.",
        ),
        Block("p", encoders_sentence(summary)),
    ]
    findings = summary["findings"]

    def pick(task: str, targets: list[str], metrics: tuple[str, ...]) -> list[dict]:
        chosen = [r for r in rows if r["task"] == task and r["metric"] in metrics]
        return [
            r
            for t in targets
            for m in metrics
            for r in chosen
            if (r["target"], r["metric"]) == (t, m)
        ]

    macro = [
        dict(row, target=f"findings macro ({PROTOCOLS.get(row['task'], row['task'])})")
        for row in pick("linear", ["findings macro"], ("auroc", "auprc"))
        + pick("knn", ["findings macro"], ("auroc",))
    ]
    blocks += [
        Block("h3", f"Findings: macro over {len(findings)} findings"),
        result_table(summary, macro, "target"),
    ]
    blocks += [
        Block("h3", "Findings: linear probe per finding"),
        result_table(summary, pick("linear", findings, ("auroc", "auprc")), "finding"),
    ]
    metadata = pick("linear", list(METADATA), ("auroc", "mae", "r2", "pearson_r"))
    if metadata:
        blocks += [
            Block("h3", "Patient metadata (never in the reports): linear probe"),
            Block(
                "p",
                "Age and BMI by ridge regression (MAE: lower is better), sex by logistic "
                "regression.",
            ),
            result_table(summary, metadata, "target"),
        ]
    seg = [r for r in rows if r["task"].startswith("segment") and r["metric"] == "dice"]
    if seg:
        blocks += [
            Block("h3", "Segmentation: linear head on frozen patch tokens"),
            result_table(summary, seg, "structure"),
        ]
    dropped = summary.get("dropped_targets") or {}
    notes = [f"{name} not probed: {reason}" for name, reason in dropped.items()]
    notes += list(summary.get("notes") or [])
    if notes:
        blocks.append(Block("list", items=notes))
    blocks.append(
        Block(
            "p",
            "All metrics, k-NN included: evaluation/compare.md (its macro rows average every "
            "binary target, sex included; the findings macro above does not).",
        )
    )
    return blocks


def figure_blocks(paths: DemoPaths) -> list[Block]:
    listing = read_json(paths.figures / "figures.json") or {"figures": [], "notes": []}
    blocks = [Block("h2", "Figures")]
    correspondence = correspondence_sentence(listing.get("correspondence") or {})
    after_figure_2 = len(blocks)
    for figure in listing["figures"]:
        if (paths.root / figure["path"]).is_file():
            blocks.append(Block("figure", figure["caption"], path=figure["path"]))
            if figure["key"].startswith("similarity_"):
                after_figure_2 = len(blocks)
    if correspondence:
        blocks.insert(after_figure_2, Block("p", correspondence))
    if listing.get("notes"):
        blocks.append(Block("list", items=list(listing["notes"])))
    return blocks


def correspondence_sentence(scores: dict[str, dict]) -> str:
    """Figure 2 as numbers (``raddino.viz.correspondence``), one clause per encoder."""
    scores = {label: s for label, s in scores.items() if s.get("pairs")}
    if not scores:
        return ""
    first = next(iter(scores.values()))
    hits = ", ".join(
        f"{format_percent(s['hit_rate'], 1)}{' of pairs' if i == 0 else ''} for {label}"
        for i, (label, s) in enumerate(scores.items())
    )
    ranks = ", ".join(f"{format_number(s['auroc'])} for {label}" for label, s in scores.items())
    return (
        f"Figure 2 over all {first['pairs']} ordered pairs of test images with nodules (query: "
        "the patch most covered by the query's nodule): the other image's most similar lung or "
        f"nodule patch lies on its nodule in {hits} (chance "
        f"{format_percent(first['chance'], 1)}); its nodule patches rank above its other lung "
        f"patches with AUROC {ranks}. The pairs share images, so no interval is given."
    )


def report_generation_blocks(paths: DemoPaths, skipped: str) -> list[Block]:
    blocks = [Block("h2", "Report generation (LLaVA-style, small LM)")]
    summary = None if skipped else read_json(paths.reports / "summary.json")
    if summary is None:
        return [*blocks, Block("p", f"Not run ({skipped or 'no results in reports/'}).")]
    s = summary["settings"]
    blocks.append(
        Block(
            "p",
            f"Frozen encoder -> MLP projector -> a {s['layers']}-layer, {s['hidden_size']}-wide "
            f"Llama trained from scratch with the projector ({s['steps']} steps, batch "
            f"{s['batch_size']}) on the train split's reports; greedy reports for "
            f"{s['test_rows']} test images at most. Baseline: the most common training report "
            "for every image. CheXbert and RadGraph F1 are not available offline.",
        )
    )
    header = ["", "BLEU-1", "BLEU-4", "ROUGE-L", "clinical F1 micro", "clinical F1 macro"]
    body = []
    baseline = None
    for label, scores in summary["scores"].items():
        c = scores["clinical"]
        body.append(
            [
                label,
                format_number(scores["bleu1"], 1),
                format_number(scores["bleu4"], 1),
                format_number(scores["rougeL"]),
                format_number(c["micro"]["f1"]),
                format_number(c["macro"]["f1"]),
            ]
        )
        baseline = baseline or scores.get("baseline_most_common_report")
    if baseline:
        c = baseline["clinical"]
        body.append(
            [
                "most common report",
                format_number(baseline.get("bleu1"), 1),
                format_number(baseline.get("bleu4"), 1),
                format_number(baseline.get("rougeL")),
                format_number(c["micro"]["f1"]),
                format_number(c["macro"]["f1"]),
            ]
        )
    blocks.append(Block("table", header=header, rows=body))
    if summary.get("examples"):
        blocks.append(Block("h3", "Examples (test images)"))
        for example in summary["examples"]:
            items = [f"{k}: {v}" for k, v in example.items() if k != "image"]
            blocks += [Block("p", example["image"]), Block("list", items=items)]
    return blocks


def pretraining_blocks(markers: dict[str, dict]) -> list[Block]:
    rows = []
    for stage in ("pretrain", "pretrain_language", "pretrain_no_ibot"):
        result = (markers.get(stage) or {}).get("result")
        if not result:
            continue
        first, last = result.get("first", {}), result.get("last", {})
        per_step = result.get("seconds_per_step")
        rows.append(
            [
                result["run_dir"],
                str(result["steps"]),
                "n/a" if per_step is None else f"{per_step * result['steps'] / 60:.1f} min",
                f"{format_number(first.get('loss'))} -> {format_number(last.get('loss'))}",
                f"{format_number(first.get('ibot'))} -> {format_number(last.get('ibot'))}"
                if "ibot" in last
                else "",
                format_number(last.get("teacher_entropy")) if "teacher_entropy" in last else "",
                format_number(last.get("retrieval_accuracy"))
                if "retrieval_accuracy" in last
                else "",
            ]
        )
    header = [
        "run",
        "steps",
        "time",
        "total loss",
        "iBOT loss",
        "teacher entropy (last)",
        "in-batch retrieval (last)",
    ]
    return [
        Block("h2", "Pre-training"),
        Block(
            "p",
            "Every run sees the cohort's train split only, with the same batch size and number "
            "of steps: the image-only run as two global and four local crops per image, the "
            "language-supervised run as one crop per image with its report. Time: "
            "steps x the measured seconds per step (a resumed run's rate is "
            "that of its last part). The no-iBOT ablation, when run, sets loss.ibot_weight=0 "
            "and nothing else.",
        ),
        Block("table", header=header, rows=rows),
    ]


def timing_blocks(paths: DemoPaths, markers: dict[str, dict]) -> list[Block]:
    rows = []
    total = 0.0
    for name, marker in markers.items():
        seconds = float(marker.get("seconds", 0.0))
        total += seconds
        rows.append([name, format_duration(seconds), marker.get("finished", "")])
    rows.append(["total", format_duration(total), ""])
    return [
        Block("h2", "Stage timings"),
        Block(
            "p",
            "Seconds of each stage's last run (cached stages keep the time of the run "
            "that made them); timings.json has the latest invocation's.",
        ),
        Block("table", header=["stage", "time", "finished (UTC)"], rows=rows),
    ]


def configuration_blocks(options: dict, configs: dict) -> list[Block]:
    rows = [[key, str(value)] for key, value in options.items()]
    return [
        Block("h2", "Configuration"),
        Block("table", header=["option", "value"], rows=rows),
        Block(
            "p",
            "Resolved pre-training config of the image-only encoder (the ablation differs in "
            "loss.ibot_weight only):",
        ),
        Block("code", configs["pretrain"].to_yaml()),
        *(
            [
                Block("p", "Resolved config of the language-supervised encoder:"),
                Block("code", configs["pretrain_language"].to_yaml()),
            ]
            if "pretrain_language" in configs
            else []
        ),
    ]


def files_block(paths: DemoPaths) -> list[Block]:
    items = [
        "cohort/: the synthetic cohort (images, masks, manifest.csv with splits, findings, "
        "age/sex/BMI, reports)",
        "runs/ssl/, runs/language/ (and runs/no_ibot/ with --ablation): pre-training runs "
        "(config.yaml, checkpoints, metrics.jsonl)",
        "evaluation/: compare.md, compare.json, demo_summary.json, one folder per encoder "
        "(probe and segmentation reports, overlays)",
        "reports/: report-generation runs, predictions and metrics",
        "figures/: the figures above (forest.svg: the forest plot as a vector file); stages/: "
        "one marker per finished stage",
    ]
    return [Block("h2", "Files"), Block("list", items=items)]


def build_blocks(
    paths: DemoPaths, markers: dict[str, dict], options: dict, configs: dict, reports_skipped: str
) -> list[Block]:
    summary = read_json(paths.eval_summary)
    if summary is None:
        raise FileNotFoundError(f"{paths.eval_summary}: the evaluate stage has not finished")
    blocks = [Block("note", SYNTHETIC_NOTE), *forest_block(paths, summary)]
    cohort = (markers.get("cohort") or {}).get("result", {})
    if cohort:
        splits = ", ".join(f"{v} {k}" for k, v in cohort.get("splits", {}).items())
        positives = ", ".join(f"{k} {v}" for k, v in cohort.get("positives", {}).items())
        blocks.append(
            Block(
                "p",
                f"Cohort: {cohort['images']} synthetic radiographs of {cohort['size']} px "
                f"({splits}); positives: {positives}.",
            )
        )
    blocks += evaluation_blocks(summary)
    blocks += figure_blocks(paths)
    blocks += report_generation_blocks(paths, reports_skipped)
    blocks += pretraining_blocks(markers)
    blocks += timing_blocks(paths, markers)
    blocks += configuration_blocks(options, configs)
    blocks += files_block(paths)
    blocks.append(Block("note", SYNTHETIC_NOTE))
    return blocks


def write_report(
    paths: DemoPaths,
    markers: dict[str, dict],
    options: dict,
    configs: dict,
    reports_skipped: str = "",
) -> tuple[Path, Path]:
    """Write REPORT.md and report.html from the stages' outputs; returns both paths.
    ``reports_skipped``: why report generation did not run ("" when it did)."""
    blocks = build_blocks(paths, markers, options, configs, reports_skipped)
    markdown = to_markdown(TITLE, blocks)
    page = to_html(TITLE, blocks, paths.root)
    md = write_atomic(paths.report_md, lambda t: t.write_text(markdown, encoding="utf-8"))
    html_path = write_atomic(paths.report_html, lambda t: t.write_text(page, encoding="utf-8"))
    return md, html_path
