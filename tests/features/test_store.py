"""Tests of the on-disk features store (writer, reader, lazy sharded arrays)."""

from __future__ import annotations

import csv
import json
import os
from pathlib import Path

import numpy as np
import pytest

from raddino.features import (
    Features,
    FeatureStoreWriter,
    ShardedArray,
    StoreMismatchError,
    StoreSummary,
    load_features,
)
from raddino.output_lock import OutputInUseError, OutputLock

META = {"model": "rad-dino", "dtype": "float32", "image_size": 64, "layers": [3, 7]}
D, H, W = 6, 2, 3


def make_arrays(n: int, seed: int) -> dict[str, np.ndarray]:
    """Random feature rows for ``n`` images: top level plus two layers."""
    rng = np.random.default_rng(seed)
    out: dict[str, np.ndarray] = {
        "cls": rng.standard_normal((n, D), dtype=np.float32),
        "patches": rng.standard_normal((n, D, H, W), dtype=np.float32),
        "patch_mean": rng.standard_normal((n, D), dtype=np.float32),
    }
    for k in (3, 7):
        out[f"layer{k}_cls"] = rng.standard_normal((n, D), dtype=np.float32)
        out[f"layer{k}_patches"] = rng.standard_normal((n, D, H, W), dtype=np.float32)
        out[f"layer{k}_patch_mean"] = rng.standard_normal((n, D), dtype=np.float32)
    return out


def take(arrays: dict[str, np.ndarray], idx: np.ndarray | slice) -> dict[str, np.ndarray]:
    return {k: v[idx] for k, v in arrays.items()}


def assert_features_equal(a: Features, b: Features) -> None:
    assert a.paths == b.paths
    assert a.rejects == b.rejects
    np.testing.assert_array_equal(a.cls, b.cls)
    np.testing.assert_array_equal(np.asarray(a.patches), np.asarray(b.patches))
    np.testing.assert_array_equal(a.patch_mean, b.patch_mean)
    assert a.layers is not None and b.layers is not None
    assert a.layers.keys() == b.layers.keys()
    for k in a.layers:
        np.testing.assert_array_equal(a.layers[k].cls, b.layers[k].cls)
        np.testing.assert_array_equal(
            np.asarray(a.layers[k].patches), np.asarray(b.layers[k].patches)
        )
        np.testing.assert_array_equal(a.layers[k].patch_mean, b.layers[k].patch_mean)


def write_store(out: Path, paths: list[str], arrays: dict[str, np.ndarray], order: list[str]):
    """Write ``paths`` in batches of 4 with shard_size 5, then finalize with ``order``."""
    w = FeatureStoreWriter(out, META, shard_size=5)
    for start in range(0, len(paths), 4):
        w.add(paths[start : start + 4], take(arrays, slice(start, start + 4)))
    return w.finalize(order)


@pytest.fixture
def data() -> tuple[list[str], dict[str, np.ndarray]]:
    n = 23  # not a multiple of the shard size (5) nor of the batch size (4)
    return [f"img/{i:03d}.dcm" for i in range(n)], make_arrays(n, seed=0)


def test_round_trip_over_several_shards_is_exact_and_in_callers_order(tmp_path, data):
    paths, arrays = data
    rng = np.random.default_rng(1)
    perm = rng.permutation(len(paths))
    order = [paths[i] for i in perm]

    summary = write_store(tmp_path / "store", paths, arrays, order)

    assert summary == StoreSummary(encoded=23, rejected=0, missing=0)
    assert len(list((tmp_path / "store" / "shards").iterdir())) == 5
    feats = load_features(tmp_path / "store")
    assert len(feats) == 23
    assert feats.paths == order
    assert feats.meta["format"] == "raddino-features"
    assert feats.meta["version"] == 1
    assert {k: feats.meta[k] for k in META} == META
    expected = take(arrays, perm)
    np.testing.assert_array_equal(feats.cls, expected["cls"])
    assert isinstance(feats.patches, ShardedArray)
    assert feats.patches.shape == (23, D, H, W)
    np.testing.assert_array_equal(np.asarray(feats.patches), expected["patches"])
    np.testing.assert_array_equal(feats.patch_mean, expected["patch_mean"])
    assert feats.layers is not None and sorted(feats.layers) == [3, 7]
    for k in (3, 7):
        layer = feats.layers[k]
        np.testing.assert_array_equal(layer.cls, expected[f"layer{k}_cls"])
        np.testing.assert_array_equal(np.asarray(layer.patches), expected[f"layer{k}_patches"])
        np.testing.assert_array_equal(layer.patch_mean, expected[f"layer{k}_patch_mean"])

    eager = load_features(tmp_path / "store", mmap=False)
    assert isinstance(eager.patches, np.ndarray)
    assert_features_equal(feats, eager)


