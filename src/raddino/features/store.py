"""On-disk store of per-image features, written shard by shard and readable with plain numpy.

Layout of a store directory ``DIR``::

    DIR/meta.json            {"format": "raddino-features", "version": 1, **caller_meta}
    DIR/shards/00000/        one directory per shard, made atomic by writing DIR/shards/.tmp-00000
        paths.json           input paths of the shard, in row order
        cls.npy              [n, D]
        patches.npy          optional [n, D, h, w]
        patch_mean.npy       optional [n, D]
        layer{k}_cls.npy     optional, same for layer{k}_patches.npy / layer{k}_patch_mean.npy
    DIR/rejects.jsonl        one {"path", "reason"} JSON object per line, appended as they happen
    DIR/index.csv            path,shard,row; written by ``finalize`` (marks a finished store)
    DIR/rejects.csv          path,reason; written by ``finalize``
    DIR/ranks/rank-00000/    while a multi-process encode runs: each process's own store, moved
                             into DIR by ``absorb`` at the end (:mod:`raddino.features.ranks`)

A writer may be killed at any moment; reopening the directory resumes from the finished shards.
"""

from __future__ import annotations

import contextlib
import csv
import json
import os
import re
import shutil
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

import numpy as np

from raddino.atomic import TMP_PREFIX, csv_bytes, fsync_dir, write_bytes_atomic
from raddino.output_lock import OutputLock, is_lock_file

__all__ = [
    "FeatureStoreWriter",
    "Features",
    "LayerFeatures",
    "ShardedArray",
    "StoreMismatchError",
    "StoreSummary",
    "load_features",
]

FORMAT_NAME = "raddino-features"
FORMAT_VERSION = 1
_RESERVED_META_KEYS = ("format", "version")

_META_FILE = "meta.json"
_SHARDS_DIR = "shards"
_REJECTS_LOG = "rejects.jsonl"
_INDEX_FILE = "index.csv"
_REJECTS_FILE = "rejects.csv"
_PATHS_FILE = "paths.json"

_MISSING = object()  # sentinel for a meta key absent on one side

_KEY_RE = re.compile(r"^(?:layer(?P<layer>\d+)_)?(?P<kind>cls|patches|patch_mean)$")


class StoreMismatchError(ValueError):
    """The directory is not a features store, or was created with different settings.

    ``stored``: the store's meta (without format and version) when it was readable;
    ``differing``: the meta keys whose values differ from the ones given.
    """

    def __init__(
        self, message: str, stored: dict | None = None, differing: Sequence[str] = ()
    ) -> None:
        super().__init__(message)
        self.stored = stored
        self.differing = tuple(differing)

    def __reduce__(self) -> tuple:  # pickled with its details (torchrun broadcasts it)
        return (type(self), (str(self), self.stored, self.differing))


# --------------------------------------------------------------------------- lazy array


