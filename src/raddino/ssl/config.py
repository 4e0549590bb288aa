"""Typed pre-training configuration: dataclasses, YAML presets and ``key=value`` overrides.

Every value is checked when the config is built; errors name the dotted key
(``optim.base_lr``). The resolved config is written to the run directory as YAML.

The top-level key ``recipe`` names the recipe: ``dino`` (the default: DINO + iBOT + KoLeo,
:class:`PretrainConfig`) or ``contrastive`` (image-report pairs,
:class:`raddino.contrastive.config.ContrastiveConfig`). A DINO config is written without it (the
default needs no key).
"""

from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Union

import yaml

if TYPE_CHECKING:
    from raddino.contrastive.config import ContrastiveConfig


class ConfigError(ValueError):
    """A configuration value or key that cannot be used; the message names the key."""


@dataclass
class ModelSection:
    """The student/teacher ViT (see ``raddino.models.vit``)."""

    arch: str = "small"  # tiny | small | base | large | giant
    patch_size: int = 14
    image_size: int = 224  # size of the position-embedding grid
    embed_dim: int | None = None  # None: from arch
    depth: int | None = None
    num_heads: int | None = None
    drop_path_rate: float = 0.0
    layerscale: float | None = 1e-5
    num_register_tokens: int = 0
    init: str = ""  # weights RadDino.from_pretrained reads (HF dir, DINOv2 file, run dir)
    init_head: str = ""  # optional dino_head.safetensors
    grad_checkpointing: bool = False


@dataclass
class HeadSection:
    out_dim: int = 65536
    hidden_dim: int = 2048
    bottleneck_dim: int = 256
    n_layers: int = 3
    separate_ibot_head: bool = False


@dataclass
class LossSection:
    dino_weight: float = 1.0
    ibot_weight: float = 1.0
    koleo_weight: float = 0.1
    centering: str = "softmax"  # softmax | sinkhorn_knopp
    student_temp: float = 0.1
    center_momentum: float = 0.9


@dataclass
class MaskSection:
    probability: float = 0.5
    ratio_min: float = 0.1
    ratio_max: float = 0.5
    min_aspect: float = 0.3
    min_patches: int = 4


@dataclass
class CropSection:
    global_size: int = 224
    global_scale: tuple[float, float] = (0.32, 1.0)
    local_number: int = 8
    local_size: int = 98  # 7 x 7 patches of 14 px (DINOv2: 96 for patch 16, 98 for patch 14)
    local_scale: tuple[float, float] = (0.05, 0.32)
    high_res_start_step: int | None = None  # from this step on, global crops use high_res_size
    high_res_size: int | None = None
    flip_probability: float = 0.0
    rotation_degrees: float = 0.0  # each view turned by uniform(-r, r) degrees before its crop
    brightness: float = 0.2
    contrast: float = 0.2
    gamma: tuple[float, float] = (0.8, 1.25)
    blur_probability: float = 0.2
    blur_sigma: tuple[float, float] = (0.1, 1.5)
    noise_std: float = 0.02
    max_source_size: int = 1024  # images are first shrunk so the longer side is at most this


@dataclass
class TeacherSection:
    momentum: float = 0.992
    momentum_end: float = 1.0
    temp_start: float = 0.04
    temp: float = 0.07
    temp_warmup_steps: int = 0


@dataclass
class OptimSection:
    base_lr: float = 4e-3  # for a global batch of 1024 images
    lr_scaling: str = "sqrt"  # sqrt | linear | none (relative to 1024 images)
    min_lr: float = 1e-6
    warmup_steps: int = 0
    weight_decay: float = 0.04
    weight_decay_end: float = 0.4
    layerwise_decay: float = 0.9
    patch_embed_lr_mult: float = 0.2
    clip_grad: float = 3.0
    freeze_last_layer_steps: int = 0
    beta1: float = 0.9
    beta2: float = 0.999


