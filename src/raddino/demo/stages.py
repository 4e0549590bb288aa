"""A small stage runner: named stages, cached by a fingerprint of their inputs, resumable.

Each stage writes its outputs, then ``OUT/stages/<name>.json`` (atomically), the marker::

    {"stage", "fingerprint", "inputs", "needs": {stage: run_id}, "run_id", "finished",
     "seconds", "result"}

A stage whose marker holds the fingerprint it would have now is skipped. The fingerprint hashes
the stage's ``inputs`` (the options that change its outputs) and the ``run_id`` of every stage it
``needs``: when a stage runs again, every stage that needs it runs again too, even after a kill.
While a stage runs, ``OUT/stages/<name>.started.json`` records its fingerprint: a stage killed
mid-way has no marker and runs again, and :attr:`StageContext.resuming` tells it whether its
partial outputs belong to the same inputs (so it may continue them) or must be discarded.
"""

from __future__ import annotations

import hashlib
import json
import sys
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from raddino.atomic import write_atomic
from raddino.output_lock import OutputLock

STAGES_DIR = "stages"


class StageError(RuntimeError):
    """A stage raised; the message names the stage. Finished stages keep their markers."""

    def __init__(self, stage: str, seconds: float, error: BaseException) -> None:
        super().__init__(
            f"stage '{stage}' failed after {format_duration(seconds)}: "
            f"{type(error).__name__}: {error}"
        )
        self.stage = stage
        self.error = error


@dataclass
class StageContext:
    """What a running stage knows about itself."""

    name: str
    fingerprint: str
    resuming: bool  # an interrupted attempt with the same fingerprint left partial outputs
    markers: dict[str, dict]  # markers of the stages finished so far (this run or cached)


@dataclass
class Stage:
    """One step of a pipeline.

    run: ``run(context) -> result`` (a JSON-able dict kept in the marker; may be None).
    inputs: the JSON-able options that change the stage's outputs (not workers, not progress).
    needs: stages whose outputs this one reads. A disabled stage is reported and not run; it
    should not appear in other stages' ``needs``.
    estimate: planned seconds (called when the ETA is printed, so it may use measured rates).
    """

    name: str
    run: Callable[[StageContext], dict | None]
    inputs: dict[str, Any] = field(default_factory=dict)
    needs: tuple[str, ...] = ()
    enabled: bool = True
    reason: str = ""  # why the stage is disabled
    estimate: Callable[[], float] = lambda: 0.0


@dataclass
class StageOutcome:
    name: str
    status: str  # "ran" | "cached" | "disabled"
    seconds: float  # this invocation (0 for cached stages)
    marker: dict | None
    reason: str = ""


