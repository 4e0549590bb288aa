"""The error an indexer raises when a dataset folder does not look as expected."""

from __future__ import annotations

__all__ = ["DatasetLayoutError"]


class DatasetLayoutError(ValueError):
    """The dataset folder does not look as expected; the message names the file or column."""
