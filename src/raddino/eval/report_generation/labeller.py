"""A rule-based findings labeller for radiology reports, in the spirit of the CheXpert labeller.

Each sentence is searched for mentions of a finding (regular expressions); a mention is
**negative** when a negation cue governs it ("no", "without", "negative for", "free of",
"... is not seen", "resolved"), **uncertain** when an uncertainty cue does ("possible", "may",
"cannot be excluded", "suggestive of", "versus"), otherwise **positive**. A cue governs mentions
after it up to the end of its clause (", but", "however", ";", "."); trailing cues ("... is not
seen") govern the clause before them. A report's label per finding: positive if any mention is
positive, else uncertain if any is uncertain, else negative if mentioned, else not mentioned.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

POSITIVE, NEGATIVE, UNCERTAIN = 1, 0, -1

# finding -> mention patterns (matched on lower-case text, word-bounded)
FINDINGS: dict[str, tuple[str, ...]] = {
    "atelectasis": (r"atelecta\w*", r"collapse[ds]?", r"volume loss"),
    "cardiomegaly": (
        r"cardiomegaly",
        r"(?:heart|cardiac silhouette|cardiac shadow|heart size) (?:is |are )?"
        r"(?:mildly |moderately |markedly |severely )?(?:enlarged|large)",
        r"enlarge(?:d|ment of the) (?:heart|cardiac silhouette)",
        r"cardiac enlargement",
    ),
    "consolidation": (
        r"consolidat\w*",
        r"air ?space disease",
        r"air-space disease",
        r"air bronchograms?",
    ),
    "edema": (
        r"edema",
        r"oedema",
        r"vascular congestion",
        r"pulmonary congestion",
        r"chf",
    ),
    "pleural effusion": (r"effusions?", r"pleural fluid", r"fluid in the \w+ costophrenic"),
    "pneumonia": (r"pneumonias?", r"(?<!granulomatous )infection", r"infectious process"),
    "pneumothorax": (r"pneumothora(?:x|ces)", r"ptx"),
    "lung opacity": (r"opacit(?:y|ies)", r"opacification", r"infiltrates?", r"densit(?:y|ies)"),
    "nodule": (r"nodules?", r"nodular", r"mass(?:es)?"),
    "emphysema": (r"emphysema\w*", r"copd", r"chronic obstructive"),
    "fracture": (r"fractures?", r"fx"),
    "granuloma": (r"granulom\w*",),
    "hernia": (r"hernias?",),
    "scoliosis": (
        r"\w*scolio\w*",
        r"\w*curvature of the (?:\w+ )?spine",
        r"(?:spine|spinal) curvature",
        r"(?:dextro|levo)curvature",
    ),
    "support devices": (
        r"tubes?",
        r"(?<!pleural )lines?",
        r"drains?",
        r"catheters?",
        r"pacemakers?",
        r"picc",
        r"ports?",
        r"stents?",
        r"sternotomy wires?",
        r"clips?",
        r"wires?",
        r"devices?",
        r"tubing",
        r"leads",
        r"generator",
        r"defibrillator",
        r"hardware",
        r"staples",
        r"prosthe\w+",
        r"anchors?",
    ),
}

# "heart size is normal" and friends say "no cardiomegaly" without a negation word
NORMAL_STATEMENTS: dict[str, tuple[str, ...]] = {
    "cardiomegaly": (
        r"(?:heart|cardiac silhouette|cardiac size|heart size|cardiomediastinal silhouette|"
        r"cardiomediastinal contours?|cardiac contours?|heart and mediastinum)"
        r"[a-z ,]{0,30}?(?:is|are|appears?|remains?) "
        r"(?:\w+ )?(?:normal|within normal limits|unremarkable|stable|top[- ]normal)",
        r"normal (?:heart|cardiac|cardiomediastinal)",
        r"(?:heart|cardiac) size normal",
    ),
    "pneumothorax": (r"no (?:evidence of )?(?:a )?pneumothorax",),
}

NEGATION_BEFORE = (
    r"\bno\b",
    r"\bnot\b",
    r"\bwithout\b",
    r"\bnegative for\b",
    r"\bfree of\b",
    r"\bclear of\b",
    r"\bresolution of\b",
    r"\brule[sd]? out\b",
    r"\bnor\b",
    r"\babsence of\b",
    r"\bneither\b",
)
NEGATION_AFTER = (
    r"\b(?:is|are|was|were) (?:not|no longer) (?:seen|present|identified|visualized|evident|"
    r"demonstrated|appreciated)\b",
    r"\bhas resolved\b|\bhave resolved\b|\bresolved\b",
    r"\bis absent\b|\bare absent\b",
)
UNCERTAIN_BEFORE = (
    r"\bpossible\b",
    r"\bpossibly\b",
    r"\bprobable\b",
    r"\bprobably\b",
    r"\bmay\b",
    r"\bmight\b",
    r"\bcould\b",
    r"\blikely\b",
    r"\bquestionable\b",
    r"\bsuspicious for\b",
    r"\bconcerning for\b",
    r"\bsuggest(?:s|ive of|ing)?\b",
    r"\bversus\b",
    r"\bvs\.?\b",
    r"\bdifferential\b",
    r"\bcannot (?:be )?(?:exclude|excluded|rule out)\b",
    r"\bcan not be excluded\b",
    r"\bnot excluded\b",
    r"\bequivocal\b",
    r"\bpresumed\b",
    r"\bthought to\b",
    r"\bconsider\b",
    r"\bor\b(?= (?:\w+ ){0,2}(?:atelectasis|pneumonia|infection|consolidation|scarring))",
)
UNCERTAIN_AFTER = (
    r"\bcannot be (?:excluded|ruled out)\b",
    r"\bnot (?:be )?excluded\b",
    r"^\s*(?:versus|vs\.?)\b",
    r"^\s*(?:is|are) (?:possible|likely|suspected|questioned)\b",
)
# a clause ends here: negation and uncertainty do not reach across
CLAUSE_BREAK = re.compile(r"[;:]|,\s*(?:but|however|although|though|which)\b|\b(?:but|however)\b")
SENTENCE_BREAK = re.compile(r"(?<!\d)\.(?!\d)|\n|\?(?=\s)")


def _compile(patterns: Iterable[str]) -> re.Pattern[str]:
    return re.compile("|".join(f"(?:{p})" for p in patterns))


_MENTIONS = {name: re.compile(r"\b(?:" + "|".join(p) + r")\b") for name, p in FINDINGS.items()}
_NORMAL = {name: _compile(p) for name, p in NORMAL_STATEMENTS.items()}
_NEG_BEFORE = _compile(NEGATION_BEFORE)
_NEG_AFTER = _compile(NEGATION_AFTER)
_UNC_BEFORE = _compile(UNCERTAIN_BEFORE)
_UNC_AFTER = _compile(UNCERTAIN_AFTER)


def split_clauses(text: str) -> list[str]:
    """Lower-case clauses: sentences split at '.', newlines, then at clause breaks."""
    clauses: list[str] = []
    for sentence in SENTENCE_BREAK.split(text.lower()):
        clauses.extend(part.strip() for part in CLAUSE_BREAK.split(sentence) if part.strip())
    return clauses


def mention_status(clause: str, start: int, end: int) -> int:
    """POSITIVE / NEGATIVE / UNCERTAIN of the mention ``clause[start:end]``."""
    before, after = clause[:start], clause[end:]
    if _UNC_AFTER.search(after) or _UNC_BEFORE.search(before):
        # "no ... to suggest pneumonia" is still negative
        if _NEG_BEFORE.search(before) and not re.search(r"cannot|not excluded", clause):
            return NEGATIVE
        return UNCERTAIN
    if _NEG_BEFORE.search(before) or _NEG_AFTER.search(after):
        return NEGATIVE
    return POSITIVE


def label_report(text: str, findings: Iterable[str] | None = None) -> dict[str, int | None]:
    """finding -> 1 (positive), 0 (negative), -1 (uncertain) or None (not mentioned)."""
    names = list(findings) if findings is not None else list(FINDINGS)
    unknown = [n for n in names if n not in FINDINGS]
    if unknown:
        raise ValueError(f"unknown findings {unknown}; known: {', '.join(FINDINGS)}")
    labels: dict[str, int | None] = dict.fromkeys(names)
    for clause in split_clauses(text):
        for name in names:
            found = [
                mention_status(clause, m.start(), m.end()) for m in _MENTIONS[name].finditer(clause)
            ]
            if name in _NORMAL and _NORMAL[name].search(clause):
                found.append(NEGATIVE)
            for status in found:
                labels[name] = _combine(labels[name], status)
    return labels


def _combine(current: int | None, new: int) -> int:
    order = {NEGATIVE: 0, UNCERTAIN: 1, POSITIVE: 2}
    if current is None or order[new] > order[current]:
        return new
    return current


def label_reports(texts: Iterable[str], findings: Iterable[str] | None = None):
    """Labels of many reports: a list of :func:`label_report` dicts."""
    names = list(findings) if findings is not None else None
    return [label_report(text, names) for text in texts]
