"""What every dataset indexer shares: options, label policies, the index table, splits, files.

An indexer turns a dataset's official files into an `IndexTable`: one row per image, string
columns (``path`` absolute, ``split``, ``patient_id``, ``view``, ``age``, ``sex``, ...), a float
label matrix (1 / 0 / NaN = unknown), boxes and masks still to be drawn. `write_index` (in
``raddino.data.datasets``) turns the table into a manifest CSV.
"""

from __future__ import annotations

import csv
import gzip
import hashlib
import io
import math
import os
import re
import warnings
import zipfile
from array import array
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from raddino.atomic import write_bytes_atomic as write_atomic

__all__ = [
    "FRONTAL_VIEWS",
    "DatasetLayoutError",
    "IndexOptions",
    "IndexTable",
    "LabelPolicy",
    "PendingMask",
    "TableBuilder",
    "chexpert_style_labels",
    "find_file",
    "find_images_by_stem",
    "image_header",
    "normalise_sex",
    "open_table",
    "parse_age",
    "split_by_patient",
    "write_atomic",
]

FRONTAL_VIEWS = frozenset({"PA", "AP", "FRONTAL"})
"""Canonical ``view`` values that count as frontal (``FRONTAL``: projection not recorded)."""

UNCERTAIN_CHOICES = ("nan", "zero", "one")
UNMENTIONED_CHOICES = ("nan", "zero")
TABLE_SUFFIXES = (".csv", ".csv.gz", ".csv.zip", ".gz", ".zip")


class DatasetLayoutError(ValueError):
    """The dataset folder does not look as expected; the message names the file or column."""


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
        for key in ("val_fraction", "test_fraction"):
            value = getattr(self, key)
            if not 0.0 <= value < 1.0:
                raise ValueError(f"{key}={value!r} must be in [0, 1)")
        if self.val_fraction + self.test_fraction >= 1.0:
            raise ValueError(
                f"val_fraction + test_fraction = {self.val_fraction + self.test_fraction} "
                "leaves no training data; keep the sum below 1"
            )

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


# --------------------------------------------------------------------------- labels


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


# --------------------------------------------------------------------------- metadata


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


def split_by_patient(patient_id: str, val: float, test: float, seed: int) -> str:
    """``train``/``val``/``test`` for a patient, from a hash of (seed, id).

    Every image of a patient lands in the same split; the assignment of one patient does not
    depend on the others (adding patients never moves existing ones).
    """
    digest = hashlib.sha256(f"{seed}\x00{patient_id}".encode()).digest()
    u = int.from_bytes(digest[:8], "big") / 2**64
    if u < test:
        return "test"
    if u < test + val:
        return "val"
    return "train"


def image_header(path: str | os.PathLike) -> dict[str, str]:
    """Metadata from an image header without decoding pixels.

    DICOM: ``patient_id``, ``age``, ``sex``, ``view``, ``height``, ``width``; PNG/JPEG: the
    size only. Unreadable files give ``{}``.
    """
    name = os.fspath(path)
    suffix = Path(name).suffix.lower()
    if suffix in (".png", ".jpg", ".jpeg"):
        from PIL import Image

        try:
            with Image.open(name) as image:
                width, height = image.size
        except (OSError, ValueError):
            return {}
        return {"height": str(height), "width": str(width)}
    import pydicom

    tags = ["PatientID", "PatientAge", "PatientSex", "ViewPosition", "Rows", "Columns"]
    # Real headers break the standard now and then (RSNA's PatientAge "51" is not a valid AS):
    # take the values as they are, without a warning per file.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            ds = pydicom.dcmread(name, stop_before_pixels=True, specific_tags=tags, force=True)
            out = {
                "patient_id": str(ds.get("PatientID", "") or "").strip(),
                "age": parse_age(str(ds.get("PatientAge", "") or "")),
                "sex": normalise_sex(str(ds.get("PatientSex", "") or "")),
                "view": str(ds.get("ViewPosition", "") or "").strip().upper(),
            }
            if ds.get("Rows") and ds.get("Columns"):
                out["height"], out["width"] = str(int(ds.Rows)), str(int(ds.Columns))
        except Exception:  # an unreadable header just means "no metadata"
            return {}
    return out


# --------------------------------------------------------------------------- files