@dataclass
class TrainSection:
    steps: int = 1000
    batch_size: int = 64  # per process
    num_workers: int = 2
    seed: int = 0
    precision: str = "fp32"  # fp32 | bf16 | fp16 (CUDA only, gradient scaler) | auto: see
    # raddino.precision (float32, bfloat16, float16 are read too)
    device: str = "auto"  # auto | cpu | cuda
    strategy: str = "ddp"  # ddp | fsdp (multi-process only)
    checkpoint_every: int = 100
    keep_last: int = 3
    log_every: int = 1
    deterministic: bool = False
    tensorboard: bool = True


@dataclass
class PretrainConfig:
    recipe: ClassVar[str] = "dino"
    model: ModelSection = field(default_factory=ModelSection)
    head: HeadSection = field(default_factory=HeadSection)
    loss: LossSection = field(default_factory=LossSection)
    masking: MaskSection = field(default_factory=MaskSection)
    crops: CropSection = field(default_factory=CropSection)
    teacher: TeacherSection = field(default_factory=TeacherSection)
    optim: OptimSection = field(default_factory=OptimSection)
    train: TrainSection = field(default_factory=TrainSection)

    def __post_init__(self) -> None:
        validate(self)

    def to_dict(self) -> dict:
        return {
            f.name: {
                k: list(v) if isinstance(v, tuple) else v
                for k, v in vars(getattr(self, f.name)).items()
            }
            for f in dataclasses.fields(self)
        }

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)


# --------------------------------------------------------------------------- validation

_CHOICES = {
    "model.arch": ("tiny", "small", "base", "large", "giant"),
    "loss.centering": ("softmax", "sinkhorn_knopp"),
    "optim.lr_scaling": ("sqrt", "linear", "none"),
    "train.device": ("auto", "cpu", "cuda"),
    "train.strategy": ("ddp", "fsdp"),
}


def validate(config: PretrainConfig) -> None:
    """Raise ConfigError naming the first key whose value is out of range."""
    for key, choices in _CHOICES.items():
        section, name = key.split(".")
        value = getattr(getattr(config, section), name)
        if value not in choices:
            raise ConfigError(f"{key}={value!r}: choose one of {', '.join(choices)}")
    from raddino.precision import DTYPE_CHOICES, parse_dtype  # here: the module stays torch-free

    try:
        parse_dtype(config.train.precision)
    except ValueError:
        raise ConfigError(
            f"train.precision={config.train.precision!r}: choose {DTYPE_CHOICES}"
        ) from None
    positive = [
        "model.patch_size", "model.image_size", "head.out_dim", "head.hidden_dim",
        "head.bottleneck_dim", "head.n_layers", "crops.global_size", "crops.local_size",
        "crops.max_source_size", "train.steps", "train.batch_size",
        "train.checkpoint_every", "train.keep_last", "train.log_every", "loss.student_temp",
        "teacher.temp", "teacher.temp_start", "optim.base_lr",
    ]  # fmt: skip
    for key in positive:
        section, name = key.split(".")
        if getattr(getattr(config, section), name) <= 0:
            raise ConfigError(f"{key}={getattr(getattr(config, section), name)!r} must be > 0")
    non_negative = [
        "loss.dino_weight", "loss.ibot_weight", "loss.koleo_weight", "crops.local_number",
        "optim.warmup_steps", "optim.freeze_last_layer_steps", "train.num_workers",
        "teacher.temp_warmup_steps", "optim.clip_grad", "optim.min_lr", "crops.noise_std",
        "crops.rotation_degrees",
    ]  # fmt: skip
    for key in non_negative:
        section, name = key.split(".")
        if getattr(getattr(config, section), name) < 0:
            raise ConfigError(f"{key}={getattr(getattr(config, section), name)!r} must be >= 0")
    unit = [
        "model.drop_path_rate", "masking.probability", "masking.ratio_min", "masking.ratio_max",
        "crops.flip_probability", "crops.blur_probability", "teacher.momentum",
        "teacher.momentum_end", "loss.center_momentum", "optim.layerwise_decay",
    ]  # fmt: skip
    for key in unit:
        section, name = key.split(".")
        if not 0.0 <= getattr(getattr(config, section), name) <= 1.0:
            raise ConfigError(
                f"{key}={getattr(getattr(config, section), name)!r} must be in [0, 1]"
            )
    for key in ("crops.global_scale", "crops.local_scale", "crops.gamma", "crops.blur_sigma"):
        section, name = key.split(".")
        low, high = getattr(getattr(config, section), name)
        if not 0 < low <= high:
            raise ConfigError(f"{key}=({low}, {high}) must satisfy 0 < low <= high")
    if config.crops.rotation_degrees > 90:
        raise ConfigError(f"crops.rotation_degrees={config.crops.rotation_degrees!r} must be <= 90")
    if config.masking.ratio_min > config.masking.ratio_max:
        raise ConfigError("masking.ratio_min must be <= masking.ratio_max")
    if (config.crops.high_res_start_step is None) != (config.crops.high_res_size is None):
        raise ConfigError("crops.high_res_start_step and crops.high_res_size go together")
    for key in ("crops.global_size", "crops.local_size", "crops.high_res_size", "model.image_size"):
        section, name = key.split(".")
        value = getattr(getattr(config, section), name)
        if value is not None and (value <= 0 or value % config.model.patch_size):
            raise ConfigError(
                f"{key}={value} is not a positive multiple of "
                f"model.patch_size={config.model.patch_size}"
            )
    if config.loss.dino_weight == 0 and config.loss.ibot_weight == 0:
        raise ConfigError("loss.dino_weight and loss.ibot_weight are both 0: nothing to learn")