def test_store_files_are_readable_with_plain_numpy_and_csv(tmp_path, data):
    paths, arrays = data
    write_store(tmp_path / "s", paths, arrays, paths)

    with open(tmp_path / "s" / "index.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [r["path"] for r in rows] == paths
    r = rows[17]
    cls = np.load(tmp_path / "s" / "shards" / r["shard"] / "cls.npy")
    np.testing.assert_array_equal(cls[int(r["row"])], arrays["cls"][17])
    shard_paths = json.loads((tmp_path / "s" / "shards" / r["shard"] / "paths.json").read_text())
    assert shard_paths[int(r["row"])] == paths[17]


def test_sharded_array_indexing_matches_the_concatenated_array():
    rng = np.random.default_rng(2)
    parts = [rng.standard_normal((n, 3, 2)).astype(np.float32) for n in (4, 1, 6)]
    full = np.concatenate(parts)
    lazy = ShardedArray(parts)

    assert lazy.shape == full.shape and lazy.dtype == full.dtype and lazy.ndim == 3
    assert len(lazy) == 11
    np.testing.assert_array_equal(lazy[5], full[5])
    np.testing.assert_array_equal(lazy[-1], full[-1])
    np.testing.assert_array_equal(lazy[np.int64(3)], full[3])
    np.testing.assert_array_equal(lazy[1:10:3], full[1:10:3])
    np.testing.assert_array_equal(lazy[::-2], full[::-2])
    np.testing.assert_array_equal(lazy[[9, 0, 4, 4, -2]], full[[9, 0, 4, 4, -2]])
    mask = rng.random(11) > 0.5
    np.testing.assert_array_equal(lazy[mask], full[mask])
    np.testing.assert_array_equal(lazy[[]], full[[]])
    np.testing.assert_array_equal(lazy[2:7, 1], full[2:7, 1])
    np.testing.assert_array_equal(lazy[..., 0], full[..., 0])
    np.testing.assert_array_equal(np.asarray(lazy), full)
    np.testing.assert_array_equal(np.stack(list(lazy)), full)
    with pytest.raises(IndexError):
        lazy[11]
    with pytest.raises(IndexError):
        lazy[[0, 11]]
    with pytest.raises(IndexError):
        lazy[np.ones(3, dtype=bool)]


def test_sharded_array_follows_an_explicit_row_mapping():
    parts = [np.arange(6).reshape(3, 2), np.arange(6, 10).reshape(2, 2)]
    # index order: shard1 row1, shard0 row2, shard0 row0, shard1 row0
    lazy = ShardedArray(parts, [1, 0, 0, 1], [1, 2, 0, 0])
    expected = np.array([[8, 9], [4, 5], [0, 1], [6, 7]])
    np.testing.assert_array_equal(np.asarray(lazy), expected)
    np.testing.assert_array_equal(lazy[[3, 0]], expected[[3, 0]])
    np.testing.assert_array_equal(lazy[-3], expected[-3])


def test_patches_are_memory_mapped_per_shard(tmp_path, data):
    paths, arrays = data
    write_store(tmp_path / "s", paths, arrays, paths)

    feats = load_features(tmp_path / "s")
    assert isinstance(feats.patches, ShardedArray)
    assert len(feats.patches.arrays) == 5
    assert all(isinstance(a, np.memmap) for a in feats.patches.arrays)
    assert feats.layers is not None
    layer_patches = feats.layers[3].patches
    assert isinstance(layer_patches, ShardedArray)
    assert all(isinstance(a, np.memmap) for a in layer_patches.arrays)
    assert not isinstance(feats.cls, np.memmap)  # gathered into a concrete array


def test_resume_after_kill_skips_done_paths_and_matches_an_uninterrupted_store(tmp_path, data):
    paths, arrays = data
    reject_paths = ["bad/a.dcm", "bad/b.dcm"]
    order = paths[:12] + reject_paths + paths[12:]

    # uninterrupted reference run
    ref_dir = tmp_path / "ref"
    w = FeatureStoreWriter(ref_dir, META, shard_size=5)
    w.add(paths[:10], take(arrays, slice(0, 10)))
    w.add_reject("bad/a.dcm", "cannot decode")
    w.add(paths[10:], take(arrays, slice(10, None)))
    w.add_reject("bad/b.dcm", "empty pixel data")
    w.finalize(order)

    # interrupted run: 2 finished shards + 2 buffered rows lost, one reject, then "kill -9"
    run_dir = tmp_path / "run"
    w = FeatureStoreWriter(run_dir, META, shard_size=5)
    w.add(paths[:12], take(arrays, slice(0, 12)))
    w.add_reject("bad/a.dcm", "cannot decode")
    assert w.done == set(paths[:10]) | {"bad/a.dcm"}
    del w
    tmp_shard = run_dir / "shards" / ".tmp-00002"
    tmp_shard.mkdir()
    (tmp_shard / "cls.npy").write_bytes(b"\x93NUMPY partial")
    with open(run_dir / "rejects.jsonl", "a") as f:
        f.write('{"path": "bad/b.dcm", "rea')
    assert not (run_dir / "index.csv").exists()

    w = FeatureStoreWriter(run_dir, META, shard_size=5)
    assert w.done == set(paths[:10]) | {"bad/a.dcm"}
    assert not tmp_shard.exists()
    todo = [i for i, p in enumerate(paths) if p not in w.done]
    assert todo == list(range(10, 23))
    w.add([paths[i] for i in todo], take(arrays, np.array(todo)))
    w.add_reject("bad/b.dcm", "empty pixel data")
    summary = w.finalize(order)

    assert summary == StoreSummary(encoded=23, rejected=2, missing=0)
    lines = (run_dir / "rejects.jsonl").read_text().splitlines()
    assert [json.loads(x)["path"] for x in lines] == reject_paths
    assert_features_equal(load_features(run_dir), load_features(ref_dir))


def test_duplicate_path_in_two_shards_is_indexed_once_from_the_first(tmp_path):
    arrays = make_arrays(3, seed=3)
    w = FeatureStoreWriter(tmp_path / "s", META, shard_size=2)
    w.add(["a", "b"], take(arrays, slice(0, 2)))
    w.add(["a"], take(arrays, slice(2, 3)))
    summary = w.finalize(["b", "a", "a", "c"])

    assert summary == StoreSummary(encoded=2, rejected=0, missing=1)
    feats = load_features(tmp_path / "s")
    assert feats.paths == ["b", "a"]
    np.testing.assert_array_equal(feats.cls, arrays["cls"][[1, 0]])


def test_rejects_are_deduplicated_in_callers_order(tmp_path):
    arrays = make_arrays(1, seed=4)
    w = FeatureStoreWriter(tmp_path / "s", META)
    w.add_reject("x", "unreadable")
    w.add_reject("y", "not a radiograph")
    w.add_reject("x", "unreadable again")
    w.add_reject("z", "never asked for")
    w.add(["ok"], arrays)
    w.add_reject("ok", "spurious")  # encoded wins over rejected
    summary = w.finalize(["y", "ok", "x", "y", "gone"])

    assert summary == StoreSummary(encoded=1, rejected=2, missing=1)
    feats = load_features(tmp_path / "s")
    assert feats.rejects == [("y", "not a radiograph"), ("x", "unreadable")]
    with open(tmp_path / "s" / "rejects.csv", newline="") as f:
        assert list(csv.reader(f)) == [
            ["path", "reason"],
            ["y", "not a radiograph"],
            ["x", "unreadable"],
        ]


def test_reopening_with_different_meta_names_each_differing_key(tmp_path):
    FeatureStoreWriter(tmp_path / "s", META).flush()
    FeatureStoreWriter(tmp_path / "s", dict(META))  # same meta: fine

    changed = {**META, "model": "dinov2-small", "image_size": 128}
    with pytest.raises(StoreMismatchError) as err:
        FeatureStoreWriter(tmp_path / "s", changed)
    msg = str(err.value)
    assert "model" in msg and "rad-dino" in msg and "dinov2-small" in msg
    assert "image_size" in msg and "64" in msg and "128" in msg
    assert "dtype" not in msg

    with pytest.raises(StoreMismatchError, match="patch_mode"):
        FeatureStoreWriter(tmp_path / "s", {**META, "patch_mode": "mean"})


def test_non_empty_directory_that_is_not_a_store_is_refused(tmp_path):
    (tmp_path / "photos").mkdir()
    (tmp_path / "photos" / "holiday.jpg").write_bytes(b"jpeg")
    with pytest.raises(StoreMismatchError, match="not a raddino features store"):
        FeatureStoreWriter(tmp_path / "photos", META)
    assert sorted(p.name for p in (tmp_path / "photos").iterdir()) == ["holiday.jpg"]

    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "meta.json").write_text('{"format": "something-else"}')
    with pytest.raises(StoreMismatchError):
        FeatureStoreWriter(tmp_path / "other", META)

    (tmp_path / "empty").mkdir()
    FeatureStoreWriter(tmp_path / "empty", META)  # an empty directory is fine
    assert (tmp_path / "empty" / "meta.json").exists()


