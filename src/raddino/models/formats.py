"""Weight formats: Hugging Face Dinov2 directories and official DINOv2 state dicts.

Our :class:`~raddino.models.vit.VisionTransformer` uses the official DINOv2 parameter names, so
the official format is (almost) the identity and the Hugging Face format is a renaming plus the
split of the fused ``qkv`` projection into ``query``/``key``/``value``. An official file holds
only tensors: raddino writes the architecture and processor beside it (``NAME.json``, the
sidecar) and reads them back when present.

Nothing here unpickles: safetensors everywhere, ``.pth``/``.bin`` through
``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import functools
import json
import re
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from raddino.atomic import write_atomic, write_bytes_atomic
from raddino.data.preprocess import PreprocessConfig
from raddino.models.vit import ViTConfig

StateDict = dict[str, torch.Tensor]

HF_WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin")
DINOV2_SUFFIXES = (".safetensors", ".pth", ".pt", ".bin")
DINOV2_WRITE_SUFFIXES = (".safetensors", ".pth", ".pt")
# Official hub builder: non-register models resample with the legacy +0.1 offset, register
# models with an exact size and antialiasing (dinov2/hub/backbones.py).
_OFFICIAL_INTERPOLATION = {False: (0.1, False), True: (0.0, True)}


class WeightFormatError(ValueError):
    """Weights that cannot be read or do not fit the architecture; names the file."""


# --------------------------------------------------------------------------- reading files


def read_tensors(path: Path) -> StateDict:
    """All tensors of a safetensors / torch file, without unpickling arbitrary objects."""
    if not path.is_file():
        raise WeightFormatError(f"{path}: no such file")
    if path.suffix == ".safetensors":
        try:
            return load_file(str(path))
        except Exception as error:  # safetensors raises its own error types
            raise WeightFormatError(f"{path}: not a readable safetensors file ({error})") from error
    try:
        data = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as error:
        raise WeightFormatError(
            f"{path}: cannot be read as a torch state dict with weights_only=True "
            f"({torch_load_error(error)})"
        ) from error
    return unwrap_checkpoint(data, path)


def torch_load_error(error: Exception) -> str:
    """Why ``torch.load(weights_only=True)`` failed, on one line. torch's own message runs over
    several lines and suggests ``weights_only=False``, which would run the file's code; for a
    pickle of other objects this keeps the global it refused."""
    text = re.sub(r"\x1b\[[0-9;]*m", "", str(error))
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    for line in lines:
        if "WeightsUnpickler error:" in line:
            refused = line.split("WeightsUnpickler error:", 1)[1].split(". ", 1)[0].strip()
            return f"it holds Python objects other than tensors, not loaded: {refused}"
    return type(error).__name__ + (f": {lines[0]}" if lines else "")


def unwrap_checkpoint(data: object, path: Path) -> StateDict:
    """Find the state dict inside a training checkpoint ({'teacher': ...}, {'model': ...})."""
    for key in ("teacher", "model", "state_dict"):
        if isinstance(data, dict) and isinstance(data.get(key), dict):
            data = data[key]
            break
    if not isinstance(data, dict) or not all(isinstance(v, torch.Tensor) for v in data.values()):
        raise WeightFormatError(f"{path}: does not hold a state dict of tensors")
    return dict(data)


def read_hf_tensors(directory: Path) -> StateDict:
    """Tensors of a Hugging Face model directory (single or sharded safetensors, or .bin)."""
    single = directory / "model.safetensors"
    index = directory / "model.safetensors.index.json"
    if single.is_file():
        return read_tensors(single)
    if index.is_file():
        shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        tensors: StateDict = {}
        for shard in shards:
            tensors.update(read_tensors(directory / shard))
        return tensors
    if (directory / "pytorch_model.bin").is_file():
        return read_tensors(directory / "pytorch_model.bin")
    raise WeightFormatError(f"{directory}: no weights file (expected one of {HF_WEIGHT_FILES})")


# --------------------------------------------------------------------------- strict matching


def check_keys(expected: StateDict, given: StateDict, source: str) -> None:
    """Raise a readable error when keys or shapes differ."""
    missing = sorted(set(expected) - set(given))
    unexpected = sorted(set(given) - set(expected))
    wrong_shape = [
        f"{key}: file {tuple(given[key].shape)} vs model {tuple(expected[key].shape)}"
        for key in sorted(set(expected) & set(given))
        if given[key].shape != expected[key].shape
    ]
    if not (missing or unexpected or wrong_shape):
        return
    parts = []
    for title, items in (
        ("missing keys", missing),
        ("unexpected keys", unexpected),
        ("shape mismatches", wrong_shape),
    ):
        if items:
            shown = ", ".join(items[:12]) + (
                f", ... ({len(items) - 12} more)" if len(items) > 12 else ""
            )
            parts.append(f"{len(items)} {title}: {shown}")
    raise WeightFormatError(f"{source}: weights do not match the architecture; " + "; ".join(parts))


def expected_state_dict(config: ViTConfig) -> StateDict:
    """Shapes of every parameter of a ViT with this config, on the meta device."""
    from raddino.models.vit import VisionTransformer

    with torch.device("meta"):
        return VisionTransformer(config).state_dict()


# --------------------------------------------------------------------------- official DINOv2

_CHUNKED_BLOCK = re.compile(r"^blocks\.\d+\.(\d+)\.")


def normalize_dinov2_keys(tensors: StateDict) -> StateDict:
    """Strip training prefixes (``backbone.``, ``module.``) and block chunks (``blocks.c.i.``).

    Keys of the DINO/iBOT heads are dropped: they are not part of the backbone.
    """
    out: StateDict = {}
    for key, value in tensors.items():
        for prefix in ("module.", "backbone."):
            if key.startswith(prefix):
                key = key[len(prefix) :]
        if key.startswith(("dino_head.", "ibot_head.", "head.")):
            continue
        out[_CHUNKED_BLOCK.sub(r"blocks.\1.", key)] = value
    return out


def infer_dinov2_config(tensors: StateDict, source: str, **overrides) -> ViTConfig:
    """Architecture from the shapes of an official state dict (heads = dim / 64, as in DINOv2)."""
    try:
        dim = tensors["cls_token"].shape[-1]
        patch = tensors["patch_embed.proj.weight"].shape[-1]
        in_chans = tensors["patch_embed.proj.weight"].shape[1]
        positions = tensors["pos_embed"].shape[1] - 1
    except KeyError as error:
        raise WeightFormatError(
            f"{source}: not an official DINOv2 backbone state dict (no {error.args[0]!r})"
        ) from error
    side = round(positions**0.5)
    if side * side != positions:
        raise WeightFormatError(f"{source}: pos_embed holds {positions} patches, not a square grid")
    depth = 1 + max(
        (int(m.group(1)) for k in tensors if (m := re.match(r"blocks\.(\d+)\.", k))), default=-1
    )
    if depth == 0:
        raise WeightFormatError(f"{source}: no transformer blocks (keys 'blocks.N.*') found")
    swiglu = "blocks.0.mlp.w12.weight" in tensors
    if swiglu:
        hidden = tensors["blocks.0.mlp.w3.weight"].shape[1]
        mlp_ratio = next(
            r / 4 for r in range(1, 65) if (int(dim * r / 4 * 2 / 3) + 7) // 8 * 8 == hidden
        )
    else:
        mlp_ratio = tensors["blocks.0.mlp.fc1.weight"].shape[0] / dim
    registers = tensors["register_tokens"].shape[1] if "register_tokens" in tensors else 0
    offset, antialias = _OFFICIAL_INTERPOLATION[registers > 0]
    fields = dict(
        image_size=side * patch,
        patch_size=patch,
        in_chans=in_chans,
        embed_dim=dim,
        depth=depth,
        num_heads=max(dim // 64, 1),
        mlp_ratio=mlp_ratio,
        qkv_bias="blocks.0.attn.qkv.bias" in tensors,
        ffn="swiglu" if swiglu else "mlp",
        layerscale_init=1.0 if "blocks.0.ls1.gamma" in tensors else None,
        num_register_tokens=registers,
        interpolate_offset=offset,
        interpolate_antialias=antialias,
    )
    fields.update(overrides)
    return ViTConfig(**fields)


DINOV2_SIDECAR_FORMAT = "raddino-dinov2-sidecar"


def dinov2_sidecar_path(path: Path) -> Path:
    """``NAME.json`` beside ``NAME.safetensors`` / ``NAME.pth``: what an official file cannot
    carry (the number of heads, the processor, the position-embedding convention)."""
    return path.with_suffix(".json")


def read_dinov2_sidecar(path: Path) -> dict | None:
    """The sidecar of the weights file ``path`` (see :func:`save_dinov2_file`), or None when
    there is none. A JSON file of that name that raddino did not write is not ours: ignored."""
    sidecar = dinov2_sidecar_path(path)
    if not sidecar.is_file():
        return None
    try:
        data = json.loads(sidecar.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise WeightFormatError(
            f"{sidecar}: unreadable sidecar of {path.name} ({error})"
        ) from error
    if not isinstance(data, dict) or data.get("format") != DINOV2_SIDECAR_FORMAT:
        return None
    return data


def _is_our_sidecar(path: Path) -> bool:
    try:
        return read_dinov2_sidecar(path) is not None
    except WeightFormatError:
        return False


def grid_preprocess(config: ViTConfig) -> PreprocessConfig:
    """RAD-DINO's processor at the size of the position-embedding grid (grid x patch). For
    RAD-DINO's own file (37 x 37 patches of 14 px) this is the default 518 px processor."""
    size = config.image_size
    return PreprocessConfig(shortest_edge=size, crop_height=size, crop_width=size)


