"""Reading a study file strictly: every mistake is one line naming the file and the key.

``data_scale.yaml: arms[2].overrides: unknown config key 'loss.ibot_weigth'; did you mean
'loss.ibot_weight'?``: unknown keys (with the closest known one), missing ones, a reference
that is no arm, two arms of one name, overrides the arm's recipe does not have, an evaluation
size that is not a multiple of the arm's patch size, a metric the evaluation does not produce.
"""

from __future__ import annotations

import difflib
from pathlib import Path
from typing import Any

import yaml

from raddino.eval.feature_kinds import parse_feature_kind
from raddino.eval.probe import PROTOCOLS
from raddino.ssl.config import ConfigError, load_config, resolve_config_path
from raddino.study.spec import (
    NAME,
    X_AXES,
    Arm,
    Evaluation,
    ManifestData,
    MetricKey,
    Plot,
    StudyFileError,
    StudySpec,
    SyntheticData,
    check_metric,
    default_metrics,
    resolve_study_path,
    synth_config,
)


class _Reader:
    """Typed access to one mapping of the file; every error names the file and the key."""

    def __init__(self, file: Path, where: str, data: object, known: tuple[str, ...]) -> None:
        self.file, self.where = file, where
        if not isinstance(data, dict):
            raise self.error("", f"expected a mapping, got {data!r}")
        for key in data:
            if key not in known:
                close = difflib.get_close_matches(str(key), known, n=1)
                hint = f"; did you mean {close[0]!r}?" if close else ""
                raise self.error(str(key), f"unknown key{hint} (known: {', '.join(known)})")
        self.data = data

    def key(self, name: str) -> str:
        return f"{self.where}.{name}" if self.where and name else (self.where or name)

    def error(self, name: str, message: str) -> StudyFileError:
        key = self.key(name)
        return StudyFileError(
            f"{self.file}: {key}: {message}" if key else f"{self.file}: {message}"
        )

    def has(self, name: str) -> bool:
        return name in self.data

    def get(self, name: str, kind: str, default: Any = None, required: bool = False) -> Any:
        if name not in self.data:
            if required:
                raise self.error(name, "missing (required)")
            return default
        value = self.data[name]
        checks = {
            "int": lambda v: isinstance(v, int) and not isinstance(v, bool),
            "number": lambda v: isinstance(v, (int, float)) and not isinstance(v, bool),
            "str": lambda v: isinstance(v, str) and v.strip() != "",
            "bool": lambda v: isinstance(v, bool),
            "list": lambda v: isinstance(v, list),
            "mapping": lambda v: isinstance(v, dict),
        }
        if not checks[kind](value):
            raise self.error(name, f"expected {_KIND_NAMES[kind]}, got {value!r}")
        return value

    def child(self, name: str, known: tuple[str, ...], value: object = None) -> _Reader:
        return _Reader(
            self.file, self.key(name), self.data[name] if value is None else value, known
        )


_KIND_NAMES = {
    "int": "an integer",
    "number": "a number",
    "str": "a non-empty string",
    "bool": "true or false",
    "list": "a list",
    "mapping": "a mapping",
}
TOP_KEYS = (
    "name", "description", "seed", "data", "pretrain", "evaluation", "metrics", "reference",
    "arms", "plots",
)  # fmt: skip
ARM_KEYS = (
    "name", "group", "config", "overrides", "train_fraction", "epochs", "image_size",
    "random_init",
)  # fmt: skip


def load_study(text: str | Path) -> StudySpec:
    """Read and check a study file (a path or an installed study's name)."""
    path = resolve_study_path(text)
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as error:
        problem = str(error).replace("\n", " ")
        raise StudyFileError(f"{path}: not valid YAML ({problem})") from None
    top = _Reader(path, "", data, TOP_KEYS)
    seed = top.get("seed", "int", 0)
    evaluation = _evaluation(top)
    data_spec = _data(top)
    pretrain = top.child("pretrain", ("config", "overrides"), top.get("pretrain", "mapping", {}))
    config = _config_path(pretrain, "config", pretrain.get("config", "str", "tiny_cpu"))
    overrides = _overrides(pretrain, "overrides")
    arms = _arms(top, config, overrides, seed, evaluation)
    reference = top.get("reference", "str", required=True)
    if reference not in [a.name for a in arms]:
        raise top.error(
            "reference", f"{reference!r} is not one of the arms {[a.name for a in arms]}"
        )
    metrics = _metrics(top, "metrics", top.get("metrics", "list", None), evaluation)
    if not metrics:
        metrics = default_metrics(evaluation)
    if not metrics:
        raise top.error("evaluation", "nothing to evaluate: give targets and/or structures")
    plots = _plots(top, evaluation, metrics, arms)
    return StudySpec(
        path=path,
        name=top.get("name", "str", path.stem),
        description=str(top.get("description", "str", "")).strip(),
        seed=seed,
        data=data_spec,
        overrides=overrides,
        evaluation=evaluation,
        metrics=metrics,
        reference=reference,
        arms=arms,
        plots=plots,
    )


