"""``raddino export`` writes artefacts: weights that load back as the same model at any size, a
model card that says where they came from, and nothing that looks complete when it is not."""

from __future__ import annotations

import json
import shutil
from dataclasses import replace
from pathlib import Path

import pytest
import torch
import yaml
from PIL import Image

from raddino.cli.main import main
from raddino.data.preprocess import PreprocessConfig
from raddino.eval.bootstrap import Estimate
from raddino.eval.tables import to_jsonable
from raddino.models import formats
from raddino.models.encoder import RadDino
from raddino.models.export import ExportTargetError, export_model
from raddino.models.model_card import (
    CardFacts,
    evaluation_from_report,
    front_matter,
    model_card,
)
from raddino.models.vit import VisionTransformer, ViTConfig
from raddino.ssl.config import load_config
from raddino.ssl.trainer import pretrain
from tests.conftest import synthetic_radiograph

STEPS = 2


@pytest.fixture(scope="module")
def tiny_preset_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Two steps of the ``tiny_cpu`` preset (ViT-Ti, 16 px patches, 112 px crops), small batch."""
    root = tmp_path_factory.mktemp("tiny_preset")
    images = root / "images"
    images.mkdir()
    for index in range(8):
        image = synthetic_radiograph(140 + 4 * index, 120 + 3 * index, seed=index)
        Image.fromarray(image).save(images / f"{index}.png")
    config = load_config("tiny_cpu", [
        f"train.steps={STEPS}", "train.batch_size=4", "train.checkpoint_every=1",
        "train.num_workers=0", "train.tensorboard=false", "train.precision=fp32",
    ])  # fmt: skip
    pretrain(config, [str(images)], root / "run", progress=False)
    return root / "run"


def assert_same_outputs(a: RadDino, b: RadDino) -> None:
    """Same weights, same ops: bit-identical CLS and patch tokens (float32)."""
    assert b.preprocess_config == a.preprocess_config
    size = a.preprocess_config.crop_height
    pixels = torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        expected, got = a.encode(pixels), b.encode(pixels)
    assert torch.equal(got.cls, expected.cls)
    assert torch.equal(got.patches, expected.patches)


# --------------------------------------------------------------------------- dinov2 format


def test_dinov2_export_of_a_tiny_preset_run_loads_back_with_identical_outputs(
    tiny_preset_run: Path, tmp_path: Path
):
    out = tmp_path / "backbone.safetensors"
    written = export_model(tiny_preset_run, out, "dinov2")
    assert written == [out, tmp_path / "backbone.json", tmp_path / "dino_head.safetensors"]
    run_model = RadDino.from_pretrained(tiny_preset_run)
    again = RadDino.from_pretrained(out)
    assert again.config == run_model.config and again.preprocess_config.crop_height == 112
    assert_same_outputs(run_model, again)


def test_dinov2_file_without_its_sidecar_gets_a_processor_at_its_grid_size(
    tiny_preset_run: Path, tmp_path: Path
):
    out = tmp_path / "backbone.pth"
    export_model(tiny_preset_run, out, "dinov2")
    (tmp_path / "backbone.json").unlink()
    again = RadDino.from_pretrained(out)  # 7 x 7 patches of 16 px: 112 px, not 518
    assert again.preprocess_config == PreprocessConfig(
        shortest_edge=112, crop_height=112, crop_width=112
    )
    image = synthetic_radiograph(300, 260, seed=3)
    cls, patches = again.extract_features(image)
    assert cls.shape == (1, 192) and patches.shape == (1, 192, 7, 7)


def random_backbone(**fields) -> VisionTransformer:
    torch.manual_seed(0)
    model = VisionTransformer(ViTConfig(**fields))
    with torch.no_grad():
        model.cls_token.normal_()
    return model


def test_the_sidecar_keeps_heads_that_the_dinov2_rule_would_get_wrong(tmp_path: Path):
    backbone = random_backbone(image_size=32, patch_size=8, embed_dim=48, depth=2, num_heads=2)
    model = RadDino(backbone, PreprocessConfig(shortest_edge=40, crop_height=32, crop_width=32))
    path = tmp_path / "small.safetensors"
    formats.save_dinov2_file(
        model.backbone.state_dict(), path, model.config, model.preprocess_config
    )
    again = RadDino.from_pretrained(path)
    assert again.config == model.config
    assert_same_outputs(model, again)

    formats.save_dinov2_file(model.backbone.state_dict(), path)  # no config: the sidecar goes
    assert not (tmp_path / "small.json").exists()
    assert RadDino.from_pretrained(path).config.num_heads == 1  # dim / 64, at least 1


def test_rad_dino_shaped_file_keeps_the_default_processor(tmp_path: Path):
    backbone = random_backbone(image_size=518, patch_size=14, embed_dim=64, depth=1, num_heads=1)
    path = tmp_path / "backbone_compatible.safetensors"
    formats.save_dinov2_file(backbone.state_dict(), path)
    config, _, preprocess = formats.load_dinov2_file(path)
    assert config.image_size == 518 and preprocess == PreprocessConfig()


def test_a_json_file_raddino_did_not_write_is_not_taken_for_a_sidecar(tmp_path: Path):
    backbone = random_backbone(image_size=56, patch_size=14, embed_dim=64, depth=1, num_heads=1)
    path = tmp_path / "weights.safetensors"
    formats.save_dinov2_file(backbone.state_dict(), path)
    (tmp_path / "weights.json").write_text('{"note": "someone else\'s"}')
    assert formats.load_dinov2_file(path)[2].crop_height == 56
    (tmp_path / "weights.json").write_text("{not json")
    with pytest.raises(formats.WeightFormatError, match=r"weights\.json: unreadable sidecar"):
        formats.load_dinov2_file(path)


# --------------------------------------------------------------------------- hf format


def test_hf_export_of_a_run_loads_back_and_in_transformers(tiny_preset_run: Path, tmp_path: Path):
    from transformers import AutoModel

    out = tmp_path / "tiny-hf"
    written = export_model(tiny_preset_run, out)
    assert {p.name for p in written[1:]} == {
        "config.json", "model.safetensors", "preprocessor_config.json", "README.md",
        "raddino_config.yaml", "dino_head.safetensors",
    }  # fmt: skip
    run_model = RadDino.from_pretrained(tiny_preset_run)
    again = RadDino.from_pretrained(out)
    # transformers always has LayerScale: the preset's "none" is exported as ones
    assert again.config == replace(run_model.config, layerscale_init=1.0)
    assert_same_outputs(run_model, again)
    reference = AutoModel.from_pretrained(out).eval()
    pixels = torch.randn(2, 3, 112, 112)
    with torch.no_grad():
        hidden = reference(pixel_values=pixels).last_hidden_state
    expected = run_model.encode(pixels)
    assert torch.allclose(expected.cls, hidden[:, 0], atol=1e-5)
    assert torch.allclose(expected.patches, hidden[:, 1:], atol=1e-5)


def test_model_card_of_a_run_names_its_recipe_step_and_licence(
    tiny_preset_run: Path, tmp_path: Path
):
    out = tmp_path / "card"
    export_model(tiny_preset_run, out)
    card = (out / "README.md").read_text()
    meta = front_matter(card)
    assert meta["library_name"] == "transformers"
    assert meta["pipeline_tag"] == "image-feature-extraction"
    assert meta["license"] == "other" and "base_model" not in meta
    assert {"dinov2", "radiology", "chest-x-ray", "self-supervised", "raddino"} <= set(meta["tags"])
    assert f"checkpoint: step {STEPS} of {STEPS}" in card
    assert "image-only self-supervised" in card
    assert "| `patch_size` | 16 |" in card and "resized to 112 px" in card
    assert "the exporter did not state a licence" in card
    assert "No evaluation recorded" in card and "Not for clinical use" in card
    assert "CITATION.cff" in card and 'AutoModel.from_pretrained("card")' in card


def test_a_runs_config_is_copied_into_the_export(tiny_preset_run: Path, tmp_path: Path):
    export_model(tiny_preset_run, tmp_path / "out")
    copied = (tmp_path / "out" / "raddino_config.yaml").read_bytes()
    assert copied == (tiny_preset_run / "config.yaml").read_bytes()
    assert yaml.safe_load(copied)["model"]["patch_size"] == 16


def test_an_hf_source_keeps_its_licence_and_base_model(small_hf_dir: Path, tmp_path: Path):
    source = tmp_path / "source"
    shutil.copytree(small_hf_dir, source)
    (source / "README.md").write_text(
        "---\nlicense: apache-2.0\nbase_model: owner/base\ntags: [x-ray]\n---\n# a model\n"
    )
    export_model(source, tmp_path / "again")
    card = (tmp_path / "again" / "README.md").read_text()
    meta = front_matter(card)
    assert meta["license"] == "apache-2.0" and meta["base_model"] == "owner/base"
    assert "x-ray" in meta["tags"] and "self-supervised" not in meta["tags"]
    assert f"from the card of `{source}`" in card
    assert not (tmp_path / "again" / "raddino_config.yaml").exists()


def probe_report() -> dict:
    """A probe.json as ``raddino probe`` writes it (Estimates through the same serialiser)."""
    auroc = Estimate(0.8123, 0.75, 0.87)
    return to_jsonable({
        "encoder": {"label": "tiny", "source": "/runs/tiny"},
        "manifest": "test.csv",
        "config": {"level": 0.95},
        "notes": ["few positives of 'effusion' in the test split"],
        "protocols": {"linear": {
            "targets": {"effusion": {"metrics": {"auroc": auroc}}},
            "macro": {"auroc": auroc},
        }},
    })  # fmt: skip


def test_metrics_of_a_probe_report_appear_in_the_card(tiny_preset_run: Path, tmp_path: Path):
    report = tmp_path / "probe.json"
    report.write_text(json.dumps(probe_report()))
    export_model(tiny_preset_run, tmp_path / "out", license="mit", metrics=report)
    card = (tmp_path / "out" / "README.md").read_text()
    assert front_matter(card)["license"] == "mit"
    assert "| linear | effusion | auroc | 0.812 | [0.750, 0.870] |" in card
    assert "`probe.json` (raddino probe) on `test.csv`" in card and "95% " in card
    assert "few positives" in card


# --------------------------------------------------------------------------- the card, pure


def facts(**changes) -> CardFacts:
    fields = dict(
        name="clip-hf", source="runs/clip", source_kind="run", config=ViTConfig(),
        preprocess=PreprocessConfig(), parameters=86_000_000, raddino_version="0.1.0",
        recipe="contrastive", step=300, total_steps=800,
    )  # fmt: skip
    return CardFacts(**{**fields, **changes})


def test_model_card_is_a_pure_function_of_its_facts():
    card = model_card(facts(base_model="microsoft/rad-dino"))
    assert card == model_card(facts(base_model="microsoft/rad-dino"))
    meta = front_matter(card)
    assert meta["base_model"] == "microsoft/rad-dino"
    assert "vision-language" in meta["tags"] and "self-supervised" not in meta["tags"]
    assert "language-supervised" in card and "step 300 of 800" in card
    assert "resized to 518 px" in card and "divided by 255" in card


def test_a_compare_report_gives_one_row_per_encoder():
    report = {
        "encoders": [{"label": "dino", "source": "/r/dino"}, {"label": "clip", "source": ""}],
        "interval_level": 0.95,
        "rows": [{"task": "probe linear", "target": "macro", "metric": "auroc",
                  "values": {"dino": {"value": 0.7, "low": 0.6, "high": 0.8},
                             "clip": {"value": 0.65, "low": None, "high": None}}}],
    }  # fmt: skip
    evaluation = evaluation_from_report(report, "compare.json")
    card = model_card(facts(evaluation=evaluation))
    assert "| dino | probe linear | macro | auroc | 0.700 | [0.600, 0.800] |" in card
    assert "| clip | probe linear | macro | auroc | 0.650 |  |" in card
    with pytest.raises(ValueError, match=r"not a raddino probe\.json or compare\.json"):
        evaluation_from_report({"rows": 3}, "other.json")


# --------------------------------------------------------------------------- whole or nothing


def test_an_out_that_holds_files_is_refused_without_overwrite(
    tiny_preset_run: Path, tmp_path: Path, capsys
):
    out = tmp_path / "out"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    argv = ["export", str(tiny_preset_run), "--out", str(out)]
    assert main(argv) == 2
    error = capsys.readouterr().err
    assert error.count("\n") == 1 and "notes.txt" in error and "--overwrite" in error
    assert main([*argv, "--overwrite"]) == 2  # not an earlier export: never deleted
    assert "not another folder" in capsys.readouterr().err
    assert [p.name for p in out.iterdir()] == ["notes.txt"]


def test_overwrite_replaces_an_earlier_export(tiny_preset_run: Path, tmp_path: Path, capsys):
    out = tmp_path / "out"
    assert main(["export", "--model", str(tiny_preset_run), "--out", str(out)]) == 0
    assert f"wrote hf model: {out} (" in capsys.readouterr().out
    (out / "stale.txt").write_text("from before")
    assert main(["export", str(tiny_preset_run), "--out", str(out), "--overwrite",
                 "--license", "cc-by-4.0"]) == 0  # fmt: skip
    assert not (out / "stale.txt").exists()
    assert front_matter((out / "README.md").read_text())["license"] == "cc-by-4.0"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_an_empty_out_directory_is_used(tiny_preset_run: Path, tmp_path: Path):
    (tmp_path / "out").mkdir()
    export_model(tiny_preset_run, tmp_path / "out")
    assert (tmp_path / "out" / "model.safetensors").is_file()


def test_a_failed_weight_write_leaves_no_directory_that_looks_complete(
    tiny_preset_run: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    def full_disk(*args, **kwargs):
        raise OSError(28, "No space left on device")

    earlier = tmp_path / "earlier"
    export_model(tiny_preset_run, earlier)
    before = {p.name: p.read_bytes() for p in earlier.iterdir()}
    monkeypatch.setattr(formats, "save_file", full_disk)
    with pytest.raises(OSError, match="No space left"):
        export_model(tiny_preset_run, tmp_path / "new")
    with pytest.raises(OSError, match="No space left"):
        export_model(tiny_preset_run, earlier, overwrite=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["earlier"]  # no new, no .tmp-*
    assert {p.name: p.read_bytes() for p in earlier.iterdir()} == before


def test_a_failed_dinov2_write_leaves_no_weights_file(
    tiny_preset_run: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    def full_disk(tensors, filename, metadata=None):
        Path(filename).write_bytes(b"partial")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(formats, "save_file", full_disk)
    with pytest.raises(OSError, match="No space left"):
        export_model(tiny_preset_run, tmp_path / "backbone.safetensors", "dinov2")
    assert not (tmp_path / "backbone.safetensors").exists()
    assert not list(tmp_path.glob(".tmp-*"))


def test_dinov2_export_refuses_existing_files_and_card_options(
    tiny_preset_run: Path, tmp_path: Path
):
    out = tmp_path / "backbone.safetensors"
    export_model(tiny_preset_run, out, "dinov2")
    with pytest.raises(ExportTargetError, match="already exist"):
        export_model(tiny_preset_run, out, "dinov2")
    export_model(tiny_preset_run, out, "dinov2", overwrite=True)
    with pytest.raises(ValueError, match="model card of --format hf"):
        export_model(tiny_preset_run, tmp_path / "b.safetensors", "dinov2", license="mit")


def test_export_help_shows_an_example_and_every_option(capsys):
    with pytest.raises(SystemExit):
        main(["export", "--help"])
    text = capsys.readouterr().out
    assert "examples:" in text and "raddino export runs/tiny --out tiny-hf/" in text
    for option in ("--out", "--format", "--license", "--base-model", "--metrics", "--overwrite"):
        assert option in text