def _sidecar_settings(
    data: dict, source: Path, overrides: dict
) -> tuple[ViTConfig, PreprocessConfig]:
    try:
        config = ViTConfig(**{**data["vit_config"], **overrides})
        preprocess = PreprocessConfig(
            **{k: tuple(v) if isinstance(v, list) else v for k, v in data["preprocess"].items()}
        )
    except KeyError as error:
        raise WeightFormatError(f"{source}: the sidecar lacks {error.args[0]!r}") from error
    except (TypeError, ValueError) as error:
        raise WeightFormatError(f"{source}: invalid sidecar ({error})") from error
    return config, preprocess


def load_dinov2_file(path: Path, **overrides) -> tuple[ViTConfig, StateDict, PreprocessConfig]:
    """Read an official DINOv2 backbone file (RAD-DINO's ``backbone_compatible.safetensors``):
    architecture, weights and processor.

    With a raddino sidecar (``NAME.json``, written by :func:`save_dinov2_file`) the architecture
    and processor are the exported model's own. Without one the architecture is inferred from the
    shapes (heads = dim / 64, as DINOv2) and the processor is RAD-DINO's at the grid's size.
    """
    tensors = normalize_dinov2_keys(read_tensors(path))
    sidecar = read_dinov2_sidecar(path)
    if sidecar is None:
        config = infer_dinov2_config(tensors, str(path), **overrides)
        preprocess = grid_preprocess(config)
    else:
        config, preprocess = _sidecar_settings(sidecar, dinov2_sidecar_path(path), overrides)
    expected = expected_state_dict(config)
    if "mask_token" not in tensors and "mask_token" in expected:
        tensors["mask_token"] = torch.zeros(expected["mask_token"].shape)
    check_keys(expected, tensors, str(path))
    return config, tensors, preprocess


