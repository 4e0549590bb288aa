"""Foreign encoders (CLIP, SigLIP, timm ViTs) against their own libraries: the same embeddings,
patch tokens, intermediate layers and preprocessing, from folders in the libraries' formats."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import save_file

from raddino.data.preprocess import PreprocessConfig
from raddino.eval.encoders import EncoderSpec, _processor_of
from raddino.models.adapters import AdapterDependencyError, ForeignBackbone, adapter_family
from raddino.models.encoder import RadDino
from raddino.models.engine import InferenceEngine
from raddino.models.formats import WeightFormatError
from raddino.models.hardware import Hardware, choose_compile, onednn_traceable
from tests.conftest import synthetic_radiograph

# Tokens are compared in float32. Our adapters run the libraries' own modules on the same
# weights, so only the batch and the attention kernel may differ: reordered float32 sums of
# 32-wide tokens of magnitude ~1 differ by ~1e-7 (0 measured), and 1e-5 leaves room for the
# reduction orders of other CPUs (AVX-512, AMX).
TOKEN_ATOL = 1e-5
# Pixels from transformers' torchvision-backed processors: the same uint8 antialiased resize and
# crop; the float32 normalisation is ordered differently (~1e-6 after dividing by std).
PIXEL_ATOL = 1e-4
# A test image's (height, width): short sides above, at and below 32 px, margins odd and even.
IMAGE_SIZES = [(45, 61), (70, 50), (32, 32), (100, 37), (29, 90)]

TINY_VISION = dict(
    hidden_size=32,
    intermediate_size=64,
    num_hidden_layers=2,
    num_attention_heads=2,
    image_size=32,
    patch_size=8,
)
TINY_TEXT = dict(
    hidden_size=32,
    intermediate_size=64,
    num_hidden_layers=1,
    num_attention_heads=2,
    vocab_size=64,
    max_position_embeddings=16,
    bos_token_id=0,
    eos_token_id=1,
    pad_token_id=1,
)
TINY_TIMM = dict(img_size=32, patch_size=8, embed_dim=32, depth=2, num_heads=2, num_classes=0)
TIMM_VARIANTS = {
    "timm": {},  # class token, token pooling
    "timm_registers": dict(class_token=False, reg_tokens=2, global_pool="avg", no_embed_class=True),
    "timm_attention_pool": dict(global_pool="map", num_classes=5),
}


def perturb(model: torch.nn.Module, seed: int) -> None:
    """Move every parameter off its initial value (LayerNorm weights of 1, zero biases) so the
    tests see each of them."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.add_(0.05 * torch.randn(parameter.shape, generator=generator))


def make_clip(directory: Path, full: bool = False, seed: int = 0) -> torch.nn.Module:
    """A random CLIPVisionModel (or whole CLIPModel) and its processor saved in ``directory``;
    returns the vision tower to compare with."""
    import transformers

    torch.manual_seed(seed)
    if full:
        config = transformers.CLIPConfig(
            vision_config=TINY_VISION, text_config=TINY_TEXT, projection_dim=16
        )
        model = transformers.CLIPModel(config).eval()
    else:
        model = transformers.CLIPVisionModel(transformers.CLIPVisionConfig(**TINY_VISION)).eval()
    perturb(model, seed)
    model.save_pretrained(directory)
    transformers.CLIPImageProcessor(
        size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}
    ).save_pretrained(directory)
    return model.vision_model if full else model


def make_siglip(directory: Path, full: bool = False, seed: int = 0) -> torch.nn.Module:
    """A random SiglipVisionModel (or whole SiglipModel) and its processor in ``directory``."""
    import transformers

    torch.manual_seed(seed)
    if full:
        config = transformers.SiglipConfig(vision_config=TINY_VISION, text_config=TINY_TEXT)
        model = transformers.SiglipModel(config).eval()
    else:
        vision = transformers.SiglipVisionConfig(**TINY_VISION)
        model = transformers.SiglipVisionModel(vision).eval()
    perturb(model, seed)
    model.save_pretrained(directory)
    transformers.SiglipImageProcessor(size={"height": 32, "width": 32}).save_pretrained(directory)
    return model.vision_model if full else model


def make_timm(directory: Path, seed: int = 0, pretrained_cfg: dict | None = None, **overrides):
    """A random timm ViT saved as timm's Hub folder (``save_for_hf``); returns the model as
    timm itself loads that folder."""
    import timm
    from timm.models._hub import save_for_hf

    torch.manual_seed(seed)
    model = timm.create_model("vit_tiny_patch16_224", pretrained=False, **TINY_TIMM | overrides)
    perturb(model, seed)
    save_for_hf(
        model,
        str(directory),
        model_config={"pretrained_cfg": pretrained_cfg or {}},
        safe_serialization=True,
    )
    return timm.create_model(f"local-dir:{directory}", pretrained=True).eval()