class ShardedArray:
    """Read-only lazy view that concatenates per-shard arrays along axis 0, in index order.

    Row ``i`` of the view is row ``row_in_shard[i]`` of ``arrays[shard_of_row[i]]``; without a
    mapping the view is the plain concatenation of ``arrays``. The per-shard arrays are usually
    ``np.memmap``s, so nothing is read until indexed. Every ``__getitem__`` returns a new
    ``np.ndarray``; indexing beyond axis 0 accepts ints and slices only.
    """

    def __init__(
        self,
        arrays: Sequence[np.ndarray],
        shard_of_row: np.ndarray | Sequence[int] | None = None,
        row_in_shard: np.ndarray | Sequence[int] | None = None,
    ) -> None:
        if not arrays:
            raise ValueError("ShardedArray needs at least one array")
        item_shape = tuple(arrays[0].shape[1:])
        dtype = arrays[0].dtype
        for k, a in enumerate(arrays):
            if a.ndim < 1 or tuple(a.shape[1:]) != item_shape or a.dtype != dtype:
                raise ValueError(
                    f"array {k} has shape {a.shape} / dtype {a.dtype}; expected "
                    f"[n, {', '.join(map(str, item_shape))}] / {dtype}"
                )
        self._arrays: tuple[np.ndarray, ...] = tuple(arrays)
        self._item_shape: tuple[int, ...] = item_shape
        self._dtype: np.dtype = dtype
        if (shard_of_row is None) != (row_in_shard is None):
            raise ValueError("give both shard_of_row and row_in_shard, or neither")
        if shard_of_row is None or row_in_shard is None:
            lengths = [len(a) for a in arrays]
            which = np.repeat(np.arange(len(arrays), dtype=np.int64), lengths)
            rows = np.concatenate([np.arange(n, dtype=np.int64) for n in lengths])
        else:
            which = np.asarray(shard_of_row, dtype=np.int64).reshape(-1)
            rows = np.asarray(row_in_shard, dtype=np.int64).reshape(-1)
            if which.shape != rows.shape:
                raise ValueError("shard_of_row and row_in_shard differ in length")
            if which.size:
                if which.min() < 0 or which.max() >= len(arrays):
                    raise ValueError("shard_of_row refers to a missing array")
                sizes = np.array([len(a) for a in arrays], dtype=np.int64)
                if rows.min() < 0 or np.any(rows >= sizes[which]):
                    raise ValueError("row_in_shard is out of range for its array")
        self._which: np.ndarray = which  # [N] shard of each row
        self._rows: np.ndarray = rows  # [N] row within that shard

    @property
    def shape(self) -> tuple[int, ...]:
        return (len(self._which), *self._item_shape)

    @property
    def dtype(self) -> np.dtype:
        return self._dtype

    @property
    def ndim(self) -> int:
        return 1 + len(self._item_shape)

    @property
    def size(self) -> int:
        return int(np.prod(self.shape))

    @property
    def arrays(self) -> tuple[np.ndarray, ...]:
        """The per-shard arrays (memory-mapped when loaded with ``mmap=True``)."""
        return self._arrays

    def __len__(self) -> int:
        return len(self._which)

    def __repr__(self) -> str:
        return f"ShardedArray(shape={self.shape}, dtype={self.dtype}, shards={len(self._arrays)})"

    def __iter__(self) -> Iterator[np.ndarray]:
        for i in range(len(self)):
            yield self[i]

    def __array__(self, dtype: Any = None, copy: bool | None = None) -> np.ndarray:
        if copy is False:
            raise ValueError("ShardedArray cannot be converted to an array without a copy")
        out = self[:]
        return out if dtype is None else out.astype(dtype, copy=False)

    def __getitem__(self, key: Any) -> np.ndarray:
        if isinstance(key, tuple):
            if not key:
                first, rest = slice(None), (slice(None),)
            elif key[0] is Ellipsis:
                first, rest = slice(None), key
            else:
                first, rest = key[0], (slice(None), *key[1:])
            for k in rest:
                if not (k is Ellipsis or isinstance(k, (slice, int, np.integer))):
                    raise IndexError(
                        "ShardedArray supports only ints and slices after the first axis, "
                        f"got {type(k).__name__}"
                    )
        else:
            first, rest = key, (slice(None),)

        n = len(self)
        if isinstance(first, (int, np.integer)) and not isinstance(first, bool):
            i = int(first)
            if not -n <= i < n:
                raise IndexError(f"index {i} is out of bounds for axis 0 with size {n}")
            i %= n
            row = self._arrays[self._which[i]][self._rows[i]]
            return np.array(row[rest[1:]])
        sel = self._resolve_axis0(first)
        template = np.empty((0, *self._item_shape), dtype=self._dtype)[rest]
        out = np.empty((len(sel), *template.shape[1:]), dtype=self._dtype)
        if len(sel) == 0:
            return out
        which = self._which[sel]
        rows = self._rows[sel]
        for s in np.unique(which):
            pos = np.flatnonzero(which == s)
            out[pos] = self._arrays[s][rows[pos]][rest]
        return out

    def _resolve_axis0(self, key: Any) -> np.ndarray:
        """Turn an axis-0 key (slice, int list/array, bool mask) into [M] row indices >= 0."""
        n = len(self)
        if isinstance(key, slice):
            return np.arange(n, dtype=np.int64)[key]
        if key is Ellipsis:
            return np.arange(n, dtype=np.int64)
        idx = np.asarray(key)
        if idx.dtype == np.bool_:
            if idx.shape != (n,):
                raise IndexError(f"boolean index has shape {idx.shape}; expected ({n},)")
            return np.flatnonzero(idx)
        if idx.size == 0:
            return np.zeros(0, dtype=np.int64)
        if not np.issubdtype(idx.dtype, np.integer) or idx.ndim != 1:
            raise IndexError(
                "ShardedArray rows must be selected by int, slice, 1-D int list/array or "
                f"bool mask; got {type(key).__name__}"
            )
        idx = idx.astype(np.int64)
        if idx.min() < -n or idx.max() >= n:
            raise IndexError(f"index out of bounds for axis 0 with size {n}")
        return np.where(idx < 0, idx + n, idx)


