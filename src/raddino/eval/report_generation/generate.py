"""Load a trained report run and write reports for manifest rows (greedy or beam search)."""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from raddino.atomic import write_csv_atomic
from raddino.devices import check_device
from raddino.eval.encoders import EncoderSpec
from raddino.eval.report_generation.data import ImageTokens, encode_images, read_report_rows
from raddino.eval.report_generation.lm import load_lm
from raddino.eval.report_generation.model import ReportModel, ReportModelConfig
from raddino.eval.report_generation.train import compute_dtype
from raddino.features.encode import EncodeOptions


@dataclass(frozen=True)
class GenerateOptions:
    """Decoding settings: ``num_beams=1`` is greedy."""

    max_new_tokens: int = 128
    num_beams: int = 1
    batch_size: int = 8
    split: str | None = "test"
    device: str = "cpu"
    progress: bool = True

    def __post_init__(self) -> None:
        for key in ("max_new_tokens", "num_beams", "batch_size"):
            if getattr(self, key) < 1:
                raise ValueError(f"{key}={getattr(self, key)} must be >= 1")


def read_run_config(run_dir: str | Path) -> dict:
    path = Path(run_dir) / "config.json"
    if not (Path(run_dir) / "projector.safetensors").exists() or not path.exists():
        raise FileNotFoundError(f"{run_dir}: not a finished report run (no projector/config)")
    return json.loads(path.read_text())


def run_encoder(run_config: dict) -> EncoderSpec:
    """The encoder a run was trained on."""
    enc = run_config["encoder"]
    return EncoderSpec(
        enc["source"], enc["random_init"], enc.get("seed") or 0, enc["image_size"], enc["label"]
    )


def load_report_model(run_dir: str | Path, device: str = "cpu") -> ReportModel:
    """The trained model of a run, in eval mode on ``device`` (LoRA merged into the LM); the LM
    in the ``auto`` compute dtype (:func:`~raddino.eval.report_generation.train.compute_dtype`)."""
    from safetensors.torch import load_file

    run = Path(run_dir)
    config = read_run_config(run)
    target = check_device(device)
    dtype = compute_dtype(None, target)
    stage = config["train"]["stage"]
    lm, tokenizer = load_lm(run / "lm" if stage == "full" else config["lm"], dtype=dtype)
    if stage == "lora":
        from peft import PeftModel

        lm = PeftModel.from_pretrained(lm, run / "lora").merge_and_unload()
    model = ReportModel(ReportModelConfig(**config["model"]), lm, tokenizer)
    model.projector.load_state_dict(load_file(str(run / "projector.safetensors")))
    return model.to(target).eval()


def generate_reports(
    run_dir: str | Path,
    manifest: str | Path,
    out_file: str | Path,
    options: GenerateOptions,
    cache: str | Path | None = None,
    encode_options: EncodeOptions | None = None,
) -> Path:
    """Write ``path,report`` rows (CSV) for the manifest rows of ``options.split``."""
    from tqdm.auto import tqdm

    run = Path(run_dir)
    config = read_run_config(run)
    rows = read_report_rows(manifest, options.split, require_report=False)
    model = load_report_model(run, options.device)
    enc_options = encode_options or EncodeOptions(device=options.device, progress=options.progress)
    encoded = encode_images(run_encoder(config), rows.paths, cache or run / "features", enc_options)
    tokens = ImageTokens(encoded, model.config.pool)
    usable = np.flatnonzero(tokens.valid)
    device = next(model.projector.parameters()).device
    reports: dict[int, str] = {}
    batches = range(0, len(usable), options.batch_size)
    for start in tqdm(batches, disable=not options.progress, desc="generate"):
        batch = usable[start : start + options.batch_size]
        images = tokens(batch).to(device)
        texts = model.generate(images, options.max_new_tokens, options.num_beams)
        reports.update(zip(batch.tolist(), texts, strict=True))

    written = ([path, reports[i]] for i, path in enumerate(rows.paths) if i in reports)
    return write_csv_atomic(out_file, ["path", "report"], written)


def read_predictions(path: str | Path) -> dict[str, str]:
    """``path -> report`` from a file written by :func:`generate_reports`."""
    with Path(path).open(newline="", encoding="utf-8") as handle:
        reader = csv.DictReader(handle)
        if not reader.fieldnames or not {"path", "report"} <= set(reader.fieldnames):
            raise ValueError(f"{path}: predictions need 'path' and 'report' columns")
        return {row["path"]: row["report"] or "" for row in reader}