def _config_path(reader: _Reader, name: str, value: str) -> Path:
    relative = reader.file.parent / value
    try:
        return resolve_config_path(relative if relative.is_file() else value, "config")
    except ConfigError as error:
        raise reader.error(name, str(error).removeprefix("config ")) from None


def _overrides(reader: _Reader, name: str) -> tuple[str, ...]:
    items = reader.get(name, "list", [])
    for i, item in enumerate(items):
        if not isinstance(item, str) or "=" not in item or item.startswith("-"):
            raise reader.error(f"{name}[{i}]", f"{item!r}: expected section.key=value")
    return tuple(items)


def _data(top: _Reader) -> SyntheticData | ManifestData:
    data = top.child("data", ("synthetic", "manifest"), top.get("data", "mapping", required=True))
    if data.has("synthetic") == data.has("manifest"):
        raise data.error("", "give exactly one of synthetic (the embedded cohort) or manifest")
    if data.has("manifest"):
        value = data.get("manifest", "str")
        path = (top.file.parent / value).resolve()
        if not path.is_file():
            raise data.error("manifest", f"{path}: no such file")
        return ManifestData(path)
    keys = ("images", "size", "val_fraction", "test_fraction", "prevalence")
    synth = data.child("synthetic", keys, data.get("synthetic", "mapping"))
    images, size = synth.get("images", "int", required=True), synth.get("size", "int", 160)
    if images < 20:
        raise synth.error("images", f"{images}: need at least 20 (train, val and test splits)")
    if not 32 <= size <= 2048:
        raise synth.error("size", f"{size}: expected 32..2048 pixels")
    prevalence = synth.get("prevalence", "mapping", None)
    spec = SyntheticData(
        images,
        size,
        float(synth.get("val_fraction", "number", 0.1)),
        float(synth.get("test_fraction", "number", 0.2)),
        None if prevalence is None else {str(k): float(v) for k, v in prevalence.items()},
    )
    try:
        synth_config(spec, 0)  # the cohort's own checks: fractions, finding names
    except ValueError as error:
        raise synth.error("", str(error)) from None
    return spec


def _evaluation(top: _Reader) -> Evaluation:
    keys = (
        "targets", "macros", "structures", "protocols", "features", "image_size", "bootstrap",
        "seg_epochs",
    )  # fmt: skip
    e = top.child("evaluation", keys, top.get("evaluation", "mapping", required=True))
    targets: list[tuple[str, str | None]] = []
    for i, item in enumerate(e.get("targets", "list", [])):
        name, _, kind = str(item).partition(":")
        if not isinstance(item, str) or not name or kind not in ("", "binary", "continuous"):
            raise e.error(f"targets[{i}]", f"{item!r}: expected COLUMN or COLUMN:binary|continuous")
        targets.append((name, kind or None))
    names = [t for t, _ in targets]
    if len(set(names)) != len(names):
        raise e.error("targets", f"a target is listed twice: {names}")
    macros: dict[str, tuple[str, ...]] = {}
    for macro, members in e.get("macros", "mapping", {}).items():
        if not isinstance(members, list) or len(members) < 2:
            raise e.error(f"macros.{macro}", "expected a list of two or more targets")
        unknown = [m for m in members if m not in names]
        if unknown:
            raise e.error(f"macros.{macro}", f"{unknown} are not among the targets {names}")
        if macro in names or "." in str(macro):
            raise e.error(f"macros.{macro}", "a macro's name must differ from the targets'")
        macros[str(macro)] = tuple(members)
    structures = e.get("structures", "list", [])
    if not all(isinstance(s, str) and s for s in structures):
        raise e.error("structures", f"{structures!r}: expected structure names")
    protocols = e.get("protocols", "list", ["linear"])
    bad = [p for p in protocols if p not in PROTOCOLS]
    if bad or not protocols:
        raise e.error("protocols", f"{protocols!r}: choose from {list(PROTOCOLS)}")
    features = e.get("features", "str", "cls+mean")
    try:
        parse_feature_kind(features)
    except ValueError as error:
        raise e.error("features", str(error)) from None
    image_size = e.get("image_size", "int", None)
    if image_size is not None and image_size < 1:
        raise e.error("image_size", f"{image_size} must be >= 1")
    values = {k: e.get(k, "int", d) for k, d in (("bootstrap", 1000), ("seg_epochs", 20))}
    for key, value in values.items():
        if value < 1:
            raise e.error(key, f"{value} must be >= 1")
    if not targets and not structures:
        raise e.error("", "nothing to evaluate: give targets and/or structures")
    return Evaluation(
        tuple(targets),
        macros,
        tuple(structures),
        tuple(protocols),
        features,
        image_size,
        values["bootstrap"],
        values["seg_epochs"],
    )