# --------------------------------------------------------------------------- loaded features


@dataclass
class LayerFeatures:
    """Features of one intermediate transformer block."""

    cls: np.ndarray  # [N, D]
    patches: np.ndarray | ShardedArray | None  # [N, D, h, w]
    patch_mean: np.ndarray | None  # [N, D]


@dataclass
class Features:
    """A finished store, rows in index order (the order given to ``finalize``)."""

    paths: list[str]
    cls: np.ndarray  # [N, D]
    patches: ShardedArray | np.ndarray | None  # [N, D, h, w]; lazy when memory-mapped
    patch_mean: np.ndarray | None  # [N, D]
    layers: dict[int, LayerFeatures] | None  # block index -> features; None when none stored
    meta: dict  # contents of meta.json (format, version and the caller's meta)
    rejects: list[tuple[str, str]]  # (path, reason)

    def __len__(self) -> int:
        return len(self.paths)


@dataclass(frozen=True)
class StoreSummary:
    """Counts over the ``order`` given to ``finalize`` (duplicates counted once)."""

    encoded: int
    rejected: int
    missing: int


# --------------------------------------------------------------------------- file helpers


def _read_csv(path: Path, header: Sequence[str]) -> list[list[str]]:
    with open(path, newline="", encoding="utf-8") as f:
        rows = list(csv.reader(f))
    if not rows or rows[0] != list(header):
        raise ValueError(f"{path}: expected a CSV with header {','.join(header)}")
    return rows[1:]


def _read_rejects_log(path: Path) -> list[tuple[str, str]]:
    """(path, reason) per well-formed line of rejects.jsonl; a torn line (kill) is skipped."""
    if not path.exists():
        return []
    out: list[tuple[str, str]] = []
    with open(path, encoding="utf-8", errors="replace") as f:
        for line in f:
            try:
                rec = json.loads(line)
                out.append((str(rec["path"]), str(rec["reason"])))
            except (json.JSONDecodeError, KeyError, TypeError):
                continue
    return out


def _shard_dirs(shards_dir: Path) -> list[Path]:
    """Finished shard directories, in the order they were written."""
    if not shards_dir.is_dir():
        return []
    found = [p for p in shards_dir.iterdir() if p.is_dir() and p.name.isdigit()]
    return sorted(found, key=lambda p: int(p.name))


def _shard_keys(shard: Path) -> list[str]:
    return sorted(p.stem for p in shard.glob("*.npy"))


def _read_spec(shard: Path) -> dict[str, tuple[tuple[int, ...], np.dtype]]:
    """key -> (row shape, dtype) of a finished shard's arrays."""
    spec = {}
    for key in _shard_keys(shard):
        a = np.load(shard / f"{key}.npy", mmap_mode="r")
        spec[key] = (tuple(a.shape[1:]), a.dtype)
    return spec


def _delete_store_files(store: Path) -> None:
    """Delete a store's files (known names only; ``meta.json`` last, the lock left to its
    holder): what is left after its shards were moved elsewhere."""
    for name in (_REJECTS_LOG, _INDEX_FILE, _REJECTS_FILE):
        (store / name).unlink(missing_ok=True)
    for leftover in store.glob(TMP_PREFIX + "*"):
        if leftover.is_file():
            leftover.unlink()
    if (store / _SHARDS_DIR).is_dir():
        shutil.rmtree(store / _SHARDS_DIR)
    (store / _META_FILE).unlink(missing_ok=True)
    fsync_dir(store)


