"""Model artefacts: what ``raddino export`` writes, whole or not at all.

:func:`export_model` reads the source once (a run's latest checkpoint, a Hugging Face directory
or an official file) and writes

* ``format="hf"``: a directory of ``config.json``, ``model.safetensors``,
  ``preprocessor_config.json``, the model card ``README.md`` (:mod:`raddino.models.model_card`)
  and, for a run, its resolved config (``raddino_config.yaml``) and the teacher's DINO head
  (``dino_head.safetensors``, image-only runs). Everything is written into a hidden sibling
  (``.tmp-PID-NAME``) that is renamed into place at the end, so an interrupted export leaves
  no directory that looks complete.
* ``format="dinov2"``: one official file with its sidecar ``NAME.json``
  (:func:`raddino.models.formats.save_dinov2_file`) and, for an image-only run,
  ``dino_head.safetensors`` beside it; each file is written atomically.

An output that already holds files is refused unless ``overwrite``; even then only an earlier
export (a directory with ``config.json``) is replaced, never another folder.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path

from safetensors.torch import save_file

from raddino import __version__
from raddino.atomic import TMP_PREFIX, fsync_dir, write_atomic
from raddino.data.preprocess import PreprocessConfig
from raddino.models import formats
from raddino.models.model_card import (
    DEFAULT_LICENSE,
    CardFacts,
    Evaluation,
    evaluation_from_report,
    front_matter,
    model_card,
    run_settings,
)
from raddino.models.vit import ViTConfig

EXPORT_FORMATS = ("hf", "dinov2")
HEAD_FILE = "dino_head.safetensors"
RUN_CONFIG_FILE = "raddino_config.yaml"
CARD_FILE = "README.md"


class ExportTargetError(ValueError):
    """An output that cannot be written without destroying something; names it."""


@dataclass
class SourceWeights:
    """What an export reads from its source: the backbone (official names, float32) and what
    is known about where it came from."""

    kind: str  # "run" | "hf" | "dinov2"
    config: ViTConfig
    state: formats.StateDict
    preprocess: PreprocessConfig
    head: formats.StateDict = field(default_factory=dict)
    recipe: str | None = None
    step: int | None = None
    run_config: dict = field(default_factory=dict)  # the checkpoint's config (its weights')
    run_config_text: bytes = b""  # RUN/config.yaml as written
    card: dict = field(default_factory=dict)  # a Hugging Face source's card front matter


def read_source(path: Path) -> SourceWeights:
    """The weights of ``path`` and their provenance (a run's checkpoint is read once)."""
    kind = formats.detect_format(path)
    if kind == "run":
        _, state = formats.read_run_checkpoint(path)
        config, tensors, preprocess = formats.run_backbone(state, str(path))
        weights = SourceWeights(
            kind,
            config,
            tensors,
            preprocess,
            head=formats.run_head(state),
            recipe=formats.run_recipe(state, str(path)),
            step=int(state["step"]) if "step" in state else None,
            run_config=state.get("config") or {},
            run_config_text=(path / "config.yaml").read_bytes(),
        )
    elif kind == "hf":
        config, tensors, stored = formats.load_hf_directory(path)
        readme = path / CARD_FILE
        card = front_matter(readme.read_text(errors="replace")) if readme.is_file() else {}
        weights = SourceWeights(kind, config, tensors, stored or PreprocessConfig(), card=card)
    else:
        config, tensors, preprocess = formats.load_dinov2_file(path)
        weights = SourceWeights(kind, config, tensors, preprocess)
    # exports are float32, as RadDino.from_pretrained loads them
    weights.state = {k: v.float() if v.is_floating_point() else v for k, v in weights.state.items()}
    return weights


def read_evaluation(path: Path) -> Evaluation:
    """A ``raddino probe`` / ``compare`` JSON report as the card's evaluation section."""
    try:
        report = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ValueError(f"{path}: unreadable evaluation report ({error})") from error
    return evaluation_from_report(report, path.name)


def card_facts(
    weights: SourceWeights,
    source: Path,
    name: str,
    license: str | None = None,
    base_model: str | None = None,
    evaluation: Evaluation | None = None,
) -> CardFacts:
    """The model card's facts. The licence is the one given, else the Hugging Face source
    card's, else ``other`` (and the card says the exporter stated none)."""
    card = weights.card
    if license:
        license_origin = "stated by the exporter"
    elif card.get("license"):
        license, license_origin = str(card["license"]), f"from the card of `{source}`"
    else:
        license, license_origin = DEFAULT_LICENSE, ""
    tags = card.get("tags") if isinstance(card.get("tags"), list) else []
    files = []
    if weights.run_config_text:
        files.append((RUN_CONFIG_FILE, "the run's resolved config (`config.yaml`)"))
    if weights.head:
        files.append((HEAD_FILE, "the teacher's DINO head, to continue pre-training"))
    train = weights.run_config.get("train") or {}
    return CardFacts(
        name=name,
        source=str(source),
        source_kind=weights.kind,
        config=weights.config,
        preprocess=weights.preprocess,
        parameters=sum(t.numel() for t in weights.state.values()),
        raddino_version=__version__,
        license=license,
        license_origin=license_origin,
        base_model=base_model or card.get("base_model") or None,
        tags=tuple(str(t) for t in tags),
        recipe=weights.recipe,
        step=weights.step,
        total_steps=train.get("steps"),
        run_settings=run_settings(weights.run_config, weights.recipe) if weights.recipe else (),
        init=str((weights.run_config.get("model") or {}).get("init") or ""),
        files=tuple(files),
        evaluation=evaluation,
    )


def export_model(
    source: str | os.PathLike,
    out: str | os.PathLike,
    format: str = "hf",
    *,
    license: str | None = None,
    base_model: str | None = None,
    metrics: str | os.PathLike | None = None,
    overwrite: bool = False,
) -> list[Path]:
    """Export ``source`` to ``out`` in ``format``; returns the paths written (for ``hf`` the
    directory first, then its files). ``license``, ``base_model`` and ``metrics`` (a probe or
    compare JSON report) go into the model card of the ``hf`` format."""
    source, out = Path(source), Path(out)
    if out.name in ("", ".."):  # '.' or '..': the directory's own name is needed
        out = out.resolve()
    if format not in EXPORT_FORMATS:
        raise ValueError(f"unknown export format {format!r}; use 'hf' or 'dinov2'")
    if format == "dinov2":
        if license or base_model or metrics:
            raise ValueError(
                "--license, --base-model and --metrics go into the model card of --format hf; "
                "a DINOv2 file has none"
            )
        if out.suffix not in formats.DINOV2_WRITE_SUFFIXES:
            raise ValueError(f"{out}: use a .safetensors or .pth file name for the DINOv2 format")
        check_files_target([out, formats.dinov2_sidecar_path(out)], overwrite)
        return _export_dinov2(read_source(source), out, overwrite)
    check_directory_target(out, overwrite)
    evaluation = read_evaluation(Path(metrics)) if metrics else None
    weights = read_source(source)
    facts = card_facts(weights, source, out.name, license, base_model, evaluation)
    return _export_hf(weights, facts, out)


# --------------------------------------------------------------------------- targets


def _names(paths: list[str]) -> str:
    return ", ".join(paths[:5]) + (f" and {len(paths) - 5} more" if len(paths) > 5 else "")


def check_directory_target(out: Path, overwrite: bool) -> None:
    """Refuse an ``out`` that holds files, unless ``overwrite`` and it is an earlier export."""
    if out.exists() and not out.is_dir():
        raise ExportTargetError(f"{out} is a file; the hf format writes a directory")
    held = sorted(p.name for p in out.iterdir()) if out.is_dir() else []
    if not held:
        return
    if not overwrite:
        raise ExportTargetError(
            f"{out} already holds {_names(held)}; choose another --out or pass --overwrite "
            "to replace an earlier export"
        )
    if not (out / "config.json").is_file():
        raise ExportTargetError(
            f"{out} holds {_names(held)} but no config.json: --overwrite replaces an earlier "
            "export, not another folder"
        )


def check_files_target(paths: list[Path], overwrite: bool) -> None:
    """Refuse to replace existing files unless ``overwrite``."""
    existing = [str(p) for p in paths if p.exists()]
    if existing and not overwrite:
        raise ExportTargetError(
            f"{_names(existing)} already exist{'s' if len(existing) == 1 else ''}; choose "
            "another --out or pass --overwrite"
        )


# --------------------------------------------------------------------------- writers


def _export_dinov2(weights: SourceWeights, out: Path, overwrite: bool) -> list[Path]:
    head = out.parent / HEAD_FILE
    if weights.head:
        check_files_target([head], overwrite)
    formats.save_dinov2_file(weights.state, out, weights.config, weights.preprocess)
    written = [out, formats.dinov2_sidecar_path(out)]
    if weights.head:
        write_atomic(head, lambda temp: save_file(_contiguous(weights.head), str(temp)))
        written.append(head)
    return written


def _contiguous(state: formats.StateDict) -> formats.StateDict:
    return {key: value.detach().cpu().contiguous() for key, value in state.items()}


def _export_hf(weights: SourceWeights, facts: CardFacts, out: Path) -> list[Path]:
    out.parent.mkdir(parents=True, exist_ok=True)
    _remove_leftovers(out)
    temp = out.with_name(f"{TMP_PREFIX}{os.getpid()}-{out.name}")
    try:
        temp.mkdir()
        formats.save_hf_directory(weights.state, weights.config, weights.preprocess, temp)
        (temp / CARD_FILE).write_text(model_card(facts))
        if weights.run_config_text:
            (temp / RUN_CONFIG_FILE).write_bytes(weights.run_config_text)
        if weights.head:
            save_file(_contiguous(weights.head), str(temp / HEAD_FILE))
        files = sorted(temp.iterdir())
        for path in files:
            with open(path, "rb") as handle:
                os.fsync(handle.fileno())
        fsync_dir(temp)
        _move_into_place(temp, out)
    except BaseException:
        shutil.rmtree(temp, ignore_errors=True)
        raise
    return [out, *(out / path.name for path in files)]


def _move_into_place(temp: Path, out: Path) -> None:
    """Rename ``temp`` to ``out``; an empty ``out`` is removed first, an earlier export is
    moved aside and deleted once the new one is in place."""
    if out.is_dir() and not any(out.iterdir()):
        out.rmdir()
    if out.exists():
        old = out.with_name(f"{TMP_PREFIX}{os.getpid()}-old-{out.name}")
        os.replace(out, old)
        os.replace(temp, out)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(temp, out)
    fsync_dir(out.parent)


def _remove_leftovers(out: Path) -> None:
    """Delete the hidden directories an earlier export to ``out`` left when it was killed."""
    pattern = re.compile(rf"^{re.escape(TMP_PREFIX)}\d+-(old-)?{re.escape(out.name)}$")
    if not out.parent.is_dir():
        return
    for path in out.parent.iterdir():
        if pattern.match(path.name) and path.is_dir():
            shutil.rmtree(path, ignore_errors=True)
