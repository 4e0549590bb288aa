"""The demo's last line: the ``raddino view`` command that opens its encoders' stores."""

from __future__ import annotations

import shlex
from pathlib import Path

from raddino.cli.demo import options_from_args, summary_lines
from raddino.cli.main import build_parser
from raddino.demo.options import LABEL_LANGUAGE, LABEL_RANDOM, LABEL_SSL
from raddino.demo.pipeline import Demo
from raddino.demo.view_command import view_command
from raddino.eval.feature_cache import FeatureRequest, store_directory
from raddino.view.sources import parse_named


def quick_demo(out: Path) -> Demo:
    return Demo(options_from_args(build_parser().parse_args(["demo", "--out", str(out)])))


def finish_store(folder: Path) -> None:
    folder.mkdir(parents=True)
    (folder / "index.csv").write_text("path,shard,row\n")


def test_the_demo_ends_with_a_view_command_that_parses_and_opens_its_stores(tmp_path: Path):
    demo = quick_demo(tmp_path / "demo")
    assert view_command(demo) is None  # nothing evaluated yet: no line
    options = demo.encode_options()
    specs = demo.learned_specs()
    for spec in specs.values():
        finish_store(store_directory(demo.paths.features, spec, FeatureRequest("full"), options))
    finish_store(demo.paths.features / "image-only-000000000000")  # another run's weights
    finish_store(demo.paths.features / "pixels-16x16-000000000000")  # the raw-pixel baseline

    command = view_command(demo)
    lines = summary_lines(demo, [])
    assert lines[-1] == f"  {command}"  # printed last
    argv = shlex.split(command)
    assert argv[:2] == ["raddino", "view"]
    args = build_parser().parse_args(argv[1:])
    stores = [parse_named(text) for text in args.stores]
    assert [name for name, _ in stores] == [LABEL_SSL, LABEL_LANGUAGE, LABEL_RANDOM]
    for name, folder in stores:
        expected = store_directory(
            demo.paths.features, specs[name], FeatureRequest("full"), options
        )
        assert Path(folder) == expected and (expected / "index.csv").is_file()
    assert args.manifest == [str(demo.paths.manifest)]


def test_a_store_left_unfinished_is_not_offered(tmp_path: Path):
    demo = quick_demo(tmp_path / "demo")
    spec = demo.learned_specs()[LABEL_SSL]
    folder = store_directory(
        demo.paths.features, spec, FeatureRequest("full"), demo.encode_options()
    )
    folder.mkdir(parents=True)  # no index.csv: killed while encoding
    assert view_command(demo) is None
