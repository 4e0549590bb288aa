"""Test-only resources from registry packages: the torchxrayvision wheel and its data files.

The wheel is fetched once with ``pip download`` into ``$RADDINO_TEST_CACHE`` (default
``~/.cache/raddino/test-resources``) and never committed. Callers skip their tests, with the
reason, when it cannot be obtained.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from pathlib import Path

XRV_VERSION = "1.5.7"


def cache_dir() -> Path:
    default = Path.home() / ".cache" / "raddino" / "test-resources"
    return Path(os.environ.get("RADDINO_TEST_CACHE") or default).expanduser()


def torchxrayvision_wheel() -> Path:
    """The cached torchxrayvision wheel; raises RuntimeError when the download fails."""
    cache = cache_dir()
    cache.mkdir(parents=True, exist_ok=True)
    wheel = cache / f"torchxrayvision-{XRV_VERSION}-py3-none-any.whl"
    if wheel.is_file():
        return wheel
    with tempfile.TemporaryDirectory(dir=cache) as tmp:
        command = [
            sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
            "--quiet", "--disable-pip-version-check", f"torchxrayvision=={XRV_VERSION}",
            "-d", tmp,
        ]  # fmt: skip
        result = subprocess.run(command, capture_output=True, text=True, check=False)
        found = sorted(Path(tmp).glob("torchxrayvision-*.whl"))
        if result.returncode != 0 or not found:
            raise RuntimeError(
                f"pip download torchxrayvision=={XRV_VERSION} failed: "
                f"{(result.stderr or result.stdout).strip()[-300:]}"
            )
        os.replace(found[0], wheel)
    return wheel