def test_loading_an_unfinished_store_says_to_rerun_encode(tmp_path, data):
    paths, arrays = data
    w = FeatureStoreWriter(tmp_path / "s", META, shard_size=5)
    w.add(paths[:7], take(arrays, slice(0, 7)))
    w.flush()
    with pytest.raises(FileNotFoundError) as err:
        load_features(tmp_path / "s")
    assert str(tmp_path / "s") in str(err.value)
    assert "not finished; re-run raddino encode to complete it" in str(err.value)


def test_add_with_inconsistent_keys_or_shapes_raises(tmp_path):
    arrays = make_arrays(4, seed=5)
    w = FeatureStoreWriter(tmp_path / "s", META)
    w.add(["a", "b"], take(arrays, slice(0, 2)))
    fewer = {k: v[2:] for k, v in arrays.items() if k != "patches"}
    with pytest.raises(ValueError, match="keys"):
        w.add(["c", "d"], fewer)
    with pytest.raises(ValueError, match="first dim"):
        w.add(["c"], take(arrays, slice(2, 4)))
    wider = {**take(arrays, slice(2, 4)), "cls": np.zeros((2, D + 1), np.float32)}
    with pytest.raises(ValueError, match="cls"):
        w.add(["c", "d"], wider)
    with pytest.raises(ValueError, match="unknown feature key"):
        w.add(["c", "d"], {**take(arrays, slice(2, 4)), "tokens": arrays["cls"][2:]})
    w.add(["c", "d"], take(arrays, slice(2, 4)))  # the writer is still usable
    assert w.finalize(["a", "b", "c", "d"]).encoded == 4


