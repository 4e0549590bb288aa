"""The model card (``README.md``) of an exported Hugging Face directory, from facts alone.

:func:`model_card` is pure: a :class:`CardFacts` in, Markdown with YAML front matter out, so
every line of a card can be tested without files. The facts come from elsewhere
(:mod:`raddino.models.export` reads them from the source); two helpers here turn files'
contents into facts: :func:`run_settings` (a run's resolved ``config.yaml``) and
:func:`evaluation_from_report` (a ``raddino probe`` ``probe.json`` or ``raddino compare``
``compare.json``). The card states what is known and says so where something is not.
"""

from __future__ import annotations

from dataclasses import dataclass

import yaml

from raddino.data.preprocess import PreprocessConfig
from raddino.models.vit import ViTConfig

DEFAULT_LICENSE = "other"
PIPELINE_TAG = "image-feature-extraction"
BASE_TAGS = ("dinov2", "raddino", "radiology", "chest-x-ray")
RECIPE_TAGS = {"dino": ("self-supervised",), "contrastive": ("vision-language", "contrastive")}
RECIPES = {
    "dino": "image-only self-supervised (DINOv2: DINO + iBOT + KoLeo); the released backbone is "
    "the EMA teacher",
    "contrastive": "language-supervised (images against their reports, CLIP/SigLIP-style); the "
    "released backbone is the image tower without its projection",
}
SOURCE_KINDS = {
    "run": "a raddino pre-training run",
    "hf": "a Hugging Face Dinov2 directory",
    "dinov2": "an official DINOv2 weights file",
}


@dataclass(frozen=True)
class EvaluationRow:
    """One number of an evaluation report, with its confidence interval when there is one."""

    task: str  # probe: the protocol (linear, knn); compare: the task
    target: str  # a target name, or "macro" (probe: the mean over binary targets)
    metric: str
    value: float | None
    low: float | None = None
    high: float | None = None
    encoder: str = ""  # compare: the encoder's label; probe: empty (one encoder)


@dataclass(frozen=True)
class Evaluation:
    """The numbers of one ``raddino probe`` or ``raddino compare`` report."""

    source: str  # the report's file name, as the card cites it
    kind: str  # "probe" | "compare"
    rows: tuple[EvaluationRow, ...]
    encoders: tuple[str, ...] = ()  # labels (with sources) of the encoders evaluated
    manifest: str = ""
    level: float | None = None  # the intervals' confidence level
    notes: tuple[str, ...] = ()


@dataclass(frozen=True)
class CardFacts:
    """Everything a card says about an export."""

    name: str  # the exported directory's name
    source: str  # the source as the exporter named it
    source_kind: str  # "run" | "hf" | "dinov2"
    config: ViTConfig
    preprocess: PreprocessConfig
    parameters: int
    raddino_version: str
    license: str = DEFAULT_LICENSE
    license_origin: str = ""  # where the licence came from; empty: not stated by the exporter
    base_model: str | None = None
    tags: tuple[str, ...] = ()  # beyond BASE_TAGS and the recipe's, e.g. the source card's
    recipe: str | None = None  # "dino" | "contrastive"; None: not a run
    step: int | None = None  # the exported checkpoint's step
    total_steps: int | None = None  # the run's train.steps
    run_settings: tuple[tuple[str, str], ...] = ()
    init: str = ""  # the weights the run started from (model.init)
    files: tuple[tuple[str, str], ...] = ()  # (file name, what it holds), beyond the weights
    evaluation: Evaluation | None = None


# --------------------------------------------------------------------------- facts from files


def front_matter(text: str) -> dict:
    """The YAML front matter of a Markdown document (``---`` ... ``---`` at its top), or {}."""
    lines = text.splitlines()
    if not lines or lines[0].strip() != "---":
        return {}
    for end, line in enumerate(lines[1:], start=1):
        if line.strip() == "---":
            try:
                data = yaml.safe_load("\n".join(lines[1:end]))
            except yaml.YAMLError:
                return {}
            return data if isinstance(data, dict) else {}
    return {}


