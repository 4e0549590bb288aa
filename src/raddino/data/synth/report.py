"""Radiology-style reports (FINDINGS and IMPRESSION) that state present and absent findings.

Phrasing varies (synonyms, sentence order, grouped or separate negations) but the content is a
pure function of the findings: every present finding is described (side, size, location), every
absent one is negated. Reports describe the image only: never age, sex, body habitus or weight
(``FORBIDDEN_WORDS``), so that probes of those attributes must read the pixels.
"""

from __future__ import annotations

import numpy as np

from raddino.data.synth.findings import Findings, Tube

FORBIDDEN_WORDS: tuple[str, ...] = (
    "year",
    "old",
    "age",
    "male",
    "female",
    "man",
    "woman",
    "sex",
    "gender",
    "bmi",
    "obese",
    "obesity",
    "weight",
    "thin",
    "habitus",
    "breast",
)
"""Words no report contains (checked by the tests)."""


def _pick(rng: np.random.Generator, options: list[str]) -> str:
    return options[int(rng.integers(len(options)))]


def _capital(text: str) -> str:
    return text[:1].upper() + text[1:]


def _size_words(fraction: float, small: float, large: float) -> str:
    return "small" if fraction < small else ("large" if fraction > large else "moderate")


def _nodule_sentence(findings: Findings, rng: np.random.Generator) -> str:
    parts = []
    for nodule in findings.nodules:
        size = 2 * nodule.radius_mm / 10.0
        kind = "mass" if size >= 3.0 else "nodule"
        adjective = _pick(rng, ["well-circumscribed", "rounded", "lobulated", "soft tissue"])
        parts.append(f"a {size:.1f} cm {adjective} {kind} in the {nodule.lobe}")
    text = " and ".join(parts)
    return _capital(_pick(rng, [f"there is {text}.", f"{text} is seen.", f"noted is {text}."]))


def _effusion_sentence(findings: Findings, supine: bool, rng: np.random.Generator) -> str:
    sides = sorted({e.side for e in findings.effusions})
    size = _size_words(max(e.fraction for e in findings.effusions), 0.15, 0.32)
    where = "bilateral" if len(sides) == 2 else f"{sides[0]}-sided"
    plural = "effusions" if len(sides) == 2 else "effusion"
    if supine:
        detail = _pick(rng, [" layering posteriorly", " with hazy opacity of the hemithorax", ""])
    else:
        detail = _pick(
            rng,
            [" with blunting of the costophrenic angle", " with a meniscus", ""],
        )
    return _capital(
        _pick(
            rng,
            [
                f"{size} {where} pleural {plural}{detail}.",
                f"there is a {size} {where} pleural {plural}{detail}.",
            ],
        )
    )


def _pneumothorax_sentence(findings: Findings, rng: np.random.Generator) -> str:
    finding = findings.pneumothorax
    assert finding is not None
    size = _size_words(1.0 - finding.collapse, 0.2, 0.35)
    return _capital(
        _pick(
            rng,
            [
                f"{size} {finding.side} pneumothorax with a visible pleural line.",
                f"there is a {size} {finding.side}-sided pneumothorax.",
                f"{finding.side} pneumothorax, {size}, with absent lung markings peripherally.",
            ],
        )
    )


def _consolidation_sentence(findings: Findings, rng: np.random.Generator) -> str:
    finding = findings.consolidation
    assert finding is not None
    noun = _pick(rng, ["consolidation", "airspace opacity", "airspace consolidation"])
    extra = _pick(rng, [" with air bronchograms", "", " concerning for pneumonia"])
    return _capital(f"{noun} in the {finding.lobe}{extra}.")


def _device_sentence(tube: Tube, rng: np.random.Generator) -> str:
    if tube.kind == "chest_tube":
        return _capital(
            _pick(
                rng,
                [
                    f"{tube.side} chest tube with its tip projecting over the apex.",
                    f"a {tube.side}-sided pleural drain is in place, tip toward the apex.",
                ],
            )
        )
    route = "right internal jugular" if tube.side == "right" else "left subclavian"
    return _capital(
        _pick(
            rng,
            [
                f"{route} central venous catheter terminates in the superior vena cava.",
                f"a {route} line is seen with its tip at the cavoatrial junction.",
            ],
        )
    )


NEGATIONS: dict[str, list[str]] = {
    "nodule": ["no pulmonary nodule or mass", "no focal nodule", "no suspicious pulmonary mass"],
    "effusion": ["no pleural effusion", "no effusion", "the costophrenic angles are sharp"],
    "pneumothorax": ["no pneumothorax", "no evidence of pneumothorax"],
    "consolidation": ["no focal consolidation", "no airspace opacity", "no focal airspace disease"],
    "cardiomegaly": [
        "the cardiac silhouette is normal in size",
        "heart size is normal",
        "no cardiomegaly",
    ],
    "devices": ["no support devices", "no lines or tubes"],
}


def write_report(findings: Findings, supine: bool, rng: np.random.Generator) -> str:
    """``FINDINGS: ... IMPRESSION: ...`` for ``findings``; phrasing drawn from ``rng``."""
    labels = findings.labels()
    positives: list[str] = []
    if labels["cardiomegaly"]:
        heart = ["the heart is enlarged.", "cardiomegaly.", "enlarged cardiac silhouette."]
        positives.append(_capital(_pick(rng, heart)))
    if labels["consolidation"]:
        positives.append(_consolidation_sentence(findings, rng))
    if labels["nodule"]:
        positives.append(_nodule_sentence(findings, rng))
    if labels["effusion"]:
        positives.append(_effusion_sentence(findings, supine, rng))
    if labels["pneumothorax"]:
        positives.append(_pneumothorax_sentence(findings, rng))
    positives.extend(_device_sentence(tube, rng) for tube in findings.devices)
    absent = [
        name
        for name in ("cardiomegaly", "consolidation", "nodule", "effusion", "pneumothorax")
        if not labels[name]
    ]
    if not findings.devices:
        absent.append("devices")
    negations = [_pick(rng, NEGATIONS[name]) for name in absent]
    order = rng.permutation(len(negations))
    negations = [negations[i] for i in order]
    if len(negations) >= 2 and rng.random() < 0.5:  # group two negations in one sentence
        negations = [f"{negations[0]} and {negations[1]}", *negations[2:]]
    body = " ".join([*positives, *(_capital(n) + "." for n in negations)])
    if positives:
        impression = " ".join(positives[:3])
    else:
        impression = _pick(
            rng,
            [
                "No acute cardiopulmonary process.",
                "No acute cardiopulmonary abnormality.",
                "Normal chest radiograph.",
            ],
        )
    return f"FINDINGS: {body} IMPRESSION: {impression}"
