"""``raddino probe``, ``segment`` and ``compare`` end to end on tiny models and images."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from raddino.cli.main import main
from tests.conftest import SMALL_HF_CONFIG, make_hf_model


@pytest.fixture(autouse=True)
def single_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def cohort(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """60 small images: ``bright`` (planted: overall brightness), ``sex`` (F/M, random), ``age``
    (continuous, follows brightness), a disk mask; 36/12/12 split, 2 images per patient."""
    root = tmp_path_factory.mktemp("cohort")
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:70, 0:70]
    rows = []
    for i in range(60):
        patient = i // 2
        bright = patient % 2
        level = 150 if bright else 80
        disk = (yy - 35) ** 2 + (xx - 20 - 30 * (patient % 3 == 0)) ** 2 < 15**2
        image = np.clip(level + 60 * disk + rng.normal(0, 8, disk.shape), 0, 255).astype(np.uint8)
        Image.fromarray(image).save(root / f"img{i}.png")
        Image.fromarray(disk.astype(np.uint8) * 255).save(root / f"mask{i}.png")
        split = "train" if patient < 18 else ("val" if patient < 24 else "test")
        rows.append(
            {
                "path": f"img{i}.png",
                "split": split,
                "patient_id": f"p{patient}",
                "bright": str(bright) if i != 5 else "",
                "sex": "FM"[int(rng.integers(0, 2))] if split != "test" else "FM"[i % 2],
                "age": f"{40 + 30 * bright + rng.normal(0, 3):.1f}",
                "mask_disk": f"mask{i}.png",
            }
        )
    with (root / "manifest.csv").open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return root / "manifest.csv"


COMMON = ["--image-size", "56", "--workers", "0", "--no-progress", "--bootstrap", "200"]


def test_probe_writes_tables_and_reuses_cached_features(small_hf_dir, cohort, tmp_path, capsys):
    out = tmp_path / "probe"
    args = ["probe", "--model", str(small_hf_dir), "--manifest", str(cohort), "--out", str(out),
            "--targets", "bright,sex", "age", "--features", "cls+mean", *COMMON]  # fmt: skip
    assert main(args) == 0
    captured = capsys.readouterr()
    assert "encoding 60 images" in captured.err
    assert f"probe report: {out / 'probe.md'}" in captured.out
    report = json.loads((out / "probe.json").read_text())
    linear = report["protocols"]["linear"]["targets"]
    assert linear["bright"]["metrics"]["auroc"]["value"] > 0.9
    assert linear["bright"]["counts"]["train"]["known"] == 35  # one unknown label
    assert linear["sex"]["positive"] == "M"
    assert set(linear["age"]["metrics"]) == {"mae", "r2", "pearson_r"}
    assert set(report["protocols"]) == {"linear", "knn"}
    markdown = (out / "probe.md").read_text()
    assert "| bright |" in markdown and "| sex (= M) |" in markdown and "| age |" in markdown
    with (out / "predictions.csv").open() as handle:
        predictions = list(csv.DictReader(handle))
    assert len(predictions) == 2 * 3 * 12  # protocols x targets x test images

    assert main(args) == 0  # the features are read from the cache this time
    assert "encoding" not in capsys.readouterr().err


def test_probe_names_missing_columns_and_one_class_targets(small_hf_dir, cohort, tmp_path, capsys):
    base = ["probe", "--model", str(small_hf_dir), "--manifest", str(cohort),
            "--out", str(tmp_path / "out"), *COMMON]  # fmt: skip
    assert main([*base, "--targets", "bright", "bmi"]) == 2
    assert "lacks column(s) 'bmi'" in capsys.readouterr().err
    with cohort.open() as handle:
        rows = list(csv.DictReader(handle))
    for row in rows:
        row["path"] = str(cohort.parent / row["path"])
        row["one_class"] = "1" if row["split"] == "test" else str(int(row["bright"] or 0))
    edited = tmp_path / "edited.csv"
    with edited.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    base[4] = str(edited)
    assert main([*base, "--targets", "one_class"]) == 2
    assert "'one_class' has one class only in the test split" in capsys.readouterr().err


def test_probe_refuses_an_unknown_feature_kind_before_any_work(cohort, tmp_path, capsys):
    args = ["probe", "--model", "pixels:8", "--manifest", str(cohort), "--targets", "bright",
            "--out", str(tmp_path / "out"), "--features", "cls+grid", *COMMON]  # fmt: skip
    with pytest.raises(SystemExit) as exit:
        main(args)
    assert exit.value.code == 2
    assert "--features: features 'cls+grid': choose cls, cls+mean or cls+gridN" in (
        capsys.readouterr().err
    )
    assert not (tmp_path / "out").exists()


def edited_cohort(cohort: Path, out: Path, edit) -> Path:
    """A copy of the cohort's manifest (absolute paths) with ``edit(rows)`` applied."""
    with cohort.open() as handle:
        rows = list(csv.DictReader(handle))
    for row in rows:
        for key in ("path", "mask_disk"):
            row[key] = str(cohort.parent / row[key])
    edit(rows)
    with out.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return out


