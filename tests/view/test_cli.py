"""``raddino view``: prints its address, serves the stores, stops cleanly on Ctrl-C; bad input
is one line naming the file."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest

from raddino.cli.main import build_parser, main
from tests.view.conftest import Cohort
from tests.viz.conftest import tiny_model


def default_sigint() -> None:
    """In the child before it starts Python: SIGINT back to its default. A shell that runs the
    suite in the background (``make test &``) ignores SIGINT, children inherit that, and Python
    then installs no Ctrl-C handler, so the server would never see the test's Ctrl-C."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def start(*argv: str) -> tuple[subprocess.Popen, str, list[str]]:
    """``raddino view ARGV`` in a process of its own; (process, URL, lines before it)."""
    process = subprocess.Popen(
        [sys.executable, "-m", "raddino", "view", *argv],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "OMP_NUM_THREADS": "1", "PYTHONFAULTHANDLER": "1"},
        preexec_fn=default_sigint,
    )
    lines = []
    for line in process.stdout:
        lines.append(line.rstrip("\n"))
        if line.startswith("open http://"):
            return process, line.split()[1], lines
    process.wait(timeout=60)
    raise AssertionError(f"no address printed: {lines} {process.stderr.read()}")


def stop(process: subprocess.Popen, how: int = signal.SIGINT) -> tuple[int, str, str]:
    """Send ``how``; (exit code, stdout, stderr). A server still running 60 s later is aborted
    and the test fails with every thread's stack (faulthandler, enabled in :func:`start`)."""
    process.send_signal(how)
    try:
        out, err = process.communicate(timeout=60)
    except subprocess.TimeoutExpired:
        process.send_signal(signal.SIGABRT)
        out, err = process.communicate(timeout=30)
        message = f"still running 60 s after signal {how}; stdout {out!r}; threads:\n{err}"
        raise AssertionError(message) from None
    return process.returncode, out, err


def get_json(url: str) -> dict:
    with urllib.request.urlopen(url, timeout=30) as response:
        return json.load(response)


def test_view_prints_its_address_serves_the_stores_and_stops_on_ctrl_c(cohort: Cohort):
    stores = [f"{name}={folder}" for name, folder in list(cohort.stores.items())[:2]]
    process, url, lines = start(*stores, "--manifest", str(cohort.manifest), "--port", "0")
    try:
        assert url.startswith("http://127.0.0.1:") and url.endswith("/")
        assert lines[0] == "raddino view: 12 images, encoders: image-only, random"
        described = get_json(url + "api/session")
        assert [e["name"] for e in described["encoders"]] == ["image-only", "random"]
        assert described["filters"]["effusion"] == ["0", "1"]
    finally:
        code, out, err = stop(process)
    assert code == 0, err
    assert out.strip().endswith("raddino view: stopped") and "Traceback" not in err


def test_view_encodes_a_model_s_images_first_and_removes_them_on_exit(
    tmp_path: Path, cohort: Cohort
):
    model_dir = tmp_path / "tiny"
    tiny_model(168).save_pretrained(model_dir)
    process, url, _ = start(
        "--model", f"tiny={model_dir}", "--model", f"random:{model_dir}",
        "--images", str(cohort.manifest), "--device", "cpu", "--workers", "0",
    )  # fmt: skip
    try:
        described = get_json(url + "api/session")
        encoders = described["encoders"]
        assert [e["name"] for e in encoders] == ["tiny", "random-init(tiny)"]
        assert all(e["grid"] == [12, 12] and e["problem"] is None for e in encoders)
        assert described["images"] == 12 and "effusion" in described["filters"]
        stores = [Path(e["store"]) for e in encoders]
        assert all((store / "index.csv").is_file() for store in stores)
    finally:
        code, _, err = stop(process, signal.SIGTERM)  # a kill stops it as cleanly as Ctrl-C
    assert code == 0, err
    assert "encoding 12 images with tiny" in err
    assert not any(store.exists() for store in stores)  # the temporary cache is gone


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["missing-store"], "missing-store: no such features store (a folder)"),
        (["--model", "m"], "--model needs --images: the images to encode"),
        ([], "give features stores, or --model with --images to encode some"),
        (["s", "--port", "70000"], "--port 70000: expected 0 (a free port) to 65535"),
    ],
)
def test_bad_input_is_one_line_naming_what_is_wrong(argv, message, capsys, monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    assert main(["view", *argv]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"raddino view: error: {message}"]


def test_a_folder_that_is_not_a_store_is_named(tmp_path: Path, capsys):
    assert main(["view", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert err == f"raddino view: error: {tmp_path} is not a raddino features store (no meta.json)"


def test_host_defaults_to_this_machine_only():
    args = build_parser().parse_args(["view", "store"])
    assert (args.host, args.port, args.device) == ("127.0.0.1", 0, "auto")
