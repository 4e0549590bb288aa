"""One writer per output directory: refusal naming the holder, release, takeover after a kill."""

from __future__ import annotations

import json
import os
import pickle
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from raddino.output_lock import LOCK_FILE, LockHolder, OutputInUseError, OutputLock
from tests.lock_holder import held_by_another_process, start_holder, stop_holder


def read_lock_file(directory: Path) -> dict:
    return json.loads((directory / LOCK_FILE).read_text())


def dead_pid() -> int:
    """The pid of a process that has exited (and been reaped)."""
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()
    return process.pid


def test_a_second_writer_is_refused_with_a_message_naming_the_holder(tmp_path: Path):
    out = tmp_path / "out"
    with (
        OutputLock(out, command="raddino encode --out out"),
        pytest.raises(OutputInUseError) as refused,
    ):
        OutputLock(out).acquire()
    message = str(refused.value)
    assert isinstance(refused.value, ValueError)  # the CLI prints it and exits with 2
    assert "\n" not in message
    assert message.startswith(f"{out} is in use by another writer: pid {os.getpid()} on ")
    assert socket.gethostname() in message and "(raddino encode --out out)" in message
    holder = refused.value.holder
    assert holder.pid == os.getpid() and holder.command == "raddino encode --out out"
    assert f"since {holder.since}" in message


def test_the_lock_file_records_pid_host_command_and_start(tmp_path: Path):
    with OutputLock(tmp_path, command="raddino demo --out x"):
        record = read_lock_file(tmp_path)
    assert record["pid"] == os.getpid() and record["host"] == socket.gethostname()
    assert record["command"] == "raddino demo --out x" and record["since"][:2] == "20"


def test_leaving_the_block_releases_the_lock_and_removes_its_file(tmp_path: Path):
    notes: list[str] = []
    with OutputLock(tmp_path):
        assert (tmp_path / LOCK_FILE).is_file()
    assert not (tmp_path / LOCK_FILE).exists()
    with pytest.raises(KeyError), OutputLock(tmp_path):
        raise KeyError("a failure inside the block")
    with OutputLock(tmp_path, note=notes.append) as lock:  # free again, nothing to take over
        assert lock.held
    assert notes == [] and not lock.held


def test_another_process_is_refused_until_the_holder_releases(tmp_path: Path):
    holder = start_holder(tmp_path, "raddino pretrain --out run")
    try:
        with pytest.raises(OutputInUseError) as refused:
            OutputLock(tmp_path).acquire()
        assert refused.value.holder.pid == holder.pid
        assert f"pid {holder.pid} on" in str(refused.value)
        assert "(raddino pretrain --out run)" in str(refused.value)
    finally:
        stop_holder(holder)
    notes: list[str] = []
    with OutputLock(tmp_path, note=notes.append):
        assert read_lock_file(tmp_path)["pid"] == os.getpid()
    assert notes == []


def test_a_holder_killed_with_sigkill_loses_the_lock_and_it_is_taken_over(tmp_path: Path):
    holder = start_holder(tmp_path, "raddino encode --out store")
    with pytest.raises(OutputInUseError):
        OutputLock(tmp_path).acquire()
    holder.send_signal(signal.SIGKILL)
    holder.wait(timeout=60)
    assert read_lock_file(tmp_path)["pid"] == holder.pid  # the killed holder left its file

    notes: list[str] = []
    with OutputLock(tmp_path, note=notes.append):
        assert read_lock_file(tmp_path)["pid"] == os.getpid()
    assert len(notes) == 1 and "\n" not in notes[0]
    assert f"took over the output lock of pid {holder.pid} on" in notes[0]
    assert "(raddino encode --out store)" in notes[0] and "ended without releasing it" in notes[0]


def test_a_left_behind_lock_file_of_a_dead_pid_is_taken_over_with_one_note(tmp_path: Path):
    pid = dead_pid()
    stale = LockHolder(pid, socket.gethostname(), "raddino synth --out c", "2024-01-02T03:04:05")
    (tmp_path / LOCK_FILE).write_bytes(stale.to_bytes())
    notes: list[str] = []
    with OutputLock(tmp_path, note=notes.append):
        assert read_lock_file(tmp_path)["pid"] == os.getpid()
    assert notes == [
        f"note: {tmp_path}: took over the output lock of {stale.describe()}, which ended "
        "without releasing it"
    ]