def test_reopened_writer_keeps_the_key_set_of_existing_shards(tmp_path):
    arrays = make_arrays(2, seed=6)
    w = FeatureStoreWriter(tmp_path / "s", META)
    w.add(["a"], take(arrays, slice(0, 1)))
    w.close()
    w = FeatureStoreWriter(tmp_path / "s", META)
    with pytest.raises(ValueError, match="keys"):
        w.add(["b"], {"cls": arrays["cls"][1:]})


def test_resumed_writer_never_reuses_a_shard_name_and_stales_the_old_index(tmp_path):
    arrays = make_arrays(2, seed=7)
    w = FeatureStoreWriter(tmp_path / "s", META)
    w.add(["a"], take(arrays, slice(0, 1)))
    w.finalize(["a"])

    w = FeatureStoreWriter(tmp_path / "s", META)
    assert (tmp_path / "s" / "index.csv").exists()  # untouched until the store changes
    w.add(["b"], take(arrays, slice(1, 2)))
    w.flush()
    assert not (tmp_path / "s" / "index.csv").exists()
    assert sorted(p.name for p in (tmp_path / "s" / "shards").iterdir()) == ["00000", "00001"]
    w.finalize(["a", "b"])
    np.testing.assert_array_equal(load_features(tmp_path / "s").cls, arrays["cls"])