def save_dinov2_file(
    state: StateDict,
    path: Path,
    config: ViTConfig | None = None,
    preprocess: PreprocessConfig | None = None,
) -> None:
    """Write an official-format backbone file (.safetensors, or .pth readable with weights_only).

    With ``config``, a sidecar ``NAME.json`` (the ViTConfig and the processor) is written first,
    so :func:`load_dinov2_file` gives back the same model at any size. Without it, a sidecar of
    ours left beside ``path`` is deleted: it would describe other weights. Each file is written
    atomically.
    """
    if path.suffix not in DINOV2_WRITE_SUFFIXES:
        raise WeightFormatError(
            f"{path}: use a .safetensors or .pth file name for the DINOv2 format"
        )
    path.parent.mkdir(parents=True, exist_ok=True)
    sidecar = dinov2_sidecar_path(path)
    if config is not None:
        data = {
            "format": DINOV2_SIDECAR_FORMAT,
            "version": 1,
            "vit_config": config.to_dict(),
            "preprocess": (preprocess or grid_preprocess(config)).to_dict(),
        }
        write_bytes_atomic(sidecar, (json.dumps(data, indent=2) + "\n").encode())
    elif _is_our_sidecar(path):
        sidecar.unlink()
    tensors = {key: value.detach().cpu().contiguous() for key, value in state.items()}
    if path.suffix == ".safetensors":
        write_atomic(path, lambda temp: save_file(tensors, str(temp), metadata={"format": "pt"}))
    else:
        write_atomic(path, lambda temp: torch.save(tensors, str(temp)))