def test_probe_on_four_test_images_with_one_negative_says_so_everywhere(
    small_hf_dir, cohort, tmp_path, capsys
):
    """The case that printed ``AUROC 0.000 [0.000, 0.000]`` and nothing else: 4 labelled test
    images, 1 of them negative, 35 labelled training images for k up to 100."""

    def edit(rows):
        test = [row for row in rows if row["split"] == "test"]
        for row in rows:
            row["few"] = row["bright"] if row["split"] != "test" else ""
        for row, label in zip(test[:4], ["0", "1", "1", "1"], strict=True):
            row["few"] = label  # patients p24 (the negative and a positive) and p25

    manifest = edited_cohort(cohort, tmp_path / "few.csv", edit)
    out = tmp_path / "probe"
    args = ["probe", "--model", str(small_hf_dir), "--manifest", str(manifest), "--out", str(out),
            "--targets", "few", *COMMON]  # fmt: skip
    assert main(args) == 0
    err = capsys.readouterr().err
    report = json.loads((out / "probe.json").read_text())
    counts = report["protocols"]["linear"]["targets"]["few"]["counts"]
    assert counts["test"] == {"known": 4, "positive": 3, "negative": 1}
    assert counts["train"] == {"known": 35, "positive": 18, "negative": 17}
    notes = report["notes"]
    expected = [
        "target 'few': 3 positives and 1 negative in the test split (fewer than 10 each)",
        "target 'few': AUROC, AUPRC undefined in ",
        "k-NN, target 'few': k = 50, 100 exceed the 35 training images with a known label and "
        "were clamped to k = 35",
    ]
    markdown = (out / "probe.md").read_text()
    assert "| few | 35 (18/17) | 12 (6/6) | 4 (3/1) |" in markdown
    for start in expected:
        [note] = [n for n in notes if n.startswith(start)]
        assert f"- {note}" in markdown.split("Notes:")[1]
        assert f"raddino probe: warning: {note}\n" in err
    assert report["protocols"]["knn"]["targets"]["few"]["selected"]["k"] <= 35
    warned = [line for line in err.splitlines() if line.startswith("raddino probe: warning: ")]
    assert len(warned) == len(notes) == len(set(notes))  # each once, whatever the protocols


def test_segment_linear_head(small_hf_dir, cohort, tmp_path, capsys):
    out = tmp_path / "segment"
    args = ["segment", "--model", str(small_hf_dir), "--manifest", str(cohort), "--out", str(out),
            "--masks", "disk", "--epochs", "3", "--lr", "1e-2", "--overlays", "1",
            *COMMON]  # fmt: skip
    assert main(args) == 0
    captured = capsys.readouterr()
    assert "disk: Dice " in captured.out and "segment.md" in captured.out
    report = json.loads((out / "segment.json").read_text())
    assert report["metrics"]["disk"]["dice"]["value"] > 0
    # 36/12/12 annotated images, all test images annotated: nothing to warn about
    assert report["structure_counts"]["disk"] == {
        "train": {"known": 36},
        "val": {"known": 12},
        "test": {"known": 12},
    }
    assert report["notes"] == [] and "warning" not in captured.err
    assert "| disk | 36 | 12 | 12 |" in (out / "segment.md").read_text()
    assert len(list((out / "overlays").glob("*.png"))) == 1


