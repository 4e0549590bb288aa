"""Report metrics: BLEU-1/4 (sacrebleu), ROUGE-L (rouge-score), clinical P/R/F1 over findings.

Clinical efficacy compares the findings the rule-based labeller (:mod:`.labeller`) extracts from
each generated report with those of its reference report: a finding counts as present when
labelled positive (``uncertain_as_positive`` also counts uncertain mentions). Micro scores pool
every (report, finding) decision; macro scores average the per-finding F1 over findings present
in the references or the predictions.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from raddino.eval.report_generation.labeller import FINDINGS, POSITIVE, UNCERTAIN, label_reports


def bleu_scores(predictions: Sequence[str], references: Sequence[str]) -> dict[str, float]:
    """Corpus BLEU-1 and BLEU-4 (0-100, sacrebleu's 13a tokenizer)."""
    from sacrebleu.metrics import BLEU

    refs = [list(references)]
    return {
        "bleu1": float(BLEU(max_ngram_order=1).corpus_score(list(predictions), refs).score),
        "bleu4": float(BLEU(max_ngram_order=4).corpus_score(list(predictions), refs).score),
    }


def rouge_l(predictions: Sequence[str], references: Sequence[str]) -> float:
    """Mean ROUGE-L F-measure (0-1) of prediction/reference pairs."""
    from rouge_score.rouge_scorer import RougeScorer

    scorer = RougeScorer(["rougeL"], use_stemmer=False)
    scores = [
        scorer.score(r, p)["rougeL"].fmeasure for p, r in zip(predictions, references, strict=True)
    ]
    return float(np.mean(scores)) if scores else 0.0


def present_matrix(
    labels: Sequence[dict[str, int | None]], findings: Sequence[str], uncertain_as_positive: bool
) -> np.ndarray:
    """(N, F) bool: finding f is present in report n."""
    present = {POSITIVE, UNCERTAIN} if uncertain_as_positive else {POSITIVE}
    return np.array([[lab.get(f) in present for f in findings] for lab in labels], dtype=bool)


def precision_recall_f1(tp: float, fp: float, fn: float) -> tuple[float, float, float]:
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return precision, recall, f1


def clinical_scores(
    predicted: np.ndarray, reference: np.ndarray, findings: Sequence[str]
) -> dict[str, object]:
    """Micro/macro precision, recall, F1 of (N, F) bool matrices, and per-finding scores."""
    tp = (predicted & reference).sum(0)
    fp = (predicted & ~reference).sum(0)
    fn = (~predicted & reference).sum(0)
    per_finding = {}
    for i, name in enumerate(findings):
        if tp[i] + fp[i] + fn[i] == 0:
            continue
        p, r, f = precision_recall_f1(tp[i], fp[i], fn[i])
        per_finding[name] = {
            "precision": p,
            "recall": r,
            "f1": f,
            "support": int(reference[:, i].sum()),
        }
    micro = precision_recall_f1(tp.sum(), fp.sum(), fn.sum())
    macro = [
        np.mean([s[k] for s in per_finding.values()]) if per_finding else 0.0
        for k in ("precision", "recall", "f1")
    ]
    return {
        "micro": dict(zip(("precision", "recall", "f1"), map(float, micro), strict=True)),
        "macro": dict(zip(("precision", "recall", "f1"), map(float, macro), strict=True)),
        "per_finding": per_finding,
    }


def evaluate_reports(
    predictions: Sequence[str],
    references: Sequence[str],
    findings: Sequence[str] | None = None,
    uncertain_as_positive: bool = False,
) -> dict[str, object]:
    """Lexical and clinical scores of generated reports against their references."""
    if len(predictions) != len(references):
        raise ValueError(f"{len(predictions)} predictions for {len(references)} references")
    if not predictions:
        raise ValueError("no reports to evaluate")
    names = list(findings) if findings is not None else list(FINDINGS)
    pred = present_matrix(label_reports(predictions, names), names, uncertain_as_positive)
    ref = present_matrix(label_reports(references, names), names, uncertain_as_positive)
    return {
        "reports": len(predictions),
        **bleu_scores(predictions, references),
        "rougeL": rouge_l(predictions, references),
        "clinical": clinical_scores(pred, ref, names),
    }


def most_common_report(reports: Sequence[str]) -> str:
    """The baseline prediction: the most frequent report text; when no text repeats (reports
    phrased freely), the first report with the most frequent set of positive findings."""
    texts, counts = np.unique(np.asarray(reports, dtype=object), return_counts=True)
    if counts.max() > 1:
        best = set(texts[counts == counts.max()])
        return next(r for r in reports if r in best)
    sets = [
        frozenset(k for k, v in labels.items() if v == POSITIVE)
        for labels in label_reports(reports)
    ]
    frequency = {s: sets.count(s) for s in set(sets)}
    top = max(frequency.values())
    return next(r for r, s in zip(reports, sets, strict=True) if frequency[s] == top)