def run_settings(config: dict, recipe: str) -> tuple[tuple[str, str], ...]:
    """The lines of a run's resolved config (a dict, as in ``config.yaml``) that a reader of the
    card needs."""
    crops, train = (config.get(k) or {} for k in ("crops", "train"))
    lines = [
        ("batch", f"{train.get('batch_size')} images per process and step"),
        ("seed", str(train.get("seed"))),
    ]
    size = crops.get("global_size")
    if recipe == "dino":
        head, loss = config.get("head") or {}, config.get("loss") or {}
        lines += [
            ("crops", f"2 global of {size} px, {crops.get('local_number')} local of "
             f"{crops.get('local_size')} px"),
            ("head", f"{head.get('out_dim')} prototypes; centring {loss.get('centering')}"),
            ("loss weights", f"DINO {loss.get('dino_weight')}, iBOT {loss.get('ibot_weight')}, "
             f"KoLeo {loss.get('koleo_weight')}"),
        ]  # fmt: skip
    else:
        text, objective = config.get("text") or {}, config.get("contrastive") or {}
        lines += [
            ("crops", f"one view of {size} px per image"),
            ("objective", f"{objective.get('objective')}, shared space of "
             f"{objective.get('embed_dim')} dimensions"),
            ("text tower", f"{text.get('depth')} layers of width {text.get('width')}"),
        ]  # fmt: skip
    if crops.get("high_res_size"):
        lines.append(
            (
                "high resolution",
                f"{crops['high_res_size']} px from step {crops.get('high_res_start_step')}",
            )
        )
    return tuple(lines)


def _estimate(value: object) -> tuple[float | None, float | None, float | None]:
    if isinstance(value, dict):
        return value.get("value"), value.get("low"), value.get("high")
    return (float(value), None, None) if isinstance(value, (int, float)) else (None, None, None)


def _encoder_name(encoder: object) -> str:
    if isinstance(encoder, dict):
        label, source = encoder.get("label", ""), encoder.get("source", "")
        return f"{label} ({source})" if label and source else label or source
    return str(encoder)


def evaluation_from_report(report: dict, source: str) -> Evaluation:
    """The rows of a ``probe.json`` or ``compare.json`` report; ``ValueError`` for other JSON."""
    if not isinstance(report, dict):
        raise ValueError(f"{source}: not a raddino probe.json or compare.json report")
    rows = []
    if isinstance(report.get("protocols"), dict):
        for protocol, result in report["protocols"].items():
            for target, values in (result.get("targets") or {}).items():
                for metric, estimate in (values.get("metrics") or {}).items():
                    rows.append(EvaluationRow(protocol, target, metric, *_estimate(estimate)))
            for metric, estimate in (result.get("macro") or {}).items():
                rows.append(EvaluationRow(protocol, "macro", metric, *_estimate(estimate)))
        return Evaluation(
            source,
            "probe",
            tuple(rows),
            encoders=(_encoder_name(report.get("encoder", "")),),
            manifest=str(report.get("manifest", "")),
            level=(report.get("config") or {}).get("level"),
            notes=tuple(report.get("notes") or ()),
        )
    if isinstance(report.get("rows"), list) and isinstance(report.get("encoders"), list):
        for row in report["rows"]:
            for label, estimate in (row.get("values") or {}).items():
                rows.append(
                    EvaluationRow(
                        str(row.get("task", "")),
                        str(row.get("target", "")),
                        str(row.get("metric", "")),
                        *_estimate(estimate),
                        encoder=label,
                    )
                )
        return Evaluation(
            source,
            "compare",
            tuple(rows),
            encoders=tuple(_encoder_name(e) for e in report["encoders"]),
            level=report.get("interval_level"),
            notes=tuple(report.get("notes") or ()),
        )
    raise ValueError(f"{source}: not a raddino probe.json or compare.json report")


# --------------------------------------------------------------------------- the card