# --------------------------------------------------------------------------- Hugging Face

DINOV2_MODEL_TYPES = ("dinov2", "dinov2_with_registers")
# The architecture fields of microsoft/rad-dino's config.json (a transformers Dinov2Config).
RAD_DINO_HF_CONFIG = {
    "hidden_size": 768,
    "num_hidden_layers": 12,
    "num_attention_heads": 12,
    "mlp_ratio": 4,
    "image_size": 518,
    "patch_size": 14,
    "layerscale_value": 1.0,
    "qkv_bias": True,
    "layer_norm_eps": 1e-6,
    "use_swiglu_ffn": False,
}
# Official name <-> Hugging Face name. {i}: block index, {n}: 1 or 2. A name ending in "." is a
# prefix (".weight"/".bias" follow); the others are whole names.
_NAME_PAIRS = [
    ("cls_token", "embeddings.cls_token"),
    ("mask_token", "embeddings.mask_token"),
    ("pos_embed", "embeddings.position_embeddings"),
    ("register_tokens", "embeddings.register_tokens"),
    ("patch_embed.proj.", "embeddings.patch_embeddings.projection."),
    ("blocks.{i}.norm{n}.", "encoder.layer.{i}.norm{n}."),
    ("blocks.{i}.attn.proj.", "encoder.layer.{i}.attention.output.dense."),
    ("blocks.{i}.ls{n}.gamma", "encoder.layer.{i}.layer_scale{n}.lambda1"),
    ("blocks.{i}.mlp.fc{n}.", "encoder.layer.{i}.mlp.fc{n}."),
    ("blocks.{i}.mlp.w3.", "encoder.layer.{i}.mlp.down_proj."),
    ("norm.", "layernorm."),
]
# Names of older transformers releases (SwiGLU as one fused input layer): read, never written.
_LEGACY_HF_NAMES = [
    ("blocks.{i}.mlp.w12.", "encoder.layer.{i}.mlp.weights_in."),
    ("blocks.{i}.mlp.w3.", "encoder.layer.{i}.mlp.weights_out."),
]
HF_TO_DINOV2 = [(hf, official) for official, hf in _NAME_PAIRS + _LEGACY_HF_NAMES]
DINOV2_TO_HF = _NAME_PAIRS


@functools.cache
def _template_pattern(template: str) -> re.Pattern[str]:
    pattern = re.escape(template).replace(r"\{i\}", r"(?P<i>\d+)").replace(r"\{n\}", r"(?P<n>[12])")
    return re.compile("^" + pattern + ("" if template.endswith(".") else "$"))


def rename(key: str, pairs: list[tuple[str, str]]) -> str | None:
    """``key`` renamed by the first matching (source, target) template pair, or None."""
    for source, target in pairs:
        if match := _template_pattern(source).match(key):
            return target.format(**match.groupdict()) + key[match.end() :]
    return None


_HF_QKV = re.compile(
    r"^encoder\.layer\.(\d+)\.attention\.attention\.(query|key|value)\.(weight|bias)$"
)
_HF_GATE_UP = re.compile(r"^encoder\.layer\.(\d+)\.mlp\.(gate_proj|up_proj)\.(weight|bias)$")


