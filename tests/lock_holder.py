"""Hold an output directory's lock from another process, for tests of a second writer.

The child takes the lock, says ``held`` on stdout and waits until its stdin is closed; the
parent reads that line before going on, so nothing depends on timing.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

HOLDER_SCRIPT = """
import sys
from raddino.output_lock import OutputLock

lock = OutputLock(sys.argv[1], command=sys.argv[2]).acquire()
print("held", flush=True)
sys.stdin.read()  # until the parent closes our stdin
lock.release()
print("released", flush=True)
"""


def start_holder(directory: Path, command: str) -> subprocess.Popen:
    """A process holding ``directory``'s lock (returns once it holds it)."""
    process = subprocess.Popen(
        [sys.executable, "-c", HOLDER_SCRIPT, str(directory), command],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path)),
    )
    line = process.stdout.readline()
    if line != "held\n":
        process.kill()
        _, err = process.communicate(timeout=30)
        raise AssertionError(f"the lock holder did not start: {line!r} {err[-2000:]}")
    return process


def stop_holder(process: subprocess.Popen) -> None:
    """Let the holder release its lock and exit; fails if it did not release cleanly."""
    out, err = process.communicate(input="", timeout=60)
    assert process.returncode == 0 and out == "released\n", err[-2000:]


@contextmanager
def held_by_another_process(
    directory: Path, command: str = "raddino test --out elsewhere"
) -> Iterator[subprocess.Popen]:
    """``directory``'s lock held by a child process for the duration of the block."""
    process = start_holder(directory, command)
    try:
        yield process
    finally:
        if process.poll() is None:
            stop_holder(process)
