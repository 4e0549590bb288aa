"""Indexers for public chest X-ray datasets: official files -> manifest CSV.

``index_dataset("nih", root, "nih.csv")`` reads a dataset as distributed, checks which image
files exist, draws RLE masks to PNGs, and writes the manifest (``path`` relative to the CSV,
``split``, ``patient_id``, ``view``, ``age``, ``sex``, one column per label with 1 / 0 /
empty = unknown, ``mask_<structure>``, ``boxes`` as JSON) plus two side files: the rows whose
image is missing (``<stem>.missing.csv``) and a summary (``<stem>.summary.json``).
`build_index` returns the `IndexTable` without writing anything.
"""

from __future__ import annotations

import json
import os
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from types import ModuleType

import numpy as np

from raddino.atomic import write_bytes_atomic, write_csv_atomic
from raddino.data.datasets import brax, candid, chexpert, mimic, nih, padchest, rsna, siim, vindr
from raddino.data.datasets.errors import DatasetLayoutError
from raddino.data.datasets.index_table import IndexTable
from raddino.data.datasets.labels import LabelPolicy, format_label
from raddino.data.datasets.metadata import FRONTAL_VIEWS
from raddino.data.datasets.options import IndexOptions
from raddino.data.datasets.rle import RleError, mask_png_bytes, rle_decode_union

__all__ = [
    "DATASETS",
    "DatasetLayoutError",
    "DatasetSpec",
    "IndexOptions",
    "IndexSummary",
    "IndexTable",
    "LabelPolicy",
    "build_index",
    "index_dataset",
    "write_index",
]


@dataclass(frozen=True)
class DatasetSpec:
    """A registered dataset: its indexer and the ``--set`` keys it understands."""

    name: str
    title: str
    index: Callable[[Path, IndexOptions], IndexTable]
    options: Mapping[str, str]
    module: ModuleType


def _spec(module: ModuleType, title: str) -> DatasetSpec:
    return DatasetSpec(module.NAME, title, module.index, module.OPTIONS, module)


DATASETS: dict[str, DatasetSpec] = {
    spec.name: spec
    for spec in (
        _spec(mimic, "MIMIC-CXR-JPG (PhysioNet)"),
        _spec(chexpert, "CheXpert (Stanford)"),
        _spec(nih, "NIH ChestX-ray14"),
        _spec(padchest, "PadChest (BIMCV)"),
        _spec(brax, "BRAX (PhysioNet)"),
        _spec(vindr, "VinDr-CXR (PhysioNet or Kaggle VinBigData)"),
        _spec(rsna, "RSNA Pneumonia Detection Challenge"),
        _spec(siim, "SIIM-ACR Pneumothorax Segmentation"),
        _spec(candid, "CANDID-PTX"),
    )
}
ALIASES = {
    "mimic": "mimic-cxr",
    "mimic-cxr-jpg": "mimic-cxr",
    "chestx-ray14": "nih",
    "nih-cxr": "nih",
    "vindr": "vindr-cxr",
    "vinbigdata": "vindr-cxr",
    "rsna": "rsna-pneumonia",
    "siim": "siim-acr",
    "candid": "candid-ptx",
}

_FIRST_COLUMNS = ("path", "split", "patient_id", "study_id", "image_id", "view", "age", "sex")


@dataclass(frozen=True)
class IndexSummary:
    """What `write_index` wrote."""

    manifest: Path
    rows: int  # rows in the manifest
    missing: int  # rows whose image file is missing (listed in missing_report)
    masks: int  # mask PNGs written
    missing_report: Path | None
    summary: Path


def get_spec(name: str) -> DatasetSpec:
    """The dataset called ``name`` (or an alias); the error lists the known ones."""
    key = ALIASES.get(name.lower(), name.lower())
    if key not in DATASETS:
        raise ValueError(f"unknown dataset {name!r}; choose one of {', '.join(DATASETS)}")
    return DATASETS[key]


def build_index(
    name: str, root: str | os.PathLike, options: IndexOptions | None = None
) -> IndexTable:
    """Run the indexer of dataset ``name`` on ``root`` (nothing is written)."""
    options = options or IndexOptions()
    spec = get_spec(name)
    unknown = sorted(set(options.extra) - set(spec.options))
    if unknown:
        valid = ", ".join(spec.options) or "none"
        raise ValueError(f"{spec.name}: unknown --set key(s) {', '.join(unknown)} (valid: {valid})")
    root = Path(root).expanduser()
    if not root.is_dir():
        raise DatasetLayoutError(f"{root}: no such directory (the {spec.title} root)")
    table = spec.index(root, options)
    if options.frontal_only:
        views = table.column("view") if "view" in table.columns else [""] * len(table)
        keep = [i for i, view in enumerate(views) if not view or view in FRONTAL_VIEWS]
        dropped = len(table) - len(keep)
        unknown_views = sum(1 for i in keep if not views[i])
        table = table.select(keep)
        table.notes.append(
            f"frontal only: dropped {dropped} non-frontal rows; kept {unknown_views} rows "
            "whose view is not recorded"
        )
    return table