# --------------------------------------------------------------------------- building


def _coerce(value: Any, annotation: Any, key: str) -> Any:
    """Convert a YAML value to the field's annotated type, or raise ConfigError naming ``key``."""
    origin = typing.get_origin(annotation)
    if origin in (Union, types.UnionType):
        options = typing.get_args(annotation)
        if value is None and type(None) in options:
            return None
        errors = []
        for option in options:
            if option is type(None):
                continue
            try:
                return _coerce(value, option, key)
            except ConfigError as error:
                errors.append(str(error))
        raise ConfigError(errors[0] if errors else f"{key}: invalid value {value!r}")
    if origin is tuple:
        items = typing.get_args(annotation)
        if not isinstance(value, (list, tuple)) or len(value) != len(items):
            raise ConfigError(f"{key}={value!r}: expected a list of {len(items)} values")
        return tuple(_coerce(v, t, key) for v, t in zip(value, items, strict=True))
    if annotation is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{key}={value!r}: expected true or false")
    if annotation is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        raise ConfigError(f"{key}={value!r}: expected an integer")
    if annotation is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):  # YAML 1.1 reads "1e-3" (no dot) as a string
            try:
                return float(value)
            except ValueError:
                pass
        raise ConfigError(f"{key}={value!r}: expected a number")
    if annotation is str:
        if isinstance(value, str):
            return value
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return str(value)
        raise ConfigError(f"{key}={value!r}: expected a string")
    raise ConfigError(f"{key}: unsupported type {annotation!r}")


def _section_types(config_type: type) -> dict[str, type]:
    hints = typing.get_type_hints(config_type)
    return {f.name: hints[f.name] for f in dataclasses.fields(config_type)}


def _unknown(key: str, known: list[str]) -> ConfigError:
    close = difflib.get_close_matches(key, known, n=1)
    hint = f"; did you mean {close[0]!r}?" if close else ""
    return ConfigError(f"unknown config key {key!r}{hint}")


RECIPES = ("dino", "contrastive")


def config_from_dict(data: dict) -> PretrainConfig | ContrastiveConfig:
    """Build a validated config from nested dicts (missing keys keep their defaults): a
    :class:`PretrainConfig`, or the config of the recipe named by the top-level ``recipe``."""
    data = dict(data or {})
    recipe = data.pop("recipe", "dino")
    if recipe not in RECIPES:
        raise ConfigError(f"recipe={recipe!r}: choose one of {', '.join(RECIPES)}")
    if recipe == "contrastive":
        from raddino.contrastive.config import contrastive_config_from_dict

        return contrastive_config_from_dict(data)
    return build_config(PretrainConfig, data)


