"""Score a predictions file against a manifest's reports (``raddino report eval``)."""

from __future__ import annotations

import json
from pathlib import Path

from raddino.data.manifest import read_manifest
from raddino.eval.report_generation.generate import read_predictions
from raddino.eval.report_generation.metrics import evaluate_reports, most_common_report

# Model-based metrics need weights nobody can download here; they are reported as skipped.
MODEL_METRICS = {
    "chexbert_f1": "needs the CheXbert checkpoint (chexbert.pth); not implemented yet",
    "radgraph_f1": "needs the RadGraph model weights; not implemented yet",
}


def _key(path: str) -> str:
    return str(Path(path).resolve())


def score_predictions(
    predictions_file: str | Path,
    manifest: str | Path,
    out_file: str | Path | None = None,
    uncertain_as_positive: bool = False,
    baseline: bool = True,
) -> dict[str, object]:
    """Metrics of the predicted rows that have a reference report in the manifest.

    With ``baseline``, also scores the most common training report (manifest rows of split
    ``train``, or all references without splits) predicted for every row.
    """
    # paths compared resolved: the two files may name the same images from different folders
    predicted = {_key(p): text for p, text in read_predictions(predictions_file).items()}
    rows = read_manifest(manifest)
    if rows and "report" not in rows[0]:
        raise ValueError(f"{manifest}: no 'report' column to compare with")
    reference = {_key(r["path"]): (r.get("report") or "").strip() for r in rows}
    paths = [p for p in predicted if reference.get(p)]
    if not paths:
        raise ValueError(
            f"{predictions_file}: no predicted path has a reference report in {manifest}"
        )
    refs = [reference[p] for p in paths]
    result: dict[str, object] = {
        "predictions": str(predictions_file),
        "manifest": str(manifest),
        "unmatched_predictions": len(predicted) - len(paths),
        **evaluate_reports([predicted[p] for p in paths], refs, None, uncertain_as_positive),
    }
    if baseline:
        train = [
            (r.get("report") or "").strip()
            for r in rows
            if (r.get("split") or "train") == "train" and (r.get("report") or "").strip()
        ]
        text = most_common_report(train or refs)
        scores = evaluate_reports([text] * len(refs), refs, None, uncertain_as_positive)
        result["baseline_most_common_report"] = {"report": text, **scores}
    result["skipped"] = dict(MODEL_METRICS)
    if out_file is not None:
        Path(out_file).parent.mkdir(parents=True, exist_ok=True)
        Path(out_file).write_text(json.dumps(result, indent=2))
    return result