@pytest.fixture(scope="module")
def hf_towers(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Path, torch.nn.Module]]:
    """kind -> (folder, the library's vision tower with the same weights)."""
    towers = {}
    for kind, make, full in [
        ("clip", make_clip, False),
        ("clip_full", make_clip, True),
        ("siglip", make_siglip, False),
        ("siglip_full", make_siglip, True),
    ]:
        directory = tmp_path_factory.mktemp(kind)
        towers[kind] = (directory, make(directory, full=full))
    return towers


@pytest.fixture(scope="module")
def timm_models(
    tmp_path_factory: pytest.TempPathFactory,
) -> dict[str, tuple[Path, torch.nn.Module]]:
    models = {}
    for kind, overrides in TIMM_VARIANTS.items():
        directory = tmp_path_factory.mktemp(kind)
        models[kind] = (directory, make_timm(directory, **overrides))
    return models


def pixels(seed: int = 0, batch: int = 2, side: int = 32) -> torch.Tensor:
    return torch.randn(batch, 3, side, side, generator=torch.Generator().manual_seed(seed))


def assert_close(ours: torch.Tensor, theirs: torch.Tensor) -> None:
    assert ours.shape == theirs.shape
    assert (ours - theirs).abs().max().item() <= TOKEN_ATOL


# --------------------------------------------------------------------------- forward passes


@pytest.mark.parametrize("kind", ["clip", "clip_full"])
def test_clip_folder_gives_pooler_output_and_encoder_patch_tokens(hf_towers, kind):
    directory, reference = hf_towers[kind]
    model = RadDino.from_pretrained(directory)
    assert adapter_family(directory) == "clip" and model.config.family == "clip"
    images = pixels()
    with torch.no_grad():
        theirs = reference(pixel_values=images, output_hidden_states=True)
        ours = model.backbone(images, layers=(0, -1))
    assert_close(ours.cls, theirs.pooler_output)
    assert_close(ours.patches, theirs.last_hidden_state[:, 1:])
    assert ours.registers.shape == (2, 0, 32) and ours.grid == (4, 4)
    assert set(ours.layers) == {0, 1}
    assert_close(ours.layers[0], theirs.hidden_states[1])
    assert_close(ours.layers[1], theirs.last_hidden_state)


@pytest.mark.parametrize("kind", ["siglip", "siglip_full"])
def test_siglip_folder_gives_the_attention_pool_and_normalised_patch_tokens(hf_towers, kind):
    directory, reference = hf_towers[kind]
    model = RadDino.from_pretrained(directory)
    assert model.config.family == "siglip" and model.config.num_register_tokens == 0
    images = pixels(1)
    with torch.no_grad():
        theirs = reference(pixel_values=images, output_hidden_states=True)
        ours = model.backbone(images, layers=(0, 1))
        norm = getattr(reference, "vision_model", reference).post_layernorm
        block0 = norm(theirs.hidden_states[1])
    assert_close(ours.cls, theirs.pooler_output)
    assert_close(ours.patches, theirs.last_hidden_state)
    # no class token: the layer's mean patch token fills the class slot
    assert_close(ours.layers[0], torch.cat([block0.mean(1, keepdim=True), block0], dim=1))
    assert_close(ours.layers[1][:, 1:], theirs.last_hidden_state)


@pytest.mark.parametrize("kind", list(TIMM_VARIANTS))
def test_timm_folder_gives_pre_logits_and_final_patch_tokens(timm_models, kind):
    directory, reference = timm_models[kind]
    model = RadDino.from_pretrained(directory)
    assert adapter_family(directory) == "timm"
    prefix = reference.num_prefix_tokens
    images = pixels(2)
    with torch.no_grad():
        features = reference.forward_features(images)
        pooled = reference.forward_head(features, pre_logits=True)
        _, [(block0, block0_prefix)] = reference.forward_intermediates(
            images, indices=[0], norm=True, output_fmt="NLC", return_prefix_tokens=True
        )
        ours = model.backbone(images, layers=(0, 1))
    assert_close(ours.cls, pooled)
    assert_close(ours.patches, features[:, prefix:])
    registers = 2 if kind == "timm_registers" else 0
    assert model.config.num_register_tokens == registers
    assert ours.registers.shape == (2, registers, 32)
    layer0 = torch.cat([block0_prefix, block0], dim=1)
    if kind == "timm_registers":  # no class token: the mean patch token in its slot
        layer0 = torch.cat([block0.mean(1, keepdim=True), layer0], dim=1)
    assert_close(ours.layers[0], layer0)
    assert ours.layers[1].shape == (2, 1 + registers + 16, 32)


