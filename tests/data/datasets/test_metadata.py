"""Metadata in canonical form: ages in years."""

from __future__ import annotations

import pytest

from raddino.data.datasets.metadata import parse_age


@pytest.mark.parametrize(
    ("text", "years"),
    [("57", "57"), ("045Y", "45"), ("006M", "0.50"), ("85 or more", "85"), ("", ""), ("x", "")],
)
def test_parse_age(text: str, years: str) -> None:
    assert parse_age(text) == years