def index_dataset(
    name: str,
    root: str | os.PathLike,
    out: str | os.PathLike,
    options: IndexOptions | None = None,
    *,
    keep_missing: bool = False,
    progress: bool = False,
) -> IndexSummary:
    """Index dataset ``name`` under ``root`` and write the manifest ``out``."""
    options = options or IndexOptions()
    table = build_index(name, root, options)
    return write_index(table, out, keep_missing=keep_missing, progress=progress, options=options)


def write_index(
    table: IndexTable,
    out: str | os.PathLike,
    *,
    keep_missing: bool = False,
    progress: bool = False,
    options: IndexOptions | None = None,
) -> IndexSummary:
    """Write ``table`` as the manifest ``out`` (masks, missing-file report, summary).

    Rows whose image is missing are left out (``keep_missing`` keeps them) and listed in
    ``<stem>.missing.csv``. Every file is written atomically.
    """
    out = Path(out).expanduser()
    if out.suffix.lower() != ".csv":
        raise ValueError(f"--out {out}: the manifest must be a .csv file")
    folder = out.parent
    folder.mkdir(parents=True, exist_ok=True)
    missing = set(table.missing)
    keep = [i for i in range(len(table)) if keep_missing or i not in missing]
    mask_columns = _write_masks(table, set(keep), folder / f"{out.stem}_masks", progress)

    clashes = set(table.label_names) & (set(table.columns) | set(mask_columns))
    if clashes:
        raise ValueError(f"label name(s) {', '.join(sorted(clashes))} clash with other columns")
    first = [c for c in _FIRST_COLUMNS if c in table.columns]
    rest = [c for c in table.columns if c not in first]
    header = [*first, *table.label_names, *sorted(mask_columns), *rest]
    columns = {**table.columns, **mask_columns}
    labels = [[format_label(v) for v in row] for row in table.labels[keep].tolist()]

    def rows():
        for k, i in enumerate(keep):
            values = [_relative(columns["path"][i], folder)]
            values += [columns[c][i] for c in first[1:]]
            values += labels[k]
            values += [columns[c][i] for c in sorted(mask_columns)]
            values += [columns[c][i] for c in rest]
            yield values

    write_csv_atomic(out, header, rows())

    report = folder / f"{out.stem}.missing.csv"
    if missing:
        id_column = "image_id" if "image_id" in table.columns else "path"
        write_csv_atomic(
            report,
            ["path", "image_id", "reason"],
            (
                [table.columns["path"][i], table.columns[id_column][i], "file not found"]
                for i in sorted(missing)
            ),
        )
    elif report.exists():
        report.unlink()
    summary_path = folder / f"{out.stem}.summary.json"
    summary = _summary(table, keep, options)
    write_bytes_atomic(summary_path, (json.dumps(summary, indent=2) + "\n").encode())
    return IndexSummary(
        manifest=out,
        rows=len(keep),
        missing=len(missing),
        masks=sum(1 for values in mask_columns.values() for v in values if v),
        missing_report=report if missing else None,
        summary=summary_path,
    )


def _write_masks(
    table: IndexTable, keep: set[int], folder: Path, progress: bool
) -> dict[str, list[str]]:
    """Draw the pending masks of kept rows; column ``mask_<structure>`` -> relative paths."""
    pending = [mask for mask in table.masks if mask.row in keep]
    columns: dict[str, list[str]] = {}
    for mask in table.masks:
        columns.setdefault(f"mask_{mask.structure}", [""] * len(table))
    if progress and pending:
        from tqdm import tqdm

        pending = tqdm(pending, desc="masks", unit="mask")
    ids = table.columns.get("image_id") or [Path(p).stem for p in table.columns["path"]]
    for mask in pending:
        try:
            pixels = rle_decode_union(
                mask.rles, mask.height, mask.width, rle_format=mask.rle_format
            )
        except RleError as error:
            raise DatasetLayoutError(
                f"{mask.source}: {error} (image {mask.height}x{mask.width})"
            ) from error
        relative = Path(folder.name) / mask.structure / f"{ids[mask.row]}.png"
        write_bytes_atomic(folder.parent / relative, mask_png_bytes(pixels))
        columns[f"mask_{mask.structure}"][mask.row] = relative.as_posix()
    return columns


def _relative(path: str, folder: Path) -> str:
    try:
        return Path(os.path.relpath(path, folder)).as_posix()
    except ValueError:  # another drive (Windows)
        return path


def _summary(table: IndexTable, keep: list[int], options: IndexOptions | None) -> dict:
    labels = table.labels[keep]
    counts = {}
    for j, name in enumerate(table.label_names):
        column = labels[:, j]
        counts[name] = {
            "positive": int(np.sum(column == 1.0)),
            "negative": int(np.sum(column == 0.0)),
            "unknown": int(np.sum(np.isnan(column))),
        }
    column = table.columns.get
    return {
        "dataset": table.dataset,
        "rows_indexed": len(table),
        "rows_written": len(keep),
        "missing_images": len(table.missing),
        "patients": len({column("patient_id")[i] for i in keep}) if column("patient_id") else None,
        "splits": dict(Counter(column("split")[i] for i in keep)) if column("split") else {},
        "labels": counts,
        "options": _options_dict(options),
        "notes": table.notes,
    }


def _options_dict(options: IndexOptions | None) -> dict:
    if options is None:
        return {}
    data = asdict(options)
    data["extra"] = dict(options.extra)
    return data
