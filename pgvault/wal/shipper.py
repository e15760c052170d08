"""The background shipper for ``wal.sync_sites`` < all: wal-push writes a file to its first
sites, spools it for the others and starts ``pgvault wal-ship --follow`` detached, which
delivers the spool while yielding to a running wal-push. See docs/wal-archiving.md."""
from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import time

from .push import SHIP_WORKERS, Archiver
from .spool import Spool

log = logging.getLogger("pgvault.wal")

IDLE = 30.0            # seconds the shipper waits for more work before it exits
NICE = 10              # its CPU priority, relative to wal-push
DEFER = 10.0           # at most this long a spooled file waits for a running wal-push to finish
LOG_MAX = 10 << 20     # <spool>/shipper.log is rotated (one old copy) beyond this size


# -- the push lock: held shared by every running wal-push
@contextlib.contextmanager
def push_lock(spool: Spool):
    path = spool.root / "push.lock"
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    except FileNotFoundError:
        spool.ensure()  # the first push on this host
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    except OSError:
        fd = None  # an unwritable spool fails later, with a proper message
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


def _shipper_lock(spool: Spool):
    from ..state import JobLock

    return JobLock(spool.root / "shipper.lock")


# -- starting it (from wal-push)
def kick(arch: Archiver) -> bool:
    """Start ``pgvault wal-ship --follow`` detached unless one runs (or nothing is owed)."""
    import subprocess
    import sys

    spool = arch.spool
    if not spool.sites_with_backlog() or _shipper_lock(spool).held() is not None:
        return False
    src = getattr(arch.policy, "_source", None)
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
    with open(logf, "ab") as out:
        os.chmod(out.name, 0o600)
        child = subprocess.Popen([sys.executable, "-m", "pgvault", "--log-format", "json", "-v", "--policy",
                                  str(src), "wal-ship", "--follow"],
                                 stdin=subprocess.DEVNULL, stdout=out, stderr=out, start_new_session=True,
                                 close_fds=True, cwd="/")
    try:  # niced from its first instruction: its start-up (imports, policy, S3 clients) is background work too
        os.setpriority(os.PRIO_PROCESS, child.pid, NICE)
    except OSError:
        pass
    return True


# -- running it (wal-ship --follow)
def follow(arch: Archiver, *, idle: float = IDLE, workers: int = SHIP_WORKERS, poll: float = 0.1) -> dict[str, int]:
    """Ship the backlog as it is spooled, until nothing could be shipped for ``idle`` seconds;
    one shipper per spool (flock). Returns the files delivered per site."""
    from datetime import datetime, timezone

    spool = arch.spool
    total: dict[str, int] = {}
    arch.before_deliver = lambda site, stored: _yield_to_archiver(spool, site, stored)
    try:
        # Background work on the database host: PostgreSQL and the archiver come first.
        # (wal-push already set this when it started us.)
        if os.getpriority(os.PRIO_PROCESS, 0) < NICE:
            os.setpriority(os.PRIO_PROCESS, 0, NICE)
    except OSError:
        pass
    while True:
        lock = _shipper_lock(spool)
        if not lock.acquire(datetime.now(timezone.utc)):
            return total  # another shipper has it
        try:
            quiet_since = time.monotonic()
            while time.monotonic() - quiet_since < idle:
                now = time.time()
                arch._failed = {s: "resting after a failure" for s in arch.sites if spool.is_resting(s, now)}
                arch._prepare_clients()
                got = arch.drain(workers=workers)
                arch._update_breakers(now)
                for s, n in got.items():
                    total[s] = total.get(s, 0) + n
                    log.info("shipped %d file(s) to %s; %d still owed there", n, s, len(spool.backlog(s)))
                if got:
                    quiet_since = time.monotonic()
                else:
                    time.sleep(poll)  # nothing shipped: wait for wal-push (or a site's retry time)
        finally:
            lock.release()
        # A push may have spooled a file after our last look but before the release, and seen
        # the lock still held: look once more, now that the lock is free.
        if not _shippable(arch):
            return total


def _shippable(arch: Archiver) -> bool:
    """Is anything owed to a site that is up, other than files this process failed to ship?"""
    now = time.time()
    return any(set(arch.spool.backlog(s)) - arch._refused.get(s, set())
               for s in arch.spool.sites_with_backlog() if s in arch.sites and not arch.spool.is_resting(s, now))


def _yield_to_archiver(spool: Spool, site: str, stored: str) -> None:
    """Let a running wal-push have the machine (its CPU and disk are what PostgreSQL waits on),
    but never hold a file back more than DEFER seconds after it was spooled: under continuous
    archiving the other sites still follow."""
    try:
        spooled_at = (spool.pending_dir / site / stored).stat().st_mtime
    except FileNotFoundError:
        return
    while time.time() < spooled_at + DEFER and archiver_busy(spool):
        time.sleep(0.05)
