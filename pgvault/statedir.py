"""Where pgvault keeps its local state, and the per-job lock.

Low in the layers (wal-push's shipper and the tick both lock through it); imports nothing heavy.
"""
from __future__ import annotations

import fcntl
import json
import os
import socket
import time
from datetime import datetime, timezone
from pathlib import Path

ENV = "PGVAULT_STATE_DIR"
DEFAULT_BASE = "/var/lib/pgvault"


def state_dir(configured: str | None, cluster: str) -> Path:
    """$PGVAULT_STATE_DIR, else the policy's state_dir, else /var/lib/pgvault/<cluster>.

    >>> str(state_dir(None, "main")) if "PGVAULT_STATE_DIR" not in os.environ else "/var/lib/pgvault/main"
    '/var/lib/pgvault/main'
    """
    return Path(os.environ.get(ENV) or configured or f"{DEFAULT_BASE}/{cluster}")


def _iso(t: datetime | None) -> str | None:
    return None if t is None else t.astimezone(timezone.utc).isoformat()


class JobLock:
    """An exclusive, non-blocking flock() on a per-job file.

    The kernel releases a flock when its holder dies, so a killed tick never leaves a lock
    that blocks the next one. The file also holds the holder's pid and start time: an empty
    file means the last holder released it cleanly; a non-empty file found *after* acquiring
    means the previous holder died holding it (``stale``), which is reported."""

    def __init__(self, path: Path):
        self.path = path
        self.fd: int | None = None
        self.stale: dict | None = None

    def acquire(self, now: datetime, wait: float = 0.0) -> bool:
        """Take the lock; with ``wait`` > 0, wait up to that many seconds for its holder to let go."""
        self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        # O_CLOEXEC (Python's default) keeps the lock out of child processes such as pg_dump,
        # so an orphaned child never holds a job's lock.
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        deadline = time.monotonic() + wait
        pause = 0.01
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    os.close(fd)
                    return False
                # flock has no timeout of its own; poll, backing off to 0.5 s
                time.sleep(min(pause, max(0.0, deadline - time.monotonic())))
                pause = min(pause * 2, 0.5)
        previous = os.pread(fd, 4096, 0)
        if previous.strip():
            try:
                self.stale = json.loads(previous)
            except ValueError:
                self.stale = {"raw": previous.decode(errors="replace")}
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps({"pid": os.getpid(), "host": socket.gethostname(),
                                  "started_at": _iso(now)}).encode(), 0)
        os.fsync(fd)
        self.fd = fd
        return True

    def held(self) -> dict | None:
        """Who holds the lock now ({} if unknown), or None when it is free. Does not disturb the
        file, so a dead holder's note survives for the next real acquire to report."""
        try:
            fd = os.open(self.path, os.O_RDONLY)
        except FileNotFoundError:
            return None
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return self.holder() or {}
        else:
            fcntl.flock(fd, fcntl.LOCK_UN)
            return None
        finally:
            os.close(fd)

    def holder(self) -> dict | None:
        """What the lock file says about its (last) holder, read without taking the lock."""
        try:
            return json.loads(self.path.read_bytes() or b"null")
        except (FileNotFoundError, ValueError):
            return None

    def release(self) -> None:
        if self.fd is None:
            return
        # Empty the file before unlocking: an empty lock file is the mark of a clean release.
        os.ftruncate(self.fd, 0)
        fcntl.flock(self.fd, fcntl.LOCK_UN)
        os.close(self.fd)
        self.fd = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.release()
        return False