def _metrics(
    reader: _Reader, name: str, items: list | None, evaluation: Evaluation
) -> tuple[MetricKey, ...]:
    if items is None:
        return ()
    keys = []
    for i, item in enumerate(items):
        where = f"{reader.file}: {reader.key(f'{name}[{i}]')}"
        key = MetricKey.parse(item, where)
        check_metric(key, evaluation, where)
        keys.append(key)
    return tuple(keys)


def _arms(
    top: _Reader, config: Path, overrides: tuple[str, ...], seed: int, evaluation: Evaluation
) -> tuple[Arm, ...]:
    items = top.get("arms", "list", required=True)
    if not items:
        raise top.error("arms", "give at least one arm")
    arms: list[Arm] = []
    for i, item in enumerate(items):
        label = f"arms[{i}]"
        if not isinstance(item, dict):
            raise top.error(label, f"expected a mapping with at least a name, got {item!r}")
        a = top.child(label, ARM_KEYS, item)
        name = a.get("name", "str", required=True)
        if not NAME.match(name):
            raise a.error("name", f"{name!r}: use lower-case letters, digits, - and _")
        if name in [x.name for x in arms]:
            raise a.error("name", f"{name!r}: two arms have this name")
        arm_config = (
            _config_path(a, "config", a.get("config", "str")) if a.has("config") else config
        )
        fraction = float(a.get("train_fraction", "number", 1.0))
        if not 0.0 < fraction <= 1.0:
            raise a.error("train_fraction", f"{fraction}: expected a fraction in (0, 1]")
        epochs = a.get("epochs", "number", None)
        if epochs is not None and epochs <= 0:
            raise a.error("epochs", f"{epochs} must be > 0")
        random_init = a.get("random_init", "bool", False)
        if random_init and (a.has("train_fraction") or epochs is not None):
            raise a.error(
                "random_init",
                "an arm with random weights is not pre-trained: drop train_fraction and epochs",
            )
        arm = Arm(
            name=name,
            config=arm_config,
            overrides=_overrides(a, "overrides"),
            groups=_groups(a),
            train_fraction=fraction,
            epochs=None if epochs is None else float(epochs),
            image_size=a.get("image_size", "int", None),
            random_init=random_init,
        )
        resolved = _resolve(a, arm, overrides, seed)
        if epochs is not None and any(
            o.split("=")[0].strip() == "train.steps" for o in arm.overrides
        ):
            raise a.error("epochs", "give either epochs or a train.steps override, not both")
        patch = resolved.model.patch_size
        size = arm.image_size or evaluation.image_size
        if size is not None and size % patch:
            if arm.image_size:
                raise a.error(
                    "image_size", f"{size} is not a multiple of the arm's patch size {patch}"
                )
            raise top.error(
                "evaluation.image_size",
                f"{size} is not a multiple of arm {name!r}'s patch size {patch}",
            )
        arms.append(arm)
    return tuple(arms)


def _groups(reader: _Reader) -> tuple[str, ...]:
    """``group: NAME`` or ``group: [NAME, ...]`` (an arm on several lines, e.g. the full-data
    arm of both the fixed-steps and the fixed-epochs series)."""
    if not reader.has("group"):
        return ()
    value = reader.data["group"]
    items = value if isinstance(value, list) else [value]
    if not items or not all(isinstance(g, str) and g.strip() for g in items):
        raise reader.error("group", f"{value!r}: expected a name or a list of names")
    return tuple(dict.fromkeys(items))


def _resolve(reader: _Reader, arm: Arm, overrides: tuple[str, ...], seed: int):
    try:
        return load_config(arm.config, [f"train.seed={seed}", *overrides, *arm.overrides])
    except ConfigError as error:
        raise reader.error("overrides", str(error)) from None


def _plots(
    top: _Reader, evaluation: Evaluation, metrics: tuple[MetricKey, ...], arms: tuple[Arm, ...]
) -> tuple[Plot, ...]:
    plots: list[Plot] = []
    groups = {g for arm in arms for g in arm.groups}
    for i, item in enumerate(top.get("plots", "list", [])):
        keys = ("name", "x", "metrics", "series", "log_x", "title")
        p = top.child(f"plots[{i}]", keys, item)
        x = p.get("x", "str", required=True)
        if x not in X_AXES:
            raise p.error("x", f"{x!r}: choose one of {list(X_AXES)}")
        name = p.get("name", "str", x)
        if not NAME.match(name) or name in [q.name for q in plots]:
            raise p.error("name", f"{name!r}: a unique name of lower-case letters, digits, - and _")
        series = p.get("series", "list", [])
        unknown = [g for g in series if g not in groups]
        if unknown:
            raise p.error("series", f"{unknown} are not groups of any arm {sorted(groups)}")
        if not groups:
            raise p.error("x", "no arm has a group: give arms a group to draw them as lines")
        plots.append(
            Plot(
                name,
                x,
                _metrics(p, "metrics", p.get("metrics", "list", None), evaluation) or metrics,
                tuple(series),
                p.get("log_x", "bool", False),
                p.get("title", "str", ""),
            )
        )
    return tuple(plots)