def find_file(root: Path, names: Sequence[str], what: str, override: str | None = None) -> Path:
    """The first of ``names`` (glob patterns; each also tried with .gz/.zip) under ``root`` or
    one level down; the last match in sorted order (the newest version) wins.

    ``override`` (a user-given path) wins. Raises `DatasetLayoutError` listing what was tried.
    """
    if override:
        path = Path(override).expanduser()
        if not path.is_file():
            raise DatasetLayoutError(f"{what}: {path} is not a file")
        return path
    candidates = []
    for name in names:
        for suffix in ("", ".gz", ".zip"):
            candidates.append(name + suffix)
    folders = [root, *sorted(p for p in root.iterdir() if p.is_dir())] if root.is_dir() else []
    for folder in folders:
        for candidate in candidates:
            matches = [p for p in sorted(folder.glob(candidate)) if p.is_file()]
            if matches:
                return matches[-1]
    if not root.is_dir():
        raise DatasetLayoutError(f"{root}: no such directory (the dataset root)")
    raise DatasetLayoutError(
        f"{root}: cannot find the {what} (looked for {', '.join(names)} [.gz/.zip] in the root "
        "and its sub-folders)"
    )


def open_table(path: Path) -> Iterator[dict[str, str]]:
    """Rows of a CSV (plain, gzip or the first CSV inside a zip) as dicts, header stripped."""
    try:
        with _open_text(path) as handle:
            reader = csv.reader(handle)
            try:
                header = [name.strip() for name in next(reader)]
            except StopIteration:
                raise DatasetLayoutError(f"{path}: the file is empty") from None
            width = len(header)
            for row in reader:
                if not row:
                    continue
                if len(row) < width:
                    row = row + [""] * (width - len(row))
                yield dict(zip(header, row, strict=False))
    except (OSError, UnicodeDecodeError, csv.Error, zipfile.BadZipFile, EOFError) as error:
        raise DatasetLayoutError(f"{path}: cannot read the table ({error})") from error


def table_header(path: Path) -> list[str]:
    """The stripped column names of a table."""
    try:
        with _open_text(path) as handle:
            return [name.strip() for name in next(csv.reader(handle), [])]
    except (OSError, UnicodeDecodeError, csv.Error, zipfile.BadZipFile, EOFError) as error:
        raise DatasetLayoutError(f"{path}: cannot read the table ({error})") from error


def require_columns(path: Path, columns: Iterable[str], header: Sequence[str]) -> None:
    """Raise `DatasetLayoutError` naming the file and every missing column."""
    absent = [name for name in columns if name not in header]
    if absent:
        raise DatasetLayoutError(
            f"{path}: missing column(s) {', '.join(map(repr, absent))} (found: {', '.join(header)})"
        )


def _open_text(path: Path) -> io.TextIOBase:
    name = path.name.lower()
    if name.endswith(".zip"):
        archive = zipfile.ZipFile(path)
        members = [m for m in archive.namelist() if m.lower().endswith(".csv")]
        if not members:
            archive.close()
            raise DatasetLayoutError(f"{path}: the zip file holds no .csv file")
        return io.TextIOWrapper(archive.open(members[0]), encoding="utf-8-sig", newline="")
    if name.endswith(".gz"):
        return gzip.open(path, "rt", encoding="utf-8-sig", newline="")
    return path.open(encoding="utf-8-sig", newline="")


def find_images_by_stem(
    root: Path, suffixes: Sequence[str], *, bare_uid_names: bool = False
) -> dict[str, str]:
    """Map file stem (and full name) -> path for every file under ``root`` with ``suffixes``.

    With ``bare_uid_names``, files named by a DICOM UID alone (CANDID-PTX) count too. The
    first path in sorted order wins when a stem repeats.
    """
    wanted = tuple(s.lower() for s in suffixes)
    found: dict[str, str] = {}
    for folder, dirs, files in os.walk(root):
        dirs.sort()
        for name in sorted(files):
            lower = name.lower()
            stem = next((name[: -len(s)] for s in wanted if lower.endswith(s)), None)
            if stem is None and bare_uid_names and _looks_like_uid(name):
                stem = name
            if stem is None:
                continue
            path = os.path.join(folder, name)
            found.setdefault(stem, path)
            found.setdefault(name, path)
    return found


def _looks_like_uid(name: str) -> bool:
    """A DICOM UID such as 1.2.840.113619.2.55.3 (dots, digits only) used as a file name."""
    return bool(re.fullmatch(r"\d+(\.\d+){3,}", name))


def csv_bytes(header: Sequence[str], rows: Iterable[Sequence[str]]) -> bytes:
    """A CSV document (``\\n`` line ends) as UTF-8 bytes."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(header)
    writer.writerows(rows)
    return buffer.getvalue().encode("utf-8")
