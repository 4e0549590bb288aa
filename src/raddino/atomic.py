"""Atomic file writes: a temporary file beside the target, fsynced, then renamed over it.

A kill at any moment leaves either the old file or the new one, never a partial file. Temporary
names start with :data:`TMP_PREFIX`, so a folder's leftovers are easy to find and delete.
"""

from __future__ import annotations

import csv
import io
import os
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

TMP_PREFIX = ".tmp-"


def fsync_dir(path: Path) -> None:
    """Make a rename or creation inside ``path`` durable (a no-op off POSIX)."""
    if os.name != "posix":
        return
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_atomic(path: str | os.PathLike, write: Callable[[Path], object]) -> Path:
    """Call ``write(temp_path)``, fsync the result, rename it over ``path``; returns ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    temp = path.with_name(f"{TMP_PREFIX}{os.getpid()}-{path.name}")
    try:
        write(temp)
        with open(temp, "rb") as handle:
            os.fsync(handle.fileno())
        os.replace(temp, path)
    finally:
        temp.unlink(missing_ok=True)
    fsync_dir(path.parent)
    return path


def write_bytes_atomic(path: str | os.PathLike, data: bytes) -> Path:
    """Atomically replace ``path``'s content with ``data``."""
    return write_atomic(path, lambda temp: temp.write_bytes(data))


def csv_bytes(header: Sequence[str], rows: Iterable[Sequence[object]]) -> bytes:
    """A CSV document as UTF-8 bytes: the header, then the rows, ``\\n`` line ends (every CSV
    raddino writes)."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(header)
    writer.writerows(rows)
    return buffer.getvalue().encode("utf-8")


def write_csv_atomic(
    path: str | os.PathLike, header: Sequence[str], rows: Iterable[Sequence[object]]
) -> Path:
    """Atomically replace ``path`` with a CSV of ``header`` and ``rows`` (:func:`csv_bytes`)."""
    return write_bytes_atomic(path, csv_bytes(header, rows))
