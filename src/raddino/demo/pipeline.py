"""The demo's stages: cohort -> image-only and language-supervised pre-training (and, on request,
the no-iBOT ablation) -> evaluation of both against a random-initialised encoder and raw pixels
-> report generation -> figures -> REPORT.md / report.html.

Every stage calls the library function that the matching ``raddino`` command calls; this module
only decides sizes, paths and which outputs feed which stage (see ``docs/demo.md``).
"""

from __future__ import annotations

import os
import shutil
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING

from raddino.demo import first_guess
from raddino.demo.options import (
    LABEL_LANGUAGE,
    LABEL_NO_IBOT,
    LABEL_PIXELS,
    LABEL_RANDOM,
    LABEL_SSL,
    PIXEL_SIDE,
    PROBE_FEATURES,
    STRUCTURES,
    DemoOptions,
    DemoPaths,
    loader_overrides,
)
from raddino.demo.stages import (
    Stage,
    StageContext,
    StageOutcome,
    StageRunner,
    run_holding_lock,
    stage_log,
    write_json_atomic,
)
from raddino.eval.feature_kinds import parse_feature_kind
from raddino.ssl.config import PretrainConfig, load_config

if TYPE_CHECKING:
    from raddino.contrastive.config import ContrastiveConfig
    from raddino.data.synth import SynthConfig
    from raddino.eval.encoders import EncoderSpec
    from raddino.features.encode import EncodeOptions

RUNS = {"pretrain": "ssl", "pretrain_language": "language", "pretrain_no_ibot": "no_ibot"}
"""Pre-training stage -> run directory name under ``OUT/runs``."""
MACHINE_KEYS = (("train", "device"), ("train", "num_workers"))
"""Config keys that change where and how fast a run goes, not what it learns."""


@dataclass
class Rates:
    """Throughputs for the ETA: defaults for a 2-core CPU, replaced by measured values."""

    synth_seconds_per_image: float | None = None
    pretrain_seconds_per_step: dict[str, float] = field(default_factory=dict)  # by stage
    eval_seconds_per_image: float | None = None  # per encoder
    report_seconds: float | None = None


def rmtree(path: Path) -> None:
    if path.exists():
        shutil.rmtree(path)


def relative_to(path: Path, folder: Path) -> str:
    return os.path.relpath(path, folder)


