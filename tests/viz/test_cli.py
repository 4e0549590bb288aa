"""``raddino similarity`` and ``raddino pca`` on files: outputs, bad points, unreadable images."""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from raddino.cli import pca, similarity
from tests.viz.conftest import PATCH, patchwork, tiny_model


def parse(module, argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="raddino")
    module.add_parser(parser.add_subparsers())
    return parser.parse_args(argv)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random encoder in the Hugging Face format, processing 56 x 56 crops."""
    return tiny_model(56).save_pretrained(tmp_path_factory.mktemp("tiny") / "model")


@pytest.fixture
def images(tmp_path: Path) -> list[Path]:
    """Three PNGs: a 56 x 84 query (a crop keeps its middle 56 columns) and two 56 x 56."""
    paths = []
    for index, (rows, cols) in enumerate([(4, 6), (4, 4), (4, 4)]):
        path = tmp_path / f"img{index}.png"
        Image.fromarray(patchwork(rows, cols, seed=index)).save(path)
        paths.append(path)
    return paths


def test_similarity_writes_the_figure_and_the_numbers(model_dir, images, tmp_path, capsys):
    query, *targets = images
    out = tmp_path / "figs" / "sim.png"
    args = parse(
        similarity,
        [
            "similarity",
            "--model",
            str(model_dir),
            str(query),
            "--point",
            "40,20",
            *map(str, targets),
            str(query),
            "--out",
            str(out),
            "--device",
            "cpu",
        ],
    )
    assert similarity.run(args) == 0
    printed = capsys.readouterr().out
    assert f"wrote {out}" in printed
    with Image.open(out) as figure:
        assert figure.format == "PNG"
    numbers = np.load(out.with_suffix(".npz"))
    # x = 40 in an 84-wide image, crop left = 14: u = 40.5 - 14 = 26.5 -> col 1; y = 20 -> row 1
    assert tuple(numbers["query_patch"]) == (1, 1)
    assert numbers["maps"].shape == (3, 4, 4)
    assert numbers["target_images"].shape == (3, 56, 56)
    assert numbers["maps"][2][1, 1] == pytest.approx(1.0, abs=1e-5)  # the query itself
    expected_view = np.asarray(Image.open(query))[:, PATCH : PATCH + 56]
    assert np.array_equal(numbers["query_image"], expected_view)


@pytest.mark.parametrize("point", ["12", "a,b", "1,2,3", "nan,4"])
def test_malformed_point_is_an_error_naming_the_option(point, capsys):
    with pytest.raises(SystemExit) as exit_info:
        parse(
            similarity,
            ["similarity", "--model", "m", "q.png", "--point", point, "t.png", "--out", "f.png"],
        )
    assert exit_info.value.code == 2
    assert "--point" in capsys.readouterr().err


@pytest.mark.parametrize("point", ["100,10", "2,20"])  # off the image; cut away by the crop
def test_point_outside_the_query_is_an_error_naming_the_option(point, model_dir, images, tmp_path):
    query, target, _ = images
    args = parse(
        similarity,
        [
            "similarity",
            "--model",
            str(model_dir),
            str(query),
            "--point",
            point,
            str(target),
            "--out",
            str(tmp_path / "f.png"),
            "--device",
            "cpu",
        ],
    )
    with pytest.raises(ValueError, match=f"--point {point}"):
        similarity.run(args)
    assert not (tmp_path / "f.png").exists()


def test_pca_carries_on_past_unreadable_files(model_dir, images, tmp_path, capsys):
    corrupt = tmp_path / "corrupt.png"
    corrupt.write_bytes(images[1].read_bytes()[:40])
    duplicate = tmp_path / "again" / "img1.png"
    duplicate.parent.mkdir()
    duplicate.write_bytes(images[1].read_bytes())
    out = tmp_path / "pca"
    argv = [
        "pca",
        "--model",
        str(model_dir),
        str(images[0]),
        str(corrupt),
        str(images[1]),
        str(tmp_path / "missing.png"),
        str(duplicate),
        "--out",
        str(out),
        "--device",
        "cpu",
        "--background-threshold",
        "0.2",
    ]
    assert pca.run(parse(pca, argv)) == 0
    captured = capsys.readouterr()
    assert "corrupt.png" in captured.err and "missing.png" in captured.err
    assert "PCA of 3 of 5 images" in captured.out
    assert sorted(p.name for p in out.iterdir()) == [
        "img0_pca.png",
        "img1_2_pca.png",
        "img1_pca.png",
        "pca.png",
    ]
    with Image.open(out / "img0_pca.png") as single:
        assert single.size == (56, 56) and single.mode == "RGB"
    # the same image twice gives the same colours (one PCA over all the images)
    assert np.array_equal(
        np.asarray(Image.open(out / "img1_pca.png")), np.asarray(Image.open(out / "img1_2_pca.png"))
    )


def test_pca_fails_when_no_image_is_readable(model_dir, tmp_path, capsys):
    (tmp_path / "empty.png").write_bytes(b"")
    args = parse(
        pca,
        [
            "pca",
            "--model",
            str(model_dir),
            str(tmp_path / "empty.png"),
            "--out",
            str(tmp_path / "out"),
            "--device",
            "cpu",
        ],
    )
    assert pca.run(args) == 1
    assert "none of the images" in capsys.readouterr().err


def test_pca_rejects_a_threshold_outside_zero_to_one(capsys):
    with pytest.raises(SystemExit):
        parse(pca, ["pca", "--model", "m", "a.png", "--out", "o", "--background-threshold", "2"])
    assert "--background-threshold" in capsys.readouterr().err


def test_help_shows_examples(capsys):
    for module, name in [(similarity, "similarity"), (pca, "pca")]:
        with pytest.raises(SystemExit):
            parse(module, [name, "--help"])
        assert f"examples:\n  raddino {name} --model" in capsys.readouterr().out
