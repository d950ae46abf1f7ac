"""Exclusive file locks (``fcntl.flock``): one driver per study, one creator of an MLflow store.

A flock lock belongs to an open file and ends with the process that holds it, even under SIGKILL,
so a killed driver never leaves its study locked. On NFS, Linux emulates flock with whole-file
POSIX locks, so drivers on two nodes sharing the runs root exclude each other as well.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import socket
import time
from collections.abc import Iterator
from pathlib import Path

STUDY_LOCK_FILE = "driver.lock"


class StudyLockedError(RuntimeError):
    """Another live driver holds the study's lock (``run_study.py`` exits with its own code)."""

    def __init__(self, study: str, holder: dict, path: Path) -> None:
        self.study, self.holder, self.path = study, holder, path
        super().__init__(
            f"study {study!r} is being run by pid {holder.get('pid', '?')} on host "
            f"{holder.get('host', '?')}; wait for it or stop it (lock: {path})"
        )


class StudyLock:
    """``<study_dir>/driver.lock``, held by the one driver of the study; it records the holder's
    pid, host and start time. The file stays after release: the lock, not the file, says who runs."""

    def __init__(self, study_dir: str | Path, study_name: str) -> None:
        self.path = Path(study_dir) / STUDY_LOCK_FILE
        self.study_name = study_name
        self._fd: int | None = None

    def acquire(self) -> StudyLock:
        """Takes the lock, or raises StudyLockedError naming the holder; never waits."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise StudyLockedError(self.study_name, read_holder(self.path), self.path) from None
        except BaseException:
            os.close(fd)
            raise
        holder = {"pid": os.getpid(), "host": socket.gethostname(), "since": time.strftime("%FT%T%z")}
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(holder).encode(), 0)
        self._fd = fd
        return self

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing the file ends the lock
            self._fd = None

    def __enter__(self) -> StudyLock:
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()


def read_holder(path: Path, wait: float = 1.0) -> dict:
    """The pid and host recorded in a lock file; the holder may be writing it, so wait a moment."""
    deadline = time.monotonic() + wait
    while True:
        with contextlib.suppress(OSError, ValueError):
            holder = json.loads(path.read_text())
            if isinstance(holder, dict):
                return holder
        if time.monotonic() > deadline:
            return {}
        time.sleep(0.05)


@contextlib.contextmanager
def file_lock(path: Path) -> Iterator[None]:
    """Holds an exclusive lock on ``path`` (created if missing) for the block; waits for it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)
