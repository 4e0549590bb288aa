"""The stages of ``raddino study``: data -> one pre-training per distinct arm -> one evaluation
per arm -> the paired table -> plots -> REPORT.md / report.html.

Stages run through the demo's cached stage runner (:mod:`raddino.demo.stages`): a finished stage
is skipped while its inputs stay the same, a killed one runs again (pre-training continues from
its newest checkpoint), and an arm added to the study file adds only its own stages (and the
cheap table, plots and report after them). Each stage calls the library function the matching
command calls (``synth``, ``pretrain``, the evaluation protocols of ``compare``).
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import shutil
import time
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from raddino.demo.stages import (
    Stage,
    StageContext,
    StageOutcome,
    StageRunner,
    read_json,
    run_holding_lock,
    stage_log,
    write_json_atomic,
)
from raddino.study import plan as planning
from raddino.study import ranks
from raddino.study.options import StudyOptions, StudyPaths
from raddino.study.plan import ArmPlan
from raddino.study.spec import ManifestData, SyntheticData, synth_config

if TYPE_CHECKING:
    from raddino.features.encode import EncodeOptions
    from raddino.study.table import StudyTable


class Study:
    """The stages of one ``raddino study STUDY --out DIR`` and what they share."""

    def __init__(self, options: StudyOptions) -> None:
        self.options = options
        self.spec = options.spec
        manifest = self.spec.data.path if isinstance(self.spec.data, ManifestData) else None
        self.paths = StudyPaths(Path(options.out), manifest)
        device = options.eval_device
        self.available = planning.train_rows_count(self.spec)
        self.plans = planning.plan_arms(self.spec, self.available, device, options.workers)
        self.runner = StageRunner(self.paths.root, log=stage_log)
        self.calibration: dict[str, float] = {}  # measured / guessed seconds, per kind of stage
        self._load_calibration()

    # ------------------------------------------------------------------ plan

    def plan(self, name: str) -> ArmPlan:
        return next(p for p in self.plans if p.name == name)

    def pretrainings(self) -> dict[str, ArmPlan]:
        """Pre-training stage -> the first arm that uses it (its config and images)."""
        stages: dict[str, ArmPlan] = {}
        for p in self.plans:
            if p.pretrain is not None:
                stages.setdefault(p.pretrain, p)
        return stages

    def arm_settings(self) -> dict[str, dict]:
        """What each arm is, for the table and the report."""
        settings = {}
        for p in self.plans:
            settings[p.name] = {
                "group": ", ".join(p.arm.groups),
                "config": p.arm.config.name,
                "recipe": p.config.recipe,
                "overrides": list(p.arm.overrides),
                "train_images": p.train_images,
                "train_fraction": None if p.arm.random_init else p.arm.train_fraction,
                "epochs": p.arm.epochs,
                "steps": p.steps,
                "pretrain_size": p.pretrain_size,
                "image_size": p.image_size,
                "random_init": p.arm.random_init,
                "pretraining": p.pretrain,
            }
        return settings

    def encode_options(self) -> EncodeOptions:
        from raddino.features.encode import EncodeOptions

        o = self.options
        return EncodeOptions(
            batch_size=32,
            num_workers=o.pool_workers,
            device=o.eval_device,
            dtype=o.dtype,
            progress=o.progress,
        )

    def evaluation_inputs(self, plan: ArmPlan) -> dict:
        from raddino.precision import dtype_name

        e, o = self.spec.evaluation, self.options
        inputs = {
            "targets": [list(t) for t in e.targets],
            "structures": list(e.structures),
            "protocols": list(e.protocols),
            "features": e.features,
            "bootstrap": e.bootstrap,
            "seg_epochs": e.seg_epochs,
            "seed": self.spec.seed,
            "image_size": plan.image_size,
            "dtype": dtype_name(o.dtype),
        }
        if plan.arm.random_init:
            inputs["random_init"] = planning.config_inputs(plan.config)["model"]
        return inputs

    # ------------------------------------------------------------------ estimates (ETA)

    def _load_calibration(self) -> None:
        for kind in ("data", "pretrain", "evaluate"):
            ratios = []
            for path in sorted(self.runner.folder.glob(f"{kind}*.json")):
                marker = read_json(path) or {}
                guess = marker.get("result", {}).get("guess_seconds")
                if guess and marker.get("seconds") and not path.name.endswith(".started.json"):
                    ratios.append(marker["seconds"] / guess)
            if ratios:
                self.calibration[kind] = sum(ratios) / len(ratios)

    def _calibrate(self, kind: str, seconds: float, guess: float) -> None:
        if guess > 0:
            self.calibration[kind] = seconds / guess

    def guess(self, kind: str, name: str = "") -> float:
        """First guess of a stage's seconds (before calibration)."""
        if kind == "data":
            return planning.guess_data_seconds(self.spec, self.options.pool_workers)
        if kind == "pretrain":
            return planning.guess_pretrain_seconds(self.pretrainings()[name].config)
        images = planning.data_images(self.spec)
        return planning.guess_eval_seconds(self.plan(name), images, self.spec.evaluation.seg_epochs)

    def estimate(self, kind: str, name: str = "") -> float:
        return self.guess(kind, name) * self.calibration.get(kind, 1.0)

    # ------------------------------------------------------------------ stages

    def stages(self) -> list[Stage]:
        spec, processes = self.spec, ranks.world_size()
        stages = [
            Stage("data", self.run_data, self.data_inputs(), estimate=lambda: self.estimate("data"))
        ]
        for name, plan in self.pretrainings().items():
            stages.append(
                Stage(
                    name,
                    lambda ctx, name=name: self.run_pretrain(ctx, name),
                    {
                        "config": planning.config_inputs(plan.config),
                        "images": plan.train_images,
                        "selection_seed": spec.seed,
                    }
                    # under torchrun the global batch (and so the learning rate) grows
                    | ({"processes": processes} if processes > 1 else {}),
                    needs=("data",),
                    estimate=lambda name=name: self.estimate("pretrain", name),
                )
            )
        evaluations = []
        for plan in self.plans:
            stage = f"evaluate_{plan.name}"
            evaluations.append(stage)
            stages.append(
                Stage(
                    stage,
                    lambda ctx, name=plan.name: self.run_evaluate(ctx, name),
                    self.evaluation_inputs(plan),
                    needs=("data", *((plan.pretrain,) if plan.pretrain else ())),
                    estimate=lambda name=plan.name: self.estimate("evaluate", name),
                )
            )
        table_inputs = {
            "arms": [p.name for p in self.plans],
            "reference": spec.reference,
            "macros": {k: list(v) for k, v in spec.evaluation.macros.items()},
            "metrics": [str(m) for m in spec.metrics],
            "settings": self.arm_settings(),
        }
        plots = [
            dataclasses.asdict(p) | {"metrics": [str(m) for m in p.metrics]} for p in spec.plots
        ]
        stages += [
            Stage(
                "table",
                self.run_table,
                table_inputs,
                needs=tuple(evaluations),
                estimate=lambda: 2.0,
            ),
            Stage(
                "plots", self.run_plots, {"plots": plots}, needs=("table",), estimate=lambda: 5.0
            ),
            Stage(
                "report",
                self.run_report,
                {"study": spec.path.read_text(encoding="utf-8"), "name": spec.name},
                needs=("table", "plots"),
                estimate=lambda: 2.0,
            ),
        ]
        return stages

    def data_inputs(self) -> dict:
        if isinstance(self.spec.data, SyntheticData):
            from raddino.data.synth import RENDER_VERSION

            config = synth_config(self.spec.data, self.spec.seed)
            return {"synth": dataclasses.asdict(config), "render_version": RENDER_VERSION}
        digest = hashlib.sha256(self.spec.data.path.read_bytes()).hexdigest()
        return {"manifest": str(self.spec.data.path), "sha256": digest}

    # data ---------------------------------------------------------------------

    def run_data(self, ctx: StageContext) -> dict:
        from raddino.data.manifest import read_manifest

        guess = self.guess("data")
        started = time.perf_counter()
        if isinstance(self.spec.data, SyntheticData):
            from raddino.data.synth import generate_cohort

            # generate_cohort renders every image again (it cannot skip finished ones), so a
            # partial cohort is simply replaced
            if self.paths.cohort.exists():
                shutil.rmtree(self.paths.cohort)
            generate_cohort(
                self.paths.cohort,
                synth_config(self.spec.data, self.spec.seed),
                workers=self.options.pool_workers,
                progress=self.options.progress,
            )
        splits: dict[str, int] = {}
        for row in read_manifest(self.paths.manifest):
            split = (row.get("split") or "").strip().lower() or "none"
            splits[split] = splits.get(split, 0) + 1
        seconds = time.perf_counter() - started
        self._calibrate("data", seconds, guess)
        return {"manifest": str(self.paths.manifest), "splits": splits, "guess_seconds": guess}

    # pre-training ----------------------------------------------------------------

    def run_pretrain(self, ctx: StageContext, name: str) -> dict:
        from raddino.demo.pretraining import pretrain_run, write_train_list

        plan = self.pretrainings()[name]
        guess = self.guess("pretrain", name)
        started = time.perf_counter()
        root = self.paths.manifest.parent
        seed = self.spec.seed
        images = write_train_list(
            self.paths,
            out=self.paths.arm_train_list(plan.name),
            select=lambda rows: planning.select_subset(rows, plan.train_images, seed, root),
        )
        result = pretrain_run(
            plan.config,
            self.paths,
            plan.name,
            ctx.resuming,
            self.options.progress,
            images,
            ready=lambda: ranks.announce(name),  # the other processes join this run
        )
        self._calibrate("pretrain", time.perf_counter() - started, guess)
        return {**result, "train_images": plan.train_images, "guess_seconds": guess}

    def join_pretrain(self, name: str) -> None:
        """A process other than 0 under torchrun: its share of pre-training stage ``name``
        (process 0 has written the image list and cleared or kept the run directory)."""
        from raddino.ssl.trainer import pretrain

        plan = self.pretrainings()[name]
        train_list = self.paths.arm_train_list(plan.name)
        pretrain(plan.config, [str(train_list)], self.paths.run(plan.name), True, False)

    # evaluation ---------------------------------------------------------------------

    def encoder_spec(self, plan: ArmPlan):
        """The arm's encoder: its pre-training's run, or random weights of its architecture
        (drawn with the study seed, written as a Hugging Face directory under ``runs/``)."""
        from raddino.eval.encoders import EncoderSpec

        if plan.pretrain is not None:
            run = self.paths.run(self.pretrainings()[plan.pretrain].name)
            return EncoderSpec(str(run), image_size=plan.image_size, name=plan.name)
        folder = self.paths.random_encoder(plan.name)
        write_random_encoder(plan.config, self.spec.seed, folder)
        return EncoderSpec(str(folder), image_size=plan.image_size, name=plan.name)

    def run_evaluate(self, ctx: StageContext, name: str) -> dict:
        from raddino.demo.evaluation import usable_targets
        from raddino.eval.probe import ProbeConfig
        from raddino.eval.segment import SegmentConfig
        from raddino.study.evaluation import evaluate_arm, save_arm_result

        plan, e = self.plan(name), self.spec.evaluation
        guess = self.guess("evaluate", name)
        started = time.perf_counter()
        folder = self.paths.arm_evaluation(name)
        if folder.exists():
            shutil.rmtree(folder)  # encoded features stay cached in OUT/features
        targets, dropped = (
            usable_targets(self.paths, self.spec.seed, e.targets) if e.targets else ([], {})
        )
        if not targets and not e.structures:
            raise ValueError(f"no target can be probed: {dropped}")
        device, seed = self.options.eval_device, self.spec.seed
        result = evaluate_arm(
            name,
            self.encoder_spec(plan),
            self.paths.manifest,
            folder,
            self.paths.features,
            self.encode_options(),
            targets,
            e.structures,
            e.features,
            ProbeConfig(protocols=e.protocols, n_resamples=e.bootstrap, seed=seed, device=device),
            SegmentConfig(
                epochs=e.seg_epochs,
                n_resamples=e.bootstrap,
                seed=seed,
                device=device,
                progress=self.options.progress,
            ),
        )
        result.notes += [f"target {t!r} left out: {why}" for t, why in dropped.items()]
        save_arm_result(result, folder)
        self._calibrate("evaluate", time.perf_counter() - started, guess)
        return {
            "dropped_targets": sorted(dropped),
            "metrics": {
                str(k): _value(result.row((k.task, k.target, k.metric)))
                for k in self.spec.metrics
                if result.row((k.task, k.target, k.metric)) is not None
            },
            "guess_seconds": guess,
        }

    # table, plots, report ------------------------------------------------------------

    def table(self) -> StudyTable:
        from raddino.study.evaluation import load_arm_result
        from raddino.study.table import build_table

        results = [load_arm_result(self.paths.arm_evaluation(p.name)) for p in self.plans]
        return build_table(results, self.spec.reference, self.spec.evaluation.macros)

    def run_table(self, ctx: StageContext) -> dict:
        from raddino.study.table import write_table

        table = self.table()
        title = f"Study {self.spec.name}: table"
        written = write_table(table, self.paths.root, title, self.spec.metrics, self.arm_settings())
        return {k: os.path.relpath(v, self.paths.root) for k, v in written.items()}

    def run_plots(self, ctx: StageContext) -> dict:
        from raddino.study.figures import draw_plots

        if self.paths.plots.exists():
            shutil.rmtree(self.paths.plots)
        figures, notes = draw_plots(self.spec, self.plans, self.table(), self.paths.plots)
        listing = {"figures": figures, "notes": notes}
        write_json_atomic(self.paths.plots / "plots.json", listing)
        return {"figures": [f["png"] for f in figures], "notes": notes}

    def run_report(self, ctx: StageContext) -> dict:
        from raddino.study.document import write_study_report

        listing = read_json(self.paths.plots / "plots.json") or {"figures": [], "notes": []}
        md, html = write_study_report(self, self.table(), listing, ctx.markers)
        return {
            "markdown": os.path.relpath(md, self.paths.root),
            "html": os.path.relpath(html, self.paths.root),
        }

    # ------------------------------------------------------------------ running

    def run(self) -> list[StageOutcome]:
        """Run the stages while holding the study folder's output lock (one writer per folder).

        Under torchrun process 0 runs the stages and every process joins each pre-training
        (:mod:`raddino.study.ranks`); the other processes return no outcomes."""
        if ranks.world_size() <= 1:
            return run_holding_lock(self.runner, self.stages(), self.paths.root, self.paths.timings)
        with ranks.study_group(self.options.eval_device):
            if ranks.rank() != 0:
                ranks.follow(self.join_pretrain)
                return []
            try:
                return run_holding_lock(
                    self.runner, self.stages(), self.paths.root, self.paths.timings
                )
            finally:
                ranks.announce(None)

    def planned_seconds(self) -> float:
        """Seconds of work left (0 when every stage is cached)."""
        return self.runner.planned_seconds(self.stages(), {})


def _value(row) -> float | None:
    value = row.estimate.value
    return None if value != value else float(value)


def write_random_encoder(config, seed: int, folder: Path) -> Path:
    """A randomly initialised encoder of ``config``'s architecture, drawn with ``seed``, as a
    Hugging Face directory with a processor at the config's global-crop size."""
    from raddino.data.preprocess import PreprocessConfig
    from raddino.models.encoder import RadDino
    from raddino.ssl.trainer import backbone_config

    size = config.crops.global_size
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = RadDino.from_config(
            backbone_config(config),
            PreprocessConfig(shortest_edge=size, crop_height=size, crop_width=size),
        )
    if folder.exists():
        shutil.rmtree(folder)
    return model.save_pretrained(folder)


def run_study(options: StudyOptions) -> tuple[Study, list[StageOutcome]]:
    study = Study(options)
    return study, study.run()