def test_writer_copies_rows_so_callers_may_reuse_their_buffers(tmp_path):
    arrays = {"cls": np.ones((2, D), np.float32)}
    with FeatureStoreWriter(tmp_path / "s", META, shard_size=10) as w:
        w.add(["a", "b"], arrays)
        arrays["cls"][:] = 7.0
    assert w.done == {"a", "b"}  # flushed on leaving the block
    w.finalize(["a", "b"])
    np.testing.assert_array_equal(load_features(tmp_path / "s").cls, np.ones((2, D)))


def test_a_second_writer_is_refused_while_the_first_is_open(tmp_path):
    arrays = make_arrays(2, seed=8)
    first = FeatureStoreWriter(tmp_path / "s", META)
    first.add(["a"], take(arrays, slice(0, 1)))
    with pytest.raises(OutputInUseError, match=f"pid {os.getpid()} on"):
        FeatureStoreWriter(tmp_path / "s", META)
    first.finalize(["a"])  # releases the store
    second = FeatureStoreWriter(tmp_path / "s", META)
    second.add(["b"], take(arrays, slice(1, 2)))
    second.finalize(["a", "b"])
    np.testing.assert_array_equal(load_features(tmp_path / "s").cls, arrays["cls"])


def test_a_refused_writer_touches_nothing_not_even_a_killed_runs_leftovers(tmp_path):
    store = tmp_path / "s"
    arrays = make_arrays(1, seed=9)
    with FeatureStoreWriter(store, META) as w:
        w.add(["a"], arrays)
    leftover = store / "shards" / ".tmp-00001"
    leftover.mkdir()  # a shard being written by the holder
    before = sorted(str(p.relative_to(store)) for p in store.rglob("*"))
    with OutputLock(store), pytest.raises(OutputInUseError):
        FeatureStoreWriter(store, META)
    assert leftover.is_dir()
    assert sorted(str(p.relative_to(store)) for p in store.rglob("*")) == before


def test_a_closed_writer_takes_no_more_rows_and_a_missing_index_says_unfinished(tmp_path):
    w = FeatureStoreWriter(tmp_path / "s", META)
    w.close()
    with pytest.raises(RuntimeError, match="after close"):
        w.add(["a"], make_arrays(1, seed=10))
    with pytest.raises(FileNotFoundError, match="not finished"):
        load_features(tmp_path / "s")


def test_info_keys_are_written_but_not_compared(tmp_path):
    meta = {**META, "model_path": "../rad-dino"}
    with FeatureStoreWriter(tmp_path / "s", meta, info_keys=("model_path",)):
        pass
    again = FeatureStoreWriter(
        tmp_path / "s", {**META, "model_path": "/abs/rad-dino"}, info_keys=("model_path",)
    )
    again.close()
    stored = json.loads((tmp_path / "s" / "meta.json").read_text())
    assert stored["model_path"] == "../rad-dino"  # as first written
    with pytest.raises(StoreMismatchError) as info:
        FeatureStoreWriter(tmp_path / "s", {**META, "model_path": "x", "dtype": "bfloat16"})
    assert info.value.differing == ("dtype", "model_path")  # compared: not an info key here
    assert info.value.stored == {**META, "model_path": "../rad-dino"}


def write_pieces(out: Path, paths: list[str], arrays: dict[str, np.ndarray]) -> list[Path]:
    """Stores of three processes under ``out``, each with part of ``paths`` (a reject each)."""
    pieces = [(0, 9), (9, 17), (17, 23)]
    stores = []
    for rank, (start, stop) in enumerate(pieces):
        store = out / "ranks" / f"rank-{rank:05d}"
        with FeatureStoreWriter(store, META, shard_size=5) as w:
            w.add(paths[start : stop - 1], take(arrays, slice(start, stop - 1)))
            w.add_reject(paths[stop - 1], f"bad {rank}")
        stores.append(store)
    return stores


