"""Manifests: the CSV contract every command reads, and turning command-line inputs into one.

A manifest is a CSV with a required ``path`` column (relative to the CSV's folder, or absolute)
and any other columns (labels, metadata, splits). A folder of images is a manifest with only
``path``.
"""

from __future__ import annotations

import csv
import os
from collections.abc import Iterable
from pathlib import Path

from raddino.data.io import is_image_file


class ManifestError(ValueError):
    """A manifest that cannot be used; the message names the file (and row or column)."""


def read_manifest(path: str | os.PathLike) -> list[dict[str, str]]:
    """Rows of a manifest CSV, with ``path`` resolved against the CSV's folder."""
    return read_manifest_table(path)[1]


def read_manifest_table(path: str | os.PathLike) -> tuple[list[str], list[dict[str, str]]]:
    """The columns of a manifest CSV, in file order, and its rows (as :func:`read_manifest`)."""
    path = Path(path)
    try:
        with path.open(newline="", encoding="utf-8-sig") as handle:
            reader = csv.DictReader(handle)
            if reader.fieldnames is None or "path" not in reader.fieldnames:
                raise ManifestError(
                    f"{path}: a manifest needs a 'path' column (found {reader.fieldnames})"
                )
            columns = list(reader.fieldnames)
            rows = []
            for line, row in enumerate(reader, start=2):
                value = (row.get("path") or "").strip()
                if not value:
                    raise ManifestError(f"{path}: line {line}: empty 'path'")
                row["path"] = resolve_manifest_path(path, value)
                rows.append(row)
    except (OSError, UnicodeDecodeError, csv.Error) as error:
        raise ManifestError(f"{path}: cannot read manifest ({error})") from error
    return columns, rows


def resolve_manifest_path(manifest: Path, value: str) -> str:
    """An entry of the ``path`` column as a usable path string."""
    entry = Path(value).expanduser()
    return str(entry if entry.is_absolute() else manifest.parent / entry)


def scan_folder(folder: Path) -> list[str]:
    """Image files under ``folder`` (recursive), sorted for a stable order."""
    found = (
        str(Path(root) / name)
        for root, _dirs, files in os.walk(folder)
        for name in files
        if is_image_file(name)
    )
    return sorted(found)


def collect_inputs(inputs: Iterable[str | os.PathLike]) -> list[str]:
    """Expand files, folders (recursive) and manifest CSVs into unique image paths, in order."""
    paths: list[str] = []
    for item in inputs:
        item = Path(item)
        if item.is_dir():
            paths.extend(scan_folder(item))
        elif item.suffix.lower() == ".csv":
            paths.extend(row["path"] for row in read_manifest(item))
        elif item.exists() or item.is_symlink():
            paths.append(str(item))
        else:
            raise FileNotFoundError(f"{item}: no such file or directory")
    return list(dict.fromkeys(paths))