class Demo:
    """The stages of one ``raddino demo --out DIR`` and what they share."""

    def __init__(self, options: DemoOptions) -> None:
        self.options = options
        self.sizes = options.sizes
        self.paths = DemoPaths(Path(options.out))
        self.configs: dict[str, PretrainConfig | ContrastiveConfig] = {
            "pretrain": self.pretrain_config(ablation=False),
            "pretrain_no_ibot": self.pretrain_config(ablation=True),
        }
        if options.language:
            self.configs["pretrain_language"] = self.language_config()
        self.rates = Rates()
        self.runner = StageRunner(self.paths.root, log=stage_log)
        self._load_rates()

    # ------------------------------------------------------------------ configuration

    def pretrain_overrides(self, ablation: bool) -> list[str]:
        """Preset < ``--quick`` < ``--steps``/``--seed``/``--workers``/``--device`` < user
        ``key=value`` < the ablation's ``loss.ibot_weight=0``."""
        o = self.options
        overrides = [*self.sizes.overrides, f"train.seed={o.seed}", f"train.device={o.device}"]
        overrides += loader_overrides(o.workers)
        if o.steps is not None:
            overrides.append(f"train.steps={o.steps}")
        overrides += list(o.overrides)
        if ablation:
            overrides.append("loss.ibot_weight=0")
        return overrides

    def pretrain_config(self, ablation: bool) -> PretrainConfig:
        return load_config(self.options.config, self.pretrain_overrides(ablation))

    def language_overrides(self) -> list[str]:
        """Preset < ``--quick`` < ``--steps``/``--seed``/``--workers``/``--device``; the user's
        ``key=value`` overrides are the image-only preset's and do not apply here."""
        o = self.options
        overrides = [*self.sizes.language_overrides, f"train.seed={o.seed}"]
        overrides += [f"train.device={o.device}", *loader_overrides(o.workers)]
        if o.steps is not None:
            overrides.append(f"train.steps={o.steps}")
        return overrides

    def language_config(self) -> ContrastiveConfig:
        preset = self.options.language_config
        recipe = load_config(preset).recipe  # before the overrides, whose keys it decides
        if recipe != "contrastive":
            raise ValueError(
                f"--language-config {preset}: expected a preset with recipe: contrastive, "
                f"got recipe {recipe}"
            )
        return load_config(preset, self.language_overrides())

    @staticmethod
    def config_inputs(config: PretrainConfig | ContrastiveConfig) -> dict:
        """The resolved config without the keys that do not change the result."""
        data = config.to_dict()
        for section, key in MACHINE_KEYS:
            data[section].pop(key, None)
        return data

    def synth_config(self) -> SynthConfig:
        from raddino.data.synth import SynthConfig

        s = self.sizes
        extra = {} if s.prevalence is None else {"prevalence": dict(s.prevalence)}
        return SynthConfig(
            n=s.images,
            seed=self.options.seed,
            size=s.size,
            val_fraction=s.val_fraction,
            test_fraction=s.test_fraction,
            **extra,
        )

    def encoder_specs(self) -> list[EncoderSpec]:
        """The encoders compared: image-only first (the reference), language-supervised,
        the no-iBOT ablation (when asked for), the random baseline, raw pixels."""
        from raddino.eval.encoders import EncoderSpec

        size = self.eval_size()
        ssl = EncoderSpec(str(self.paths.run("ssl")), image_size=size, name=LABEL_SSL)
        specs = [ssl]
        if self.options.language:
            run = str(self.paths.run("language"))
            specs.append(EncoderSpec(run, image_size=size, name=LABEL_LANGUAGE))
        if self.options.ablation:
            run = str(self.paths.run("no_ibot"))
            specs.append(EncoderSpec(run, image_size=size, name=LABEL_NO_IBOT))
        specs.append(self.random_spec())
        specs.append(replace(ssl.as_pixels(PIXEL_SIDE), name=LABEL_PIXELS))
        return specs

    def learned_specs(self) -> dict[str, EncoderSpec]:
        """The pre-trained encoders and the random one, by label (figures, report generation)."""
        specs = {s.name: s for s in self.encoder_specs() if s.name != LABEL_PIXELS}
        specs.pop(LABEL_NO_IBOT, None)
        return specs

    def eval_size(self) -> int:
        """Every encoder is evaluated at the cohort's own resolution (rounded down to whole
        patches), not at the smaller crops it was pre-trained on: small findings need the
        pixels, and a ViT takes any grid (interpolated position embeddings)."""
        patch = self.configs["pretrain"].model.patch_size
        size = max(patch, self.sizes.size // patch * patch)
        cells = parse_feature_kind(PROBE_FEATURES).grid or 1
        if size // patch < cells:
            raise ValueError(
                f"--size {self.sizes.size}: the probes average the patch tokens over "
                f"{cells} x {cells} cells, so the images need at least {cells} patches a side "
                f"({cells * patch} px)"
            )
        return size

    def random_spec(self) -> EncoderSpec:
        """A random-initialised encoder of the trained one's architecture (as ``compare
        --random-baseline`` builds it)."""
        from raddino.eval.encoders import EncoderSpec

        spec = EncoderSpec(
            str(self.paths.run("ssl")), seed=self.options.seed, image_size=self.eval_size()
        )
        return replace(spec.as_random(), name=LABEL_RANDOM)

    def encode_options(self) -> EncodeOptions:
        from raddino.features.encode import EncodeOptions

        return EncodeOptions(
            batch_size=self.sizes.encode_batch,
            num_workers=self.options.pool_workers,
            device=self.options.eval_device,
            progress=self.options.progress,
        )

    # ------------------------------------------------------------------ estimates (ETA)

    def _load_rates(self) -> None:
        """Measured rates from earlier markers, where they were measured at the same sizes."""
        cohort = (self.runner.marker("cohort") or {}).get("result", {})
        if cohort.get("size") == self.sizes.size and cohort.get("seconds_per_image"):
            self.rates.synth_seconds_per_image = cohort["seconds_per_image"]
        for stage, config in self.configs.items():
            run = self.runner.marker(stage) or {}
            measured = run.get("result", {}).get("seconds_per_step")
            if measured and run.get("inputs", {}).get("config") == self.config_inputs(config):
                self.rates.pretrain_seconds_per_step[stage] = measured
        evaluation = (self.runner.marker("evaluate") or {}).get("result", {})
        if evaluation.get("size") == self.sizes.size:
            self.rates.eval_seconds_per_image = evaluation.get("seconds_per_image")
        reports = self.runner.marker("reports") or {}
        if reports.get("inputs", {}).get("sizes") == self.report_inputs():
            self.rates.report_seconds = reports.get("seconds")

    # first guesses until this machine's rates are measured: raddino.demo.first_guess

    def estimate_cohort(self) -> float:
        per_image = self.rates.synth_seconds_per_image
        if per_image:
            return self.sizes.images * per_image
        return first_guess.synth_seconds(
            self.sizes.images, self.sizes.size, self.options.pool_workers
        )

    def estimate_pretrain(self, stage: str) -> float:
        config = self.configs[stage]
        rates = self.rates.pretrain_seconds_per_step
        per_step = first_guess.pretrain_seconds_per_step(config)
        if stage in rates:
            per_step = rates[stage]
        elif "pretrain" in rates:  # the image-only stage's rate, scaled by compute
            per_step *= rates["pretrain"] / first_guess.pretrain_seconds_per_step(
                self.configs["pretrain"]
            )
        return config.train.steps * per_step

    def estimate_evaluate(self) -> float:
        specs = self.encoder_specs()
        per_image = self.rates.eval_seconds_per_image
        if per_image:
            return len(specs) * self.sizes.images * per_image + 10
        cost = len(specs) - 1 + first_guess.PIXELS_EVAL_COST
        return first_guess.eval_seconds(self.sizes.images, cost, self.sizes.seg_epochs)

    def estimate_reports(self) -> float:
        r = self.sizes.report
        per_encoder = first_guess.report_seconds(r.steps * r.batch_size, r.test_rows)
        return self.rates.report_seconds or len(self.learned_specs()) * per_encoder

    # ------------------------------------------------------------------ stages

    def stages(self) -> list[Stage]:
        from raddino.data.synth import RENDER_VERSION

        o, s = self.options, self.sizes
        reports_on, reason = self.reports_enabled()
        evaluate_needs = (
            "cohort",
            "pretrain",
            *(("pretrain_language",) if o.language else ()),
            *(("pretrain_no_ibot",) if o.ablation else ()),
        )
        return [
            Stage(
                "cohort",
                self.run_cohort,
                {"synth": _jsonable(self.synth_config()), "render_version": RENDER_VERSION},
                estimate=self.estimate_cohort,
            ),
            Stage(
                "pretrain",
                lambda ctx: self.run_pretrain(ctx, "pretrain"),
                {"config": self.config_inputs(self.configs["pretrain"])},
                needs=("cohort",),
                estimate=lambda: self.estimate_pretrain("pretrain"),
            ),
            Stage(
                "pretrain_language",
                lambda ctx: self.run_pretrain(ctx, "pretrain_language"),
                {"config": self.language_inputs()},
                needs=("cohort",),
                enabled=o.language,
                reason="--no-language",
                estimate=lambda: self.estimate_pretrain("pretrain_language"),
            ),
            Stage(
                "pretrain_no_ibot",
                lambda ctx: self.run_pretrain(ctx, "pretrain_no_ibot"),
                {"config": self.config_inputs(self.configs["pretrain_no_ibot"])},
                needs=("cohort",),
                enabled=o.ablation,
                reason="off unless --ablation",
                estimate=lambda: self.estimate_pretrain("pretrain_no_ibot"),
            ),
            Stage(
                "evaluate",
                self.run_evaluate,
                {
                    "encoders": [spec.label for spec in self.encoder_specs()],
                    "seed": o.seed,
                    "bootstrap": s.bootstrap,
                    "seg_epochs": s.seg_epochs,
                    "structures": list(STRUCTURES),
                    "features": PROBE_FEATURES,
                    "image_size": self.eval_size(),
                },
                needs=evaluate_needs,
                estimate=self.estimate_evaluate,
            ),
            Stage(
                "reports",
                self.run_reports,
                {
                    "sizes": self.report_inputs(),
                    "seed": o.seed,
                    "image_size": self.eval_size(),
                    "encoders": list(self.learned_specs()),
                },
                needs=("cohort", "pretrain", *(("pretrain_language",) if o.language else ())),
                enabled=reports_on,
                reason=reason,
                estimate=self.estimate_reports,
            ),
            Stage(
                "figures",
                self.run_figures,
                {"seed": o.seed},
                needs=(*evaluate_needs, "evaluate"),
                estimate=lambda: 20.0,
            ),
            Stage(
                "report",
                self.run_report,
                {"reports": reports_on, "options": self.option_summary()},
                needs=(
                    *evaluate_needs,
                    "evaluate",
                    *(("reports",) if reports_on else ()),
                    "figures",
                ),
                estimate=lambda: 2.0,
            ),
        ]

    def report_inputs(self) -> dict:
        return _jsonable(self.sizes.report)

    def language_inputs(self) -> dict | None:
        config = self.configs.get("pretrain_language")
        return None if config is None else self.config_inputs(config)

    def reports_enabled(self) -> tuple[bool, str]:
        if not self.options.reports:
            return False, "--no-reports"
        import importlib.util

        missing = [m for m in ("transformers", "peft") if importlib.util.find_spec(m) is None]
        if missing:
            return False, f"needs {' and '.join(missing)}: pip install 'raddino[report]'"
        return True, ""

    def option_summary(self) -> dict:
        o = self.options
        return {
            "images": self.sizes.images,
            "size": self.sizes.size,
            "seed": o.seed,
            "config": str(o.config),
            "language_config": str(o.language_config) if o.language else "none",
            "steps": self.configs["pretrain"].train.steps,
            "overrides": list(o.overrides),
            "ablation": o.ablation,
            "quick": o.quick,
            "bootstrap": self.sizes.bootstrap,
        }

    # cohort ----------------------------------------------------------------

    def run_cohort(self, ctx: StageContext) -> dict:
        from raddino.data.manifest import read_manifest
        from raddino.data.synth import generate_cohort

        # generate_cohort renders every image again (it cannot skip finished ones), so a
        # partial cohort is simply replaced
        rmtree(self.paths.cohort)
        started = time.perf_counter()
        summary = generate_cohort(
            self.paths.cohort,
            self.synth_config(),
            workers=self.options.pool_workers,
            progress=self.options.progress,
        )
        seconds = time.perf_counter() - started
        self.rates.synth_seconds_per_image = seconds / summary.images
        splits: dict[str, int] = {}
        for row in read_manifest(self.paths.manifest):
            splits[row["split"]] = splits.get(row["split"], 0) + 1
        return {
            "images": summary.images,
            "size": self.sizes.size,
            "positives": summary.positives,
            "splits": splits,
            "seconds_per_image": seconds / summary.images,
        }

    # pre-training ------------------------------------------------------------

    def run_pretrain(self, ctx: StageContext, stage: str) -> dict:
        from raddino.demo.pretraining import pretrain_run

        result = pretrain_run(
            self.configs[stage], self.paths, RUNS[stage], ctx.resuming, self.options.progress
        )
        if result["seconds_per_step"]:
            self.rates.pretrain_seconds_per_step[stage] = result["seconds_per_step"]
        return result

    # evaluation and report generation ---------------------------------------------

    def run_evaluate(self, ctx: StageContext) -> dict:
        from raddino.demo.evaluation import evaluate_encoders

        o, s = self.options, self.sizes
        rmtree(self.paths.evaluation)  # encoded features stay cached in OUT/features
        specs = self.encoder_specs()
        started = time.perf_counter()
        summary = evaluate_encoders(
            specs, self.paths, self.encode_options(), s, seed=o.seed, device=o.eval_device
        )
        config = self.configs["pretrain"]
        # the trainer seeds its initial weights with train.seed, the baseline with --seed
        summary["random_is_start"] = config.train.seed == o.seed and not config.model.init
        write_json_atomic(self.paths.eval_summary, summary)
        self.rates.eval_seconds_per_image = (time.perf_counter() - started) / (
            len(specs) * s.images
        )
        return {
            "size": s.size,
            "seconds_per_image": self.rates.eval_seconds_per_image,
            "headline": summary["headline"],
            "dropped_targets": sorted(summary["dropped_targets"]),
        }

    def run_reports(self, ctx: StageContext) -> dict:
        from raddino.demo.report_generation import train_and_score

        if not ctx.resuming:
            rmtree(self.paths.reports)
        started = time.perf_counter()
        summary = train_and_score(
            self.learned_specs(),
            self.paths,
            self.sizes.report,
            self.encode_options(),
            seed=self.options.seed,
            device=self.options.eval_device,
        )
        self.rates.report_seconds = time.perf_counter() - started
        return {label: _report_headline(s) for label, s in summary["scores"].items()}

    # figures and the report ------------------------------------------------------

    def run_figures(self, ctx: StageContext) -> dict:
        from raddino.demo.figures import make_figures

        rmtree(self.paths.figures)
        runs = {LABEL_SSL: self.paths.run("ssl")}  # loss curves: the image-only recipe's
        if self.options.ablation:
            runs[LABEL_NO_IBOT] = self.paths.run("no_ibot")
        result = make_figures(self.paths, runs, self.learned_specs(), seed=self.options.seed)
        write_json_atomic(self.paths.figures / "figures.json", result)
        return {"figures": [f["path"] for f in result["figures"]], "notes": result["notes"]}

    def run_report(self, ctx: StageContext) -> dict:
        from raddino.demo.document import write_report

        enabled, reason = self.reports_enabled()
        md, html = write_report(
            self.paths, ctx.markers, self.option_summary(), self.configs, "" if enabled else reason
        )
        return {
            "markdown": relative_to(md, self.paths.root),
            "html": relative_to(html, self.paths.root),
        }

    # ------------------------------------------------------------------ running

    def run(self) -> list[StageOutcome]:
        """Run the stages while holding the demo folder's output lock (one demo per folder)."""
        return run_holding_lock(self.runner, self.stages(), self.paths.root, self.paths.timings)


def _report_headline(scores: dict) -> dict:
    clinical = scores["clinical"]
    base = scores.get("baseline_most_common_report", {})
    return {
        "bleu4": scores["bleu4"],
        "rougeL": scores["rougeL"],
        "clinical_f1_micro": clinical["micro"]["f1"],
        "baseline_clinical_f1_micro": base.get("clinical", {}).get("micro", {}).get("f1"),
    }


def _jsonable(value: object) -> dict:
    return asdict(value)  # type: ignore[arg-type]


def run_demo(options: DemoOptions) -> tuple[Demo, list[StageOutcome]]:
    """Run (or resume) the demo in ``options.out``; returns the demo and what each stage did."""
    demo = Demo(options)
    return demo, demo.run()