def _describe_differences(stored: dict, given: dict, keys: Sequence[str]) -> str:
    unset = "<unset>"
    return "; ".join(
        f"{k}: store has {stored.get(k, unset)!r}, given {given.get(k, unset)!r}" for k in keys
    )


def _read_meta(out_dir: Path) -> dict:
    meta_path = out_dir / _META_FILE
    try:
        stored = json.loads(meta_path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise StoreMismatchError(f"{out_dir} is not a raddino features store ({e})") from e
    if not isinstance(stored, dict) or stored.get("format") != FORMAT_NAME:
        raise StoreMismatchError(
            f"{out_dir} is not a raddino features store ({meta_path} has no "
            f'"format": "{FORMAT_NAME}")'
        )
    if stored.get("version") != FORMAT_VERSION:
        raise StoreMismatchError(
            f"{out_dir} is a features store of version {stored.get('version')!r}; "
            f"this raddino reads version {FORMAT_VERSION}"
        )
    return stored


def _check_key(key: str) -> None:
    if not _KEY_RE.match(key):
        raise ValueError(
            f"unknown feature key {key!r}; expected cls, patches, patch_mean or "
            "layer{k}_cls / layer{k}_patches / layer{k}_patch_mean"
        )


# --------------------------------------------------------------------------- writer


class FeatureStoreWriter:
    """Writes (or resumes) a features store shard by shard; see the module docstring for the layout.

    ``done`` holds the paths in finished shards or rejected (as of opening, plus since); buffered
    rows join it once their shard is on disk. Use ``finalize(order)`` to write the index.

    One writer per store: the writer holds the directory's :class:`raddino.output_lock.OutputLock`
    from opening until ``finalize`` or ``close`` (leaving a ``with`` block closes); a second
    writer meanwhile, in this process or another, gets ``OutputInUseError``.

    Reopening a store compares ``meta`` with the stored meta, key by key, except ``info_keys``:
    those are written when the store is created and never compared (e.g. the path the model
    was given as, when the model is identified by its weights' hash).
    """

    def __init__(
        self,
        out_dir: str | Path,
        meta: dict,
        shard_size: int = 1024,
        *,
        info_keys: Sequence[str] = (),
    ) -> None:
        if shard_size < 1:
            raise ValueError(f"shard_size must be >= 1, got {shard_size}")
        for k in _RESERVED_META_KEYS:
            if k in meta:
                raise ValueError(f"meta key {k!r} is reserved by the store format")
        self.out_dir: Path = Path(out_dir)
        self.shard_size: int = shard_size
        self.meta: dict = json.loads(json.dumps(meta))  # normalised as stored (tuples -> lists)
        self.info_keys: frozenset[str] = frozenset(info_keys)
        self._shards_dir: Path = self.out_dir / _SHARDS_DIR
        self._rejects_log: Path = self.out_dir / _REJECTS_LOG
        self._lock = OutputLock(self.out_dir)
        if self.out_dir.exists() and not self.out_dir.is_dir():
            raise StoreMismatchError(f"{self.out_dir} exists and is not a directory")
        self._lock.acquire()  # before anything in the directory is written or deleted
        try:
            self._open()
        except BaseException:
            self._lock.release()
            raise

    def _open(self) -> None:
        """Create or check the store, delete a killed run's leftovers, read what is done."""
        self._open_or_create()
        for leftover in self._shards_dir.glob(TMP_PREFIX + "*"):
            if leftover.is_dir():
                shutil.rmtree(leftover)
            else:
                leftover.unlink()
        for leftover in self.out_dir.glob(TMP_PREFIX + "*"):
            if leftover.is_file():
                leftover.unlink()
        self._repair_rejects_log()

        shards = _shard_dirs(self._shards_dir)
        self._next_shard: int = int(shards[-1].name) + 1 if shards else 0
        self.done: set[str] = set()
        for shard in shards:
            self.done.update(json.loads((shard / _PATHS_FILE).read_text(encoding="utf-8")))
        self.done.update(p for p, _ in _read_rejects_log(self._rejects_log))

        # key -> (item shape, dtype); fixed by the first shard on disk or the first add()
        self._spec: dict[str, tuple[tuple[int, ...], np.dtype]] | None = (
            _read_spec(shards[0]) if shards else None
        )
        self._buf_paths: list[str] = []
        self._buf: dict[str, list[np.ndarray]] = {}
        self._index_stale: bool = False  # index.csv/rejects.csv removed once the store changes
        self._finalized: bool = False

    # ----------------------------------------------------------------- opening

    def _open_or_create(self) -> None:
        d = self.out_dir
        if d.exists() and not d.is_dir():
            raise StoreMismatchError(f"{d} exists and is not a directory")
        if (d / _META_FILE).exists():
            stored = _read_meta(d)
            caller = {k: v for k, v in stored.items() if k not in _RESERVED_META_KEYS}
            differing = self._differing_keys(caller)
            if differing:
                raise StoreMismatchError(
                    f"features store {d} was written with different settings: "
                    + _describe_differences(caller, self.meta, differing)
                    + ". Use another output directory, or the settings it was created with.",
                    stored=caller,
                    differing=differing,
                )
            self._shards_dir.mkdir(exist_ok=True)
            return
        if d.exists():
            entries = [
                p for p in d.iterdir() if not (p.name.startswith(TMP_PREFIX) or is_lock_file(p))
            ]
            if entries:
                raise StoreMismatchError(
                    f"{d} is not empty and is not a raddino features store (no {_META_FILE}); "
                    "choose an empty or new output directory"
                )
        d.mkdir(parents=True, exist_ok=True)
        header = {"format": FORMAT_NAME, "version": FORMAT_VERSION, **self.meta}
        write_bytes_atomic(d / _META_FILE, (json.dumps(header, indent=2) + "\n").encode("utf-8"))
        self._shards_dir.mkdir(exist_ok=True)
        fsync_dir(d)

    def _differing_keys(self, stored: dict) -> list[str]:
        """Keys of ``stored`` (a store's meta) and ours whose values differ, info keys aside."""
        return [
            k
            for k in sorted(set(stored) | set(self.meta))
            if k not in self.info_keys and stored.get(k, _MISSING) != self.meta.get(k, _MISSING)
        ]

    def _repair_rejects_log(self) -> None:
        """Drop a torn last line of rejects.jsonl so new lines start on a line of their own."""
        log = self._rejects_log
        if not log.exists():
            return
        data = log.read_bytes()
        if data and not data.endswith(b"\n"):
            with open(log, "r+b") as f:
                f.truncate(data.rfind(b"\n") + 1)
                f.flush()
                os.fsync(f.fileno())

    # ----------------------------------------------------------------- writing

    def add(self, paths: list[str], arrays: dict[str, np.ndarray]) -> None:
        """Buffer ``len(paths)`` rows; ``arrays[key]`` is [len(paths), ...], same keys every call.

        Keys: ``cls`` [n, D] (required), ``patches`` [n, D, h, w], ``patch_mean`` [n, D], and the
        same with a ``layer{k}_`` prefix (``layer{k}_cls`` required for each layer k used).
        Writes a shard each time ``shard_size`` rows are buffered.
        """
        if self._finalized:
            raise RuntimeError("add() after finalize()")
        if not self._lock.held:
            raise RuntimeError("add() after close()")
        if isinstance(paths, str):
            raise TypeError("paths must be a list of str, not a str")
        paths = [str(p) for p in paths]
        spec = self._validate(paths, arrays)
        if self._spec is None:
            self._spec = spec
        if not paths:
            return
        self._buf_paths.extend(paths)
        for key in spec:
            # copy: the caller may reuse its batch buffers
            self._buf.setdefault(key, []).append(np.array(arrays[key], copy=True))
        while len(self._buf_paths) >= self.shard_size:
            self._write_shard(self.shard_size)

    def _validate(
        self, paths: list[str], arrays: dict[str, np.ndarray]
    ) -> dict[str, tuple[tuple[int, ...], np.dtype]]:
        for key in arrays:
            _check_key(key)
        if "cls" not in arrays:
            raise ValueError("arrays must contain 'cls'")
        for key in arrays:
            m = _KEY_RE.match(key)
            if m and m["layer"] is not None and f"layer{m['layer']}_cls" not in arrays:
                raise ValueError(f"arrays has {key!r} but not 'layer{m['layer']}_cls'")
        spec: dict[str, tuple[tuple[int, ...], np.dtype]] = {}
        for key, value in arrays.items():
            a = np.asarray(value)
            if a.ndim < 1 or a.shape[0] != len(paths):
                raise ValueError(
                    f"arrays[{key!r}] has shape {a.shape}; its first dim must be "
                    f"len(paths) = {len(paths)}"
                )
            spec[key] = (tuple(a.shape[1:]), a.dtype)
        if self._spec is not None:
            if set(spec) != set(self._spec):
                raise ValueError(
                    f"arrays keys {sorted(spec)} differ from the store's keys {sorted(self._spec)}"
                )
            for key, (shape, dtype) in spec.items():
                if (shape, dtype) != self._spec[key]:
                    want_shape, want_dtype = self._spec[key]
                    raise ValueError(
                        f"arrays[{key!r}] rows have shape {shape} / dtype {dtype}; the store "
                        f"holds {want_shape} / {want_dtype}"
                    )
        return spec

    def add_reject(self, path: str, reason: str) -> None:
        """Record an unreadable input; the line is on disk when this returns."""
        if self._finalized:
            raise RuntimeError("add_reject() after finalize()")
        if not self._lock.held:
            raise RuntimeError("add_reject() after close()")
        self._invalidate_index()
        line = json.dumps({"path": str(path), "reason": str(reason)}) + "\n"
        with open(self._rejects_log, "ab") as f:
            f.write(line.encode("utf-8"))
            f.flush()
            os.fsync(f.fileno())
        self.done.add(str(path))

    def flush(self) -> None:
        """Write all buffered rows as one shard now (no-op when nothing is buffered)."""
        if self._buf_paths:
            self._write_shard(len(self._buf_paths))

    def _write_shard(self, n: int) -> None:
        """Write the first ``n`` buffered rows as the next shard: temp dir, fsync, rename."""
        self._invalidate_index()
        paths, self._buf_paths = self._buf_paths[:n], self._buf_paths[n:]
        rows: dict[str, np.ndarray] = {}
        for key, chunks in self._buf.items():
            whole = chunks[0] if len(chunks) == 1 else np.concatenate(chunks, axis=0)
            rows[key] = whole[:n]
            self._buf[key] = [whole[n:].copy()] if len(whole) > n else []

        name = f"{self._next_shard:05d}"
        self._next_shard += 1
        tmp = self._shards_dir / (TMP_PREFIX + name)
        if tmp.exists():
            shutil.rmtree(tmp)
        tmp.mkdir()
        with open(tmp / _PATHS_FILE, "wb") as f:
            f.write(json.dumps(paths).encode("utf-8"))
            f.flush()
            os.fsync(f.fileno())
        for key, a in rows.items():
            with open(tmp / f"{key}.npy", "wb") as f:
                np.save(f, np.ascontiguousarray(a), allow_pickle=False)
                f.flush()
                os.fsync(f.fileno())
        fsync_dir(tmp)
        os.rename(tmp, self._shards_dir / name)
        fsync_dir(self._shards_dir)
        self.done.update(paths)

    def _invalidate_index(self) -> None:
        """The store is changing: an index from an earlier run no longer describes it."""
        if self._index_stale:
            return
        for name in (_INDEX_FILE, _REJECTS_FILE):
            (self.out_dir / name).unlink(missing_ok=True)
        fsync_dir(self.out_dir)
        self._index_stale = True

    # ----------------------------------------------------------------- absorbing other stores

    def absorb(self, sources: Sequence[str | Path], order: Sequence[str] = ()) -> int:
        """Move the finished shards and the rejects of the stores ``sources`` into this store,
        then delete the sources; returns the number of shards moved.

        The sources are stores written with this store's meta (info keys aside), such as the
        stores of the processes of a multi-process encode (:mod:`raddino.features.ranks`).
        Shards are renamed, not copied, in the order of their first path in ``order`` (paths
        not in it last), so that ``index.csv`` lists the shards in the order one writer would
        have written them. Each source's lock is taken first: a source still being written is
        refused with ``OutputInUseError``. Killed at any point, every row is in exactly one
        shard of this store or a source and every reject in one or both; absorbing again
        finishes the move.
        """
        if self._finalized:
            raise RuntimeError("absorb() after finalize()")
        if not self._lock.held:
            raise RuntimeError("absorb() after close()")
        sources = [Path(source) for source in sources]
        end = len(order)
        position: dict[str, int] = {}
        for i, p in enumerate(order):
            position.setdefault(str(p), i)
        locks: list[OutputLock] = []
        try:
            shards: list[tuple[int, int, int, Path, list[str]]] = []
            rejects: list[tuple[str, str]] = []
            for k, source in enumerate(sources):
                locks.append(OutputLock(source).acquire())
                if not self._check_source(source):
                    continue
                rejects += _read_rejects_log(source / _REJECTS_LOG)
                for shard in _shard_dirs(source / _SHARDS_DIR):
                    paths = json.loads((shard / _PATHS_FILE).read_text(encoding="utf-8"))
                    first = position.get(paths[0], end) if paths else end
                    shards.append((first, k, int(shard.name), shard, paths))
            new_rejects = [(p, reason) for p, reason in rejects if p not in self.done]
            if shards or new_rejects:
                self._invalidate_index()
            if new_rejects:  # before the sources are deleted: a kill leaves them in both
                lines = "".join(
                    json.dumps({"path": p, "reason": reason}) + "\n" for p, reason in new_rejects
                )
                with open(self._rejects_log, "ab") as f:
                    f.write(lines.encode("utf-8"))
                    f.flush()
                    os.fsync(f.fileno())
                self.done.update(p for p, _ in new_rejects)
            moved = 0
            for *_, shard, paths in sorted(shards, key=lambda item: item[:3]):
                if paths and all(p in self.done for p in paths):
                    continue  # already here: deleted with its source
                target = self._shards_dir / f"{self._next_shard:05d}"
                self._next_shard += 1
                os.rename(shard, target)
                fsync_dir(self._shards_dir)
                fsync_dir(shard.parent)
                self.done.update(paths)
                if self._spec is None:
                    self._spec = _read_spec(target)
                moved += 1
            for source in sources:
                _delete_store_files(source)
        finally:
            for lock in locks:
                lock.release()
        for source in sources:
            with contextlib.suppress(OSError):  # something else in it: left for the user
                source.rmdir()
        return moved

    def _check_source(self, source: Path) -> bool:
        """True when ``source`` is a store with our meta; False when it holds nothing yet (its
        writer was killed before writing its meta); StoreMismatchError otherwise."""
        if not (source / _META_FILE).exists():
            if any(
                not (p.name.startswith(TMP_PREFIX) or is_lock_file(p)) for p in source.iterdir()
            ):
                raise StoreMismatchError(f"{source} is not a raddino features store")
            return False
        stored = {k: v for k, v in _read_meta(source).items() if k not in _RESERVED_META_KEYS}
        differing = self._differing_keys(stored)
        if differing:
            raise StoreMismatchError(
                f"{source} was written with other settings than {self.out_dir}: "
                + _describe_differences(stored, self.meta, differing),
                stored=stored,
                differing=differing,
            )
        return True

    # ----------------------------------------------------------------- finishing

    def finalize(self, order: list[str]) -> StoreSummary:
        """Flush, then write index.csv and rejects.csv for the paths of ``order``, in that order;
        releases the store's lock (taking it again first when the writer was closed)."""
        if not self._lock.held:
            self._lock.acquire()
        try:
            return self._write_index(order)
        finally:
            self._lock.release()

    def _write_index(self, order: list[str]) -> StoreSummary:
        self.flush()
        order = list(dict.fromkeys(str(p) for p in order))  # each path once, first position kept

        location: dict[str, tuple[str, int]] = {}
        for shard in _shard_dirs(self._shards_dir):
            shard_paths = json.loads((shard / _PATHS_FILE).read_text(encoding="utf-8"))
            for row, p in enumerate(shard_paths):
                location.setdefault(p, (shard.name, row))
        reasons: dict[str, str] = {}
        for p, reason in _read_rejects_log(self._rejects_log):
            reasons.setdefault(p, reason)

        index_rows = [(p, *location[p]) for p in order if p in location]
        reject_rows = [(p, reasons[p]) for p in order if p not in location and p in reasons]
        write_bytes_atomic(self.out_dir / _REJECTS_FILE, csv_bytes(("path", "reason"), reject_rows))
        write_bytes_atomic(
            self.out_dir / _INDEX_FILE, csv_bytes(("path", "shard", "row"), index_rows)
        )
        self._finalized = True
        return StoreSummary(
            encoded=len(index_rows),
            rejected=len(reject_rows),
            missing=len(order) - len(index_rows) - len(reject_rows),
        )

    def close(self) -> None:
        """Write the buffered rows as a shard and release the store's lock."""
        try:
            if not self._finalized and self._lock.held:
                self.flush()
        finally:
            self._lock.release()

    def __enter__(self) -> FeatureStoreWriter:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        """Keep buffered rows on leaving the block (also on error) and release the lock;
        finalize stays explicit."""
        self.close()


# --------------------------------------------------------------------------- reader


def load_features(path: str | Path, *, mmap: bool = True) -> Features:
    """Read a finished store; rows in index order.

    ``cls`` / ``patch_mean`` / layer ``cls`` and ``patch_mean`` are concrete [N, ...] arrays;
    ``patches`` (and layer patches) are ``ShardedArray``s over memory-mapped shards when ``mmap``,
    else concrete [N, D, h, w] arrays.
    """
    out_dir = Path(path)
    if not (out_dir / _META_FILE).exists():
        raise FileNotFoundError(f"{out_dir} is not a raddino features store (no {_META_FILE})")
    meta = _read_meta(out_dir)
    index_path = out_dir / _INDEX_FILE
    if not index_path.exists():
        raise FileNotFoundError(
            f"features store {out_dir} is not finished; re-run raddino encode to complete it "
            f"(it has no {_INDEX_FILE})"
        )
    index = _read_csv(index_path, ("path", "shard", "row"))
    paths = [r[0] for r in index]
    rejects_path = out_dir / _REJECTS_FILE
    rejects = (
        [(r[0], r[1]) for r in _read_csv(rejects_path, ("path", "reason"))]
        if rejects_path.exists()
        else []
    )

    shards_dir = out_dir / _SHARDS_DIR
    shard_names = list(dict.fromkeys(r[1] for r in index))  # shards used, first-use order
    if not shard_names:
        on_disk = _shard_dirs(shards_dir)
        shard_names = [on_disk[0].name] if on_disk else []
    if not shard_names:  # nothing was ever encoded
        return Features(paths, np.zeros((0, 0), np.float32), None, None, None, meta, rejects)
    slot = {name: i for i, name in enumerate(shard_names)}
    shard_of_row = np.array([slot[r[1]] for r in index], dtype=np.int64)
    row_in_shard = np.array([int(r[2]) for r in index], dtype=np.int64)

    keys = _shard_keys(shards_dir / shard_names[0])
    for name in shard_names[1:]:
        if _shard_keys(shards_dir / name) != keys:
            raise ValueError(
                f"{out_dir}: shard {name} holds different arrays than {shard_names[0]}"
            )

    def load(key: str) -> np.ndarray | ShardedArray:
        per_shard = [
            np.load(shards_dir / name / f"{key}.npy", mmap_mode="r" if mmap else None)
            for name in shard_names
        ]
        lazy = ShardedArray(per_shard, shard_of_row, row_in_shard)
        if mmap and key.endswith("patches"):
            return lazy
        return lazy[:]

    arrays = {key: load(key) for key in keys}
    layer_ids = sorted({int(m["layer"]) for k in keys if (m := _KEY_RE.match(k)) and m["layer"]})
    layers = {
        k: LayerFeatures(
            cls=np.asarray(arrays[f"layer{k}_cls"]),
            patches=arrays.get(f"layer{k}_patches"),
            patch_mean=_concrete(arrays.get(f"layer{k}_patch_mean")),
        )
        for k in layer_ids
    }
    return Features(
        paths=paths,
        cls=np.asarray(arrays["cls"]),
        patches=arrays.get("patches"),
        patch_mean=_concrete(arrays.get("patch_mean")),
        layers=layers or None,
        meta=meta,
        rejects=rejects,
    )


def _concrete(a: np.ndarray | ShardedArray | None) -> np.ndarray | None:
    return None if a is None else np.asarray(a)