def test_a_bare_timm_state_dict_is_named_by_its_model(tmp_path):
    import timm

    torch.manual_seed(3)
    reference = timm.create_model("test_vit", pretrained=False, num_classes=0).eval()
    perturb(reference, 3)
    weights = tmp_path / "weights.safetensors"
    save_file(reference.state_dict(), str(weights))
    spec = f"timm:test_vit:{weights}"
    model = RadDino.from_pretrained(spec)
    images = pixels(4, side=160)
    with torch.no_grad():
        features = reference.forward_features(images)
        ours = model.backbone(images)
    assert_close(ours.cls, reference.forward_head(features, pre_logits=True))
    assert_close(ours.patches, features[:, 1:])
    # timm's registry entry of test_vit: 160 px input, crop_pct 0.95 -> short side 168
    assert model.preprocess_config.shortest_edge == 168
    assert (model.preprocess_config.crop_height, model.preprocess_config.crop_width) == (160, 160)
    encoder = EncoderSpec.parse(spec)
    assert encoder.label == "weights.safetensors" and encoder.fingerprint()
    assert _processor_of(spec)[0] == 16
    with pytest.raises(WeightFormatError, match="timm:MODEL_NAME:PATH"):
        RadDino.from_pretrained("timm:test_vit")


def test_the_inference_engine_runs_a_foreign_backbone_eagerly(hf_towers):
    model = RadDino.from_pretrained(hf_towers["clip"][0])
    images = pixels(5)
    with torch.no_grad():
        direct = model.backbone(images, layers=(0,))
    engine = InferenceEngine(model.backbone, compile="off", layers=(0,))
    out = engine(images)
    assert torch.equal(out.cls, direct.cls) and torch.equal(out.layers[0], direct.layers[0])
    assert out.grid == (4, 4)


# --------------------------------------------------------------------------- preprocessing


def sample_images(mode: str) -> list[Image.Image]:
    images = []
    for seed, (height, width) in enumerate(IMAGE_SIZES):
        grey = synthetic_radiograph(height, width, seed)
        rgb = np.stack([grey, grey[::-1], 255 - grey], axis=-1)
        images.append(Image.fromarray(grey if mode == "L" else rgb))
    return images


@pytest.mark.parametrize("kind", ["clip", "siglip"])
@pytest.mark.parametrize("mode", ["L", "RGB"])
def test_preprocessing_matches_the_transformers_image_processor(hf_towers, kind, mode):
    import transformers

    directory = hf_towers[kind][0]
    processor = transformers.AutoImageProcessor.from_pretrained(directory)
    model = RadDino.from_pretrained(directory)
    for image in sample_images(mode):
        ours = model.preprocess(image)
        theirs = processor(images=image, return_tensors="pt")["pixel_values"]
        assert ours.shape == theirs.shape == (1, 3, 32, 32)
        assert (ours - theirs).abs().max().item() <= PIXEL_ATOL, image.size


@pytest.mark.parametrize("crop_mode", ["center", "squash"])
def test_preprocessing_matches_timms_eval_transform(tmp_path, crop_mode):
    """timm resizes PIL images with PIL, we resize uint8 tensors with torchvision: at most a few
    grey levels apart at some pixels (as transformers' PIL backend, tests/data), while the crop
    is placed exactly as torchvision's CenterCrop (an odd margin rounded half to even)."""
    import timm

    reference = make_timm(tmp_path, pretrained_cfg={"crop_mode": crop_mode})
    transform = timm.data.create_transform(**timm.data.resolve_data_config({}, model=reference))
    model = RadDino.from_pretrained(tmp_path)
    assert model.preprocess_config.crop_rounding == "round"
    one_level = 1 / 255 / 0.5
    for image in sample_images("RGB") + sample_images("L"):
        ours = model.preprocess(image)
        theirs = transform(image.convert("RGB"))[None]
        diff = (ours - theirs).abs()
        assert ours.shape == theirs.shape == (1, 3, 32, 32)
        assert diff.max().item() <= 3 * one_level + 1e-5, image.size
        assert diff.mean().item() <= 0.5 * one_level, image.size


def test_rad_dinos_processor_dict_is_unchanged_by_the_new_fields():
    data = PreprocessConfig().to_dict()
    assert "resize_size" not in data and "crop_rounding" not in data
    squash = PreprocessConfig(resize_size=(40, 30), crop_rounding="round").to_dict()
    assert squash["resize_size"] == [40, 30] and squash["crop_rounding"] == "round"


# --------------------------------------------------------------------------- detection, errors