def build_config(config_type: type, data: dict) -> Any:
    """``config_type`` (a dataclass of sections) from nested dicts; unknown keys are named."""
    sections = _section_types(config_type)
    built = {}
    all_keys = [f"{s}.{f.name}" for s, t in sections.items() for f in dataclasses.fields(t)]
    for name, values in (data or {}).items():
        if name not in sections:
            raise _unknown(str(name), ["recipe", *sections])
        if not isinstance(values, dict):
            raise ConfigError(f"{name}: expected a mapping of keys, got {values!r}")
    for name, section_type in sections.items():
        values = dict((data or {}).get(name) or {})
        hints = typing.get_type_hints(section_type)
        kwargs = {}
        for key, value in values.items():
            if key not in hints:
                raise _unknown(f"{name}.{key}", all_keys)
            kwargs[key] = _coerce(value, hints[key], f"{name}.{key}")
        built[name] = section_type(**kwargs)
    return config_type(**built)


def parse_override(text: str) -> tuple[list[str], Any]:
    """``'optim.base_lr=1e-3'`` -> (['optim', 'base_lr'], 0.001); ``'recipe=contrastive'`` ->
    (['recipe'], 'contrastive')."""
    if "=" not in text:
        raise ConfigError(f"override {text!r}: expected key=value, e.g. optim.base_lr=1e-3")
    key, raw = text.split("=", 1)
    parts = key.strip().split(".")
    if parts == ["recipe"]:
        return parts, raw.strip()
    if len(parts) != 2 or not all(parts):
        raise ConfigError(f"override {text!r}: keys look like section.name, e.g. train.steps")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError as error:
        raise ConfigError(f"override {text!r}: cannot parse value ({error})") from error
    return parts, value


PRESETS_DIR = Path(__file__).resolve().parents[1] / "presets"
"""The presets installed with the package (``tiny_cpu``, ``clip_tiny_cpu``, ``vitb14_cxr``, ...)."""


def preset_names(folder: Path = PRESETS_DIR) -> list[str]:
    """Names ``--config`` (or, for ``folder`` = the studies, ``raddino study``) accepts without a
    path."""
    return sorted(p.stem for p in folder.glob("*.yaml"))


def find_file_or_preset(text: str | Path, folder: Path = PRESETS_DIR) -> Path | None:
    """An existing file, else the YAML file of that name installed in ``folder`` (``tiny_cpu``
    or ``tiny_cpu.yaml``; a bare name only), else None."""
    path = Path(text).expanduser()
    if path.is_file():
        return path
    name = path.name.removesuffix(".yaml")
    if path.parent == Path(".") and (folder / f"{name}.yaml").is_file():
        return folder / f"{name}.yaml"
    return None


def resolve_config_path(text: str | Path, option: str = "--config") -> Path:
    """A ``--config`` value as a file (:func:`find_file_or_preset`); ConfigError naming
    ``option`` and the presets otherwise."""
    found = find_file_or_preset(text)
    if found is None:
        raise ConfigError(
            f"{option} {text}: no such config file and no preset of that name "
            f"(presets: {', '.join(preset_names())})"
        )
    return found


def load_config(
    path: str | Path | None = None, overrides: list[str] = ()
) -> PretrainConfig | ContrastiveConfig:
    """YAML preset (optional: a file or an installed preset's name) plus ``key=value``
    overrides -> validated config of the recipe the preset (or a ``recipe=`` override) names:
    :class:`PretrainConfig` by default."""
    data: dict = {}
    if path is not None:
        path = resolve_config_path(path)
        try:
            data = yaml.safe_load(path.read_text()) or {}
        except (OSError, yaml.YAMLError) as error:
            raise ConfigError(f"{path}: cannot read config ({error})") from error
        if not isinstance(data, dict):
            raise ConfigError(f"{path}: a config file is a mapping of sections")
    for text in overrides:
        parts, value = parse_override(text)
        if parts == ["recipe"]:
            data["recipe"] = value
            continue
        section, name = parts
        data.setdefault(section, {})
        if not isinstance(data[section], dict):
            raise ConfigError(f"{section}: expected a mapping of keys")
        data[section][name] = value
    try:
        return config_from_dict(data)
    except ConfigError as error:
        raise ConfigError(f"{path}: {error}" if path is not None else str(error)) from error
