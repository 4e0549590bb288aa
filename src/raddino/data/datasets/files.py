"""Finding a dataset's files: its tables by name, its images by file stem."""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from pathlib import Path

from raddino.data.datasets.errors import DatasetLayoutError

__all__ = ["find_file", "find_images_by_stem"]


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
