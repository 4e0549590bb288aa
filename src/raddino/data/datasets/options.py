"""Options every indexer takes: the label policy, frontal only, split fractions and seed."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from raddino.data.datasets.labels import LabelPolicy
from raddino.data.splits import check_split_fractions, split_by_patient

__all__ = ["IndexOptions"]


@dataclass(frozen=True)
class IndexOptions:
    """Options shared by all indexers; ``extra`` holds dataset-specific ``key=value`` settings."""

    labels: LabelPolicy = field(default_factory=LabelPolicy)
    frontal_only: bool = False
    val_fraction: float = 0.1
    test_fraction: float = 0.1
    seed: int = 0
    extra: Mapping[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        check_split_fractions(self.val_fraction, self.test_fraction)

    def split_of(self, patient_id: str, test: bool = True) -> str:
        """The patient's split (:func:`raddino.data.splits.split_by_patient`) under these
        fractions and seed; ``test=False`` where the dataset's own test split is kept and only
        validation is drawn from the rest."""
        test_fraction = self.test_fraction if test else 0.0
        return split_by_patient(patient_id, self.val_fraction, test_fraction, self.seed)

    def get(self, key: str, default: str) -> str:
        """A dataset-specific setting (``--set key=value``), or ``default``."""
        return str(self.extra.get(key, default))

    def choice(self, key: str, default: str, choices: Sequence[str]) -> str:
        """A dataset-specific setting that must be one of ``choices``."""
        value = self.get(key, default).strip().lower()
        if value not in choices:
            raise ValueError(f"--set {key}={value!r}: choose one of {', '.join(choices)}")
        return value

    def flag(self, key: str, default: bool) -> bool:
        """A dataset-specific yes/no setting."""
        value = self.get(key, "true" if default else "false").strip().lower()
        if value in ("1", "true", "yes", "on"):
            return True
        if value in ("0", "false", "no", "off"):
            return False
        raise ValueError(f"--set {key}={value!r}: expected true or false")