def fingerprint(name: str, inputs: dict[str, Any], needs: dict[str, str | None]) -> str:
    """sha256 of the stage's name, inputs and the run ids of the stages it needs."""
    text = json.dumps({"stage": name, "inputs": inputs, "needs": needs}, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()


def format_duration(seconds: float) -> str:
    """``42 s``, ``3 min 05 s``, ``1 h 02 min``."""
    seconds = max(0.0, float(seconds))
    if seconds < 60:
        return f"{seconds:.1f} s" if seconds < 10 else f"{seconds:.0f} s"
    minutes, secs = divmod(round(seconds), 60)
    if minutes < 60:
        return f"{minutes} min {secs:02d} s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes:02d} min"


def read_json(path: Path) -> dict | None:
    """A JSON object from ``path``, or None when it is missing or unreadable."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def write_json_atomic(path: Path, data: object) -> Path:
    text = json.dumps(data, indent=2, sort_keys=False) + "\n"
    return write_atomic(path, lambda temp: temp.write_text(text, encoding="utf-8"))


class StageRunner:
    """Runs stages in order, skipping those whose marker matches; prints one line per event."""

    def __init__(
        self,
        out_dir: str | Path,
        log: Callable[[str], None] | None = None,
        clock: Callable[[], float] = time.perf_counter,
    ) -> None:
        self.out = Path(out_dir)
        self.folder = self.out / STAGES_DIR
        self.log = log or (lambda line: print(line, flush=True))
        self.clock = clock

    def marker_path(self, name: str) -> Path:
        return self.folder / f"{name}.json"

    def started_path(self, name: str) -> Path:
        return self.folder / f"{name}.started.json"

    def marker(self, name: str) -> dict | None:
        return read_json(self.marker_path(name))

    def fingerprint_of(self, stage: Stage, markers: dict[str, dict]) -> str:
        missing = [n for n in stage.needs if n not in markers]
        if missing:
            raise ValueError(f"stage '{stage.name}' needs {missing}, which did not run before it")
        needs = {n: markers[n].get("run_id") for n in stage.needs}
        return fingerprint(stage.name, stage.inputs, needs)

    def run(self, stages: Sequence[Stage]) -> list[StageOutcome]:
        """Run (or skip) every stage; raises :class:`StageError` naming the stage that failed."""
        names = [s.name for s in stages]
        if len(set(names)) != len(names):
            raise ValueError(f"stage names repeat: {names}")
        self.folder.mkdir(parents=True, exist_ok=True)
        markers: dict[str, dict] = {}
        outcomes: list[StageOutcome] = []
        started = self.clock()
        total = len(stages)
        planned = self.planned_seconds(stages, markers)
        self.log(f"plan: {total} stages, about {format_duration(planned)} of work to do")
        for index, stage in enumerate(stages, start=1):
            tag = f"[{index}/{total}] {stage.name}"
            if not stage.enabled:
                self.log(f"{tag}: skipped ({stage.reason or 'disabled'})")
                outcomes.append(StageOutcome(stage.name, "disabled", 0.0, None, stage.reason))
                continue
            digest = self.fingerprint_of(stage, markers)
            existing = self.marker(stage.name)
            if existing is not None and existing.get("fingerprint") == digest:
                markers[stage.name] = existing
                self.log(f"{tag}: done (cached)")
                outcomes.append(StageOutcome(stage.name, "cached", 0.0, existing))
                continue
            self.log(
                f"{tag}: start (planned {format_duration(stage.estimate())}; "
                f"elapsed {format_duration(self.clock() - started)})"
            )
            marker = self._run_one(stage, digest, markers)
            markers[stage.name] = marker
            outcomes.append(StageOutcome(stage.name, "ran", marker["seconds"], marker))
            later = stages[index:]
            eta = self.planned_seconds(later, markers)
            to_go = f"; about {format_duration(eta)} to go" if any(s.enabled for s in later) else ""
            self.log(
                f"{tag}: done in {format_duration(marker['seconds'])} "
                f"(elapsed {format_duration(self.clock() - started)}{to_go})"
            )
        return outcomes

    def planned_seconds(self, stages: Sequence[Stage], markers: dict[str, dict]) -> float:
        """Estimated seconds of the stages that will run, given the markers known now: a
        stage is cached when its marker matches, and runs when it or anything it needs runs."""
        known = dict(markers)
        seconds = 0.0
        for stage in stages:
            if not stage.enabled:
                continue
            if all(n in known for n in stage.needs):
                existing = self.marker(stage.name)
                if existing is not None and existing.get("fingerprint") == self.fingerprint_of(
                    stage, known
                ):
                    known[stage.name] = existing
                    continue
            seconds += stage.estimate()
        return seconds

    def _run_one(self, stage: Stage, digest: str, markers: dict[str, dict]) -> dict:
        started_file = self.started_path(stage.name)
        previous = read_json(started_file)
        resuming = previous is not None and previous.get("fingerprint") == digest
        self.marker_path(stage.name).unlink(missing_ok=True)  # stale: its inputs changed
        write_json_atomic(started_file, {"stage": stage.name, "fingerprint": digest})
        context = StageContext(stage.name, digest, resuming, dict(markers))
        begin = self.clock()
        try:
            result = stage.run(context)
        except KeyboardInterrupt:
            raise
        except Exception as error:
            raise StageError(stage.name, self.clock() - begin, error) from error
        seconds = self.clock() - begin
        marker = {
            "stage": stage.name,
            "fingerprint": digest,
            "inputs": stage.inputs,
            "needs": {n: markers[n].get("run_id") for n in stage.needs},
            "run_id": uuid.uuid4().hex,
            "finished": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "seconds": round(seconds, 3),
            "result": result or {},
        }
        write_json_atomic(self.marker_path(stage.name), marker)
        started_file.unlink(missing_ok=True)
        return marker


def stage_log(line: str) -> None:
    """The default progress printer: stdout, flushed (progress bars go to stderr)."""
    print(line, flush=True)
    sys.stderr.flush()


def run_holding_lock(
    runner: StageRunner, stages: Sequence[Stage], root: Path, timings: Path
) -> list[StageOutcome]:
    """Run ``stages`` while holding ``root``'s output lock (one writer per folder); write
    ``timings`` afterwards, also when a stage fails (:func:`write_timings`)."""
    with OutputLock(root):
        began = time.perf_counter()
        outcomes: list[StageOutcome] = []
        try:
            outcomes = runner.run(stages)
        finally:
            write_timings(timings, runner, stages, outcomes, time.perf_counter() - began)
    return outcomes


def write_timings(
    path: Path,
    runner: StageRunner,
    stages: Sequence[Stage],
    outcomes: Sequence[StageOutcome],
    seconds: float,
) -> Path:
    """``timings.json``: every stage with its status and seconds in this invocation and its last
    run's seconds; ``total_seconds`` (this invocation) and ``stages_seconds`` (the sum of the last
    runs: the wall time of an uninterrupted run)."""
    entries = {}
    for stage in stages:
        marker = runner.marker(stage.name)
        outcome = next((x for x in outcomes if x.name == stage.name), None)
        status = outcome.status if outcome else ("disabled" if not stage.enabled else "not run")
        entries[stage.name] = {
            "status": status,
            "seconds": outcome.seconds if outcome else 0.0,
            "last_run_seconds": marker.get("seconds") if marker else None,
            "finished": marker.get("finished") if marker else None,
        }
    total = sum(entry["last_run_seconds"] or 0.0 for entry in entries.values())
    data = {
        "total_seconds": round(seconds, 3),
        "stages_seconds": round(total, 3),
        "stages": entries,
    }
    return write_json_atomic(path, data)
