"""``raddino study``: a declarative study (arms of pre-training settings, the evaluations to run
on each) run through the existing engine, cached stage by stage, with a paired table, plots and
a self-contained report.

Modules, in the order data flows through them: ``spec`` (what a study is), ``reader`` (the
study file, read strictly), ``options`` (how to run it, where it writes), ``plan`` (arms ->
final configs, images, shared pre-trainings, first guesses of the time), ``evaluation`` (one
arm's evaluation, stored with its per-resample samples), ``table`` (paired differences from the
reference arm), ``figures`` (trend and forest plots), ``document`` (REPORT.md, report.html),
``pipeline`` (the stages). See ``docs/studies.md``.
"""

from raddino.study.reader import load_study
from raddino.study.spec import StudyFileError, StudySpec, resolve_study_path, study_names

__all__ = ["StudyFileError", "StudySpec", "load_study", "resolve_study_path", "study_names"]