def vit_config_from_hf(hf: dict, source: str) -> ViTConfig:
    """ViTConfig from a transformers Dinov2 / Dinov2WithRegisters ``config.json`` dict."""
    model_type = hf.get("model_type")
    if model_type not in DINOV2_MODEL_TYPES:
        raise WeightFormatError(
            f"{source}: model_type {model_type!r} is not a DINOv2 model "
            f"(expected one of {DINOV2_MODEL_TYPES})"
        )
    if hf.get("hidden_act", "gelu") != "gelu":
        raise WeightFormatError(
            f"{source}: hidden_act={hf['hidden_act']!r} unsupported (gelu only)"
        )
    registers = (
        int(hf.get("num_register_tokens", 0)) if model_type == "dinov2_with_registers" else 0
    )
    try:
        return ViTConfig(
            image_size=int(hf.get("image_size", 224)),
            patch_size=int(hf.get("patch_size", 14)),
            in_chans=int(hf.get("num_channels", 3)),
            embed_dim=int(hf["hidden_size"]),
            depth=int(hf["num_hidden_layers"]),
            num_heads=int(hf["num_attention_heads"]),
            mlp_ratio=float(hf.get("mlp_ratio", 4)),
            qkv_bias=bool(hf.get("qkv_bias", True)),
            ffn="swiglu" if hf.get("use_swiglu_ffn", False) else "mlp",
            layerscale_init=float(hf.get("layerscale_value", 1.0)),
            num_register_tokens=registers,
            layer_norm_eps=float(hf.get("layer_norm_eps", 1e-6)),
            # transformers resamples to the exact grid; the register variant antialiases.
            interpolate_offset=0.0,
            interpolate_antialias=registers > 0,
        )
    except KeyError as error:
        raise WeightFormatError(f"{source}: config.json lacks {error.args[0]!r}") from error
    except ValueError as error:
        raise WeightFormatError(f"{source}: {error}") from error


def hf_to_dinov2(tensors: StateDict) -> StateDict:
    """Rename Hugging Face Dinov2 keys to official ones; fuse q/k/v and gate/up projections."""
    out: StateDict = {}
    qkv: dict[tuple[str, str], dict[str, torch.Tensor]] = {}
    gate_up: dict[tuple[str, str], dict[str, torch.Tensor]] = {}
    for key, value in tensors.items():
        for prefix in ("dinov2.", "dinov2_with_registers."):
            if key.startswith(prefix):
                key = key[len(prefix) :]
        if key.startswith("classifier."):
            continue
        if match := _HF_QKV.match(key):
            qkv.setdefault((match[1], match[3]), {})[match[2]] = value
            continue
        if match := _HF_GATE_UP.match(key):
            gate_up.setdefault((match[1], match[3]), {})[match[2]] = value
            continue
        out[rename(key, HF_TO_DINOV2) or key] = value
    for (layer, kind), parts in qkv.items():
        if set(parts) != {"query", "key", "value"}:
            raise WeightFormatError(
                f"layer {layer}: incomplete query/key/value {kind} ({sorted(parts)})"
            )
        out[f"blocks.{layer}.attn.qkv.{kind}"] = torch.cat(
            [parts["query"], parts["key"], parts["value"]], dim=0
        )
    for (layer, kind), parts in gate_up.items():
        if set(parts) != {"gate_proj", "up_proj"}:
            raise WeightFormatError(f"layer {layer}: incomplete SwiGLU gate/up {kind}")
        out[f"blocks.{layer}.mlp.w12.{kind}"] = torch.cat(
            [parts["gate_proj"], parts["up_proj"]], dim=0
        )
    return out


