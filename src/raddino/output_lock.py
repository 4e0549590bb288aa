"""One writer per output directory: an exclusive lock that a command holds while it writes there.

The lock is the file ``DIR/.raddino.lock``, locked with ``fcntl.flock(LOCK_EX | LOCK_NB)`` and
holding its holder's pid, host name, command and start time (JSON). A second writer is refused
at once with :class:`OutputInUseError` (a ``ValueError``: the CLI prints ``raddino COMMAND:
error: ...`` and exits with 2), whose one-line message names the directory and the holder.

A stale lock cannot block anyone: the kernel drops a flock when its holder's process ends, however
it ends (``kill -9`` included), so the next writer simply takes it; forked children (data-loader
workers) close their inherited copy, so they do not outlive it. A lock file that is left
behind (its holder was killed before it could delete it) is taken over, with a one-line note
naming the holder it replaces. Releasing deletes the file while the lock is still held; an
acquirer checks that the file it locked is still the one at the path, so two writers can never
hold two different files.

Acquire the lock before writing or deleting anything in the directory: the directory is created
if missing (and removed on release if still empty then). ``flock`` is per open file, so a second
:class:`OutputLock` on the same directory is refused even inside the same process.

Caveat: on network file systems a flock is only as good as the server's locking. Linux's NFS
client maps it onto NFS byte-range locks, which hold across hosts; mounts with ``nolock`` (and
some other network file systems) lock on each host alone, so writers on two hosts may both get
the lock there. Keep concurrent writers on one machine, or outputs on a local disk.

``fcntl`` is POSIX-only; without it this module still imports, and taking a lock fails with a
clear ``RuntimeError``.
"""

from __future__ import annotations

import contextlib
import json
import os
import shlex
import socket
import sys
import time
import weakref
from collections.abc import Callable
from dataclasses import asdict, dataclass
from datetime import datetime
from pathlib import Path
from types import TracebackType

try:
    import fcntl
except ImportError:  # Windows: not a target; fail when a lock is taken, not at import
    fcntl = None  # type: ignore[assignment]

__all__ = ["LOCK_FILE", "LockHolder", "OutputInUseError", "OutputLock", "is_lock_file"]

LOCK_FILE = ".raddino.lock"

# A holder writes its details right after it locks the file: a reader that finds them missing or
# half-written tries again this many times, _READ_PAUSE seconds apart, then reports "unknown".
_READ_TRIES = 20
_READ_PAUSE = 0.01


# the locks this process holds (a forked child closes its copies: see _forget_in_child)
_HELD: weakref.WeakSet[OutputLock] = weakref.WeakSet()


def is_lock_file(path: str | os.PathLike) -> bool:
    """True for an output lock file (modules that check a folder is empty ignore it)."""
    return Path(path).name == LOCK_FILE


@dataclass(frozen=True)
class LockHolder:
    """Who holds (or last held) an output lock."""

    pid: int
    host: str
    command: str
    since: str  # ISO 8601, local time with its offset

    @classmethod
    def of_this_process(cls, command: str | None = None) -> LockHolder:
        return cls(
            pid=os.getpid(),
            host=socket.gethostname(),
            command=command if command is not None else _command_line(),
            since=datetime.now().astimezone().isoformat(timespec="seconds"),
        )

    @classmethod
    def from_bytes(cls, data: bytes) -> LockHolder | None:
        """The holder written in a lock file; None when empty or unreadable."""
        try:
            record = json.loads(data.decode("utf-8"))
            return cls(
                int(record["pid"]),
                str(record["host"]),
                str(record["command"]),
                str(record["since"]),
            )
        except (UnicodeDecodeError, ValueError, KeyError, TypeError):
            return None

    def to_bytes(self) -> bytes:
        return (json.dumps(asdict(self)) + "\n").encode("utf-8")

    def describe(self) -> str:
        return f"pid {self.pid} on {self.host} since {self.since} ({self.command})"


class OutputInUseError(ValueError):
    """Another process holds the output directory's lock."""

    def __init__(self, directory: Path, holder: LockHolder | None) -> None:
        who = holder.describe() if holder else "a process that has not written its details yet"
        super().__init__(
            f"{directory} is in use by another writer: {who}; wait for it to finish or choose "
            "another output directory"
        )
        self.directory = directory
        self.holder = holder

    def __reduce__(self) -> tuple:  # pickled as its arguments (torchrun broadcasts it)
        return (type(self), (self.directory, self.holder))


def _command_line() -> str:
    """This process's command line, ``raddino ...`` for ``python -m raddino`` too."""
    argv = list(sys.argv) or ["python"]
    program = Path(argv[0])
    name = program.parent.name if program.name == "__main__.py" else program.name
    text = shlex.join([name, *argv[1:]])
    return text if len(text) <= 300 else text[:297] + "..."