def expected_after_pieces(tmp_path: Path, paths: list[str], arrays: dict[str, np.ndarray]):
    keep = [i for i in range(len(paths)) if i not in (8, 16, 22)]
    with FeatureStoreWriter(tmp_path / "one", META, shard_size=5) as w:
        w.add([paths[i] for i in keep], take(arrays, np.array(keep)))
        for rank, i in enumerate((8, 16, 22)):
            w.add_reject(paths[i], f"bad {rank}")
        w.finalize(paths)
    return load_features(tmp_path / "one")


def test_absorbed_stores_give_the_store_one_writer_writes(tmp_path, data):
    paths, arrays = data
    out = tmp_path / "store"
    FeatureStoreWriter(out, META).close()
    stores = write_pieces(out, paths, arrays)
    with FeatureStoreWriter(out, META, shard_size=5) as w:
        moved = w.absorb(reversed(stores), paths)  # shards still in the order of their paths
        assert moved == 2 + 2 + 1  # 8, 7 and 5 rows in shards of 5
        summary = w.finalize(paths)
    assert summary == StoreSummary(encoded=20, rejected=3, missing=0)
    assert_features_equal(load_features(out), expected_after_pieces(tmp_path, paths, arrays))
    with open(out / "index.csv", newline="") as f:
        shards = [row["shard"] for row in csv.DictReader(f)]
    assert shards == sorted(shards)
    assert sorted(p.name for p in out.iterdir()) == [
        "index.csv", "meta.json", "ranks", "rejects.csv", "rejects.jsonl", "shards"
    ]  # fmt: skip
    assert list((out / "ranks").iterdir()) == []  # its caller removes the folder


def test_an_absorb_killed_midway_loses_nothing_and_the_next_one_finishes(
    tmp_path, data, monkeypatch
):
    paths, arrays = data
    out = tmp_path / "store"
    FeatureStoreWriter(out, META).close()
    stores = write_pieces(out, paths, arrays)
    renames = []

    def rename_then_die(source, target):
        if len(renames) == 3:
            raise KeyboardInterrupt  # killed after three shards moved
        renames.append(target)
        os.replace(source, target)

    monkeypatch.setattr("raddino.features.store.os.rename", rename_then_die)
    with pytest.raises(KeyboardInterrupt), FeatureStoreWriter(out, META, shard_size=5) as w:
        w.absorb(stores, paths)
    monkeypatch.undo()
    assert all((store / "meta.json").exists() for store in stores)  # nothing deleted yet
    with FeatureStoreWriter(out, META, shard_size=5) as w:
        assert w.absorb(stores, paths) == 5 - 3
        w.finalize(paths)
    assert_features_equal(load_features(out), expected_after_pieces(tmp_path, paths, arrays))
    assert not any(store.exists() for store in stores)


def test_a_store_still_being_written_is_not_absorbed(tmp_path, data):
    paths, arrays = data
    out = tmp_path / "store"
    FeatureStoreWriter(out, META).close()
    stores = write_pieces(out, paths, arrays)
    with OutputLock(stores[1]), FeatureStoreWriter(out, META) as w:
        with pytest.raises(OutputInUseError):
            w.absorb(stores, paths)
        assert w.done == set()
    assert all((store / "meta.json").exists() for store in stores)


def test_a_store_of_other_settings_is_not_absorbed(tmp_path, data):
    paths, arrays = data
    other = tmp_path / "other"
    with FeatureStoreWriter(other, {**META, "dtype": "bfloat16"}) as w:
        w.add(paths[:2], take(arrays, slice(0, 2)))
    with (
        FeatureStoreWriter(tmp_path / "store", META) as w,
        pytest.raises(StoreMismatchError, match="dtype: store has 'bfloat16'"),
    ):
        w.absorb([other], paths)
    shards = sorted((other / "shards").iterdir())
    assert [json.loads((s / "paths.json").read_text()) for s in shards] == [paths[:2]]


def test_mismatch_errors_travel_to_other_processes_with_their_details():
    import pickle

    error = StoreMismatchError("differs", stored={"dtype": "float32"}, differing=("dtype",))
    again = pickle.loads(pickle.dumps(error))
    assert (str(again), again.stored, again.differing) == (
        "differs",
        {"dtype": "float32"},
        ("dtype",),
    )
