"""The index table: what an indexer returns, one row per image, before it becomes a manifest.

String columns (``path`` absolute, ``split``, ``patient_id``, ``view``, ``age``, ``sex``, ...),
a float label matrix (1 / 0 / NaN = unknown), and the masks still to be drawn. `write_index`
(in ``raddino.data.datasets``) turns the table into a manifest CSV.
"""

from __future__ import annotations

from array import array
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

__all__ = ["IndexTable", "PendingMask", "TableBuilder"]


@dataclass
class PendingMask:
    """A mask still to be drawn from run-length encodings: the union of ``rles``."""

    row: int
    structure: str
    rles: list[str]
    height: int
    width: int
    rle_format: str
    source: str  # file (and line) the encodings came from, for error messages


@dataclass
class IndexTable:
    """One row per image: string columns, a label matrix and the masks still to draw.

    ``columns["path"]`` holds absolute paths; ``labels`` is (N, len(label_names)) float32 with
    NaN for unknown; ``missing`` lists the rows whose image file is absent.
    """

    dataset: str
    columns: dict[str, list[str]]
    label_names: list[str]
    labels: np.ndarray
    missing: list[int] = field(default_factory=list)
    masks: list[PendingMask] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.columns["path"])

    def column(self, name: str) -> list[str]:
        """A string column (``KeyError`` names the available ones)."""
        if name not in self.columns:
            raise KeyError(f"no column {name!r}; columns: {', '.join(self.columns)}")
        return self.columns[name]

    def label(self, name: str) -> np.ndarray:
        """The (N,) label vector of ``name``: 1, 0 or NaN."""
        if name not in self.label_names:
            raise KeyError(f"no label {name!r}; labels: {', '.join(self.label_names)}")
        return self.labels[:, self.label_names.index(name)]

    def select(self, keep: Sequence[int]) -> IndexTable:
        """A new table with only the rows ``keep`` (in that order)."""
        position = {old: new for new, old in enumerate(keep)}
        masks = [
            PendingMask(**{**mask.__dict__, "row": position[mask.row]})
            for mask in self.masks
            if mask.row in position
        ]
        return IndexTable(
            dataset=self.dataset,
            columns={name: [values[i] for i in keep] for name, values in self.columns.items()},
            label_names=list(self.label_names),
            labels=self.labels[np.asarray(keep, dtype=np.int64)].reshape(
                len(keep), len(self.label_names)
            ),
            missing=[position[i] for i in self.missing if i in position],
            masks=masks,
            notes=list(self.notes),
        )


class TableBuilder:
    """Accumulates rows column by column (memory stays small for 100k+ rows)."""

    def __init__(self, dataset: str, label_names: Sequence[str] = ()) -> None:
        self.dataset = dataset
        self.label_names = list(label_names)
        self.columns: dict[str, list[str]] = {"path": []}
        self._labels = array("f")
        self.missing: list[int] = []
        self.masks: list[PendingMask] = []
        self.notes: list[str] = []
        self._intern: dict[str, str] = {}

    def __len__(self) -> int:
        return len(self.columns["path"])

    def add(
        self, record: Mapping[str, str], labels: Sequence[float] = (), *, exists: bool = True
    ) -> int:
        """Append one row; returns its index. ``record`` must hold ``path``."""
        if len(labels) != len(self.label_names):
            raise ValueError(f"{len(labels)} labels given, {len(self.label_names)} expected")
        columns = self.columns
        index = len(columns["path"])
        for key in record.keys() - columns.keys():
            columns[key] = [""] * index
        intern = self._intern
        for key, values in columns.items():
            value = record.get(key, "")
            values.append(intern.setdefault(value, value) if len(value) < 24 else value)
        self._labels.extend(labels)
        if not exists:
            self.missing.append(index)
        return index

    def build(self, labels: np.ndarray | None = None) -> IndexTable:
        """The finished table; ``labels`` replaces the per-row labels when given."""
        if labels is None:
            labels = np.frombuffer(self._labels, dtype=np.float32).reshape(
                len(self), len(self.label_names)
            )
        if labels.shape != (len(self), len(self.label_names)):
            raise ValueError(f"labels of shape {labels.shape} for {len(self)} rows")
        return IndexTable(
            dataset=self.dataset,
            columns=self.columns,
            label_names=self.label_names,
            labels=np.ascontiguousarray(labels, dtype=np.float32),
            missing=self.missing,
            masks=self.masks,
            notes=self.notes,
        )