def test_compare_makes_one_table_for_two_encoders(small_hf_dir, cohort, tmp_path, capsys):
    other = make_hf_model(tmp_path / "other", seed=1, **SMALL_HF_CONFIG)
    out = tmp_path / "compare"
    args = ["compare", "--models", f"first={small_hf_dir}", f"second={other}",
            "--manifest", str(cohort), "--out", str(out), "--targets", "bright", "age",
            "--protocols", "linear", *COMMON]  # fmt: skip
    assert main(args) == 0
    markdown = (out / "compare.md").read_text()
    headers = [line for line in markdown.splitlines() if line.startswith("| task |")]
    assert headers == ["| task | target | n train, val, test | metric | first | second |"]
    table = [line for line in markdown.splitlines() if line.startswith("| linear |")]
    assert len(table) == 5  # bright: AUROC, AUPRC; age: MAE, R², Pearson r
    assert all("Δ" in line for line in table)
    assert table[0].startswith("| linear | bright | 35 (18/17), 12 (6/6), 12 (6/6) | AUROC |")
    assert table[2].startswith("| linear | age | 36, 12, 12 | MAE |")
    report = json.loads((out / "compare.json").read_text())
    assert report["reference"] == "first"
    bright = report["rows"][0]
    assert bright["counts"]["test"] == {"known": 12, "positive": 6, "negative": 6}
    # the classes are 6/6 in test: said once for both encoders, not once per encoder
    [note] = [n for n in report["notes"] if "test split" in n]
    assert note.startswith("target 'bright': 6 positives and 6 negatives in the test split")
    for row in report["rows"]:
        assert set(row["values"]) == {"first", "second"}
        assert set(row["differences"]) == {"second"}
        assert isinstance(row["differences"]["second"]["significant"], bool)
    assert (out / "first" / "probe.md").exists() and (out / "second" / "probe.md").exists()
    assert "comparison:" in capsys.readouterr().out


def test_compare_with_random_baseline_and_segmentation(small_hf_dir, cohort, tmp_path):
    out = tmp_path / "compare"
    args = ["compare", "--models", str(small_hf_dir), "--random-baseline", "--manifest",
            str(cohort), "--out", str(out), "--masks", "disk", "--epochs", "2",
            "--overlays", "0", *COMMON]  # fmt: skip
    assert main(args) == 0
    report = json.loads((out / "compare.json").read_text())
    labels = [e["label"] for e in report["encoders"]]
    assert labels == [small_hf_dir.name, f"random-init({small_hf_dir.name})"]
    assert report["encoders"][1]["random_init"] is True
    assert {row["task"] for row in report["rows"]} == {"segment (linear)"}


def test_compare_probes_from_the_segmentation_store_with_the_same_results(
    small_hf_dir, cohort, tmp_path
):
    """Probing and segmenting together encodes each encoder once (its full-token store serves
    both), and the probe's numbers are those of a probe-only comparison."""
    base = ["compare", "--models", str(small_hf_dir), "--random-baseline", "--manifest",
            str(cohort), "--targets", "bright", "--protocols", "linear", *COMMON]  # fmt: skip
    probe_only, both = tmp_path / "probe", tmp_path / "both"
    assert main([*base, "--out", str(probe_only)]) == 0
    assert main([*base, "--out", str(both), "--masks", "disk", "--epochs", "2",
                 "--overlays", "0"]) == 0  # fmt: skip
    stores = sorted(p.name for p in (both / "features").iterdir() if (p / "index.csv").exists())
    assert len(stores) == 2, stores  # one per encoder, not one per protocol
    rows = json.loads((both / "compare.json").read_text())["rows"]
    assert {row["task"] for row in rows} == {"linear", "segment (linear)"}
    expected = json.loads((probe_only / "compare.json").read_text())["rows"]
    assert [r for r in rows if r["task"] == "linear"] == expected


def test_compare_fits_at_the_same_time_with_the_results_of_one_at_a_time(
    small_hf_dir, cohort, tmp_path
):
    """Probes and heads of three encoders fitted two at a time in threads give the numbers of
    the sequential run, bit for bit (same thread count per fit, seeded heads under a lock)."""
    base = ["compare", "--models", str(small_hf_dir), "--random-baseline", "--pixel-baseline",
            "4", "--manifest", str(cohort), "--targets", "bright", "age", "--masks", "disk",
            "--epochs", "2", "--overlays", "0", *COMMON]  # fmt: skip
    runs = {}
    for workers in (1, 2):
        out = tmp_path / f"workers{workers}"
        assert main([*base, "--out", str(out), "--fit-workers", str(workers)]) == 0
        runs[workers] = json.loads((out / "compare.json").read_text())
    assert {row["task"] for row in runs[1]["rows"]} == {"linear", "knn", "segment (linear)"}
    assert runs[2] == runs[1]


def test_compare_refuses_zero_fit_workers(small_hf_dir, cohort, tmp_path, capsys):
    args = ["compare", "--models", str(small_hf_dir), "--random-baseline", "--manifest",
            str(cohort), "--targets", "bright", "--out", str(tmp_path / "c"),
            "--fit-workers", "0"]  # fmt: skip
    with pytest.raises(SystemExit):
        main(args)
    assert "--fit-workers: 0 must be >= 1" in capsys.readouterr().err
