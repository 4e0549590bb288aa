"""Evaluation of frozen encoders with the paper's protocols.

One idea per module:

* ``encoders``: which encoder (weights, or a random-initialised baseline of their architecture).
* ``pixels``: the raw-pixel baseline (``pixels:SIDE``), features without any encoder.
* ``feature_cache``: features once, a cached features store per encoder and settings.
* ``targets``, ``splits``: probe targets and train/val/test splits (by patient) from a manifest.
* ``logistic``, ``ridge``, ``knn``: the probes; ``probe``: the protocol; ``probe_manifest``: the
  ``raddino probe`` pipeline and its outputs.
* ``metrics``, ``bootstrap``: AUROC, AUPRC, MAE, R², Pearson r, Dice, IoU with patient-level
  bootstrap intervals; ``caveats``: the notes and warnings a result can carry (few cases, undefined
  resamples, a clamped k, a strength at the edge of its grid).
* ``segmentation_heads``: linear and UPerNet heads; ``seg_data``: masks and patch-token maps;
  ``segment``: training and scoring; ``overlays``: PNGs; ``segment_manifest``: ``raddino segment``.
* ``compare``: several encoders in one table with paired differences; ``tables``: Markdown/JSON.
* ``fit_threads``: CPU threads for the fits.
* ``report_generation/``: radiology report generation (frozen encoder, adapter, language model).
"""