def card_metadata(facts: CardFacts) -> dict:
    """The card's YAML front matter (the Hugging Face Hub's model card metadata)."""
    tags = [*BASE_TAGS, *RECIPE_TAGS.get(facts.recipe or "", ()), *facts.tags]
    data = {
        "library_name": "transformers",
        "license": facts.license,
        "tags": list(dict.fromkeys(tags)),
        "pipeline_tag": PIPELINE_TAG,
    }
    if facts.base_model:
        data["base_model"] = facts.base_model
    return data


def model_card(facts: CardFacts) -> str:
    """The ``README.md`` of an exported Hugging Face directory."""
    header = yaml.safe_dump(card_metadata(facts), sort_keys=False, allow_unicode=True)
    sections = [
        f"# {facts.name}\n\n{_summary(facts)}",
        _provenance(facts),
        _architecture(facts.config, facts.parameters),
        _preprocessing(facts.preprocess),
        _training_data(facts),
        _evaluation(facts.evaluation),
        _intended_use(),
        _loading(facts.name),
        _licence(facts),
        _citation(),
    ]
    return f"---\n{header}---\n\n" + "\n\n".join(sections) + "\n"


def _summary(facts: CardFacts) -> str:
    c = facts.config
    for_what = " for radiographs" if facts.source_kind == "run" else ""
    return (
        f"A DINOv2-style ViT image encoder{for_what} ({c.depth} blocks of width "
        f"{c.embed_dim}, {c.patch_size} px patches, {facts.parameters / 1e6:.1f} M parameters), "
        f"exported by raddino {facts.raddino_version} from {SOURCE_KINDS[facts.source_kind]}. "
        "It turns an image into a CLS embedding and a grid of patch tokens."
    )


def _provenance(facts: CardFacts) -> str:
    lines = [f"- source: {SOURCE_KINDS[facts.source_kind]}, `{facts.source}`"]
    if facts.recipe:
        lines.append(f"- recipe: {RECIPES[facts.recipe]}")
    if facts.step is not None:
        of = f" of {facts.total_steps}" if facts.total_steps is not None else ""
        lines.append(f"- checkpoint: step {facts.step}{of} (the run's latest checkpoint)")
    lines += [f"- {what}: {value}" for what, value in facts.run_settings]
    if facts.init:
        lines.append(f"- initialised from: `{facts.init}` (`model.init`)")
    lines += [f"- `{name}`: {what}" for name, what in facts.files]
    return "## Provenance\n\n" + "\n".join(lines)


def _architecture(config: ViTConfig, parameters: int) -> str:
    rows = "\n".join(f"| `{key}` | {value} |" for key, value in config.to_dict().items())
    return (
        "## Architecture\n\n"
        f"A ViT with the official DINOv2 layout ({parameters:,} parameters). raddino's "
        "`ViTConfig`:\n\n| field | value |\n|---|---|\n" + rows
    )


def _preprocessing(p: PreprocessConfig) -> str:
    steps = []
    if p.do_resize:
        steps.append(f"the shorter side resized to {p.shortest_edge} px (bicubic)")
    if p.do_center_crop:
        steps.append(f"a centre crop of {p.crop_height} x {p.crop_width} px")
    scale = "divided by 255" if p.rescale_factor == 1 / 255 else f"times {p.rescale_factor:g}"
    steps.append(f"pixel values {scale}")
    if p.do_normalize:
        mean = ", ".join(f"{m:g}" for m in p.image_mean)
        std = ", ".join(f"{s:g}" for s in p.image_std)
        steps.append(f"normalised with mean ({mean}) and std ({std})")
    return (
        "## Preprocessing\n\n"
        "Grey images are replicated to three channels, then: " + "; ".join(steps) + ". "
        "`preprocessor_config.json` holds these settings for transformers' `BitImageProcessor`. "
        "Images that are not 8-bit (16-bit PNG, DICOM) are min-max scaled to [0, 255] first: "
        "raddino does this when it reads them; with transformers, do it yourself."
    )


def _training_data(facts: CardFacts) -> str:
    if facts.source_kind == "run":
        text = (
            "Not recorded: a raddino run keeps its configuration, not the list of its images. "
            "Describe the data here before sharing this model: where the images come from, how "
            "many images and patients, which views, sites and years."
        )
    else:
        text = (
            f"Not known to the exporter: the source was {SOURCE_KINDS[facts.source_kind]}. "
            "See the card of the original model."
        )
    return "## Training data\n\n" + text


