"""CSV tables as datasets ship them (plain, gzip, or inside a zip) and as manifests are written."""

from __future__ import annotations

import csv
import gzip
import io
import zipfile
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path

from raddino.data.datasets.errors import DatasetLayoutError

__all__ = ["open_table", "require_columns", "table_header"]


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