def dinov2_to_hf(state: StateDict, config: ViTConfig) -> StateDict:
    """Official keys -> transformers Dinov2Model keys (the inverse of :func:`hf_to_dinov2`)."""
    dim = config.embed_dim
    out: StateDict = {}
    for key, value in state.items():
        value = value.detach().cpu().contiguous()
        if match := re.match(r"^blocks\.(\d+)\.attn\.qkv\.(weight|bias)$", key):
            layer, kind = match.groups()
            for name, part in zip(("query", "key", "value"), value.split(dim, dim=0), strict=True):
                out[f"encoder.layer.{layer}.attention.attention.{name}.{kind}"] = part.contiguous()
            continue
        if match := re.match(r"^blocks\.(\d+)\.mlp\.w12\.(weight|bias)$", key):
            layer, kind = match.groups()
            gate, up = value.chunk(2, dim=0)
            out[f"encoder.layer.{layer}.mlp.gate_proj.{kind}"] = gate.contiguous()
            out[f"encoder.layer.{layer}.mlp.up_proj.{kind}"] = up.contiguous()
            continue
        out[_dinov2_key_to_hf(key)] = value
    if config.layerscale_init is None:  # transformers always has LayerScale: identity = ones
        for layer in range(config.depth):
            for index in (1, 2):
                out[f"encoder.layer.{layer}.layer_scale{index}.lambda1"] = torch.ones(dim)
    return out


def _dinov2_key_to_hf(key: str) -> str:
    renamed = rename(key, DINOV2_TO_HF)
    if renamed is None:
        raise WeightFormatError(f"no Hugging Face name for parameter {key!r}")
    return renamed


def hf_config_dict(config: ViTConfig) -> dict:
    """A transformers ``config.json`` dict for this architecture."""
    registers = config.num_register_tokens > 0
    data = {
        "architectures": ["Dinov2WithRegistersModel" if registers else "Dinov2Model"],
        "model_type": "dinov2_with_registers" if registers else "dinov2",
        "hidden_size": config.embed_dim,
        "num_hidden_layers": config.depth,
        "num_attention_heads": config.num_heads,
        "mlp_ratio": int(config.mlp_ratio)
        if float(config.mlp_ratio).is_integer()
        else config.mlp_ratio,
        "hidden_act": "gelu",
        "hidden_dropout_prob": 0.0,
        "attention_probs_dropout_prob": 0.0,
        "initializer_range": 0.02,
        "layer_norm_eps": config.layer_norm_eps,
        "image_size": config.image_size,
        "patch_size": config.patch_size,
        "num_channels": config.in_chans,
        "qkv_bias": config.qkv_bias,
        "layerscale_value": config.layerscale_init or 1.0,
        "drop_path_rate": config.drop_path_rate,
        "use_swiglu_ffn": config.ffn == "swiglu",
        "torch_dtype": "float32",
    }
    if registers:
        data["num_register_tokens"] = config.num_register_tokens
    else:
        data["use_mask_token"] = True
    return data


def load_hf_directory(directory: Path) -> tuple[ViTConfig, StateDict, PreprocessConfig | None]:
    """Read a Hugging Face Dinov2 directory: architecture, weights (official names), processor."""
    config_path = directory / "config.json"
    try:
        hf = json.loads(config_path.read_text())
    except (OSError, json.JSONDecodeError) as error:
        raise WeightFormatError(f"{config_path}: unreadable config ({error})") from error
    config = vit_config_from_hf(hf, str(config_path))
    tensors = hf_to_dinov2(read_hf_tensors(directory))
    expected = expected_state_dict(config)
    if "mask_token" not in tensors and "mask_token" in expected:
        tensors["mask_token"] = torch.zeros(expected["mask_token"].shape)
    check_keys(expected, tensors, str(directory))
    processor_path = directory / "preprocessor_config.json"
    preprocess = PreprocessConfig.from_file(processor_path) if processor_path.is_file() else None
    return config, tensors, preprocess


def save_hf_directory(
    state: StateDict, config: ViTConfig, preprocess: PreprocessConfig, directory: Path
) -> None:
    """Write ``config.json``, ``model.safetensors`` and ``preprocessor_config.json``."""
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "config.json").write_text(json.dumps(hf_config_dict(config), indent=2) + "\n")
    save_file(
        dinov2_to_hf(state, config), str(directory / "model.safetensors"), metadata={"format": "pt"}
    )
    (directory / "preprocessor_config.json").write_text(
        json.dumps(preprocess.to_hf_dict(), indent=2) + "\n"
    )


# --------------------------------------------------------------------------- run directories


def is_run_directory(path: Path) -> bool:
    """A raddino pre-training run: ``config.yaml`` and a ``checkpoints/`` folder."""
    return path.is_dir() and (path / "config.yaml").is_file() and (path / "checkpoints").is_dir()


