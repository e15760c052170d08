"""Starting the background shipper, and the locks wal-push and the shipper share.

wal-push holds the push lock (shared) while it runs, so the shipper can yield to it; the
shipper lock (one per spool) keeps a second shipper from starting. Kept apart from shipper.py
so wal-push's start-up never imports the shipper (which imports wal-push's Archiver).
"""
from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import sys

from .spool import Spool

log = logging.getLogger("pgvault.wal")

NICE = 10              # the shipper's CPU priority, relative to wal-push
LOG_MAX = 10 << 20     # <spool>/shipper.log is rotated (one old copy) beyond this size


# -- the push lock: held shared by every running wal-push
@contextlib.contextmanager
def push_lock(spool: Spool):
    from ..fsutil import give_dir_owner

    path = spool.root / "push.lock"
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    except FileNotFoundError:
        spool.ensure()  # the first push on this host
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    except PermissionError:
        # Not ours to write (root created it?): say so, with the fix, rather than fail later.
        spool.ensure()
        fd = None
    except OSError:
        fd = None
    if fd is not None:
        give_dir_owner(fd, spool.root)
    try:
        if fd is not None:
            with contextlib.suppress(OSError):
                fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        yield
    finally:
        if fd is not None:
            os.close(fd)


def archiver_busy(spool: Spool) -> bool:
    """Is a wal-push running right now (holding the push lock)?"""
    try:
        fd = os.open(spool.root / "push.lock", os.O_RDONLY)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)
    return False


def shipper_lock(spool: Spool):
    from ..statedir import JobLock

    return JobLock(spool.root / "shipper.lock")


# -- starting it (from wal-push)
def kick(spool: Spool, policy) -> bool:
    """Start ``pgvault wal-ship --follow`` detached unless one runs (or nothing is owed)."""
    if not spool.sites_with_backlog() or shipper_lock(spool).held() is not None:
        return False
    src = getattr(policy, "_source", None)
    if src is None:  # an in-memory policy (a library caller): nothing to hand a process
        log.warning("WAL is spooled for other sites, but no policy file to start a shipper with; "
                    "run `pgvault wal-ship`")
        return False
    logf = spool.root / "shipper.log"
    try:
        if logf.stat().st_size > LOG_MAX:
            os.replace(logf, logf.with_name("shipper.log.1"))  # keep one previous log
    except FileNotFoundError:
        pass
    from ..proc import spawn_detached

    try:
        open(logf, "ab").close()
    except OSError as exc:  # a log root left behind: archiving still works, the shipper waits
        log.warning("cannot start the WAL shipper: %s: %s; run `pgvault wal-ship`", logf, exc.strerror)
        return False
    spawn_detached([sys.executable, "-m", "pgvault", "--log-format", "json", "-v", "--policy", str(src),
                    "wal-ship", "--follow"], logf, nice=NICE)
    return True