def test_an_unknown_model_type_is_refused_in_one_line(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "bert"}))
    with pytest.raises(WeightFormatError) as error:
        RadDino.from_pretrained(tmp_path)
    message = str(error.value)
    assert "\n" not in message and "model_type 'bert'" in message
    assert "clip_vision_model" in message and "siglip" in message and "dinov2" in message


@pytest.mark.parametrize(("kind", "package"), [("clip", "transformers"), ("timm", "timm")])
def test_a_missing_library_names_the_extra_to_install(
    hf_towers, timm_models, monkeypatch, kind, package
):
    directory = (hf_towers | timm_models)[kind][0]
    monkeypatch.setitem(sys.modules, package, None)  # import fails as if not installed
    with pytest.raises(AdapterDependencyError) as error:
        RadDino.from_pretrained(directory)
    message = str(error.value)
    assert "\n" not in message and f"'{package}'" in message
    assert "pip install 'raddino[adapters]'" in message


def test_patch_masks_and_export_are_refused(hf_towers, tmp_path):
    model = RadDino.from_pretrained(hf_towers["siglip"][0])
    with pytest.raises(ValueError, match="takes no patch masks"):
        model.backbone(pixels(), masks=torch.zeros(2, 16, dtype=torch.bool))
    with pytest.raises(ValueError, match="siglip encoder"):
        model.export(tmp_path / "out")


# --------------------------------------------------------------------------- baselines, compile


@pytest.mark.parametrize("kind", ["clip", "siglip", "timm_registers"])
def test_random_init_is_the_same_architecture_with_seeded_weights(hf_towers, timm_models, kind):
    directory = (hf_towers | timm_models)[kind][0]
    trained = EncoderSpec.parse(str(directory)).load()
    first = EncoderSpec.parse(f"random:{directory}", seed=1).load()
    again = EncoderSpec.parse(f"random:{directory}", seed=1).load()
    other = EncoderSpec.parse(f"random:{directory}", seed=2).load()
    assert isinstance(first.backbone, ForeignBackbone)
    assert first.config == trained.config and first.preprocess_config == trained.preprocess_config
    weights = [dict(m.backbone.state_dict()) for m in (trained, first, again, other)]
    assert weights[0].keys() == weights[1].keys()
    assert all(torch.equal(weights[1][k], weights[2][k]) for k in weights[1])
    assert not all(torch.equal(weights[1][k], weights[3][k]) for k in weights[1])
    assert not all(torch.equal(weights[0][k], weights[1][k]) for k in weights[0])


def test_compile_auto_never_traces_a_foreign_backbone(hf_towers):
    cpu = Hardware("cpu", "test CPU", bf16=True, fp16=False, onednn_graph=True, compiler=True)
    foreign = RadDino.from_pretrained(hf_towers["clip"][0]).backbone
    assert not onednn_traceable(foreign)
    assert choose_compile("auto", cpu, torch.float32, 1000).value == "onednn"
    choice = choose_compile("auto", cpu, torch.float32, 1000, traceable=False)
    assert choice.value == "off" and "own ViT" in choice.reason
    assert choose_compile("inductor", cpu, torch.float32, 1000, traceable=False).value == "inductor"
    with pytest.raises(ValueError, match="'off' or 'inductor'"):
        choose_compile("onednn", cpu, torch.float32, 1000, traceable=False)


def test_another_image_size_resamples_hf_position_embeddings_and_fixed_timm_refuses(
    hf_towers, timm_models
):
    directory, reference = hf_towers["clip"]
    model = EncoderSpec(str(directory), image_size=48).load()
    assert model.preprocess_config.crop_height == model.preprocess_config.shortest_edge == 48
    images = pixels(6, side=48)
    with torch.no_grad():
        theirs = reference(pixel_values=images, interpolate_pos_encoding=True)
        ours = model.backbone(images)
    assert ours.grid == (6, 6)
    assert_close(ours.cls, theirs.pooler_output)
    siglip = EncoderSpec(str(hf_towers["siglip"][0]), image_size=48).load()
    assert siglip.preprocess_config.resize_size == (48, 48)
    with torch.no_grad():
        assert siglip.backbone(images).grid == (6, 6)
    timm_model = EncoderSpec(str(timm_models["timm"][0]), image_size=48).load()
    with pytest.raises(ValueError, match="takes 32x32 inputs, got 48x48"):
        timm_model.backbone(images)


def test_a_foreign_encoder_cannot_initialise_pre_training(hf_towers):
    """model.init loads raddino's ViT; a CLIP tower would otherwise fail deep inside
    load_state_dict (or, for the contrastive recipe, somewhere less clear)."""
    from raddino.ssl.run import initial_backbone

    with pytest.raises(ValueError, match=r"model.init=.*a clip encoder cannot initialise"):
        initial_backbone(str(hf_towers["clip"][0]))
