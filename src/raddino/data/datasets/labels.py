"""Label policies: how a dataset's raw labels become 1 / 0 / NaN (unknown).

`chexpert_style_labels` reads the CheXpert labeller's cells (1, 0, -1 = uncertain, blank = not
mentioned) shared by CheXpert, MIMIC-CXR and BRAX; `LabelPolicy` says what uncertain and blank
become; `format_label` writes a label into a manifest cell.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from raddino.data.datasets.errors import DatasetLayoutError

__all__ = [
    "LabelPolicy",
    "chexpert_style_labels",
    "format_label",
    "parse_label",
]

UNCERTAIN_CHOICES = ("nan", "zero", "one")
UNMENTIONED_CHOICES = ("nan", "zero")


@dataclass(frozen=True)
class LabelPolicy:
    """How raw labels become 1 / 0 / NaN.

    ``uncertain``: what an uncertain label (CheXpert-style ``-1``) becomes: ``nan`` (default,
    unknown), ``zero`` (U-Zeros) or ``one`` (U-Ones). ``unmentioned``: what a blank label
    becomes in CheXpert-style files: ``nan`` (default) or ``zero``. ``no_finding_negative``:
    when "No Finding" is 1, blank findings (all but Support Devices) become 0; when a finding
    is 1, a blank "No Finding" becomes 0.
    """

    uncertain: str = "nan"
    unmentioned: str = "nan"
    no_finding_negative: bool = True

    def __post_init__(self) -> None:
        if self.uncertain not in UNCERTAIN_CHOICES:
            raise ValueError(
                f"uncertain={self.uncertain!r}: choose one of {', '.join(UNCERTAIN_CHOICES)}"
            )
        if self.unmentioned not in UNMENTIONED_CHOICES:
            raise ValueError(
                f"unmentioned={self.unmentioned!r}: choose one of {', '.join(UNMENTIONED_CHOICES)}"
            )

    @property
    def uncertain_value(self) -> float:
        return {"nan": math.nan, "zero": 0.0, "one": 1.0}[self.uncertain]

    @property
    def unmentioned_value(self) -> float:
        return {"nan": math.nan, "zero": 0.0}[self.unmentioned]


_LABEL_VALUES = {
    "1": 1.0, "1.0": 1.0, "0": 0.0, "0.0": 0.0, "-1": -1.0, "-1.0": -1.0, "": math.nan,
}  # fmt: skip


def parse_label(raw: str, source: str, column: str) -> float:
    """A CheXpert-style cell: ``1``/``1.0`` -> 1, ``0`` -> 0, ``-1`` -> -1, blank -> NaN."""
    value = _LABEL_VALUES.get(raw)
    if value is not None:
        return value
    text = raw.strip()
    if not text or text.lower() == "nan":
        return math.nan
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if value not in (1.0, 0.0, -1.0):
        raise DatasetLayoutError(f"{source}: column {column!r}: label {raw!r} is not 1, 0 or -1")
    return value


def chexpert_style_labels(
    raw: Mapping[str, str], names: Sequence[str], policy: LabelPolicy, source: str
) -> list[float]:
    """Labels of one row of a CheXpert-labeller file (CheXpert, MIMIC-CXR, BRAX).

    Raw values are 1 (positive), 0 (negative), -1 (uncertain) or blank (not mentioned).
    The "No Finding" rule runs on the raw values, then ``policy`` maps -1 and blanks.
    """
    values = [parse_label(raw.get(name, ""), source, name) for name in names]
    if policy.no_finding_negative and "No Finding" in names:
        no_finding = names.index("No Finding")
        findings = [
            i for i, name in enumerate(names) if name not in ("No Finding", "Support Devices")
        ]
        if values[no_finding] == 1.0:
            for i in findings:
                if values[i] != values[i]:  # NaN
                    values[i] = 0.0
        elif values[no_finding] != values[no_finding] and any(values[i] == 1.0 for i in findings):
            values[no_finding] = 0.0
    uncertain, unmentioned = policy.uncertain_value, policy.unmentioned_value
    return [
        uncertain if v == -1.0 else unmentioned if v != v else v  # v != v: NaN
        for v in values
    ]


def format_label(value: float) -> str:
    """1 -> ``"1"``, 0 -> ``"0"``, NaN -> ``""`` (the manifest's unknown)."""
    if math.isnan(value):
        return ""
    return "1" if value == 1.0 else "0" if value == 0.0 else repr(float(value))