def _print_note(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


class OutputLock:
    """Exclusive lock on an output directory; a context manager (``with OutputLock(out):``).

    ``command`` is recorded for others to read (default: this process's command line); ``note``
    receives the one line said when a left-behind lock is taken over (default: stderr).
    """

    def __init__(
        self,
        directory: str | os.PathLike,
        command: str | None = None,
        note: Callable[[str], None] | None = None,
    ) -> None:
        self.directory = Path(directory)
        self.path = self.directory / LOCK_FILE
        self.command = command
        self.note = note or _print_note
        self._fd: int | None = None
        self._owner = 0  # the pid that took the lock: a forked child never releases it
        self._created = False  # the directory did not exist before acquire()

    @property
    def held(self) -> bool:
        return self._fd is not None

    def acquire(self) -> OutputLock:
        """Take the lock (creating the directory if needed) or raise :class:`OutputInUseError`."""
        if self._fd is not None:
            raise RuntimeError(f"{self.path}: this lock is already held")
        if fcntl is None:
            raise RuntimeError(
                f"cannot lock {self.directory}: output locks need fcntl.flock (Linux, macOS)"
            )
        if self.directory.exists() and not self.directory.is_dir():
            raise ValueError(f"{self.directory} exists and is not a directory")
        created = not self.directory.exists()
        fd = self._lock_the_current_file()
        left_behind = LockHolder.from_bytes(_read_all(fd))
        holder = LockHolder.of_this_process(self.command)
        data = holder.to_bytes()
        os.ftruncate(fd, 0)
        os.pwrite(fd, data, 0)
        self._fd, self._owner, self._created = fd, os.getpid(), created
        _HELD.add(self)
        if left_behind is not None:
            self.note(
                f"note: {self.directory}: took over the output lock of {left_behind.describe()}, "
                "which ended without releasing it"
            )
        return self

    def _lock_the_current_file(self) -> int:
        """An fd of the file now at ``self.path``, flocked; a file that a releasing holder
        deleted while we waited is let go and the new one tried."""
        assert fcntl is not None
        while True:
            self.directory.mkdir(parents=True, exist_ok=True)
            try:
                flags = os.O_RDWR | os.O_CREAT | getattr(os, "O_CLOEXEC", 0)
                fd = os.open(self.path, flags, 0o644)
            except FileNotFoundError:  # a releasing holder removed the empty directory
                continue
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = _read_holder(fd)
                os.close(fd)
                raise OutputInUseError(self.directory, holder) from None
            except OSError:
                os.close(fd)
                raise
            try:
                current = os.stat(self.path)
            except FileNotFoundError:
                os.close(fd)
                continue
            opened = os.fstat(fd)
            if (current.st_dev, current.st_ino) == (opened.st_dev, opened.st_ino):
                return fd
            os.close(fd)

    def release(self) -> None:
        """Delete the lock file and let go of the lock (a no-op when not held)."""
        fd, self._fd = self._fd, None
        _HELD.discard(self)
        if fd is None or os.getpid() != self._owner:
            return
        try:
            self.path.unlink(missing_ok=True)  # still ours: nobody else can lock it meanwhile
        finally:
            os.close(fd)  # closing the only descriptor drops the flock
        if self._created:  # a failed command leaves no empty output directory behind
            with contextlib.suppress(OSError):  # not empty (the usual case), or gone
                self.directory.rmdir()

    def __enter__(self) -> OutputLock:
        return self.acquire()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.release()

    def __del__(self) -> None:  # a lock object dropped without release (e.g. an abandoned writer)
        self.release()


def _forget_in_child() -> None:
    """In a forked child (a data-loader worker), close the inherited lock descriptors.

    A flock belongs to the open file, which a fork shares: a worker keeping its copy would
    keep the lock alive after its parent is killed. Closed here, the parent's descriptor is the
    only one and the lock ends with the parent; the child never releases or deletes it.
    """
    for lock in list(_HELD):
        fd, lock._fd = lock._fd, None
        if fd is not None:
            with contextlib.suppress(OSError):
                os.close(fd)
    _HELD.clear()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_in_child)


def _read_all(fd: int) -> bytes:
    chunks, offset = [], 0
    while chunk := os.pread(fd, 65536, offset):
        chunks.append(chunk)
        offset += len(chunk)
    return b"".join(chunks)


def _read_holder(fd: int) -> LockHolder | None:
    """The holder of a lock someone else holds (they may still be writing their details)."""
    for attempt in range(_READ_TRIES):
        holder = LockHolder.from_bytes(_read_all(fd))
        if holder is not None:
            return holder
        if attempt + 1 < _READ_TRIES:
            time.sleep(_READ_PAUSE)
    return None