def test_an_empty_or_garbled_lock_file_is_taken_over_silently(tmp_path: Path):
    (tmp_path / LOCK_FILE).write_bytes(b'{"pid": 12')
    notes: list[str] = []
    with OutputLock(tmp_path, note=notes.append):
        assert read_lock_file(tmp_path)["pid"] == os.getpid()
    assert notes == []


def test_a_forked_child_neither_holds_nor_releases_its_parents_lock(tmp_path: Path):
    lock = OutputLock(tmp_path).acquire()
    try:
        child = os.fork()
        if child == 0:  # as a data-loader worker: its copy is closed, dropping it does nothing
            code = 0 if not lock.held else 3
            try:
                lock.release()
                del lock
            except BaseException:
                code = 1
            os._exit(code)
        _, status = os.waitpid(child, 0)
        assert os.waitstatus_to_exitcode(status) == 0
        assert lock.held and read_lock_file(tmp_path)["pid"] == os.getpid()
        with pytest.raises(OutputInUseError):
            OutputLock(tmp_path).acquire()
    finally:
        lock.release()


FORKING_HOLDER = """
import os, sys
from raddino.output_lock import OutputLock

lock = OutputLock(sys.argv[1]).acquire()
if os.fork() == 0:  # the worker: it says its pid once running (after the fork's hooks)
    print(os.getpid(), flush=True)
    os.read(0, 1)  # lives until the test closes its end of our stdin
    os._exit(0)
os.read(0, 1)
"""


def test_the_lock_of_a_killed_holder_is_free_while_its_forked_worker_lives_on(tmp_path: Path):
    holder = subprocess.Popen(
        [sys.executable, "-c", FORKING_HOLDER, str(tmp_path)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        env=dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path)),
    )
    try:
        worker = int(holder.stdout.readline())
        holder.send_signal(signal.SIGKILL)
        holder.wait(timeout=60)
        os.kill(worker, 0)  # the worker is still alive (blocked reading our pipe)
        notes: list[str] = []
        with OutputLock(tmp_path, note=notes.append):
            assert read_lock_file(tmp_path)["pid"] == os.getpid()
        assert len(notes) == 1 and f"pid {holder.pid} on" in notes[0]
    finally:
        holder.stdin.close()  # the worker reads end-of-file and exits
        if holder.poll() is None:
            holder.kill()
            holder.wait()


def test_the_directory_is_created_and_a_file_in_its_place_is_a_clear_error(tmp_path: Path):
    with OutputLock(tmp_path / "a" / "b"):
        assert (tmp_path / "a" / "b").is_dir()
    assert not (tmp_path / "a" / "b").exists()  # created here and left empty: removed again
    with OutputLock(tmp_path / "a" / "b"):
        (tmp_path / "a" / "b" / "result.txt").write_text("kept")
    assert sorted(p.name for p in (tmp_path / "a" / "b").iterdir()) == ["result.txt"]
    (tmp_path / "empty").mkdir()
    with OutputLock(tmp_path / "empty"):  # existed before: kept, though empty
        pass
    assert (tmp_path / "empty").is_dir()
    (tmp_path / "file").write_text("x")
    with pytest.raises(ValueError, match="exists and is not a directory"):
        OutputLock(tmp_path / "file").acquire()


def test_the_refusal_survives_pickling_for_torchrun(tmp_path: Path):
    with (
        OutputLock(tmp_path, command="raddino pretrain"),
        pytest.raises(OutputInUseError) as refused,
    ):
        OutputLock(tmp_path).acquire()
    copy = pickle.loads(pickle.dumps(refused.value))
    assert str(copy) == str(refused.value) and copy.holder == refused.value.holder


def test_without_fcntl_the_module_imports_and_taking_a_lock_fails_clearly(tmp_path: Path):
    script = (
        "import sys; sys.modules['fcntl'] = None\n"
        "from raddino.output_lock import OutputLock\n"
        "try:\n"
        f"    OutputLock({str(tmp_path)!r}).acquire()\n"
        "except RuntimeError as error:\n"
        "    print(error)\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        env=dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path)),
    )
    assert result.returncode == 0, result.stderr
    assert (
        result.stdout.strip() == f"cannot lock {tmp_path}: output locks need fcntl.flock "
        "(Linux, macOS)"
    )


def test_held_by_another_process_releases_on_leaving(tmp_path: Path):
    with held_by_another_process(tmp_path, "raddino x") as holder:
        assert read_lock_file(tmp_path)["pid"] == holder.pid
    assert not (tmp_path / LOCK_FILE).exists()