def _number(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.3f}"


def _evaluation(evaluation: Evaluation | None) -> str:
    if evaluation is None:
        return (
            "## Evaluation\n\n"
            "No evaluation recorded (`raddino export --metrics` names a `raddino probe` or "
            "`raddino compare` JSON report)."
        )
    level = f"{evaluation.level:.0%} " if evaluation.level else ""
    what = f"`{evaluation.source}` (raddino {evaluation.kind})"
    if evaluation.manifest:
        what += f" on `{evaluation.manifest}`"
    lines = [
        f"From {what}; encoder{'s' if len(evaluation.encoders) > 1 else ''}: "
        + "; ".join(evaluation.encoders)
        + ". "
        f"Test-split values with patient-level bootstrap {level}intervals.",
        "",
    ]
    encoder = ["encoder"] if evaluation.kind == "compare" else []
    task = "task" if evaluation.kind == "compare" else "protocol"
    header = [*encoder, task, "target", "metric", "value", "interval"]
    lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in evaluation.rows:
        interval = (
            f"[{_number(row.low)}, {_number(row.high)}]"
            if row.low is not None or row.high is not None
            else ""
        )
        cells = [row.encoder] if encoder else []
        cells += [row.task, row.target, row.metric, _number(row.value), interval]
        lines.append("| " + " | ".join(cells) + " |")
    if evaluation.notes:
        lines += ["", "Notes:", *(f"- {note}" for note in evaluation.notes)]
    return "## Evaluation\n\n" + "\n".join(lines)


def _intended_use() -> str:
    return (
        "## Intended use and limitations\n\n"
        "- For research: image features of radiographs for linear probes, segmentation heads, "
        "retrieval and report generation.\n"
        "- Not for clinical use. It is not a medical device and has not been validated for "
        "diagnosis, triage or treatment decisions.\n"
        "- Features may carry the acquisition site, scanner, view and patient demographics, and "
        "biases of the training data; check them on your own data before relying on them.\n"
        "- Inputs unlike the training data (other modalities, other body parts, other "
        "preprocessing) are out of distribution."
    )


def _loading(name: str) -> str:
    return (
        "## How to load\n\n"
        "With transformers:\n\n"
        "```python\n"
        "from PIL import Image\n"
        "from transformers import AutoImageProcessor, AutoModel\n\n"
        f'processor = AutoImageProcessor.from_pretrained("{name}")\n'
        f'model = AutoModel.from_pretrained("{name}").eval()\n'
        'inputs = processor(images=Image.open("image.png").convert("RGB"), return_tensors="pt")\n'
        "outputs = model(**inputs)\n"
        "cls = outputs.pooler_output  # (1, D)\n"
        "patches = outputs.last_hidden_state[:, 1:]  # (1, h * w, D)\n"
        "```\n\n"
        "With raddino (the same preprocessing, DICOM and 16-bit images included):\n\n"
        "```python\n"
        "from raddino import RadDino\n\n"
        f'model = RadDino.from_pretrained("{name}")\n'
        'cls, patches = model.extract_features(["image.png"])  # (1, D), (1, D, h, w)\n'
        "```"
    )


def _licence(facts: CardFacts) -> str:
    if facts.license_origin:
        text = f"`{facts.license}` ({facts.license_origin})."
    else:
        text = (
            f"`{facts.license}`: the exporter did not state a licence (`raddino export "
            "--license`). The licence of these weights follows from the training data's terms "
            "and any weights the run started from; settle it before sharing."
        )
    return "## Licence\n\n" + text


def _citation() -> str:
    return (
        "## Citation\n\n"
        "If you use this model, cite RAD-DINO (Pérez-García et al., *Exploring scalable medical "
        "image encoders beyond text supervision*, Nature Machine Intelligence 2025, "
        "arXiv:2401.10815) and raddino: see `CITATION.cff` in the raddino repository."
    )
