"""Patient and image metadata in the manifest's canonical form: age in years, sex, view."""

from __future__ import annotations

import re

__all__ = ["FRONTAL_VIEWS", "normalise_sex", "parse_age"]

FRONTAL_VIEWS = frozenset({"PA", "AP", "FRONTAL"})
"""Canonical ``view`` values that count as frontal (``FRONTAL``: projection not recorded)."""

_AGE_UNITS = {"Y": 1.0, "M": 1 / 12, "W": 7 / 365.25, "D": 1 / 365.25}
_AGE_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([YMWD]?)\b", re.IGNORECASE)


def parse_age(text: str | float | int | None) -> str:
    """Age in years as text: ``"57"``, DICOM ``"045Y"``/``"006M"``, ``"85 or more"`` -> ``"85"``."""
    if text is None:
        return ""
    match = _AGE_RE.match(str(text))
    if not match:
        return ""
    years = float(match.group(1)) * _AGE_UNITS[(match.group(2) or "Y").upper()]
    if years < 0 or years > 150:
        return ""
    return str(int(years)) if years == int(years) else f"{years:.2f}"


def normalise_sex(text: str | None) -> str:
    """``M``/``F`` from M, F, Male, Female, male, ...; anything else is unknown (``""``)."""
    value = (text or "").strip().upper()
    if value in ("M", "MALE"):
        return "M"
    if value in ("F", "FEMALE"):
        return "F"
    return ""