def latest_run_checkpoint(run_dir: Path) -> Path:
    found = sorted(
        (int(m.group(1)), p)
        for p in (run_dir / "checkpoints").iterdir()
        if (m := re.match(r"^step_(\d+)\.pt$", p.name))
    )
    if not found:
        raise WeightFormatError(f"{run_dir}: the run has no checkpoint yet")
    return found[-1][1]


def read_run_checkpoint(run_dir: Path) -> tuple[Path, dict]:
    """The path and state of a run's latest checkpoint (read once: a run still training may
    write a newer one meanwhile)."""
    path = latest_run_checkpoint(run_dir)
    try:
        return path, torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:
        raise WeightFormatError(
            f"{path}: unreadable checkpoint ({torch_load_error(error)})"
        ) from error


RUN_BACKBONE_PREFIXES = {"dino": "teacher.backbone.", "contrastive": "vision."}
"""Where each recipe's checkpoint keeps the backbone that is released: the image-only recipe's
EMA teacher, the language-supervised recipe's image tower (without its projection)."""


def run_recipe(state: dict, source: str) -> str:
    """The recipe of a run checkpoint's state: ``dino`` (image-only) or ``contrastive``."""
    recipe = state.get("recipe", "dino")
    if recipe not in RUN_BACKBONE_PREFIXES:
        raise WeightFormatError(f"{source}: checkpoint of an unknown recipe {recipe!r}")
    return recipe


def run_backbone(state: dict, source: str) -> tuple[ViTConfig, StateDict, PreprocessConfig]:
    """The released backbone of a run checkpoint's state (see :func:`load_run_directory`)."""
    recipe = run_recipe(state, source)
    crops = state.get("config", {}).get("crops", {})
    size = crops.get("high_res_size") or crops.get("global_size") or 518
    preprocess = PreprocessConfig(shortest_edge=size, crop_height=size, crop_width=size)
    try:
        config = ViTConfig(**state["backbone_config"])
    except (KeyError, TypeError, ValueError) as error:
        raise WeightFormatError(f"{source}: checkpoint lacks a valid backbone config") from error
    prefix = RUN_BACKBONE_PREFIXES[recipe]
    tensors = {k[len(prefix) :]: v for k, v in state["model"].items() if k.startswith(prefix)}
    check_keys(expected_state_dict(config), tensors, source)
    return config, tensors, preprocess


def run_head(state: dict) -> StateDict:
    """The teacher's DINO head of a run checkpoint's state, in the official key layout (empty
    for a contrastive run, which has none)."""
    prefix = "teacher.dino_head."
    return {k[len(prefix) :]: v for k, v in state["model"].items() if k.startswith(prefix)}


def load_run_directory(run_dir: Path) -> tuple[ViTConfig, StateDict, PreprocessConfig]:
    """The released backbone of a run's latest checkpoint (the teacher of an image-only run, as
    DINOv2 releases; the image tower of a contrastive run), and a processor at the run's final
    global-crop size with RAD-DINO's normalisation."""
    return run_backbone(read_run_checkpoint(run_dir)[1], str(run_dir))


def load_run_head(run_dir: Path) -> StateDict:
    """The teacher's DINO head of a run's latest checkpoint (see :func:`run_head`)."""
    return run_head(read_run_checkpoint(run_dir)[1])


def detect_format(path: Path) -> str:
    """'run' for a raddino run, 'hf' for a Hugging Face directory, 'dinov2' for a file."""
    if path.is_dir():
        if is_run_directory(path):
            return "run"
        if (path / "config.json").is_file():
            return "hf"
        found = sorted(p.name for p in path.iterdir())[:10]
        raise WeightFormatError(
            f"{path}: not a model directory (no config.json; found {found}). Pass a Hugging Face "
            "Dinov2 directory, a raddino run directory or an official DINOv2 .safetensors/.pth file"
        )
    if path.is_file():
        if path.suffix in DINOV2_SUFFIXES:
            return "dinov2"
        raise WeightFormatError(f"{path}: unknown weights file type (use one of {DINOV2_SUFFIXES})")
    raise WeightFormatError(f"{path}: no such file or directory")
